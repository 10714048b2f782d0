"""Ultrasonic O2 / flow sensor of oxygen concentrators (Cubic Gasboard-7500 family, OCS-3F and
clones): frames (pure) and an async driver, polled or streaming.

Wire (docs/domain.md "Sensor wire protocols"): UART 9600 8N1. Host frame
``11 LEN CMD [DATA] CS``, sensor frame
``16 LEN CMD [DATA] CS``; LEN counts the bytes after LEN without CS;
``CS = (256 - sum of all preceding bytes) mod 256``. Read: ``11 01 01 ED``; reply
``16 09 01 | O2 hi lo | flow hi lo | temp hi lo | ST1 ST2 | CS`` (big-endian, O2 x0.1 %, flow
x0.1 L/min -- x0.01 on some variants: ``flow_scale`` --, temperature x0.1 degC, signed). Many units
also stream that frame every 500 ms unasked: the parser resyncs on 0x16 and checks LEN, CMD and
CS. Ultrasonic sensors measure composition: no pressure correction (docs/domain.md "Fraction
and partial pressure").
"""

# Written independently of its simulator (simulators/wire/gasboard.py) on purpose: the
# simulator is the oracle this driver is tested against; shared code would share mistakes.

import asyncio

HOST = 0x11
SENSOR = 0x16
CMD_READ = 0x01
READ_LEN = 0x09  # LEN of a read reply
FRAME_LEN = 12
READ = bytes((HOST, 0x01, CMD_READ, 0xED))
PSA_MAX_PCT = 96.5  # PSA product cannot exceed ~95.7 % (argon): above this, a sensor fault

Q_TIMEOUT = 0x01
Q_CHECKSUM = 0x02
Q_RANGE = 0x04
Q_STATUS = 0x40  # the sensor's own status bytes ST1/ST2 are not zero


class FrameError(ValueError):
    """Not a valid read reply (start, length, command or checksum)."""


def checksum(buf, n: int) -> int:
    """``(256 - sum(buf[:n]) % 256) % 256``."""
    total = 0
    for i in range(n):
        total += buf[i]
    return (256 - total % 256) % 256


def parse_reply(frame, flow_scale: float = 0.1) -> tuple:
    """``(purity_pct, flow_lpm, temp_c, status)`` of a 12-byte read reply; raises FrameError."""
    if len(frame) != FRAME_LEN:
        raise FrameError("length %d, expected 12" % len(frame))
    if frame[0] != SENSOR or frame[1] != READ_LEN or frame[2] != CMD_READ:
        raise FrameError("header %02x %02x %02x" % (frame[0], frame[1], frame[2]))
    cs = checksum(frame, FRAME_LEN - 1)
    if frame[11] != cs:
        raise FrameError("checksum %02x, expected %02x" % (frame[11], cs))
    purity = ((frame[3] << 8) | frame[4]) * 0.1
    flow = ((frame[5] << 8) | frame[6]) * flow_scale
    # Temperature is decoded as two's complement. The Gasboard-7500C specification (Cubic,
    # V0.2, "Communication Protocol") gives double-byte values high byte first and calls only
    # single bytes unsigned; the module is specified for storage down to -20 degC, and a
    # word >= 0x8000 read unsigned would be >= 3276.8 degC (-5.0 = FF CE = 6548.6 degC), so
    # signed is the only physical reading. It equals unsigned for every value below 0x8000.
    t = (frame[7] << 8) | frame[8]
    temp = (t - 0x10000 if t & 0x8000 else t) * 0.1
    return purity, flow, temp, (frame[9] << 8) | frame[10]


def build_reply(purity_pct: float, flow_lpm: float, temp_c: float, flow_scale: float = 0.1):
    """The sensor's 12-byte reply (for simulators and tests)."""
    f = bytearray(FRAME_LEN)
    f[0], f[1], f[2] = SENSOR, READ_LEN, CMD_READ
    for i, v in ((3, purity_pct / 0.1), (5, flow_lpm / flow_scale), (7, temp_c / 0.1)):
        n = int(v + 0.5) if v >= 0 else -int(-v + 0.5)  # temperature: two's complement
        f[i] = (n >> 8) & 0xFF
        f[i + 1] = n & 0xFF
    f[11] = checksum(f, FRAME_LEN - 1)
    return bytes(f)


class Parser:
    """Byte-stream reassembly with resync: ``feed(byte)`` returns True when ``frame`` holds a
    complete, valid read reply. ``bad`` counts rejected candidates (LEN/CMD/CS)."""

    def __init__(self) -> None:
        self.frame = bytearray(FRAME_LEN)
        self._n = 0
        self.bad = 0

    def feed(self, b: int) -> bool:
        f = self.frame
        if self._n == 0 and b != SENSOR:
            return False  # hunting for the start byte
        f[self._n] = b
        self._n += 1
        if self._n == 2 and b != READ_LEN or self._n == 3 and b != CMD_READ:
            self._resync()
            return False
        if self._n < FRAME_LEN:
            return False
        if f[11] == checksum(f, FRAME_LEN - 1):
            self._n = 0
            return True
        self._resync()
        return False

    def _resync(self) -> None:
        # A rejected candidate: restart at the next 0x16 inside it (if any), never lose sync.
        self.bad += 1
        f = self.frame
        n = self._n
        self._n = 0
        for i in range(1, n):
            if f[i] == SENSOR:
                rest = bytes(f[i:n])
                for b in rest:
                    self.feed(b)
                return


class Gasboard:
    """Async driver. ``mode`` "poll" sends ``11 01 01 ED`` and waits for the reply; "stream"
    listens to the unasked 500 ms frames and reports the newest (stale after ``timeout_ms``).

    ``read()`` returns ``(purity_pct, quality)``; ``flow_lpm`` and ``temp_c`` hold the rest of
    the same frame (None on a fault). Never a silent zero.
    """

    def __init__(
        self, uart, timeout_ms: int = 500, flow_scale: float = 0.1, mode: str = "poll", ticks=None
    ) -> None:
        self._uart = uart
        self._reader = asyncio.StreamReader(uart)
        self._writer = asyncio.StreamWriter(uart, {})
        self._timeout_ms = timeout_ms
        self._flow_scale = flow_scale
        self._stream = mode == "stream"
        self._parser = Parser()
        self._ticks = ticks
        self._last_ms = -1
        self._last = b""
        self.flow_lpm = None
        self.temp_c = None
        self.errors = 0

    async def init(self) -> None:
        pass  # streaming units need no set-up; polled units answer at any time

    async def read(self):
        if self._stream:
            return self._read_stream()
        self._drain()
        self._writer.write(READ)
        await self._writer.drain()
        try:
            await asyncio.wait_for(self._collect(), self._timeout_ms / 1000)
        except asyncio.TimeoutError:
            return self._fault(Q_TIMEOUT)
        return self._values(self._parser.frame)

    def _read_stream(self):
        got = False
        while True:
            chunk = self._uart.read(64)
            if not chunk:
                break
            for b in chunk:
                if self._parser.feed(b):
                    self._last = bytes(self._parser.frame)
                    got = True
        ticks = self._ticks
        if got and ticks is not None:
            self._last_ms = ticks.ticks_ms()
        if not self._last or (
            not got
            and ticks is not None
            and ticks.ticks_diff(ticks.ticks_ms(), self._last_ms) > self._timeout_ms
        ):
            return self._fault(Q_TIMEOUT)
        return self._values(self._last)

    async def _collect(self) -> None:
        parser = self._parser
        while True:
            chunk = await self._reader.read(FRAME_LEN)
            if not chunk:
                raise asyncio.TimeoutError
            for b in chunk:
                if parser.feed(b):
                    return

    def _values(self, frame):
        purity, flow, temp, status = parse_reply(frame, self._flow_scale)
        self.flow_lpm = flow
        self.temp_c = temp
        quality = Q_STATUS if status else 0
        if purity > PSA_MAX_PCT:
            quality |= Q_RANGE
        return purity, quality

    def _fault(self, quality: int):
        self.errors += 1
        self.flow_lpm = None
        self.temp_c = None
        return None, quality

    # The same few lines as in luminox.py and ze03.py, on purpose: a board loads one driver per
    # sensor, and a module shared for them would cost more heap than the copy.
    def _drain(self) -> None:
        try:
            while self._uart.read(64):
                pass
        except OSError:
            pass
