"""Validation through real parts: Mosquitto, InfluxDB and the gateway as a process. Room boards
publish what the firmware publishes (payloads built by the firmware's own encoder, ppo2_kpa and
eq_alt_m computed by the firmware's own formulas) in Lhasa, and the readings that used to be
rejected whole are found STORED in InfluxDB, flagged where a field or the clock was wrong."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from gateway.tests.conftest import deadletters, publish_all
from o2base.procs import ChildProcess, o2chain_argv
from o2base.services import InfluxDB, Mosquitto
from o2chain.firmware_runner import load_firmware_file
from o2chain.testing import wait_for_points
from o2core import oxygen  # the board's formulas (o2core is what the firmware runs)

pytestmark = pytest.mark.integration

SITE, DB = "lhasa-hotel", "o2valid"
BARO_KPA = 64.9  # what the rooms' BME280s read (Lhasa, ISA 64.5 kPa)
HOUR_MS = 3_600_000
fw_telemetry = load_firmware_file("telemetry")


def write_config(path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, state: Path) -> Path:
    rooms = ["room-hi", "room-lo", "room-skew", "room-rh"]
    config: dict[str, Any] = {
        "gateway": {"id": "gw-valid", "state_dir": str(state), "http_listen": "127.0.0.1:0"},
        "mqtt": {"url": mosquitto.url},
        "influx": {"url": influxdb.url, "database": DB, "flush_interval_s": 0.2},
        "site": [{"id": SITE, "altitude_m": 3650}],
        "device": [{"id": r, "site": SITE, "kind": "room", "transport": "mqtt"} for r in rooms],
        # The built-in room O2 rules with their on-delays removed, so the test runs in seconds.
        "alarm": [
            {"id": "room-o2-high", "field": "o2_pct", "op": ">", "value": 27.9,
             "hysteresis": 0.3, "severity": "critical", "device_kind": ["room"]},
            {"id": "room-o2-deficient", "field": "o2_pct", "op": "<", "value": 19.5,
             "hysteresis": 0.3, "severity": "critical", "device_kind": ["room"]},
        ],
    }  # fmt: skip
    path.write_bytes(tomli_w.dumps(config).encode())
    return path


def board_reading(seq: int, ts_ms: int, o2_pct: float, rh_pct: float = 30.0) -> dict[str, Any]:
    """One room reading exactly as the firmware encodes it (its formulas, its rounding)."""
    values = [
        o2_pct,
        BARO_KPA,
        19.5,
        rh_pct,
        oxygen.ppo2_kpa(o2_pct, BARO_KPA),
        oxygen.equivalent_altitude_m(o2_pct, BARO_KPA),
    ]
    doc: dict[str, Any] = json.loads(fw_telemetry.encode(1, seq, ts_ms, values))
    return doc


def now_ms() -> int:
    return int(time.time() * 1000)


def publish(mosquitto: Mosquitto, messages: list[tuple[str, Any]]) -> None:
    topics = [f"o2/{SITE}/{device}/telemetry" for device, _ in messages]
    payloads = [json.dumps(doc).encode() for _, doc in messages]
    publish_all(mosquitto, zip(topics, payloads, strict=True), "valid-boards")


def points(influxdb: InfluxDB, device: str, count: int) -> list[dict[str, Any]]:
    query = f"SELECT * FROM room WHERE device = '{device}' ORDER BY time"
    return wait_for_points(influxdb, DB, query, count, timeout_s=30)


def test_extreme_o2_bad_clock_and_bad_field_readings_are_stored_flagged(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB
) -> None:
    cfg = write_config(tmp_path / "gw.toml", mosquitto, influxdb, tmp_path / "state")
    with ChildProcess(o2chain_argv("gateway", "run", "-c", str(cfg)), tmp_path / "gw.log") as gw:
        gw.wait_for_log("MQTT subscribed", timeout_s=30)
        t0 = now_ms()
        hi = [board_reading(1, t0 - 2000, 40.0), board_reading(2, t0 - 1000, 40.0)]
        lo = board_reading(1, t0 - 1000, 5.0)
        assert hi[0]["eq_alt_m"] < -1000 and lo["eq_alt_m"] > 9000  # outside the old schema
        no_boot = board_reading(3, t0 - 500, 24.5)
        del no_boot["boot"]
        skew_ts = t0 + 23 * HOUR_MS
        publish(
            mosquitto,
            [
                ("room-hi", hi),  # a flushed buffer: an array of two
                ("room-lo", lo),
                ("room-skew", board_reading(1, skew_ts, 24.0)),  # a board clock 23 h ahead
                ("room-rh", board_reading(1, t0 - 1000, 24.5, rh_pct=150.0)),
                ("room-rh", [board_reading(2, t0 - 900, 24.6), no_boot]),
            ],
        )
        t_published = now_ms()

        # 40 % and 5 % in Lhasa: stored, with the gateway's own derived values.
        for device, o2, count in (("room-hi", 40.0, 2), ("room-lo", 5.0, 1)):
            for p in points(influxdb, device, count):
                assert p["o2_pct"] == o2 and p.get("invalid") is None, p
                assert p["baro_source"] == "sensor"
                assert p["ppo2_kpa"] == pytest.approx(o2 * BARO_KPA / 100, abs=1e-3)
        (lo_point,) = points(influxdb, "room-lo", 1)
        assert lo_point["eq_alt_m"] > 11_000
        assert all(p["eq_alt_m"] < -1000 for p in points(influxdb, "room-hi", 2))

        # rh 150 %: the reading is stored with its good O2, the humidity flagged, raw kept.
        rh = points(influxdb, "room-rh", 2)
        assert rh[0]["o2_pct"] == 24.5 and rh[0]["rh_pct"] is None
        assert rh[0]["invalid"] == "rh_pct:out_of_range" and rh[0]["rh_pct_raw"] == 150.0
        assert rh[1]["o2_pct"] == 24.6 and rh[1]["seq"] == 2  # the array's good item

        # 23 h ahead: stored at its arrival, the board's stamp and the skew kept.
        (skewed,) = points(influxdb, "room-skew", 1)
        assert t0 <= skewed["time"] <= now_ms()
        assert skewed["ts_board_ms"] == skew_ts and skewed["o2_pct"] == 24.0
        # The skew is the board's stamp minus the arrival time the point was stored at.
        assert skewed["clock_skew_s"] == pytest.approx((skew_ts - skewed["time"]) / 1000, abs=1e-3)
        assert 0 <= 23 * 3600 - skewed["clock_skew_s"] <= (t_published - t0) / 1000 + 5
        # ... so the board's next readings (clock fixed, 29.5 % O2) are judged and stored.
        after = skewed["time"] + 1
        publish(mosquitto, [("room-skew", board_reading(s, after + s, 29.5)) for s in (2, 3)])
        stored = points(influxdb, "room-skew", 3)
        assert [(p["time"], p["o2_pct"]) for p in stored[1:]] == [
            (after + 2, 29.5),
            (after + 3, 29.5),
        ]

        alarms = wait_for_points(influxdb, DB, "SELECT * FROM alarm WHERE state = 'raise'", 5)
        raised = sorted((a["device"], a["rule"]) for a in alarms)
        assert raised == [
            ("room-hi", "room-o2-high"),
            ("room-lo", "room-o2-deficient"),
            ("room-rh", "sensor-fault"),  # the impossible humidity: someone must look
            ("room-skew", "clock-ahead"),  # the board 23 h ahead: its NTP needs fixing
            ("room-skew", "room-o2-high"),
        ]
        gw.stop()
        assert gw.returncode == 0, gw.log_tail()

    # Only the item that could not be a reading is a dead letter, by itself, its index named.
    (letter,) = deadletters(cfg)
    assert letter["reason"] == "missing_field"
    assert "room-rh item 1 of 2" in letter["detail"] and "'boot'" in letter["detail"]
    assert json.loads(letter["payload"]) == no_boot
