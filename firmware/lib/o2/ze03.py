"""Winsen ZE03-O2 electrochemical oxygen module: frames (pure) and an async Q&A driver.

Wire: UART 9600 8N1, 9-byte frames starting 0xFF, range 0-25 % O2 (docs/domain.md "Sensor wire
protocols"; Winsen ZE03 manual, "communication protocol"). Checksum over bytes 1..7:
``CS = (~(b1 + ... + b7) + 1) & 0xFF``.
"""

# Written independently of its simulator (simulators/wire/ze03.py, winsen.py) on purpose: the
# simulator is the oracle this driver is tested against; shared code would share mistakes.

import asyncio

from o2core.winsen import checksum

try:
    from micropython import const
except ImportError:  # CPython (tests): const() is the identity

    def const(x):  # type: ignore[misc]
        return x


_FRAME_LEN = const(9)
_START = const(0xFF)
_CMD_READ = const(0x86)
_CMD_MODE = const(0x78)
_MODE_QA = const(0x41)  # question & answer: the module only speaks when asked
_MODE_ACTIVE = const(0x40)  # power-on default of the module: uploads a frame every second
_O2_SCALE_PCT = const(0.1)  # one count = 0.1 % O2
_O2_MAX_PCT = const(25.0)  # measuring range of the module

# Quality flags shared by all drivers (bit values of the telemetry "quality" field).
_Q_TIMEOUT = const(0x01)  # no (complete) reply within the timeout
_Q_CHECKSUM = const(0x02)  # a reply arrived but failed its checksum / header check
_Q_RANGE = const(0x04)  # value outside the sensor's measuring range


class FrameError(ValueError):
    """A 9-byte buffer that is not a valid ZE03 reply (header, command or checksum)."""


def build_command(cmd: int, arg: int = 0) -> bytes:
    """A host frame ``FF 01 cmd arg 00 00 00 00 CS``."""
    frame = bytearray(_FRAME_LEN)
    frame[0] = _START
    frame[1] = 0x01
    frame[2] = cmd
    frame[3] = arg
    frame[8] = checksum(frame)
    return bytes(frame)


QUERY = build_command(_CMD_READ)  # FF 01 86 00 00 00 00 00 79
SET_QA_MODE = build_command(_CMD_MODE, _MODE_QA)  # FF 01 78 41 00 00 00 00 46
SET_ACTIVE_MODE = build_command(_CMD_MODE, _MODE_ACTIVE)  # FF 01 78 40 00 00 00 00 47


def build_reply(o2_pct: float) -> bytes:
    """The module's reply ``FF 86 HH LL 00 00 00 00 CS`` for ``o2_pct`` (used by simulators)."""
    counts = int(o2_pct / _O2_SCALE_PCT + 0.5)
    if counts < 0:
        counts = 0
    frame = bytearray(_FRAME_LEN)
    frame[0] = _START
    frame[1] = _CMD_READ
    frame[2] = (counts >> 8) & 0xFF
    frame[3] = counts & 0xFF
    frame[8] = checksum(frame)
    return bytes(frame)


def parse_reply(frame) -> float:
    """O2 in % from a 9-byte reply ``FF 86 HH LL xx xx xx xx CS``.

    Raises FrameError on a wrong length, start byte, command byte or checksum.
    """
    if len(frame) != _FRAME_LEN:
        raise FrameError("length %d, expected 9" % len(frame))
    if frame[0] != _START or frame[1] != _CMD_READ:
        raise FrameError("header %02x %02x, expected ff 86" % (frame[0], frame[1]))
    expected = checksum(frame)
    if frame[8] != expected:
        raise FrameError("checksum %02x, expected %02x" % (frame[8], expected))
    return ((frame[2] << 8) | frame[3]) * _O2_SCALE_PCT


def find_reply(buf, n: int) -> int:
    """Index of the first plausible reply start (``FF 86``) in ``buf[:n]``, or -1.

    Lets the driver resync after garbage or a half frame on the wire.
    """
    for i in range(n - 1):
        if buf[i] == _START and buf[i + 1] == _CMD_READ:
            return i
    if n and buf[n - 1] == _START:
        return n - 1
    return -1


class ZE03:
    """Async Q&A driver. ``uart`` is any stream that asyncio can poll (machine.UART(timeout=0)).

    ``read()`` returns ``(o2_pct, quality)``; on a fault o2_pct is None and quality says why:
    a missing reading is never reported as 0 %.
    """

    def __init__(self, uart, timeout_ms: int = 500) -> None:
        self._uart = uart
        self._reader = asyncio.StreamReader(uart)
        self._writer = asyncio.StreamWriter(uart, {})
        self._timeout_ms = timeout_ms
        self._buf = bytearray(2 * _FRAME_LEN)  # preallocated: one frame plus resync slack
        self._n = 0
        self.errors = 0  # faults since boot, for the health message

    async def init(self) -> None:
        """Switch the module from its power-on active-upload mode to Q&A mode."""
        self._writer.write(SET_QA_MODE)
        await self._writer.drain()

    async def read(self):
        """Query once; ``(o2_pct, quality_flags)`` with o2_pct None on timeout or bad frame."""
        self._drain_input()
        self._n = 0
        self._writer.write(QUERY)
        await self._writer.drain()
        try:
            quality: int = await asyncio.wait_for(self._collect(), self._timeout_ms / 1000)
        except asyncio.TimeoutError:
            self.errors += 1
            return None, _Q_TIMEOUT
        if quality:
            self.errors += 1
            return None, quality
        o2_pct = parse_reply(memoryview(self._buf)[:_FRAME_LEN])
        if o2_pct > _O2_MAX_PCT:
            return o2_pct, _Q_RANGE
        return o2_pct, 0

    async def _collect(self) -> int:
        # Accumulate bytes until a whole frame starting FF 86 sits at buf[0]; 0 or _Q_CHECKSUM.
        buf = self._buf
        while True:
            chunk = await self._reader.read(_FRAME_LEN - self._n if self._n < _FRAME_LEN else 1)
            if not chunk:
                return _Q_TIMEOUT  # end of stream: the UART is gone, not just quiet
            for b in chunk:
                if self._n < len(buf):
                    buf[self._n] = b
                    self._n += 1
            start = find_reply(buf, self._n)
            if start < 0:
                self._n = 0
                continue
            if start > 0:
                buf[: self._n - start] = buf[start : self._n]
                self._n -= start
            if self._n >= _FRAME_LEN:
                frame = memoryview(buf)[:_FRAME_LEN]
                if frame[8] != checksum(frame):
                    return _Q_CHECKSUM
                return 0

    # The same few lines as in gasboard.py and luminox.py, on purpose: a board loads one driver per
    # sensor, and a module shared for them would cost more heap than the copy.
    def _drain_input(self) -> None:
        # Drop stale bytes (a late reply, active-mode uploads) so the next reply is ours.
        try:
            while self._uart.read(64):
                pass
        except OSError:
            pass
