"""Config errors and crash loops: the board says why on the console and on the retained
status topic instead of crash-looping silently."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from o2base.services import Mosquitto, free_ports
from o2chain.firmware_runner import FIRMWARE_DIR, BoardRunner

from .board_helpers import Recorder, powered
from .conftest import TESTS_DIR, load_firmware_module
from .test_acceptance import DEVICE, PREFIX, SITE, board_config
from .test_commands import ack, signed

pytestmark = pytest.mark.integration
state = load_firmware_module("o2.state")


def test_config_error_is_reported_on_status(tmp_path: Path, mosquitto: Mosquitto) -> None:
    rec = Recorder(mosquitto, PREFIX + "#")
    cfg = board_config(mosquitto, interval_s="fast")
    board = BoardRunner(cfg, tmp_path / "board")
    with powered(board, rec):
        board.wait_for_log(r"config error: interval_s: expected float, got 'fast'")
        status = rec.wait_message("config_error", lambda t, d, r: t.endswith("/status"))[0]
        assert status[1]["state"] == "config_error", status
        assert "interval_s" in status[1]["error"]
        assert "reading" not in board.log_text()


def test_crash_loop_enters_safe_mode_and_reboot_clears_it(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    rec = Recorder(mosquitto, PREFIX + "#")
    key = os.urandom(32).hex()
    # Four unstable boots already counted: this one is the fifth (safe_mode_resets = 5).
    files = {"resets": state.encode_counter(4).encode()}
    cfg = board_config(mosquitto, command_key=key)
    board = BoardRunner(cfg, tmp_path / "board", files=files)
    with powered(board, rec):
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


def test_safe_mode_loads_neither_the_application_nor_its_spool(
    tmp_path: Path,
    firmware_build: Path,
    run_micropython: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """Safe mode is what runs when the application cannot: it must load only the network side
    (wiring's MQTT client, auth for a command), never o2.app and its spool, alarm and formulas
    (app and wiring used to import each other, so make_mqtt pulled the application in). On the
    unix port at the board's 110K heap, with the compiled firmware on a board directory."""
    board = tmp_path / "board"
    shutil.copytree(firmware_build / "lib", board / "lib")
    for name in ("machine.py", "network.py"):  # the board's hardware modules, stood in
        shutil.copy2(FIRMWARE_DIR / "standins" / name, board / name)
    cfg = {
        "site": SITE,
        "device": DEVICE,
        "site_altitude_m": 3650,
        # The config error that sends the board to safe mode: with an unreadable threshold
        # the local alarm cannot run either (a lesser error keeps it armed, without telemetry).
        "alarm": {"o2_high_alarm_pct": "27"},
        "command_key": os.urandom(32).hex(),
        "mqtt": {"host": "127.0.0.1", "port": free_ports(1)[0]},  # nobody listens
    }
    (board / "config.json").write_text(json.dumps(cfg))
    script = TESTS_DIR / "safemode_imports.py"
    result = run_micropython(script, str(board), heap="110K")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "config error: alarm.o2_high_alarm_pct" in out and "prepare: None" in out, out
    assert "ack: c1 False bad mac" in out, out  # the command was judged (and refused)
    found = re.search(r"^modules: (.*)$", out, re.M)
    assert found, out
    modules = set(found.group(1).split())
    assert {"o2.safemode", "o2.wiring", "o2.mqtt", "o2.auth"} <= modules, modules
    application = {"o2.app", "o2.spool", "o2.alarm", "o2.telemetry", "o2core.oxygen"}
    assert not modules & application, sorted(modules & application)
