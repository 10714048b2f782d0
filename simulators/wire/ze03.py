"""Winsen ZE03-O2 oxygen module on a pseudo-terminal (Q&A mode).

Answers each query ``FF 01 86 00 00 00 00 00 79`` with ``FF 86 HH LL 00 00 00 00 CS``
(docs/domain.md "Sensor wire protocols"). The module is an electrochemical cell: it measures
oxygen *partial pressure*, calibrated at the factory in sea-level air, so it reports
``o2_pct * baro_kpa / cal_kpa`` (a room at 25 % in Lhasa, 64.5 kPa, reads ~15.9 %) plus small
seeded noise, clamped at its 25.0 % full scale. Mode-switch commands are
accepted silently, as the module does; anything else is ignored. The frame code is written
here again on purpose, independently of ``firmware/lib/o2/ze03.py``: a simulator that shared the
firmware's code could not catch the firmware's mistakes.

    with ZE03Responder(o2_pct=24.5, seed=1) as sim:
        print(sim.port_path)   # give this to the UART stand-in
        sim.o2_pct = 26.0      # takes effect on the next query
        sim.ze03.baro_kpa = 64.5  # the pressure the cell sits in
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading

from simulators.wire.faults import PtySensor
from simulators.wire.winsen import READ_CMD, QueryWire, checksum

QUERY = bytes.fromhex("ff0186000000000079")
MODE_CMD = 0x78
CAL_KPA = 101.325  # factory calibration in sea-level air


def reply_frame(o2_pct: float) -> bytes:
    """The module's answer for ``o2_pct`` (0.1 % counts, clamped to 0..25 % like the module)."""
    counts = max(0, min(250, round(o2_pct * 10)))
    frame = bytearray((0xFF, READ_CMD, counts >> 8, counts & 0xFF, 0, 0, 0, 0, 0))
    frame[8] = checksum(frame)
    return bytes(frame)


class ZE03Wire(QueryWire):
    """What the module does on its line: parse commands, answer reads (a ``faults.Wire``);
    mode-switch commands (``0x78``, Q&A / active) are accepted without a reply.

    ``noise_pct`` is the standard deviation of the Gaussian noise added to each answer
    (default 0.05 %, below the module's 0.1 % resolution so most answers are exact).
    """

    def __init__(
        self,
        o2_pct: float = 20.9,
        seed: int = 1,
        noise_pct: float = 0.05,
        baro_kpa: float = CAL_KPA,
        cal_kpa: float = CAL_KPA,
    ) -> None:
        super().__init__(seed)
        self.o2_pct = o2_pct  # the room's true O2 fraction
        self.baro_kpa = baro_kpa  # pressure around the cell
        self.cal_kpa = cal_kpa  # pressure of the (factory) calibration
        self.noise_pct = noise_pct

    def reading_pct(self) -> float:
        """What the cell reads without noise: the partial pressure in sea-level-% units."""
        return self.o2_pct * self.baro_kpa / self.cal_kpa

    def answer(self) -> bytes:
        """The frame for the next query (current reading plus noise)."""
        return reply_frame(self.reading_pct() + self._rng.gauss(0.0, self.noise_pct))

    def frame(self, now_s: float) -> bytes:
        """The answer with the wire faults applied (drift and stuck on the reading, then a
        dropped, damaged or garbage-led frame)."""
        (value,) = self.faults.reading((self.reading_pct(),), self._rng, self.noise_pct, now_s)
        return self.faults.checksummed_out(reply_frame(value), self._rng)


class ZE03Responder(PtySensor):
    """A simulated ZE03-O2 behind a pty; a background thread answers queries."""

    def __init__(
        self,
        o2_pct: float = 20.9,
        seed: int = 1,
        noise_pct: float = 0.05,
        baro_kpa: float = 101.325,
    ) -> None:
        self.ze03 = ZE03Wire(o2_pct, seed, noise_pct, baro_kpa)
        super().__init__(self.ze03, "ze03")

    @property
    def o2_pct(self) -> float:
        """The O2 % the module reports (plus noise); takes effect on the next query."""
        return self.ze03.o2_pct

    @o2_pct.setter
    def o2_pct(self, value: float) -> None:
        self.ze03.o2_pct = value

    @property
    def queries(self) -> int:
        return self.ze03.queries

    @property
    def bad_frames(self) -> int:
        return self.ze03.bad_frames

    def answer(self) -> bytes:
        return self.ze03.answer()


def main(argv: list[str] | None = None) -> int:
    """``python -m simulators.wire.ze03 --o2-pct 24.5``: serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--o2-pct", type=float, default=20.9)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--noise-pct", type=float, default=0.05)
    parser.add_argument("--baro-kpa", type=float, default=CAL_KPA)
    args = parser.parse_args(argv)
    with ZE03Responder(args.o2_pct, args.seed, args.noise_pct, args.baro_kpa) as sim:
        print(f"ze03: serving {sim.port_path}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
