"""Talking to a board on its serial port: which ports there are, whether MicroPython answers
(and which), a reset, and the console after it. Used by ``o2chain firmware ports`` and
``o2chain firmware flash``.

MicroPython's raw REPL (Ctrl-A) is the protocol: the code sent ends with Ctrl-D, the board
answers ``OK``, the output, Ctrl-D, the error output, Ctrl-D, ``>``. Every wait here is
bounded by a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

BAUD = 115200
RAW_REPL_BANNER = b"raw REPL; CTRL-B to exit"
# One line, no names left behind: name|version|machine|mpy (sys.implementation._mpy: the
# .mpy version in the low byte, its sub-version in bits 8-9).
_PROBE = (
    b"import sys;i=sys.implementation;print(i.name,'.'.join([str(x) for x in i.version[:3]]),"
    b"getattr(i,'_machine',''),getattr(i,'_mpy',0),sep='|');del i"
)


@dataclass(frozen=True)
class PortInfo:
    device: str
    description: str
    vid_pid: str  # "10c4:ea60", "" when the port has no USB ids


@dataclass(frozen=True)
class MicroPython:
    name: str
    version: str
    machine: str
    mpy: int  # sys.implementation._mpy, 0 when the board does not say

    @property
    def mpy_version(self) -> tuple[int, int]:
        """(.mpy version, sub-version) the board loads; (0, 0) if it does not say."""
        return (self.mpy & 0xFF, (self.mpy >> 8) & 3)

    def describe(self) -> str:
        return f"MicroPython {self.version} ({self.machine})" if self.machine else self.version


class BoardSerialError(RuntimeError):
    """The port cannot be opened or the board does not answer as expected."""


def list_ports() -> list[PortInfo]:
    """The serial ports pyserial finds (USB adapters, on-board USB), sorted by device."""
    from serial.tools import list_ports as lp

    found = []
    for p in lp.comports():
        vid_pid = f"{p.vid:04x}:{p.pid:04x}" if p.vid is not None and p.pid is not None else ""
        description = p.description if p.description and p.description != "n/a" else ""
        found.append(PortInfo(p.device, description, vid_pid))
    return sorted(found, key=lambda p: p.device)


def open_port(port: str) -> Any:
    """The port at 115200 8N1, DTR and RTS released (an ESP32 dev board's auto-reset circuit
    then leaves the chip running). Raises BoardSerialError with the OS's reason."""
    import serial

    s = serial.Serial()
    s.port = port
    s.baudrate = BAUD
    s.timeout = 0.05
    s.dtr = False
    s.rts = False
    try:
        s.open()
    except (OSError, serial.SerialException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise BoardSerialError(f"cannot open {port}: {reason}") from None
    return s


def _read_until(s: Any, marker: bytes, deadline: float) -> bytes | None:
    data = b""
    while time.monotonic() < deadline:
        data += s.read(256)
        if marker in data:
            return data
    return None


def _raw_repl(s: Any, deadline: float) -> bool:
    """Wait for the raw REPL's banner and its prompt (after Ctrl-A was sent)."""
    seen = _read_until(s, RAW_REPL_BANNER, deadline)
    if seen is None:
        return False
    return seen.endswith(b">") or _read_until(s, b">", deadline) is not None


def probe(port: str, timeout_s: float = 3.0, restart: bool = True) -> MicroPython | None:
    """Which MicroPython answers on ``port`` (None: nothing answered the raw REPL in time).

    Interrupts what the board runs (Ctrl-C); with ``restart`` a soft reset afterwards starts
    its main.py again."""
    s = open_port(port)
    try:
        deadline = time.monotonic() + timeout_s
        s.write(b"\r\x03\x03")
        time.sleep(0.1)  # let an interrupted program print its last lines
        s.reset_input_buffer()
        s.write(b"\x01")
        if not _raw_repl(s, deadline):
            return None
        s.write(_PROBE + b"\x04")
        reply = _read_until(s, b"\x04>", deadline)
        s.write(b"\x02")  # back to the friendly REPL
        if reply is None:
            return None
        out = reply.split(b"OK", 1)[-1].split(b"\x04", 1)[0].decode(errors="replace").strip()
        fields = out.split("|")
        if len(fields) != 4:
            return None
        if restart:
            _read_until(s, b">>> ", time.monotonic() + 1.0)
            s.write(b"\x04")  # soft reset: main.py runs again
        try:
            mpy = int(fields[3])
        except ValueError:
            mpy = 0
        return MicroPython(fields[0], fields[1], fields[2], mpy)
    finally:
        s.close()


def reset_and_follow(
    port: str, seconds: float, stop: Callable[[str], bool] | None = None
) -> Iterator[str]:
    """Hard-reset the board (``machine.reset()`` from the raw REPL) and yield its console
    lines for at most ``seconds``; ends early after a line for which ``stop`` is true."""
    s = open_port(port)
    try:
        s.write(b"\r\x03\x03")
        time.sleep(0.1)
        s.reset_input_buffer()
        s.write(b"\x01")
        if not _raw_repl(s, time.monotonic() + 3.0):
            raise BoardSerialError(f"no MicroPython REPL on {port} to reset the board")
        s.write(b"import machine\nmachine.reset()\x04")
        deadline = time.monotonic() + seconds
        pending = b""
        first = True
        while time.monotonic() < deadline:
            try:
                chunk = s.read(256)
            except OSError:  # a USB adapter may re-enumerate during the reset
                time.sleep(0.1)
                continue
            pending += chunk
            while b"\n" in pending:
                raw, pending = pending.split(b"\n", 1)
                line = raw.decode(errors="replace").rstrip("\r")
                if first and line.startswith("OK"):
                    line = line[2:]  # the raw REPL's receipt of the reset
                first = False
                if not line.strip():
                    continue
                yield line
                if stop is not None and stop(line):
                    return
        if pending.strip():
            yield pending.decode(errors="replace").rstrip()
    finally:
        s.close()
