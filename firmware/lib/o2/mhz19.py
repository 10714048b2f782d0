"""Winsen MH-Z19B / MH-Z19C NDIR CO2 module (optional room sensor): frames (pure) and an async
Q&A driver.

Wire (Winsen MH-Z19B manual, "Communication protocol"): UART 9600 8N1, 9-byte frames starting
0xFF. Read: ``FF 01 86 00 00 00 00 00 79``; reply ``FF 86 HH LL xx xx xx xx CS`` with
CO2 = HH * 256 + LL ppm. Checksum of bytes 1..7 as on the ZE03-O2 (same maker, same family):
``CS = (~(b1 + ... + b7) + 1) & 0xFF``. Measuring range 0-2000 / 0-5000 / 0-10000 ppm by model
setting: a value above 10000 ppm is no reading.
"""

# Written independently of its simulator (simulators/wire/mhz19.py, winsen.py) on purpose: the
# simulator is the oracle this driver is tested against; shared code would share mistakes.

import asyncio

from o2core.winsen import checksum

try:
    from micropython import const
except ImportError:  # CPython (tests): const() is the identity

    def const(x):  # type: ignore[misc]
        return x


_FRAME_LEN = const(9)
_MAX_PPM = const(10000)  # widest range setting of the module
_Q_FAULT = const(0x01)  # no reply, bad frame or out of range: the caller flags the reading

QUERY = b"\xff\x01\x86\x00\x00\x00\x00\x00\x79"


class FrameError(ValueError):
    """Not a valid read reply (length, header or checksum)."""


def parse_reply(frame) -> int:
    """CO2 ppm from a 9-byte reply ``FF 86 HH LL ...``; raises FrameError."""
    if len(frame) != _FRAME_LEN or frame[0] != 0xFF or frame[1] != 0x86:
        raise FrameError("not a read reply")
    if frame[8] != checksum(frame):
        raise FrameError("checksum %02x, expected %02x" % (frame[8], checksum(frame)))
    return (frame[2] << 8) | frame[3]


class MHZ19:
    """Async driver: ``read()`` -> ``(co2_ppm, quality)``, co2_ppm None on a fault."""

    def __init__(self, uart, timeout_ms: int = 500) -> None:
        self._uart = uart
        self._reader = asyncio.StreamReader(uart)
        self._writer = asyncio.StreamWriter(uart, {})
        self._timeout_ms = timeout_ms
        self._buf = bytearray(_FRAME_LEN)
        self.errors = 0

    async def init(self) -> None:
        pass  # the module answers queries from power-on (readings settle after ~3 min)

    async def read(self):
        try:
            while self._uart.read(64):  # stale bytes: the next reply must be ours
                pass
        except OSError:
            pass
        self._writer.write(QUERY)
        await self._writer.drain()
        try:
            ppm: int = await asyncio.wait_for(self._collect(), self._timeout_ms / 1000)
        except (asyncio.TimeoutError, FrameError):
            self.errors += 1
            return None, _Q_FAULT
        if ppm > _MAX_PPM:
            self.errors += 1
            return None, _Q_FAULT
        return ppm, 0

    async def _collect(self) -> int:
        # Resync on FF 86: drop bytes until a frame starts at buf[0], then parse 9 bytes.
        buf = self._buf
        n = 0
        while True:
            chunk = await self._reader.read(_FRAME_LEN - n)
            if not chunk:
                raise FrameError("end of stream")
            for b in chunk:
                if n == 0 and b != 0xFF or n == 1 and b != 0x86:
                    n = 1 if b == 0xFF else 0
                    buf[0] = b
                    continue
                buf[n] = b
                n += 1
            if n == _FRAME_LEN:
                return parse_reply(buf)
