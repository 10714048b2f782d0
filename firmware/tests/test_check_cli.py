"""`o2chain firmware check` says exactly what is missing: no status, a config_error status with
its reason, or online without a reading (the firmware on `micropython`, a real Mosquitto)."""

from __future__ import annotations

from pathlib import Path

import pytest

from o2base.services import Mosquitto
from o2chain.firmware_runner import BoardRunner

from .test_flash_cli import o2chain_cmd, plain_inventory

pytestmark = pytest.mark.integration


def check(inventory: Path, timeout_s: str) -> tuple[int, str, str]:
    done = o2chain_cmd(
        "firmware", "check", "--device", "room-9", "--inventory", str(inventory),
        "--timeout", timeout_s,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert len(lines) <= 1 and "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout, lines[0] if lines else ""


def test_check_without_a_board_says_no_status(tmp_path: Path, mosquitto: Mosquitto) -> None:
    code, _, err = check(plain_inventory(tmp_path / "site.toml", mosquitto), "1")
    assert code == 1
    assert err.startswith("o2chain firmware check: no status from bench/room-9 on mqtt://")
    assert "is the board powered, on WiFi, and is its mqtt.host this broker?" in err


def check_a_running_board(
    tmp_path: Path, mosquitto: Mosquitto, logged: str, timeout_s: str, **config: int
) -> tuple[int, str, str]:
    """`firmware check` while room-9 runs (``config`` added to its config.json), once its log
    says ``logged``."""
    inventory = plain_inventory(tmp_path / "site.toml", mosquitto)
    cfg = {"site": "bench", "device": "room-9", "site_altitude_m": 3650, **config,
           "mqtt": {"host": mosquitto.host, "port": mosquitto.port}}  # fmt: skip
    with BoardRunner(cfg, tmp_path / "board") as board:
        board.wait_for_log(logged)
        return check(inventory, timeout_s)


def test_check_reports_the_boards_config_error(tmp_path: Path, mosquitto: Mosquitto) -> None:
    code, _, err = check_a_running_board(
        tmp_path, mosquitto, "local alarm armed", "20", intervall_s=1
    )
    assert code == 1
    assert err == (
        "o2chain firmware check: bench/room-9 reports config_error: config error: intervall_s: "
        "unknown key (did you mean interval_s?) (local alarm armed); fix the config and flash again"
    )


def test_check_online_without_a_reading(tmp_path: Path, mosquitto: Mosquitto) -> None:
    code, out, err = check_a_running_board(
        tmp_path, mosquitto, "mqtt: connected", "2", interval_s=3600
    )
    assert code == 1
    assert "status    online, firmware" in out
    assert err == "o2chain firmware check: bench/room-9 is online but sent no reading within 2 s"
