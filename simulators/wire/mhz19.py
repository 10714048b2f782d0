"""Winsen MH-Z19B/C NDIR CO2 module on its wire (Q&A), for the room boards' optional CO2 sensor.

Winsen MH-Z19B manual, "Communication protocol": UART 9600 8N1, 9-byte frames starting 0xFF.
The host sends ``FF 01 86 00 00 00 00 00 79``; the module answers ``FF 86 HH LL TT SS U1 U2 CS``
with CO2 = HH * 256 + LL ppm (TT = temperature + 40 on most firmware; the rest undocumented).
Checksum of bytes 1..7: ``(~sum + 1) & 0xFF`` (the ZE03-O2's too). Other commands (zero / span
calibration 0x87 / 0x88, automatic baseline 0x79, range 0x99) are accepted without an answer.
Written independently of ``firmware/lib/o2/mhz19.py`` on purpose.

    with PtySensor(MHZ19Wire(co2_ppm=800), "mhz19") as sim:
        open(sim.port_path) ...        # the firmware's UART
        sim.wire.co2_ppm = 1600        # takes effect on the next query
"""

from __future__ import annotations

from simulators.wire.winsen import READ_CMD, QueryWire, checksum

READ_QUERY = bytes.fromhex("ff0186000000000079")
MAX_PPM = 0xFFFF


def read_reply(co2_ppm: float, temp_c: float = 21.0) -> bytes:
    """The module's 9-byte answer for ``co2_ppm``."""
    ppm = max(0, min(MAX_PPM, round(co2_ppm)))
    temp = max(0, min(255, round(temp_c) + 40))
    frame = bytearray((0xFF, READ_CMD, ppm >> 8, ppm & 0xFF, temp, 0, 0, 0, 0))
    frame[8] = checksum(frame)
    return bytes(frame)


class MHZ19Wire(QueryWire):
    """The module's behaviour on the line (a ``faults.Wire``); ``co2_ppm`` may change any time."""

    def __init__(
        self, co2_ppm: float = 600.0, temp_c: float = 21.0, *, seed: int = 0, noise_ppm: float = 5.0
    ) -> None:
        super().__init__(seed)
        self.co2_ppm = co2_ppm
        self.temp_c = temp_c
        self.noise_ppm = noise_ppm

    def frame(self, now_s: float) -> bytes:
        (value,) = self.faults.reading((self.co2_ppm,), self._rng, self.noise_ppm, now_s)
        return self.faults.checksummed_out(read_reply(value, self.temp_c), self._rng)
