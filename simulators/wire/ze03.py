"""Winsen ZE03-O2 oxygen module on a pseudo-terminal (Q&A mode).

Answers each query ``FF 01 86 00 00 00 00 00 79`` with ``FF 86 HH LL 00 00 00 00 CS`` for the
configured O2 % plus small seeded noise (DOMAIN.md section 4). Mode-switch commands are
accepted silently, as the module does; anything else is ignored. The frame code is written
here again on purpose, independently of ``firmware/lib/o2/ze03.py``: a simulator that shared the
firmware's code could not catch the firmware's mistakes.

    with ZE03Responder(o2_pct=24.5, seed=1) as sim:
        print(sim.port_path)   # give this to the UART stand-in
        sim.o2_pct = 26.0      # takes effect on the next query
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import select
import sys
import threading
import tty
from types import TracebackType

FRAME_LEN = 9
QUERY = bytes.fromhex("ff0186000000000079")
MODE_CMD = 0x78
READ_CMD = 0x86


def checksum(frame: bytes | bytearray) -> int:
    """ZE03 checksum of bytes 1..7: ``(~sum + 1) & 0xFF``."""
    return (~sum(frame[1:8]) + 1) & 0xFF


def reply_frame(o2_pct: float) -> bytes:
    """The module's answer for ``o2_pct`` (0.1 % counts, clamped to 0..25 % like the module)."""
    counts = max(0, min(250, round(o2_pct * 10)))
    frame = bytearray((0xFF, READ_CMD, counts >> 8, counts & 0xFF, 0, 0, 0, 0, 0))
    frame[8] = checksum(frame)
    return bytes(frame)


class ZE03Responder:
    """A simulated ZE03-O2 behind a pty; a background thread answers queries.

    ``noise_pct`` is the standard deviation of the Gaussian noise added to each answer
    (default 0.05 %, below the module's 0.1 % resolution so most answers are exact).
    """

    def __init__(self, o2_pct: float = 20.9, seed: int = 1, noise_pct: float = 0.05) -> None:
        self.o2_pct = o2_pct
        self.noise_pct = noise_pct
        self.queries = 0  # answered queries (tests may watch it)
        self.bad_frames = 0
        self._rng = random.Random(seed)
        self._master: int | None = None
        self._slave: int | None = None
        self._path = ""
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None

    @property
    def port_path(self) -> str:
        """The pty device (``/dev/pts/N``) the board side opens."""
        if not self._path:
            raise RuntimeError("ZE03Responder not started")
        return self._path

    def start(self) -> ZE03Responder:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line discipline: a wire, not a terminal
        self._path = os.ttyname(self._slave)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="ze03-sim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._master, self._slave, self._stop_r, self._stop_w):
            if fd is not None and fd >= 0:
                os.close(fd)
        self._master = self._slave = None
        self._stop_r = self._stop_w = -1

    def __enter__(self) -> ZE03Responder:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def answer(self) -> bytes:
        """The frame for the next query (current value plus noise)."""
        return reply_frame(self.o2_pct + self._rng.gauss(0.0, self.noise_pct))

    def _serve(self) -> None:
        master = self._master
        if master is None:
            return
        buf = bytearray()
        while True:
            ready, _, _ = select.select([master, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                buf += os.read(master, 256)
            except OSError:  # EIO while no process has the slave open: keep serving
                continue
            buf = self._handle(buf, master)

    def _handle(self, buf: bytearray, master: int) -> bytearray:
        # Resync on the start byte; a command is 9 bytes with a valid checksum.
        while len(buf) >= FRAME_LEN:
            start = buf.find(b"\xff")
            if start < 0:
                return bytearray()
            del buf[:start]
            if len(buf) < FRAME_LEN:
                break
            frame = bytes(buf[:FRAME_LEN])
            if frame[1] != 0x01 or frame[8] != checksum(frame):
                self.bad_frames += 1
                del buf[:1]
                continue
            del buf[:FRAME_LEN]
            if frame[2] == READ_CMD:
                os.write(master, self.answer())
                self.queries += 1
            # MODE_CMD (Q&A / active): accepted without a reply, like the module.
        return buf


def main(argv: list[str] | None = None) -> int:
    """``python -m simulators.wire.ze03 --o2-pct 24.5``: serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--o2-pct", type=float, default=20.9)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--noise-pct", type=float, default=0.05)
    args = parser.parse_args(argv)
    with ZE03Responder(args.o2_pct, args.seed, args.noise_pct) as sim:
        print(f"ze03: serving {sim.port_path}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
