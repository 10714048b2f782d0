"""SST LuminOx optical O2 sensor (rooms; carries its own barometer): ASCII lines (pure) and an
async polled driver.

Wire (docs/domain.md "Sensor wire protocols"; SST LuminOx user guide, "UART commands"): 9600 8N1,
lines ending CR LF: ``O 0157.1 T +21.3 P 0652 % 024.10 e 0000`` = ppO2 mbar, temperature degC,
pressure mbar, O2 %, status (``e 0000`` = OK). ``M 1`` selects poll mode (acknowledged ``M 01``),
``A`` asks for the full line. The protocol has no checksum: a line is accepted only if its
ppO2 agrees with O2 % x pressure (a garbled digit breaks that), and the range 0-25 % / 0-100 %
is the sensor variant's, not the protocol's.
"""

# Written independently of its simulator (simulators/wire/luminox.py) on purpose: the
# simulator is the oracle this driver is tested against; shared code would share mistakes.

import asyncio

POLL_MODE = b"M 1\r\n"
ASK_ALL = b"A\r\n"
LINE_MAX = 64
CONSISTENCY_PCT = 1.0  # |ppO2 - O2% x P| allowed, in % of ppO2 (field rounding is ~0.1 %)

Q_TIMEOUT = 0x01
Q_CHECKSUM = 0x02  # malformed or inconsistent line (the protocol's only integrity check)
Q_STATUS = 0x40  # the sensor's own status field is not 0000


class FrameError(ValueError):
    """A line that is not a valid, self-consistent LuminOx reading."""


def parse_line(line) -> tuple:
    """``(o2_pct, ppo2_kpa, temp_c, baro_kpa, status)`` from one line (bytes, CR LF optional).

    Raises FrameError when a field is missing or not a number, or ppO2 disagrees with
    O2 % x pressure.
    """
    try:
        parts = bytes(line).decode().split()
    except UnicodeError:
        raise FrameError("not ASCII")
    if len(parts) != 10 or parts[0::2] != ["O", "T", "P", "%", "e"]:
        raise FrameError("fields %r" % (parts[0::2],))
    try:
        ppo2_mbar = float(parts[1])
        temp_c = float(parts[3])
        p_mbar = float(parts[5])
        o2_pct = float(parts[7])
        status = int(parts[9])
    except ValueError:
        raise FrameError("not a number in %r" % (parts,))
    for v in (ppo2_mbar, temp_c, p_mbar, o2_pct):
        if not -1000 < v < 100000:  # "nan", "inf" and absurd sizes parse as floats too
            raise FrameError("value %r out of any range" % (v,))
    expected = o2_pct / 100 * p_mbar
    if p_mbar <= 0 or abs(ppo2_mbar - expected) > max(0.2, expected * CONSISTENCY_PCT / 100):
        raise FrameError("ppO2 %.1f mbar != O2 x P %.1f mbar" % (ppo2_mbar, expected))
    return o2_pct, ppo2_mbar / 10, temp_c, p_mbar / 10, status


class LuminOx:
    """Polled driver: ``read()`` -> ``(o2_pct, quality)``; ``baro_kpa`` and ``temp_c`` hold
    the same line's pressure and temperature (None on a fault)."""

    def __init__(self, uart, timeout_ms: int = 500) -> None:
        self._uart = uart
        self._reader = asyncio.StreamReader(uart)
        self._writer = asyncio.StreamWriter(uart, {})
        self._timeout_ms = timeout_ms
        self._line = bytearray(LINE_MAX)
        self._n = 0
        self.baro_kpa = None
        self.temp_c = None
        self.errors = 0

    async def init(self) -> None:
        self._writer.write(POLL_MODE)  # stop the power-on stream: we ask when we sample
        await self._writer.drain()

    async def read(self):
        self._drain()
        self._writer.write(ASK_ALL)
        await self._writer.drain()
        try:
            await asyncio.wait_for(self._collect(), self._timeout_ms / 1000)
        except asyncio.TimeoutError:
            return self._fault(Q_TIMEOUT)
        try:
            o2, _, temp_c, baro_kpa, status = parse_line(memoryview(self._line)[: self._n])
        except FrameError:
            return self._fault(Q_CHECKSUM)
        self.baro_kpa = baro_kpa
        self.temp_c = temp_c
        return o2, Q_STATUS if status else 0

    async def _collect(self) -> None:
        # One line starting with "O " (skips the "M 01" acknowledgement and any noise).
        self._n = 0
        while True:
            chunk = await self._reader.read(LINE_MAX)
            if not chunk:
                raise asyncio.TimeoutError
            for b in chunk:
                if b == 0x0A:
                    if self._n > 2 and self._line[0] == 0x4F:  # "O"
                        return
                    self._n = 0
                elif b != 0x0D and self._n < LINE_MAX:
                    self._line[self._n] = b
                    self._n += 1

    def _fault(self, quality: int):
        self.errors += 1
        self.baro_kpa = None
        self.temp_c = None
        return None, quality

    # The same few lines as in gasboard.py and ze03.py, on purpose: a board loads one driver per
    # sensor, and a module shared for them would cost more heap than the copy.
    def _drain(self) -> None:
        try:
            while self._uart.read(64):
                pass
        except OSError:
            pass
