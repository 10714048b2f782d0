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

from gateway.readings import Reading

Stage = Callable[[list[Reading]], list[Reading]]


class Pipeline:
    """Runs ``stages`` in order under one lock."""

    def __init__(self, stages: Sequence[Stage] = ()):
        self.stages = list(stages)
        self._lock = threading.Lock()

    def process(self, readings: list[Reading]) -> list[Reading]:
        with self._lock:
            for stage in self.stages:
                readings = stage(readings)
            return readings
