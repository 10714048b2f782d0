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

import random

from simulators.wire.faults import WireFaults
from simulators.wire.winsen import READ_CMD, checksum, take_commands

READ_QUERY = bytes.fromhex("ff0186000000000079")
MAX_PPM = 0xFFFF


def read_reply(co2_ppm: float, temp_c: float = 21.0) -> bytes:
    """The module's 9-byte answer for ``co2_ppm``."""
    ppm = max(0, min(MAX_PPM, round(co2_ppm)))
    temp = max(0, min(255, round(temp_c) + 40))
    frame = bytearray((0xFF, READ_CMD, ppm >> 8, ppm & 0xFF, temp, 0, 0, 0, 0))
    frame[8] = checksum(frame)
    return bytes(frame)


class MHZ19Wire:
    """The module's behaviour on the line (a ``faults.Wire``); ``co2_ppm`` may change any time."""

    def __init__(
        self, co2_ppm: float = 600.0, temp_c: float = 21.0, *, seed: int = 0, noise_ppm: float = 5.0
    ) -> None:
        self.co2_ppm = co2_ppm
        self.temp_c = temp_c
        self.noise_ppm = noise_ppm
        self.faults = WireFaults()
        self.queries = 0
        self.bad_frames = 0
        self._rng = random.Random(seed)
        self._buf = bytearray()

    def frame(self, now_s: float) -> bytes:
        value = self.co2_ppm + self._rng.gauss(0.0, self.noise_ppm) + self.faults.drift(now_s)
        good = read_reply(self.faults.hold((value,))[0], self.temp_c)
        bad = good[:-1] + bytes(((good[-1] + 1) & 0xFF,))
        return self.faults.frame_out(good, self._rng, bad)

    def receive(self, data: bytes, now_s: float) -> bytes:
        if self.faults.disconnected:
            return b""
        buf = self._buf
        buf += data
        out = b""
        frames, bad = take_commands(buf)
        self.bad_frames += bad
        for frame in frames:
            if frame[2] == READ_CMD:
                self.queries += 1
                out += self.frame(now_s)
        return out

    def tick(self, now_s: float) -> bytes:
        return b""  # speaks only when asked

    def next_due(self, now_s: float) -> float | None:
        return None
