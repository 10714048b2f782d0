"""Sensor-wire faults and the pty pump shared by the Gasboard and LuminOx simulators.

A sensor's protocol lives in a pure *wire* object: ``receive(data, now_s)`` returns the bytes
the sensor answers, ``tick(now_s)`` the bytes it streams unasked, ``next_due(now_s)`` when it
next wants to stream. Time is passed in, so unit tests drive a wire with a fake clock and never
sleep. :class:`PtySensor` pumps a wire on a pseudo-terminal in a background thread with the
real clock, so firmware and gateways open ``port_path`` like a UART.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import threading
import time
import tty
from dataclasses import dataclass, field
from typing import Protocol, Self

from o2base.procs import StartStop


@dataclass
class WireFaults:
    """Per-sensor misbehaviour; change fields at any time. ``*_every`` = every n-th frame."""

    bad_checksum_every: int = 0  # frame sent with a wrong checksum (LuminOx: a garbled digit)
    garbage_every: int = 0  # random bytes before the frame (noise on the line, a reboot)
    drop_every: int = 0  # frame not sent at all
    stuck: bool = False  # values frozen at what they were when set
    drift_per_h: float = 0.0  # O2 % added per hour since the drift started (cell ageing)
    disconnected: bool = False  # nothing sent, queries ignored (cable off, sensor dead)
    _frames: int = field(default=0, repr=False)
    _drift_t0: float | None = field(default=None, repr=False)
    _stuck_values: tuple[float, ...] | None = field(default=None, repr=False)

    def count_frame(self) -> int:
        self._frames += 1
        return self._frames

    @staticmethod
    def hits(every: int, n: int) -> bool:
        return every > 0 and n % every == 0

    def drift(self, now_s: float) -> float:
        if self.drift_per_h == 0.0:
            self._drift_t0 = None
            return 0.0
        if self._drift_t0 is None:
            self._drift_t0 = now_s
        return self.drift_per_h * (now_s - self._drift_t0) / 3600.0

    def hold(self, values: tuple[float, ...]) -> tuple[float, ...]:
        """The values to report: frozen while ``stuck``."""
        if not self.stuck:
            self._stuck_values = None
            return values
        if self._stuck_values is None:
            self._stuck_values = values
        return self._stuck_values

    def reading(
        self, values: tuple[float, ...], rng: random.Random, noise_sd: float, now_s: float
    ) -> tuple[float, ...]:
        """What the sensor reports for the true ``values``: seeded Gaussian noise and the drift
        on the first one (the gas reading), then frozen while ``stuck``."""
        first = values[0] + rng.gauss(0.0, noise_sd) + self.drift(now_s)
        return self.hold((first, *values[1:]))

    def checksummed_out(self, frame: bytes, rng: random.Random) -> bytes:
        """:meth:`frame_out` for a frame whose last byte is its checksum (the damaged one has
        that byte off by one)."""
        return self.frame_out(frame, rng, frame[:-1] + bytes(((frame[-1] + 1) & 0xFF,)))

    def frame_out(self, frame: bytes, rng: random.Random, corrupt: bytes) -> bytes:
        """Apply drop / bad checksum / garbage to one outgoing frame.

        ``corrupt`` is the frame with its checksum (or a digit) damaged, made by the caller.
        """
        n = self.count_frame()
        if self.hits(self.drop_every, n):
            return b""
        out = corrupt if self.hits(self.bad_checksum_every, n) else frame
        if self.hits(self.garbage_every, n):
            out = bytes(rng.randrange(256) for _ in range(rng.randint(1, 7))) + out
        return out


class SensorWire:
    """What every simulated sensor's wire keeps: its faults (change them any time), a seeded
    random source (noise, garbage bytes) and the host's bytes not parsed yet."""

    def __init__(self, seed: int) -> None:
        self.faults = WireFaults()
        self._rng = random.Random(seed)
        self._buf = bytearray()


class StreamClock:
    """When a sensor that streams unasked speaks next: every ``interval_s`` from the first
    call, missed slots skipped rather than sent in a burst (a real sensor does not catch up).
    ``interval_s`` None means it does not stream (now); it may change between calls."""

    def __init__(self) -> None:
        self.next_s: float | None = None

    def due(self, now_s: float, interval_s: float | None) -> float | None:
        if interval_s is None:
            return None
        if self.next_s is None:
            self.next_s = now_s + interval_s
        return self.next_s

    def take(self, now_s: float, interval_s: float | None) -> bool:
        """True when a frame is due at ``now_s`` (and the next slot is set)."""
        due = self.due(now_s, interval_s)
        if due is None or interval_s is None or now_s < due:
            return False
        while self.next_s is not None and self.next_s <= now_s:
            self.next_s += interval_s
        return True


class Wire(Protocol):
    def receive(self, data: bytes, now_s: float) -> bytes: ...

    def tick(self, now_s: float) -> bytes: ...

    def next_due(self, now_s: float) -> float | None: ...


class PtySensor(StartStop):
    """Serve a :class:`Wire` on a fresh pty; ``port_path`` is the side the host opens."""

    def __init__(self, wire: Wire, name: str = "sensor") -> None:
        self.wire = wire
        self.name = name
        self._master: int | None = None
        self._slave: int | None = None
        self._path = ""
        self._stop_r = self._stop_w = -1
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def port_path(self) -> str:
        if not self._path:
            raise RuntimeError(f"{self.name} simulator not started")
        return self._path

    def start(self) -> Self:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # a wire, not a terminal: no echo, no line discipline
        self._path = os.ttyname(self._slave)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name=f"{self.name}-sim", daemon=True)
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

    def _serve(self) -> None:
        master = self._master
        if master is None:
            return
        while True:
            now = time.monotonic()
            due = self.wire.next_due(now)
            timeout = None if due is None else max(0.0, due - now)
            ready, _, _ = select.select([master, self._stop_r], [], [], timeout)
            if self._stop_r in ready:
                return
            now = time.monotonic()
            out = b""
            if master in ready:
                try:
                    data = os.read(master, 256)
                except OSError:  # EIO while nobody holds the slave side: keep serving
                    data = b""
                if data:
                    out += self.wire.receive(data, now)
            out += self.wire.tick(now)
            if out:
                with contextlib.suppress(OSError):
                    os.write(master, out)
