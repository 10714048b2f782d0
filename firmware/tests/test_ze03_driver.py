"""The async ZE03 driver, compiled, on `micropython`, against a pty: a simulated module that
answers, one that stays silent (timeout -> quality flag, no value), and garbage on the wire."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from o2chain.firmware_runner import FIRMWARE_DIR, find_tool
from simulators.wire.ze03 import ZE03Responder, reply_frame

from .conftest import TESTS_DIR

Q_TIMEOUT, Q_CHECKSUM = 0x01, 0x02


@pytest.fixture
def run_driver(
    firmware_build: Path, tmp_path: Path
) -> Iterator[Callable[[str, int], list[tuple[float | None, int, int]]]]:
    def run(pty_path: str, reads: int) -> list[tuple[float | None, int, int]]:
        sim = tmp_path / "sim.json"
        sim.write_text(json.dumps({"uart": {"2": pty_path}}))
        env = dict(os.environ)
        env["MICROPYPATH"] = f"{FIRMWARE_DIR / 'standins'}:{firmware_build / 'lib'}:.frozen"
        result = subprocess.run(
            [find_tool("micropython"), str(TESTS_DIR / "mpy_ze03_driver.py"), str(sim), str(reads)],
            capture_output=True,
            text=True,
            timeout=20,
            env=env,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return [
            (None if m[1] == "None" else float(m[1]), int(m[2]), int(m[3]))
            for m in re.finditer(r"^READ (\S+) (\d+) (\d+)$", result.stdout, re.M)
        ]

    yield run


def test_reads_simulated_module(run_driver: Callable[..., list]) -> None:
    with ZE03Responder(o2_pct=24.5, seed=3, noise_pct=0.0) as sim:
        reads = run_driver(sim.port_path, 3)
    assert [(o2, q) for o2, q, _ in reads] == [(24.5, 0)] * 3
    assert sim.queries == 3


def test_silent_module_is_a_timeout_not_a_zero(run_driver: Callable[..., list]) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        reads = run_driver(os.ttyname(slave), 2)
    finally:
        os.close(master)
        os.close(slave)
    assert [(o2, q) for o2, q, _ in reads] == [(None, Q_TIMEOUT)] * 2
    assert all(280 <= ms < 1000 for _, _, ms in reads)


def test_garbage_and_bad_checksum(run_driver: Callable[..., list]) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    good = reply_frame(21.0)
    answers = (b"\x00\x17\xff" + good, good[:8] + bytes([good[8] ^ 1]))

    def module() -> None:  # answer the n-th query with answers[n]
        seen, answered = b"", 0
        while answered < len(answers):
            try:
                seen += os.read(master, 64)
            except OSError:  # the board side closed the pty
                return
            while seen.count(b"\xff\x01\x86") > answered:
                os.write(master, answers[answered])
                answered += 1

    thread = threading.Thread(target=module, daemon=True)
    thread.start()
    try:
        reads = run_driver(os.ttyname(slave), 2)
    finally:
        os.close(master)
        os.close(slave)
    assert [(o2, q) for o2, q, _ in reads] == [(21.0, 0), (None, Q_CHECKSUM)]
