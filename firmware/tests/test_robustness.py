"""Config errors and crash loops: the board says why on the console and on the retained
status topic instead of crash-looping silently."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from o2base.services import Mosquitto
from o2chain.firmware_runner import BoardRunner

from .board_helpers import Recorder
from .conftest import load_firmware_module
from .test_acceptance import PREFIX, board_config
from .test_commands import ack, signed

pytestmark = pytest.mark.integration
state = load_firmware_module("o2.state")


def test_config_error_is_reported_on_status(tmp_path: Path, mosquitto: Mosquitto) -> None:
    rec = Recorder(mosquitto, PREFIX + "#")
    cfg = board_config(mosquitto, interval_s="fast")
    board = BoardRunner(cfg, tmp_path / "board")
    try:
        board.start()
        board.wait_for_log(r"config error: interval_s: expected float, got 'fast'")
        status = rec.wait_message("config_error", lambda t, d, r: t.endswith("/status"))[0]
        assert status[1]["state"] == "config_error", status
        assert "interval_s" in status[1]["error"]
        assert "reading" not in board.log_text()
    finally:
        board.kill()
        rec.close()


def test_crash_loop_enters_safe_mode_and_reboot_clears_it(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    rec = Recorder(mosquitto, PREFIX + "#")
    key = os.urandom(32).hex()
    # Four unstable boots already counted: this one is the fifth (safe_mode_resets = 5).
    files = {"resets": state.encode_counter(4).encode()}
    cfg = board_config(mosquitto, command_key=key)
    board = BoardRunner(cfg, tmp_path / "board", files=files)
    try:
        board.start()
        board.wait_for_log(r"safe mode: 5 rapid resets")
        status = rec.wait_message("safe_mode", lambda t, d, r: t.endswith("/status"))[0][1]
        assert status["state"] == "safe_mode", status
        # Safe mode obeys only a signed reboot: unsigned and forged ones are refused.
        rec.client.publish(PREFIX + "cmd", json.dumps({"cmd": "reboot"}), qos=1)
        forged = signed(os.urandom(32).hex(), "reboot", {}, 5, "forged")
        rec.client.publish(PREFIX + "cmd", forged, qos=1)
        assert ack(rec, "forged")["error"] == "bad mac"
        assert "reboot (command" not in board.log_text()
        rec.client.publish(PREFIX + "cmd", signed(key, "reboot", {}, 6, "real"), qos=1)
        assert ack(rec, "real")["ok"] is True
        board.wait_for_log(r"reboot \(command, safe mode\)")
        assert (board.board_dir / "resets").read_text().split()[0] == "0"
    finally:
        board.kill()
        rec.close()
