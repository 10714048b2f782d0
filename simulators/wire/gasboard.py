"""Cubic Gasboard-7500-family ultrasonic O2 + flow sensor (concentrator outlet), byte for byte.

docs/domain.md "Sensor wire protocols": UART 9600 8N1. Host frame ``11 LEN CMD [DATA] CS``,
sensor frame ``16 LEN CMD [DATA] CS``, LEN = bytes after LEN excluding CS,
CS = (256 - sum of all preceding bytes mod 256) mod 256. Read ``11 01 01 ED`` ->
``16 09 01 | O2 hi lo | flow hi lo | temp hi lo | ST1 ST2 | CS`` (O2 x0.1 %, flow x0.1 L/min
(x0.01 on some variants), temperature x0.1 degC, signed). Many units also stream that frame
every 500 ms unasked. Version ``0x1E``, serial ``0x1F``.
Written independently of ``firmware/lib/o2/gasboard.py`` on purpose.

    with PtySensor(GasboardWire(o2_pct=93.0, flow_lpm=5.0), "gasboard") as sim:
        open(sim.port_path) ...          # the firmware's UART
        sim.wire.faults.bad_checksum_every = 3
"""

from __future__ import annotations

from collections.abc import Callable

from simulators.wire.faults import SensorWire, StreamClock

HOST_START = 0x11
SENSOR_START = 0x16
CMD_READ = 0x01
CMD_VERSION = 0x1E
CMD_SERIAL = 0x1F
READ_QUERY = bytes.fromhex("110101ED")


def checksum(data: bytes | bytearray) -> int:
    """(256 - sum of the bytes mod 256) mod 256."""
    return (256 - sum(data) % 256) % 256


def sensor_frame(cmd: int, payload: bytes) -> bytes:
    body = bytes((SENSOR_START, len(payload) + 1, cmd)) + payload
    return body + bytes((checksum(body),))


def read_reply(
    o2_pct: float, flow_lpm: float, temp_c: float, status: int = 0, flow_scale: float = 0.1
) -> bytes:
    """The 12-byte answer to ``11 01 01 ED`` (values clamped to what 16 bits can carry)."""

    def u16(value: float, scale: float) -> bytes:
        return max(0, min(0xFFFF, round(value / scale))).to_bytes(2, "big")

    # Temperature as a signed 16-bit word (two's complement): a concentrator started in an
    # unheated room below 0 degC sends e.g. FF CE for -5.0 degC.
    temp = max(-0x8000, min(0x7FFF, round(temp_c / 0.1))).to_bytes(2, "big", signed=True)
    payload = u16(o2_pct, 0.1) + u16(flow_lpm, flow_scale) + temp
    return sensor_frame(CMD_READ, payload + status.to_bytes(2, "big"))


class GasboardWire(SensorWire):
    """The sensor's behaviour; values are attributes or come from ``source()``."""

    def __init__(
        self,
        o2_pct: float = 93.0,
        flow_lpm: float = 5.0,
        temp_c: float = 21.0,
        *,
        seed: int = 0,
        stream_interval_s: float | None = 0.5,
        flow_scale: float = 0.1,
        noise_pct: float = 0.05,
        source: Callable[[], tuple[float, float, float]] | None = None,
        serial: bytes = b"SIM0000001",
        version: bytes = b"GB7500-SIM1",
    ) -> None:
        super().__init__(seed)
        self.o2_pct, self.flow_lpm, self.temp_c = o2_pct, flow_lpm, temp_c
        self.source = source
        self.stream_interval_s = stream_interval_s
        self.flow_scale = flow_scale
        self.noise_pct = noise_pct
        self.serial, self.version = serial, version
        self.queries = 0
        self.bad_frames = 0
        self.frames_sent = 0
        self._stream = StreamClock()

    def values(self, now_s: float) -> tuple[float, float, float]:
        true = self.source() if self.source else (self.o2_pct, self.flow_lpm, self.temp_c)
        o2, flow, temp = self.faults.reading(true, self._rng, self.noise_pct, now_s)
        return o2, flow, temp

    def frame(self, now_s: float) -> bytes:
        """The next data frame as the line carries it (faults applied)."""
        good = read_reply(*self.values(now_s), flow_scale=self.flow_scale)
        out = self.faults.checksummed_out(good, self._rng)
        if out:
            self.frames_sent += 1
        return out

    def receive(self, data: bytes, now_s: float) -> bytes:
        if self.faults.disconnected:
            return b""
        self._buf += data
        out = b""
        # Resync on the host start byte; check LEN and CS like the sensor does.
        while True:
            start = self._buf.find(bytes((HOST_START,)))
            if start < 0:
                self._buf.clear()
                break
            del self._buf[:start]
            if len(self._buf) < 2:
                break
            total = self._buf[1] + 3  # start, LEN, LEN bytes, CS
            if self._buf[1] == 0 or self._buf[1] > 16:
                self.bad_frames += 1
                del self._buf[:1]
                continue
            if len(self._buf) < total:
                break
            frame = bytes(self._buf[:total])
            if checksum(frame[:-1]) != frame[-1]:
                self.bad_frames += 1
                del self._buf[:1]
                continue
            del self._buf[:total]
            out += self._answer(frame[2], now_s)
        return out

    def _answer(self, cmd: int, now_s: float) -> bytes:
        if cmd == CMD_READ:
            self.queries += 1
            return self.frame(now_s)
        if cmd == CMD_VERSION:
            return sensor_frame(CMD_VERSION, self.version)
        if cmd == CMD_SERIAL:
            return sensor_frame(CMD_SERIAL, self.serial)
        return b""  # unknown commands: silence, like the module

    def next_due(self, now_s: float) -> float | None:
        return self._stream.due(now_s, self.stream_interval_s)

    def tick(self, now_s: float) -> bytes:
        if not self._stream.take(now_s, self.stream_interval_s) or self.faults.disconnected:
            return b""
        return self.frame(now_s)
