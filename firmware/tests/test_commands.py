"""Commands on o2/{site}/{device}/cmd with acks on .../cmd/ack, end to end on the emulated
board: good commands change the running board (and persist), bad ones get an error ack and
never crash it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from o2chain.firmware_runner import BoardRunner
from o2chain.services import Mosquitto

from .board_helpers import Recorder
from .test_acceptance import PREFIX, board_config

pytestmark = pytest.mark.integration


def send(broker: Mosquitto, payload: str | bytes) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish(PREFIX + "cmd", payload, qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def ack(rec: Recorder, cmd_id: str | None, count: int = 1) -> dict[str, Any]:
    found = rec.wait_message(
        f"ack {cmd_id}",
        lambda t, d, r: t.endswith("/cmd/ack") and isinstance(d, dict) and d.get("id") == cmd_id,
        count,
    )
    return found[count - 1][1]


def test_commands(tmp_path: Path, mosquitto: Mosquitto) -> None:
    rec = Recorder(mosquitto, PREFIX + "#")
    cfg = board_config(mosquitto)
    board = BoardRunner(cfg, tmp_path / "board", o2_pct=22.0)
    try:
        board.start()
        board.wait_for_log(r"mqtt: connected")
        rec.wait_seqs(1, 2)

        send(mosquitto, json.dumps({"id": "1", "cmd": "report_config"}))
        doc = ack(rec, "1")
        assert doc["ok"] and doc["result"]["site"] == "lhasa-hotel", doc

        send(mosquitto, b"not json {")
        doc = ack(rec, None)
        assert not doc["ok"] and doc["error"], doc

        send(mosquitto, json.dumps({"id": "3", "cmd": "explode"}))
        assert "unknown command" in ack(rec, "3")["error"]

        send(mosquitto, json.dumps({"id": "4", "cmd": "set_interval", "interval_s": "fast"}))
        assert ack(rec, "4")["error"].startswith("interval_s: expected float")

        send(mosquitto, json.dumps({"id": "5", "cmd": "set_interval", "interval_s": 0.5}))
        assert ack(rec, "5")["result"] == {"interval_s": 0.5}

        send(mosquitto, json.dumps({"id": "6", "cmd": "set_thresholds", "thresholds": {"x": 1}}))
        assert "unknown setting" in ack(rec, "6")["error"]
        thresholds = {"o2_high_alarm_pct": 23.0, "o2_high_warn_pct": 22.5}
        send(mosquitto, json.dumps({"id": "7", "cmd": "set_thresholds", "thresholds": thresholds}))
        assert ack(rec, "7")["result"]["o2_high"] == 23.0

        # Fresh-air calibration of the galvanic cell: it reads 22.0 in "outdoor air".
        send(mosquitto, json.dumps({"id": "8", "cmd": "calibrate", "mode": "fresh_air"}))
        doc = ack(rec, "8")
        # The simulated cell has 0.05 % noise at 0.1 % resolution: one calibration sample and
        # one later reading may each be 0.1 % off.
        assert doc["ok"] and abs(doc["result"]["gain"] * 22.0 - 20.95) < 0.15, doc
        assert abs(doc["result"]["cal_kpa"] - 64.5) < 0.2  # calibration pressure stored
        seq = max(rec.seqs(1))
        rec.wait_seqs(1, seq + 3)
        later = [r for r in rec.readings if r["boot"] == 1 and r["seq"] > seq + 1]
        assert abs(later[-1]["o2_pct"] - 20.95) < 0.25, later[-1]
        send(mosquitto, json.dumps({"id": "9", "cmd": "calibrate", "mode": "span"}))
        assert "ref_pct" in ack(rec, "9")["error"]

        send(mosquitto, json.dumps({"id": "10", "cmd": "reboot"}))
        assert ack(rec, "10")["ok"]
        board.wait_for_log(r"reboot \(command\)")
        board._proc.wait(10)  # type: ignore[union-attr]  # the stand-in reset exits 75
        assert board.returncode == 75
        board.start()  # "power comes back": settings and calibration persisted
        board.wait_for_log(r"mqtt: connected \(boot 2")
        send(mosquitto, json.dumps({"id": "11", "cmd": "report_config"}))
        doc = ack(rec, "11")
        assert doc["result"]["interval_s"] == 0.5
        assert doc["result"]["alarm.o2_high_alarm_pct"] == 23.0
        assert "out of memory" not in json.dumps(doc)
        board.stop()
    finally:
        board.kill()
        rec.close()
