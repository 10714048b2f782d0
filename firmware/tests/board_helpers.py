"""Helpers for the board acceptance tests: a persistent-session MQTT recorder and checks of
what arrived (exactly once per (boot, seq), in order)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from o2base.procs import StartStop
from o2base.services import Mosquitto

if TYPE_CHECKING:
    from o2chain.firmware_runner import BoardRunner

TESTS = Path(__file__).resolve().parent


class Recorder:
    """A paho 2.x subscriber with a persistent session (clean_session=False, QoS 1), so that
    nothing published while it is reconnecting after a broker restart is lost to the test.
    Telemetry arrays are flattened: ``readings`` holds one dict per reading, arrival order."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.messages: list[tuple[str, Any, bool]] = []
        self.readings: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"recorder-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self.client.reconnect_delay_set(1, 1)  # paho takes whole seconds
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.connect(broker.host, broker.port, keepalive=5)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise AssertionError("no SUBACK")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            doc = msg.payload
        with self._cond:
            self.messages.append((msg.topic, doc, bool(msg.retain)))
            if msg.topic.endswith("/telemetry"):
                self.readings.extend(doc if isinstance(doc, list) else [doc])
            self._cond.notify_all()

    def wait(self, what: str, pred: Callable[[], bool], timeout_s: float = 20.0) -> None:
        """Block until ``pred()`` (evaluated under the lock at every message) holds."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self._cond.wait(min(left, 0.5))

    def wait_message(
        self, what: str, pred: Callable[[str, Any, bool], bool], count: int = 1, timeout_s=20.0
    ) -> list[tuple[str, Any, bool]]:
        found: list[tuple[str, Any, bool]] = []

        def enough() -> bool:
            nonlocal found
            found = [m for m in self.messages if pred(*m)]
            return len(found) >= count

        self.wait(what, enough, timeout_s)
        return found

    def seqs(self, boot: int) -> list[int]:
        with self._cond:
            return [r["seq"] for r in self.readings if r.get("boot") == boot]

    def wait_seqs(self, boot: int, upto: int, timeout_s: float = 30.0) -> None:
        """Until every seq 1..upto of ``boot`` arrived."""
        want = set(range(1, upto + 1))
        self.wait(
            f"boot {boot} seq 1..{upto}",
            lambda: want <= {r["seq"] for r in self.readings if r.get("boot") == boot},
            timeout_s,
        )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@contextlib.contextmanager
def powered(board: BoardRunner, rec: Recorder | None = None) -> Iterator[BoardRunner]:
    """``with powered(board, rec):`` starts the board (set its simulated world up before);
    afterwards its power is pulled (SIGKILL: nothing to wait for) and the recorder closed."""
    try:
        board.start()
        yield board
    finally:
        board.kill()
        if rec is not None:
            rec.close()


def check_exactly_once_in_order(seqs: list[int], upto: int) -> int:
    """Every seq 1..upto present; first arrivals strictly increasing (in order). Duplicates
    (QoS 1 redelivery after a lost PUBACK) are allowed -- the gateway drops them on
    (boot, seq) -- and returned as a count."""
    first: list[int] = []
    seen: set[int] = set()
    for s in seqs:
        if s not in seen:
            seen.add(s)
            first.append(s)
    missing = sorted(set(range(1, upto + 1)) - seen)
    assert not missing, f"missing seqs: {missing[:20]} ({len(missing)})"
    assert first == sorted(first), f"out of order: {first}"
    return len(seqs) - len(first)


class SerialBoard(StartStop):
    """An emulated board behind a serial port, as a technician meets one: a socat PTY at
    ``link`` whose far side is MicroPython (the unix port) with the board's filesystem at
    ``board_dir`` and the simulated sensors of ``config`` (a ZE03 by default). At first it
    holds no firmware (a REPL, as after installing MicroPython); ``machine.reset()`` restarts
    the interpreter, which then boots /boot.py and /main.py like an ESP32 at power-on."""

    def __init__(self, work_dir: Path, config: dict[str, Any], o2_pct: float = 24.5) -> None:
        from o2chain.firmware_runner import BoardRunner

        self.work_dir = work_dir
        self.board_dir = work_dir / "fs"
        self.link = work_dir / "ttyBOARD"
        self._pidfile = work_dir / "power.pid"
        self.hardware = BoardRunner(config, work_dir / "hw", o2_pct=o2_pct)
        self._socat: subprocess.Popen[bytes] | None = None

    def start(self) -> SerialBoard:
        from o2chain.firmware_runner import find_tool

        self.board_dir.mkdir(parents=True, exist_ok=True)
        standins = self.hardware.start_hardware()
        shutil.copy2(TESTS / "serial_board.py", standins / "serial_board.py")
        power = [sys.executable, str(TESTS / "serial_board_power.py"), find_tool("micropython"),
                 str(standins), str(self.board_dir), str(self._pidfile)]  # fmt: skip
        self._socat = subprocess.Popen(
            ["socat", f"PTY,link={self.link},raw,echo=0",
             f"EXEC:{' '.join(power)},pty,setsid,ctty,echo=0,onlcr=0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not (self.link.exists() and self._pidfile.exists()):
            if self._socat.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the serial board did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(self._pidfile.read_text()), signal.SIGTERM)
        if self._socat is not None:
            with contextlib.suppress(OSError):
                os.killpg(self._socat.pid, signal.SIGTERM)
            self._socat.wait(10)
        self.hardware.kill()
