"""`o2chain firmware config` and `o2chain firmware flash` against a fake board: MicroPython
behind a socat PTY, driven by the real mpremote (a "fake board", standins/README.md)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from o2base.procs import wait_until
from o2base.services import Mosquitto
from o2chain.firmware_cli import device_config
from o2chain.firmware_runner import FIRMWARE_DIR, FirmwareError, find_tool

from .board_helpers import SerialBoard
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
        wait_until(lambda: link.exists() or socat.poll() is not None, 10, f"socat to make {link}",
                   error=AssertionError)  # fmt: skip
        assert socat.poll() is None, "socat did not start"
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


# -- the technician's path: ports, flash (pre-flight, reset, console), check -----------------


def o2chain_cmd(*args: str, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    from o2base.procs import o2chain_argv

    return subprocess.run(
        o2chain_argv(*args), capture_output=True, text=True, timeout=timeout_s, check=False
    )


def plain_inventory(path: Path, broker: Mosquitto, device: str = "room-9", **extra: str) -> Path:
    """A one-board site on a plain broker (no TLS), no NTP, a reading every second."""
    lines = [
        "[defaults]",
        'site = "bench"',
        "site_altitude_m = 3650",
        "interval_s = 1",
        "health_interval_s = 5",
        f'mqtt = {{ host = "{broker.host}", port = {broker.port}, keepalive_s = 5 }}',
        'ntp = { host = "" }',
        f"[devices.{device}]",
        'kind = "room"',
        "alarm = { pin = 25, warn_pin = 26 }",
        *[f"{k} = {v}" for k, v in extra.items()],
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.integration
def test_ports_shows_micropython_and_its_version(tmp_path: Path) -> None:
    with SerialBoard(tmp_path, {"site": "s", "device": "d", "site_altitude_m": 0}) as board:
        done = o2chain_cmd("firmware", "ports", str(board.link))
        assert done.returncode == 0, done.stderr
        line = next(x for x in done.stdout.splitlines() if x.startswith(str(board.link)))
        assert "[MicroPython 1.29.0 (linux" in line, done.stdout
        quiet = o2chain_cmd("firmware", "ports", "--no-probe", str(board.link))
        assert str(board.link) in quiet.stdout and "MicroPython" not in quiet.stdout


@pytest.mark.integration
def test_flash_checks_the_board_copies_resets_and_shows_its_console(
    tmp_path: Path, firmware_build: Path, mosquitto: Mosquitto
) -> None:
    inventory = plain_inventory(tmp_path / "site.toml", mosquitto)
    cfg = device_config(inventory, "room-9")
    with SerialBoard(tmp_path / "serial", cfg) as board:
        # A setting a signed command left behind: cleared, the new config.json is what runs.
        (board.board_dir / "settings.json").write_text('{"interval_s": 600}')
        done = o2chain_cmd(
            "firmware", "flash", "--port", str(board.link), "--device", "room-9",
            "--inventory", str(inventory), "--build", str(firmware_build), "--resume",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr
        assert f"board on {board.link}: MicroPython 1.29.0" in done.stdout
        assert "board settings cleared" in done.stdout
        assert not (board.board_dir / "settings.json").exists()
        console = [x for x in done.stdout.splitlines() if x.startswith("  | ")]
        assert any("o2chain firmware" in x and "boot 1" in x for x in console), done.stdout
        assert console[-1].startswith("  | mqtt: connected"), done.stdout
        assert json.loads((board.board_dir / "config.json").read_text())["device"] == "room-9"

        # The board now runs: `check` shows its retained status and its first reading.
        checked = o2chain_cmd(
            "firmware", "check", "--device", "room-9", "--inventory", str(inventory),
            "--timeout", "20",
        )  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "status    online, firmware" in checked.stdout and "boot 1" in checked.stdout
        reading = next(x for x in checked.stdout.splitlines() if "reading" in x)
        assert "o2_pct 24." in reading and "baro_kpa 64." in reading, reading


@pytest.mark.integration
def test_flash_onto_a_port_where_no_micropython_answers(
    tmp_path: Path, firmware_build: Path
) -> None:
    inventory = tmp_path / "site.toml"
    inventory.write_text(
        '[defaults]\nsite = "s"\nsite_altitude_m = 0\nmqtt = { host = "127.0.0.1" }\n[devices.d]\n'
    )
    silent, other = tmp_path / "ttySILENT", tmp_path / "ttyOTHER"
    socat = subprocess.Popen(
        ["socat", f"PTY,link={silent},raw,echo=0", f"PTY,link={other},raw,echo=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: silent.exists() or socat.poll() is not None, 10,
                   f"socat to make {silent}", error=AssertionError)  # fmt: skip
        assert socat.poll() is None, "socat did not start"
        done = o2chain_cmd(
            "firmware", "flash", "--port", str(silent), "--device", "d",
            "--inventory", str(inventory), "--build", str(firmware_build),
        )  # fmt: skip
    finally:
        os.killpg(socat.pid, 15)
        socat.wait(5)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        f"o2chain firmware flash: no MicroPython answers on {silent}: install it with --erase "
        "--micropython FILE (ESP32_GENERIC .bin from micropython.org)"
    ]


def test_flash_refuses_a_build_that_is_not_one(tmp_path: Path) -> None:
    inventory = tmp_path / "site.toml"
    inventory.write_text(
        '[defaults]\nsite = "s"\nsite_altitude_m = 0\nmqtt = { host = "127.0.0.1" }\n[devices.d]\n'
    )
    (tmp_path / "half" / "lib").mkdir(parents=True)
    (tmp_path / "half" / "main.py").write_text("")
    done = o2chain_cmd(
        "firmware", "flash", "--port", "/dev/null", "--device", "d", "--inventory",
        str(inventory), "--build", str(tmp_path / "half"),
    )  # fmt: skip
    assert done.returncode == 2
    assert "not a complete firmware build (no boot.py, lib/o2/__init__.mpy" in done.stderr


def test_esptool_commands_exist_and_are_called_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unit test (no chip here): the esptool we depend on has the commands flash uses, and
    --erase --micropython calls erase-flash, then write-flash at the chip's offset."""
    import argparse
    import sys

    from o2chain import firmware_cli

    for command in ("erase-flash", "write-flash"):
        helped = subprocess.run(
            [sys.executable, "-m", "esptool", command, "--help"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert helped.returncode == 0 and "Usage" in helped.stdout, helped.stderr
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(firmware_cli.subprocess, "run", fake_run)
    monkeypatch.setattr("o2chain.board_serial.probe", lambda *a, **k: object())
    image = tmp_path / "ESP32_GENERIC.bin"
    image.write_bytes(b"\xe9" * 16)
    for chip, offset in (("esp32", "0x1000"), ("esp32s3", "0x0")):
        calls.clear()
        args = argparse.Namespace(port="/dev/ttyUSB0", micropython=image, chip=chip)
        firmware_cli.install_micropython(args)
        assert [c[3:] for c in calls] == [
            ["--chip", chip, "--port", "/dev/ttyUSB0", "erase-flash"],
            ["--chip", chip, "--port", "/dev/ttyUSB0", "--baud", "460800", "write-flash", "-z",
             offset, str(image)],
        ]  # fmt: skip


def test_list_ports_shows_description_and_usb_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit test: what pyserial's list_ports reports becomes one row per port (USB ids as
    VID:PID in hex, no ids for a plain UART, pyserial's "n/a" dropped)."""
    from serial.tools import list_ports
    from serial.tools.list_ports_common import ListPortInfo

    from o2chain.board_serial import PortInfo
    from o2chain.board_serial import list_ports as o2_list_ports

    usb = ListPortInfo("/dev/ttyUSB0", skip_link_detection=True)
    usb.description, usb.vid, usb.pid = "CP2102 USB to UART Bridge Controller", 0x10C4, 0xEA60
    uart = ListPortInfo("/dev/ttyAMA0", skip_link_detection=True)
    uart.description = "n/a"
    monkeypatch.setattr(list_ports, "comports", lambda: [usb, uart])
    assert o2_list_ports() == [
        PortInfo("/dev/ttyAMA0", "", ""),
        PortInfo("/dev/ttyUSB0", "CP2102 USB to UART Bridge Controller", "10c4:ea60"),
    ]
