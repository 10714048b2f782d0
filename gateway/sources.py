"""What the observer reads of the delivery side: typed views of the ingest's, writer's, outbox's
and pollers' own stats (a renamed counter fails the type check instead of reading 0 forever),
and each device's link state from the boards' status messages and the pollers' health."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.alarms import LinkState
from gateway.config import Device
from gateway.modbus import OFFLINE_AFTER, DeviceHealth
from gateway.mqtt_ingest import IngestStats
from gateway.outbox import OutboxStats
from gateway.writer import WriterStats

# After a reconnect to the broker, boards have this long to say they are back before a last
# will published during the outage counts (a project choice: boards reconnect within seconds).
RECONNECT_GRACE_S = 30.0
# A board's last will counts once it has stood this long with the gateway connected: a broker
# that shuts down publishes the last will of every board an instant before it drops the gateway,
# which is not one alarm per board (a project choice: well under a board's reading interval).
STATUS_SETTLE_S = 2.0


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


def link_state_from(sources: Sources, clock_s: Callable[[], float] = time.monotonic) -> LinkState:
    """Online (True) / offline (False) / unknown (None) per device from the ingest's retained
    status messages (last will) and the Modbus pollers' health. A Modbus device counts as
    offline after two poll intervals without an answer, so one lost poll does not flap.

    A board's ``offline`` status (its last will) counts once it has stood
    :data:`STATUS_SETTLE_S` with the gateway connected, and after the gateway *re*connects to the
    broker only once :data:`RECONNECT_GRACE_S` have passed: a broker restart publishes every
    board's last will and the boards come back seconds later, which is not one alarm per board.
    While the gateway has no broker, a board's state is unknown (its own alarm says so). A board
    that does not come back is offline when the grace ends (or earlier, by silence)."""
    pollers = {(p.device.site, p.device.id): p for p in sources.pollers}
    seen = {"connects": 0, "grace_until": 0.0}
    offline_since: dict[str, float] = {}  # when this closure first saw a board's last will

    def state(site: str, device: str) -> bool | None:
        poller = pollers.get((site, device))
        if poller is not None:
            health = poller.health
            if health.online:
                return True
            last_ok = health.last_ok_monotonic
            if last_ok is None and health.consecutive_failures < OFFLINE_AFTER:
                # Not polled yet, or the first polls are still under way: unknown, not offline
                # (every gateway start would otherwise alarm every Modbus device for a moment).
                return None
            interval = poller.device.interval_s
            # Not answering, but the last answer is recent: one lost poll is not "offline".
            return not (last_ok is None or clock_s() - last_ok > 2 * interval)
        stats = sources.ingest_stats
        if stats.connects != seen["connects"]:  # noticed within a tick: the engine asks each
            if stats.connects > 1:  # a reconnect, not the first connection
                seen["grace_until"] = clock_s() + RECONNECT_GRACE_S
            seen["connects"] = stats.connects
        key = f"{site}/{device}"
        status = stats.device_state.get(key)
        if status is None:
            return None
        if status == "online":
            offline_since.pop(key, None)
            return True
        now = clock_s()
        since = offline_since.setdefault(key, now)
        if not stats.connected or now < seen["grace_until"] or now - since < STATUS_SETTLE_S:
            return None
        return False

    return state
