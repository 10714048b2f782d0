"""Concentrator board end to end: the Gasboard-7500 simulator (simulators/wire/gasboard.py,
written independently of the firmware's driver) on a pty, polled and streaming; purity, flow
and temperature reach the broker; purity below 82 % sounds the local alarm within 1 s."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from o2base.services import Mosquitto
from o2chain.firmware_runner import BoardRunner

from .board_helpers import Recorder, powered

pytestmark = pytest.mark.integration
SITE, DEVICE = "lhasa-hotel", "oc-lobby"
PREFIX = f"o2/{SITE}/{DEVICE}/"
BUZZER = 25


def concentrator_config(broker: Mosquitto, mode: str, warmup_s: float = 0) -> dict[str, Any]:
    return {
        "site": SITE,
        "device": DEVICE,
        "kind": "concentrator",
        "site_altitude_m": 3650,
        "interval_s": 0.5,
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive_s": 5},
        "sensors": {"o2": {"type": "gasboard", "mode": mode}, "env": {"type": "none"}},
        "alarm": {"pin": BUZZER, "off_delay_s": 0.5, "warmup_s": warmup_s},
    }


@pytest.mark.parametrize("mode", ["poll", "stream"])
def test_concentrator_board(tmp_path: Path, mosquitto: Mosquitto, mode: str) -> None:
    rec = Recorder(mosquitto, PREFIX + "#")
    board = BoardRunner(concentrator_config(mosquitto, mode), tmp_path / "board", o2_pct=93.0)
    with powered(board, rec):
        rec.wait_seqs(1, 3)
        doc = [r for r in rec.readings if r["seq"] == 3][0]
        assert abs(doc["purity_pct"] - 93.0) <= 0.3, doc
        assert abs(doc["flow_lpm"] - 5.0) < 0.01 and abs(doc["temp_c"] - 21.0) < 0.05, doc
        assert "o2_pct" not in doc and "quality" not in doc, doc
        t0 = time.time()
        board.set_o2_pct(80.0)  # a wetted sieve bed
        board.wait_for_log(rf"^pin {BUZZER}=1 t=", timeout_s=5)
        latency = [t for v, t in board.pin_events(BUZZER) if v == 1][-1] - t0
        assert latency < 1.0, latency
        alarm = rec.wait_message("purity alarm", lambda t, d, r: t.endswith("/alarm"))[0][1]
        assert alarm["rule"] == "purity_low" and alarm["threshold"] == 82.0, alarm
        print(f"{mode}: purity alarm after {latency:.3f} s")


def test_cold_start_holds_purity_alarms_during_warm_up(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # A concentrator starts below product purity: the board reports "warming up" (alarm topic,
    # LED, quality bit 0x200, status) instead of sounding, and alarms once the warm-up is over.
    rec = Recorder(mosquitto, PREFIX + "#")
    cfg = concentrator_config(mosquitto, "poll", warmup_s=3)
    board = BoardRunner(cfg, tmp_path / "board", o2_pct=70.0)
    with powered(board, rec):
        board.wait_for_log(r"warm-up: purity alarms held for 3 s")
        held = rec.wait_message("warming_up", lambda t, d, r: t.endswith("/alarm"))[0][1]
        assert (held["rule"], held["state"], held["severity"]) == ("warming_up", "raise", "warning")
        rec.wait_seqs(1, 2)
        early = [r for r in rec.readings if r["seq"] <= 2]
        assert all(r["quality"] & 0x200 and r["purity_pct"] < 71 for r in early), early
        status = [d for t, d, _ in rec.messages if t.endswith("/status")]
        assert status and status[0].get("warming_up") is True, status
        over = board.wait_for_log(r"^warm-up over: purity alarms active$", timeout_s=10)
        on = board.wait_for_log(rf"^pin {BUZZER}=1 t=", timeout_s=5)
        assert on.start() > over.start(), "buzzer before the warm-up ended"
        rec.wait(
            "purity_low",
            lambda: any(
                t.endswith("/alarm") and d["rule"] == "purity_low" for t, d, _ in rec.messages
            ),
        )
        events = [d["rule"] + ":" + d["state"] for t, d, _ in rec.messages if t.endswith("/alarm")]
        assert events.index("warming_up:clear") < events.index("purity_low:raise"), events
