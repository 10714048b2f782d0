"""The gateway through real parts: Mosquitto, InfluxDB and a Modbus simulator, as processes."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from gateway.tests.conftest import deadletters, publish_all
from o2base.procs import ChildProcess, o2chain_argv
from o2base.services import InfluxDB, Mosquitto
from o2chain.testing import wait_for_points, write_skeleton_gateway_config

pytestmark = pytest.mark.integration


def test_modbus_and_mqtt_readings_reach_influxdb(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, concentrator_sim: str
) -> None:
    cfg = write_skeleton_gateway_config(
        tmp_path / "gw.toml", mosquitto, influxdb, concentrator_sim, tmp_path / "st"
    )
    with ChildProcess(o2chain_argv("gateway", "run", "-c", str(cfg)), tmp_path / "gw.log") as gw:
        gw.wait_for_log("MQTT subscribed")
        ts = int(time.time() * 1000) - 5000
        good = {
            "v": 1,
            "boot": 3,
            "seq": 17,
            "ts": ts,
            "o2_pct": 24.6,
            "baro_kpa": 65.1,
            "ppo2_kpa": 16.01,
            "temp_c": 19.5,
            "rh_pct": 31.0,
        }
        bad = {"v": 1, "boot": 3, "seq": 18, "ts": ts + 1, "o2_pct": "high"}
        topic = "o2/lhasa-hotel/room-101/telemetry"
        payloads = [json.dumps(good).encode(), json.dumps(bad).encode(), b"\xff not json"]
        publish_all(mosquitto, [(topic, p) for p in payloads], "test-board")

        rooms = wait_for_points(
            influxdb, "o2test", "SELECT * FROM room WHERE device = 'room-101' ORDER BY time", 2
        )
        assert len(rooms) == 2, rooms  # the garbage never became data
        room, flagged = rooms
        assert room["site"] == "lhasa-hotel" and room["room"] == "room-101"
        assert room["o2_pct"] == pytest.approx(24.6)
        assert room["ppo2_kpa"] == pytest.approx(24.6 * 65.1 / 100, abs=1e-4)  # the gateway's
        assert room["seq"] == 17 and room["boot"] == 3
        assert room["time"] == ts  # the board's timestamp, ms precision kept
        # A reading with a bad field is stored, the field flagged (docs/contracts.md).
        assert flagged["seq"] == 18 and flagged["invalid"] == "o2_pct:bad_type"
        assert flagged["o2_pct"] is None and flagged["time"] == ts + 1

        conc = wait_for_points(
            influxdb, "o2test", "SELECT * FROM concentrator WHERE device = 'conc-1'", 2
        )
        for point in conc:
            assert point["source"] == "modbus"
            assert 85.0 < float(point["purity_pct"]) < 96.0
            assert 3.0 < float(point["flow_lpm"]) < 5.0
            assert point["state"] is True

        gw.stop()
        assert gw.returncode == 0, gw.log_tail()

    letters = deadletters(cfg)
    assert [dl["reason"] for dl in letters] == ["not_json"]
    assert "room-101" in letters[0]["detail"]
    assert letters[0]["topic"] == "o2/lhasa-hotel/room-101/telemetry"


def test_gateway_check_names_the_bad_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[influx]\nurl = "ftp://x"\nbatch_size = 0\n')
    result = subprocess.run(
        o2chain_argv("gateway", "check", "-c", str(cfg)), capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "influx.url" in result.stderr and "http://host:port" in result.stderr
    assert "influx.batch_size" in result.stderr
