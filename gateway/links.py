"""Each device's link state, learned from what flows through the pipeline.

A source that knows something about a device's link puts a :class:`LinkReport` into the
``meta`` of the ``device_health`` reading it makes anyway (key :data:`LINK`):

- the MQTT ingest, for every status message of a configured board (``online``, or its last
  will ``offline``), with the number of the connection it came on; a status whose payload
  cannot be a point (not JSON: another firmware's last will) travels as a reading marked
  :data:`LINK_ONLY`, which :class:`LinkTracker` takes out of the pipeline (nothing is stored
  for it, as before);
- the Modbus poller, on every ``device_health`` point, which it sends at every change of the
  link and every ``HEALTH_EVERY_S`` (gateway/modbus.py, :meth:`DevicePoller.link_report`).

The gateway's own connection to the broker matters for the boards' last wills: the ingest
tells every connect and disconnect (:class:`BrokerReport`, a :data:`LINK_ONLY` reading posted
to the pipeline from paho's thread, :meth:`gateway.pipeline.Pipeline.post`, so it goes through
the stages first thing in the next pass, before the alarm engine judges anything again).

:class:`LinkTracker` is the first pipeline stage: it keeps the newest report of each configured
device and answers ``state(site, device)`` (online True / offline False / unknown None) for the
alarm engine (rule ``device-offline``) and the observer (/api/status, /metrics, the ``gateway``
points). Nobody looks back into the sources: a link is what the pipeline was told.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from gateway.config import GatewayConfig
from gateway.readings import FieldValue, Reading, wall_ms

LINK = "link"  # Reading.meta key of a LinkReport
LINK_ONLY = "link_only"  # Reading.meta key: the reading only carries the report, not stored
HEALTH_MEASUREMENT = "device_health"

# After a reconnect to the broker, boards have this long to say they are back before a last
# will published during the outage counts (a project choice: boards reconnect within seconds).
RECONNECT_GRACE_S = 30.0
# A board's last will counts once it has stood this long with the gateway connected: a broker
# that shuts down publishes the last will of every board an instant before it drops the gateway,
# which is not one alarm per board (a project choice: well under a board's reading interval).
STATUS_SETTLE_S = 2.0

LinkState = Callable[[str, str], bool | None]  # (site, device) -> online / offline / unknown


class Link(StrEnum):
    """A link state as the status API and /metrics show it."""

    ONLINE = "online"
    OFFLINE = "offline"
    UNKNOWN = "unknown"

    @classmethod
    def of(cls, online: bool | None) -> Link:
        return cls.UNKNOWN if online is None else cls.ONLINE if online else cls.OFFLINE

    @property
    def online(self) -> bool | None:
        return None if self is Link.UNKNOWN else self is Link.ONLINE

    @property
    def gauge(self) -> int:
        """``o2chain_device_online``: 1 online, 0 offline, -1 unknown."""
        return {Link.ONLINE: 1, Link.OFFLINE: 0, Link.UNKNOWN: -1}[self]


@dataclass(frozen=True, slots=True)
class LinkReport:
    """What a source says of a device's link.

    ``online``: True / False / None (not known yet: a Modbus device whose first polls are still
    under way). ``offline_from_ms`` (gateway wall clock): the link counts as offline from then
    on unless a newer report says otherwise (a Modbus device that stopped answering but whose
    last answer is recent: one lost poll is not offline). ``connection``: MQTT statuses only,
    the ingest's connection count when the status arrived (1 = the first connection)."""

    online: bool | None
    offline_from_ms: int | None = None
    connection: int = 0


@dataclass(frozen=True, slots=True)
class BrokerReport:
    """The MQTT ingest connected (``up``) to the broker or lost it; ``connection`` counts its
    connections (1 = the first)."""

    up: bool
    connection: int


def link_only(site: str, device: str, report: LinkReport, ts_ms: int) -> Reading:
    """A reading that carries only ``report`` (the tracker drops it; stored, had a pipeline no
    tracker, it would be a plain ``device_health`` point)."""
    fields: dict[str, FieldValue] = {} if report.online is None else {"online": report.online}
    meta = {LINK: report, LINK_ONLY: True}
    return Reading(HEALTH_MEASUREMENT, {"site": site, "device": device}, fields, ts_ms, meta)


def broker_event(up: bool, connection: int, ts_ms: int) -> Reading:
    """The ingest's connect (``up``) or disconnect, for :meth:`gateway.pipeline.Pipeline.post`;
    the tracker takes it out of the pipeline."""
    meta = {LINK: BrokerReport(up, connection), LINK_ONLY: True}
    return Reading(HEALTH_MEASUREMENT, {}, {}, ts_ms, meta)


def _is_will(report: LinkReport) -> bool:
    """A board's ``offline`` status: its last will."""
    return bool(report.connection) and report.online is False


@dataclass(frozen=True, slots=True)
class _Seen:
    report: LinkReport
    since_ms: int  # tracker clock: a board's will, when first seen (since its last "online")


class LinkTracker:
    """Pipeline stage: the newest :class:`LinkReport` of each configured device.

    A board's ``offline`` (its last will) counts once it has stood :data:`STATUS_SETTLE_S`, and
    never while the gateway has no broker (unknown then: a broker going down publishes every
    board's will an instant before it drops the gateway). After the gateway *re*connects (a
    connection later than the first), a will counts only once :data:`RECONNECT_GRACE_S` have
    passed: a broker restart publishes every board's last will and the boards come back seconds
    later, which is not one alarm per board. A board that does not come back is offline when the
    grace ends (or earlier, by silence: the engine's own rule). Reads are safe from any thread:
    each device's entry is replaced whole."""

    def __init__(self, config: GatewayConfig, clock_ms: Callable[[], int] = wall_ms):
        self.clock_ms = clock_ms
        self._links: dict[tuple[str, str], _Seen | None] = {
            (d.site, d.id): None for d in config.device
        }
        self._connection = 0  # the newest connection of the ingest heard of
        self._broker_up = False
        self._grace_until_ms = 0

    def __call__(self, readings: list[Reading]) -> list[Reading]:
        dropped = False
        for r in readings:
            if r.measurement == HEALTH_MEASUREMENT:
                report = r.meta.get(LINK)
                if isinstance(report, LinkReport):
                    self.report(r.tags.get("site", ""), r.tags.get("device", ""), report)
                elif isinstance(report, BrokerReport):
                    self.broker(report, r.ts_ms)
                else:
                    continue
                dropped = dropped or bool(r.meta.get(LINK_ONLY))
        if dropped:
            return [r for r in readings if not r.meta.get(LINK_ONLY)]
        return readings

    def broker(self, report: BrokerReport, at_ms: int) -> None:
        """The ingest's connection came up or went down (at ``at_ms``)."""
        if report.connection < self._connection:
            return  # older news
        if report.connection > self._connection:
            self._connected(report.connection, at_ms)
        self._broker_up = report.up

    def _connected(self, connection: int, at_ms: int) -> None:
        self._connection = connection
        self._broker_up = True
        if connection > 1:  # a reconnect, not the first connection
            self._grace_until_ms = at_ms + int(RECONNECT_GRACE_S * 1000)

    def report(self, site: str, device: str, report: LinkReport) -> None:
        """Take ``report`` for a device (unknown devices are left out: the table is bounded)."""
        key = (site, device)
        if key not in self._links:
            return
        now = self.clock_ms()
        if report.connection > self._connection:  # a status of a connection not heard of yet
            self._connected(report.connection, now)
        before = self._links[key]
        again = before is not None and _is_will(before.report) and _is_will(report)
        # The same will again (retained, after a reconnect) keeps when it was first seen.
        self._links[key] = _Seen(report, before.since_ms if again and before else now)

    def state(self, site: str, device: str) -> bool | None:
        """Online (True) / offline (False) / unknown (None, also for unknown devices)."""
        seen = self._links.get((site, device))
        if seen is None:
            return None
        link, now = seen.report, self.clock_ms()
        if _is_will(link):
            settled = now - seen.since_ms >= STATUS_SETTLE_S * 1000
            if not self._broker_up or now < self._grace_until_ms or not settled:
                return None
            return False
        if link.offline_from_ms is not None and now >= link.offline_from_ms:
            return False
        return link.online
