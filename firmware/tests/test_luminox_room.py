"""A room board with an SST LuminOx (optical, 0-25 %/0-100 % variants, own barometer) instead
of the ZE03: the simulator from simulators/wire/luminox.py on a pty. Unlike the ZE03 it can
see the fire-hazard region, so the default high alarm (NFPA limit - 1.5 at the
measured pressure: ~27.9 % in Lhasa) works without lowered thresholds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from o2base.services import Mosquitto
from o2chain.firmware_runner import BoardRunner

from .board_helpers import Recorder, powered

pytestmark = pytest.mark.integration
PREFIX = "o2/lhasa-hotel/room-401/"


def test_luminox_room_high_alarm_at_defaults(tmp_path: Path, mosquitto: Mosquitto) -> None:
    rec = Recorder(mosquitto, PREFIX + "#")
    cfg = {
        "site": "lhasa-hotel",
        "device": "room-401",
        "site_altitude_m": 3650,
        "interval_s": 0.5,
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "keepalive_s": 5},
        "sensors": {"o2": {"type": "luminox"}, "env": {"type": "none"}},
        "alarm": {"pin": 25},
    }
    board = BoardRunner(cfg, tmp_path / "board", o2_pct=24.5, pressure_kpa=65.2)
    with powered(board, rec):
        rec.wait_seqs(1, 3)
        doc = [r for r in rec.readings if r["seq"] == 3][0]
        assert abs(doc["o2_pct"] - 24.5) < 0.1 and abs(doc["baro_kpa"] - 65.2) < 0.05, doc
        assert abs(doc["ppo2_kpa"] - doc["o2_pct"] * doc["baro_kpa"] / 100) < 0.01, doc
        assert "quality" not in doc, doc
        t0 = time.time()
        board.set_o2_pct(28.5)
        board.wait_for_log(r"^pin 25=1 t=", timeout_s=5)
        latency = [t for v, t in board.pin_events(25) if v == 1][-1] - t0
        alarm = rec.wait_message(
            "o2_high", lambda t, d, r: t.endswith("/alarm") and d["rule"] == "o2_high"
        )[0][1]
        assert 27.7 < alarm["threshold"] < 28.0, alarm  # 23.45 / sqrt(65.2/101.325) - 1.5
        assert latency < 1.0, latency
