"""What the observer reads of the delivery side: typed views of the ingest's, writer's, outbox's
and pollers' own stats (a renamed counter fails the type check instead of reading 0 forever).
Each device's link state is not read here: it flows through the pipeline (gateway/links.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.config import Device
from gateway.modbus import DeviceHealth
from gateway.mqtt_ingest import IngestStats
from gateway.outbox import OutboxStats
from gateway.writer import WriterStats


class OutboxSource(Protocol):
    stats: OutboxStats

    @property
    def queued_bytes(self) -> int: ...
    def depth(self) -> int: ...
    def oldest_age_s(self) -> float: ...
    def dead_letter_counts(self) -> dict[str, int]: ...


class IngestSource(Protocol):
    stats: IngestStats


class DrainerSource(Protocol):
    stats: WriterStats


class PollerSource(Protocol):
    device: Device
    health: DeviceHealth


class NotifierSource(Protocol):
    def metrics(self) -> dict[str, Any]: ...
    def health_warnings(self) -> list[str]: ...


@dataclass
class Sources:
    """The delivery side's objects (any of them may be absent in tests)."""

    # Typed: a renamed stat fails the type check instead of reading 0 forever.
    outbox: OutboxSource | None = None
    drainer: DrainerSource | None = None
    mqtt: IngestSource | None = None
    pollers: list[PollerSource] = field(default_factory=list)
    extra: dict[str, Callable[[], float]] = field(default_factory=dict)  # more gauges
    notifier: NotifierSource | None = None  # gateway/notify/worker.py

    def outbox_depth(self) -> int:
        return 0 if self.outbox is None else self.outbox.depth()

    def outbox_age_s(self) -> float:
        return 0.0 if self.outbox is None else self.outbox.oldest_age_s()

    def dead_letter_counts(self) -> dict[str, int]:
        return {} if self.outbox is None else dict(self.outbox.dead_letter_counts())

    @property
    def ingest_stats(self) -> IngestStats:
        """The MQTT ingest's counters (zeros without an ingest)."""
        return IngestStats() if self.mqtt is None else self.mqtt.stats

    @property
    def writer_stats(self) -> WriterStats:
        """The InfluxDB writer's counters (zeros without a writer)."""
        return WriterStats() if self.drainer is None else self.drainer.stats
