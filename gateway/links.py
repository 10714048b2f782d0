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


def link_only(site: str, device: str, report: LinkReport, ts_ms: int) -> Reading:
    """A reading that carries only ``report`` (the tracker drops it; stored, had a pipeline no
    tracker, it would be a plain ``device_health`` point)."""
    fields: dict[str, FieldValue] = {} if report.online is None else {"online": report.online}
    meta = {LINK: report, LINK_ONLY: True}
    return Reading(HEALTH_MEASUREMENT, {"site": site, "device": device}, fields, ts_ms, meta)


class LinkTracker:
    """Pipeline stage: the newest :class:`LinkReport` of each configured device.

    After the gateway *re*connects to the broker (a status of a connection later than the
    first), an MQTT ``offline`` counts only once :data:`RECONNECT_GRACE_S` have passed: a broker
    restart publishes every board's last will and the boards come back seconds later, which is
    not one alarm per board. A board that does not come back is offline when the grace ends (or
    earlier, by silence: the engine's own rule). Reads are safe from any thread: each device's
    entry is replaced whole."""

    def __init__(self, config: GatewayConfig, clock_ms: Callable[[], int] = wall_ms):
        self.clock_ms = clock_ms
        self._links: dict[tuple[str, str], LinkReport | None] = {
            (d.site, d.id): None for d in config.device
        }
        self._connection = 0
        self._grace_until_ms = 0

    def __call__(self, readings: list[Reading]) -> list[Reading]:
        dropped = False
        for r in readings:
            if r.measurement == HEALTH_MEASUREMENT:
                report = r.meta.get(LINK)
                if isinstance(report, LinkReport):
                    self.report(r.tags.get("site", ""), r.tags.get("device", ""), report)
                    dropped = dropped or bool(r.meta.get(LINK_ONLY))
        if dropped:
            return [r for r in readings if not r.meta.get(LINK_ONLY)]
        return readings

    def report(self, site: str, device: str, report: LinkReport) -> None:
        """Take ``report`` for a device (unknown devices are left out: the table is bounded)."""
        key = (site, device)
        if key not in self._links:
            return
        if report.connection > self._connection:
            if report.connection > 1:  # a reconnect, not the first connection
                self._grace_until_ms = self.clock_ms() + int(RECONNECT_GRACE_S * 1000)
            self._connection = report.connection
        if report.connection and report.online is False:
            grace_until = self._grace_until_ms
            if self.clock_ms() < grace_until:
                report = LinkReport(None, offline_from_ms=grace_until, connection=report.connection)
        self._links[key] = report

    def state(self, site: str, device: str) -> bool | None:
        """Online (True) / offline (False) / unknown (None, also for unknown devices)."""
        link = self._links.get((site, device))
        if link is None:
            return None
        if link.offline_from_ms is not None and self.clock_ms() >= link.offline_from_ms:
            return False
        return link.online
