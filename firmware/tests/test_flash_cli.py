"""`o2chain firmware config` and `o2chain firmware flash` against a fake board: MicroPython
behind a socat PTY, driven by the real mpremote (a "fake board", standins/README.md)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from o2chain.firmware_cli import device_config
from o2chain.firmware_runner import FIRMWARE_DIR, FirmwareError, find_tool

from .conftest import TESTS_DIR

INVENTORY = FIRMWARE_DIR / "inventory.example.toml"


def test_config_from_inventory(tmp_path: Path) -> None:
    cfg = device_config(INVENTORY, "room-102")
    assert cfg["device"] == "room-102" and cfg["site"] == "lhasa-hotel"
    assert cfg["alarm"] == {"pin": 25, "warn_pin": 26, "o2_high_alarm_pct": 27.5}
    assert cfg["mqtt"]["tls"]["ca_file"] == "/ca.pem"  # deep merge keeps the defaults
    bad = tmp_path / "bad.toml"
    bad.write_text('[defaults]\nsite = "Lhasa Hotel"\n[devices.r1]\nmqtt = { host = "h" }\n')
    with pytest.raises(FirmwareError, match="device r1: site: expected a name"):
        device_config(bad, "r1")
    with pytest.raises(FirmwareError, match="no \\[devices.r9\\]"):
        device_config(bad, "r9")


def test_flash_without_the_boards_ca_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """The example inventory's boards use TLS with /ca.pem: flashing the config alone would
    leave a board that cannot connect, so flash wants the CA (or the provisioned site)."""
    o2chain = str(Path(find_tool("micropython")).parent / "o2chain")
    result = subprocess.run(
        [o2chain, "firmware", "flash", "--port", "/dev/null", "--device", "room-101",
         "--inventory", str(INVENTORY)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--provision DIR" in result.stderr
    missing = subprocess.run(
        [o2chain, "firmware", "flash", "--port", "/dev/null", "--device", "room-101",
         "--provision", str(tmp_path / "nowhere")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and "o2chain provision" in missing.stderr


@pytest.mark.integration
def test_flash_onto_fake_board(tmp_path: Path, firmware_build: Path) -> None:
    board_dir = tmp_path / "board"
    board_dir.mkdir()
    link = tmp_path / "ttyFAKE"
    micropython = find_tool("micropython")
    shim = TESTS_DIR / "fake_board_shim.py"
    socat = subprocess.Popen(
        [
            "socat",
            f"PTY,link={link},raw,echo=0",
            f"EXEC:{micropython} -i {shim} {board_dir},pty,raw,echo=0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not link.exists():
            assert socat.poll() is None and time.monotonic() < deadline, "socat did not start"
            time.sleep(0.05)
        o2chain = str(Path(find_tool("micropython")).parent / "o2chain")
        # The site's secrets come from provisioning: the board's own account, key and CA.
        site = tmp_path / "site"
        provisioned = subprocess.run(
            [o2chain, "provision", "-i", str(INVENTORY), "-o", str(site)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert provisioned.returncode == 0, provisioned.stdout + provisioned.stderr
        result = subprocess.run(
            [
                o2chain,
                "firmware",
                "flash",
                "--port",
                str(link),
                "--device",
                "room-101",
                "--provision",
                str(site),
                "--build",
                str(firmware_build),
                "--resume",
                "--no-reset",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ),
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert (board_dir / "main.py").read_bytes() == (firmware_build / "main.py").read_bytes()
        assert (board_dir / "lib" / "o2" / "app.mpy").exists()
        assert (board_dir / "lib" / "o2core" / "oxygen.mpy").exists()  # the shared core too
        assert not list((board_dir / "lib").rglob("*.py")), "only compiled modules on the board"
        cfg = json.loads((board_dir / "config.json").read_text())
        assert cfg["device"] == "room-101" and cfg["kind"] == "room"
        provisioned_cfg = json.loads((site / "boards" / "room-101" / "config.json").read_text())
        assert cfg["mqtt"]["password"] == provisioned_cfg["mqtt"]["password"]
        assert len(cfg["command_key"]) == 64
        ca_path = cfg["mqtt"]["tls"]["ca_file"].lstrip("/")
        assert (board_dir / ca_path).read_bytes() == (
            site / "boards" / "room-101" / "ca.pem"
        ).read_bytes()
    finally:
        os.killpg(socat.pid, 15)
        socat.wait(5)
