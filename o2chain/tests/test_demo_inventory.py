"""`o2chain demo --inventory FILE`: a real board from the user's inventory joins the demo. The
demo provisions it (its own broker account, CA and config.json), lists it in the gateway.toml it
writes at start, and prints how to flash it; the firmware on the MicroPython interpreter, run
with that provisioned config, is then stored by the demo's gateway, not dead-lettered."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from o2base.procs import ChildProcess, o2chain_argv
from o2chain.firmware_runner import BoardRunner

pytestmark = pytest.mark.integration

INVENTORY = """\
[defaults]
site = "bench"
site_altitude_m = 3650
interval_s = 1

[devices.bench-1]
kind = "room"
alarm = { pin = 25, warn_pin = 26 }
"""


def test_inventory_board_joins_the_demo_and_is_stored(tmp_path: Path) -> None:
    inventory = tmp_path / "bench.toml"
    inventory.write_text(INVENTORY)
    data = tmp_path / "data"
    demo = ChildProcess(
        o2chain_argv(
            "demo", "--data-dir", str(data), "--inventory", str(inventory), "--duration", "120",
            "--http-port", "0", "--mqtt-port", "0", "--influx-port", "0", "--no-auto-ack",
        ),
        tmp_path / "demo.log",
    ).start()  # fmt: skip
    board = None
    try:
        flash = demo.wait_for_log(r"bench-1 +from .*: flash it with `([^`]+)`", timeout_s=150)
        provision = data / "provision"
        assert flash.group(1) == (
            f"o2chain firmware flash --port PORT --device bench-1 --provision {provision}"
        )
        influx = demo.wait_for_log(r"InfluxDB +(http://\S+)", timeout_s=10).group(1)
        gateway_toml = (data / "gateway.toml").read_text()
        assert '"bench-1"' in gateway_toml and '"bench"' in gateway_toml  # device and its site

        files = provision / "boards" / "bench-1"
        cfg = json.loads((files / "config.json").read_text())
        assert cfg["mqtt"]["username"] == "bench/bench-1" and cfg["mqtt"]["tls"]["ca_file"]
        board = BoardRunner(
            cfg, tmp_path / "board", files={"ca.pem": (files / "ca.pem").read_bytes()}
        )
        board.start()
        board.wait_for_log(r"mqtt: connected", timeout_s=60)
        board.wait_for_log(r"^reading seq=5 ", timeout_s=30)

        query = "SELECT count(o2_pct) FROM room WHERE device = 'bench-1'"
        deadline = time.monotonic() + 60
        stored = 0
        while stored < 3:
            assert time.monotonic() < deadline, f"{stored} readings of bench-1 stored"
            answer = requests.get(
                f"{influx}/query", params={"db": "o2chain", "q": query}, timeout=5
            ).json()
            series = answer["results"][0].get("series")
            stored = int(series[0]["values"][0][1]) if series else 0
            if stored < 3:
                time.sleep(0.5)  # InfluxDB has no change feed to wait on
    finally:
        if board is not None:
            board.stop()
        demo.signal(signal.SIGINT)  # Ctrl-C: the demo stops everything it started
        try:
            code = demo.wait(90)
        finally:
            demo.stop()
    assert code == 0, demo.log_tail()
    # Nothing of the board was refused: no dead letter names it.
    letters = subprocess.run(
        o2chain_argv("gateway", "deadletters", "list", "-c", str(data / "gateway.toml")),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert letters.returncode == 0, letters.stderr
    assert "bench-1" not in letters.stdout, letters.stdout[-2000:]


def test_inventory_mistakes_are_said_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(INVENTORY.replace("pin = 25", "pin = 34"))
    clash = tmp_path / "clash.toml"
    clash.write_text(INVENTORY.replace("bench-1", "room-401"))
    for path, words in (
        (bad, "device bench-1: alarm.pin: expected a GPIO that can drive an output"),
        (clash, "room-401 already in the demo's scenario"),
        (tmp_path / "none.toml", "No such file"),
    ):
        done = subprocess.run(
            o2chain_argv("demo", "--inventory", str(path), "--data-dir", str(tmp_path / "d")),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and words in lines[0], done.stderr
        assert not (tmp_path / "d").exists()
