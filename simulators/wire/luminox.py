"""SST LuminOx optical O2 sensor (rooms; carries its own barometer): the ASCII line protocol.

docs/domain.md "Sensor wire protocols": UART 9600 8N1, lines ending CR LF, e.g.
``O 0157.1 T +21.3 P 0652 % 024.10 e 0000`` = ppO2 mbar, temperature degC, pressure mbar,
O2 %, status (``e 0000`` = OK). Commands ``M 0`` stream (about once a second, the default),
``M 1`` poll, ``M 2`` off; ``A`` answers the full line; in poll mode ``O``, ``T``, ``P``, ``%``,
``e`` answer one field each. The sensor acknowledges ``M x`` with ``M 0x``.

The protocol has no checksum: the "bad checksum" fault garbles one digit instead.
Written independently of ``firmware/lib/o2/luminox.py`` on purpose.
"""

from __future__ import annotations

from collections.abc import Callable

from simulators.wire.faults import SensorWire, StreamClock

STREAM_S = 1.0


def fields(o2_pct: float, temp_c: float, baro_kpa: float, status: int = 0) -> dict[str, str]:
    """Each field as the sensor prints it; pressures in mbar (1 kPa = 10 mbar)."""
    pressure_mbar = baro_kpa * 10.0
    ppo2_mbar = o2_pct / 100.0 * pressure_mbar
    return {
        "O": f"{ppo2_mbar:06.1f}",
        "T": f"{temp_c:+05.1f}",
        "P": f"{round(pressure_mbar):04d}",
        "%": f"{o2_pct:06.2f}",
        "e": f"{status:04d}",
    }


def line(o2_pct: float, temp_c: float, baro_kpa: float, status: int = 0) -> bytes:
    f = fields(o2_pct, temp_c, baro_kpa, status)
    return f"O {f['O']} T {f['T']} P {f['P']} % {f['%']} e {f['e']}\r\n".encode()


class LuminOxWire(SensorWire):
    """The sensor's behaviour; values are attributes or come from ``source()``."""

    def __init__(
        self,
        o2_pct: float = 24.1,
        temp_c: float = 21.3,
        baro_kpa: float = 65.2,
        *,
        seed: int = 0,
        noise_pct: float = 0.02,
        source: Callable[[], tuple[float, float, float]] | None = None,
    ) -> None:
        super().__init__(seed)
        self.o2_pct, self.temp_c, self.baro_kpa = o2_pct, temp_c, baro_kpa
        self.source = source
        self.noise_pct = noise_pct
        self.mode = 0  # 0 stream, 1 poll, 2 off
        self.lines_sent = 0
        self._stream = StreamClock()

    def values(self, now_s: float) -> tuple[float, float, float]:
        true = self.source() if self.source else (self.o2_pct, self.temp_c, self.baro_kpa)
        o2, temp, baro = self.faults.reading(true, self._rng, self.noise_pct, now_s)
        return o2, temp, baro

    def _send(self, text: bytes) -> bytes:
        damaged = bytearray(text)
        digits = [i for i, c in enumerate(damaged) if chr(c).isdigit()]
        if digits:
            i = digits[self._rng.randrange(len(digits))]
            damaged[i] = ord("?")
        out = self.faults.frame_out(text, self._rng, bytes(damaged))
        if out:
            self.lines_sent += 1
        return out

    def receive(self, data: bytes, now_s: float) -> bytes:
        if self.faults.disconnected:
            return b""
        self._buf += data
        out = b""
        while b"\n" in self._buf:
            raw, _, rest = bytes(self._buf).partition(b"\n")
            self._buf = bytearray(rest)
            cmd = raw.strip().decode("ascii", "replace")
            out += self._answer(cmd, now_s)
        return out

    def _answer(self, cmd: str, now_s: float) -> bytes:
        if cmd.startswith("M ") and cmd[2:].strip() in ("0", "1", "2"):
            self.mode = int(cmd[2:].strip())
            self._stream = StreamClock()
            return f"M 0{self.mode}\r\n".encode()
        if cmd == "A":
            return self._send(line(*self.values(now_s)))
        if self.mode == 1 and cmd in ("O", "T", "P", "%", "e"):
            return self._send(f"{cmd} {fields(*self.values(now_s))[cmd]}\r\n".encode())
        return b""

    def next_due(self, now_s: float) -> float | None:
        return self._stream.due(now_s, STREAM_S if self.mode == 0 else None)

    def tick(self, now_s: float) -> bytes:
        due = self._stream.take(now_s, STREAM_S if self.mode == 0 else None)
        if not due or self.faults.disconnected:
            return b""
        return self._send(line(*self.values(now_s)))
