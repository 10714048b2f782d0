"""The stage between decoding and the outbox: enrich, then evaluate alarms.

Both sources call :meth:`Pipeline.process` with freshly decoded readings (the MQTT committer
thread and the asyncio Modbus pollers), so it serialises them with a lock. Stages get the
readings of a run of MQTT messages (up to ``mqtt_ingest.PIPELINE_CHUNK``, in arrival order) or
of one Modbus poll and return what goes to the outbox (the same readings, enriched, plus any they
add, such as alarm events). A stage judges readings one by one in the order given, so a run
means what its messages mean one at a time; only the per-call work is shared (lock, clock, and
the time-driven checks - alarm tick at most once a second, periodic saves and points - which
run after the whole run rather than after its first message).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter

from gateway.alarms import AlarmEvent, alarm_events
from gateway.readings import Reading

Stage = Callable[[list[Reading]], list[Reading]]
_measurement = attrgetter("measurement")


class Pipeline:
    """Runs ``stages`` in order under one lock."""

    def __init__(self, stages: Sequence[Stage] = ()):
        self.stages = list(stages)
        self._lock = threading.Lock()
        self._posted: list[Reading] = []
        self._posted_lock = threading.Lock()

    def post(self, reading: Reading) -> None:
        """A fact from a thread that cannot make a pass itself (paho's callbacks: a pass's output
        must be committed): it goes through the stages first thing in the next pass (the tick
        makes one every second), so no stage judges anything again before it has seen it."""
        with self._posted_lock:
            self._posted.append(reading)

    def process(self, readings: list[Reading]) -> list[Reading]:
        with self._lock:
            if self._posted:
                with self._posted_lock:
                    posted, self._posted = self._posted, []
                readings = posted + readings
            for stage in self.stages:
                readings = stage(readings)
            return readings


@dataclass
class Output:
    """Pipeline output made ready for :meth:`gateway.outbox.Outbox.commit`: ``lines`` (the
    readings), ``keep_lines`` (alarm points: committed past the bound, never dropped) and the
    alarm ``events`` whose state commits with them and which are announced after the commit."""

    lines: list[str] = field(default_factory=list)
    keep_lines: list[str] = field(default_factory=list)
    events: list[AlarmEvent] = field(default_factory=list)

    def add(self, readings: Sequence[Reading], encode: Callable[[Reading], str]) -> None:
        if "alarm" not in map(_measurement, readings):  # the usual run: all readings
            self.lines += map(encode, readings)
            return
        for r in readings:
            if r.measurement == "alarm":
                self.keep_lines.append(encode(r))
                self.events += alarm_events([r])
            else:
                self.lines.append(encode(r))
