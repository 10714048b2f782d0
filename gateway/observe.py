"""Self-observation: what the gateway knows about its devices and itself.

:class:`Observer` is the last pipeline stage. It remembers each device's last values, counts
readings per source, proves the pipeline alive (the periodic tick passes through it), and every
``[gateway] metrics_interval_s`` adds one point of measurement ``gateway`` (tag ``gw``) with the
self-metrics. From the same state it answers ``/healthz``; ``/api/status`` is built by
gateway/status.py and ``/metrics`` rendered by gateway/metrics.py (gateway/http.py serves them;
gateway/README.md documents the JSON).

The delivery side (outbox, writer, MQTT ingest, Modbus pollers) belongs to other modules; this
one reads their stats through the typed views of gateway/sources.py, and each device's link
from the :class:`gateway.links.LinkTracker` stage, which learned it from the pipeline.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.alarms import AlarmEngine
from gateway.config import GatewayConfig
from gateway.enrich import Enricher
from gateway.links import Link, LinkState, LinkTracker
from gateway.metrics import render_prometheus
from gateway.readings import DEVICE_MEASUREMENTS, FieldValue, Reading, wall_ms
from gateway.sources import Sources
from gateway.telemetry import RejectReason

# Fields kept as a short history per device for the live page's sparklines (/api/history).
TREND_FIELDS = frozenset({
    "o2_pct", "eq_alt_m", "ppo2_kpa", "purity_pct", "flow_lpm", "outlet_kpa", "pressure_kpa",
    "flow_m3h", "level_pct",
})  # fmt: skip
HISTORY_POINTS = 180  # per device and field: 6 min at 2 s, 30 min at the default 10 s
PIPELINE_STALL_S = 10.0  # the tick passes every second; ten missed ones is a stall


_MAX_TREND_LAYOUTS = 10_000  # field layouts with their trend fields known, then start again


def _trend_fields(names: tuple[str, ...]) -> tuple[str, ...]:
    """The trend fields of a field layout, in the layout's order."""
    return tuple(name for name in names if name in TREND_FIELDS)


def _fold(values: dict[str, tuple[FieldValue, int]], readings: list[Reading]) -> None:
    """Fold in-order readings into ``values``: each field's value from the last reading that
    had it (newest first, so the older ones are skipped once their fields are covered)."""
    if len(readings) == 1:
        r = readings[0]
        ts = r.ts_ms
        for name, value in r.fields.items():
            values[name] = (value, ts)
        return
    covered: set[str] = set()
    for r in reversed(readings):
        fields = r.fields
        if covered.issuperset(fields):
            continue
        ts = r.ts_ms
        for name, value in fields.items():
            if name not in covered:
                covered.add(name)
                values[name] = (value, ts)


@dataclass
class _DeviceSeen:
    values: dict[str, tuple[FieldValue, int]] = field(default_factory=dict)  # field: (v, ts)
    last_seen_ms: int | None = None
    readings: int = 0
    newest_ts_ms: int = -1
    history: dict[str, deque[tuple[int, float]]] = field(default_factory=dict)

    def take(self, readings: list[Reading], trends: dict[tuple[str, ...], tuple[str, ...]]) -> None:
        """This device's readings of one pipeline call, in order. Each reading's trend values
        newer than the field's last one join the history (replays are left out); the last
        values are folded once per call: an in-order reading (at least as new as every one
        before) is only kept in a list, an older one (a replay) first folds that list and then
        replaces only the values older than its own. Readings are values: nothing mutates
        their fields."""
        history = self.history
        values = self.values
        newest = self.newest_ts_ms
        in_order: list[Reading] = []
        for r in readings:
            fields = r.fields
            ts = r.ts_ms
            names = tuple(fields)
            trend = trends.get(names)
            if trend is None:
                if len(trends) >= _MAX_TREND_LAYOUTS:
                    trends.clear()
                trend = trends[names] = _trend_fields(names)
            for name in trend:  # the live page's sparklines: every reading's value
                value = fields[name]
                if value.__class__ is not float:
                    if isinstance(value, bool) or not isinstance(value, int | float):
                        continue
                    value = float(value)
                series = history.get(name)
                if series is None:
                    series = history[name] = deque(maxlen=HISTORY_POINTS)
                    series.append((ts, value))
                elif ts > series[-1][0]:
                    series.append((ts, value))
            if ts >= newest:  # the usual case: newer than all we have
                newest = ts
                in_order.append(r)
                continue
            if in_order:
                _fold(values, in_order)
                in_order = []
            for name, value in fields.items():
                old = values.get(name)
                if old is None or ts >= old[1]:
                    values[name] = (value, ts)
        if in_order:
            _fold(values, in_order)
        self.newest_ts_ms = newest


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One device as /api/status and /metrics show it (``last_seen_ms``: gateway clock of its
    last reading; ``age_s`` since then)."""

    site: str
    device: str
    transport: str
    link: Link
    last_seen_ms: int | None
    age_s: float | None


class Observer:
    """Pipeline stage and the source of /healthz, /metrics and /api/status."""

    def __init__(
        self,
        config: GatewayConfig,
        sources: Sources,
        engine: AlarmEngine | None = None,
        enricher: Enricher | None = None,
        link_state: LinkState | None = None,
        clock_ms: Callable[[], int] = wall_ms,
    ):
        self.config = config
        self.sources = sources
        self.engine = engine
        self.enricher = enricher
        # Each device's link as the pipeline learned it (gateway/links.py); without a tracker's
        # state every link is unknown.
        self.link_state = link_state or LinkTracker(config, clock_ms).state
        self.clock_ms = clock_ms
        self.started_ms = clock_ms()
        self.last_pass_ms = self.started_ms
        self.readings_by_source: dict[str, int] = {"mqtt": 0, "modbus": 0}
        self.points_out = 0
        self._devices = {(d.site, d.id): _DeviceSeen() for d in config.device}
        self._trends: dict[tuple[str, ...], tuple[str, ...]] = {}  # layout: its trend fields
        self._lock = threading.Lock()
        self._interval_ms = int(config.gateway.metrics_interval_s * 1000)
        self._next_metrics_ms = self.started_ms + self._interval_ms
        self._last_counts = (self.started_ms, dict(self.readings_by_source))

    # ----------------------------------------------------------------- the stage
    def __call__(self, readings: list[Reading]) -> list[Reading]:
        now = self.clock_ms()
        with self._lock:
            self.last_pass_ms = now
            self.points_out += len(readings)
            devices = self._devices
            # The readings of each known device, in order: the per-device work (count, last
            # seen, last values) is done once per device and call, not once per reading.
            groups: dict[tuple[str, str], list[Reading]] = {}
            modbus = 0
            for r in readings:
                if r.measurement not in DEVICE_MEASUREMENTS:
                    continue
                tags = r.tags
                key = (tags.get("site", ""), tags.get("device", ""))
                group = groups.get(key)
                if group is not None:
                    group.append(r)
                elif key in devices:
                    groups[key] = [r]
                else:
                    continue
                if tags.get("source") == "modbus":
                    modbus += 1
            counted = 0
            trends = self._trends
            for key, group in groups.items():
                seen = devices[key]
                seen.readings += len(group)
                counted += len(group)
                seen.last_seen_ms = now
                seen.take(group, trends)
            self.readings_by_source["mqtt"] += counted - modbus
            self.readings_by_source["modbus"] += modbus
            due = now >= self._next_metrics_ms
            if due:
                self._next_metrics_ms = now + self._interval_ms
        if due:
            return [*readings, self.metrics_point(now)]
        return readings

    # ----------------------------------------------------------------- health
    def health(self) -> dict[str, Any]:
        """``{"ok": bool, "reasons": [...], "warnings": [...]}``: not ok when the pipeline
        stalled or the outbox stopped draining (oldest point older than the limit)."""
        now = self.clock_ms()
        reasons: list[str] = []
        warnings: list[str] = []
        stalled_s = (now - self.last_pass_ms) / 1000.0
        if stalled_s > PIPELINE_STALL_S:
            reasons.append(f"pipeline: no pass for {stalled_s:.0f} s")
        age = self.sources.outbox_age_s()
        limit = self.config.gateway.health_outbox_age_s
        if age > limit:
            reasons.append(f"outbox: oldest point waits {age:.0f} s (limit {limit:g} s)")
        if self.sources.mqtt is not None and not self.sources.ingest_stats.connected:
            warnings.append("mqtt: not connected to the broker")
        writer = self.sources.writer_stats
        last_error = writer.last_error
        if writer.misconfigured:
            # Nothing reaches InfluxDB until someone fixes the config: unhealthy, not a warning.
            reasons.append(f"influx refuses the gateway: {last_error}")
        elif last_error and age > 0:
            warnings.append(f"influx: {last_error}")
        if self.sources.notifier is not None:
            warnings += self.sources.notifier.health_warnings()
        return {"ok": not reasons, "reasons": reasons, "warnings": warnings}

    # ----------------------------------------------------------------- metrics
    def snapshot(self, now: int) -> tuple[dict[str, int], list[DeviceRow], int]:
        """Readings per source, one row per device, and the last pipeline pass (ms), taken
        together under the lock (gateway/metrics.py)."""
        with self._lock:
            return dict(self.readings_by_source), self._device_rows(now), self.last_pass_ms

    def _device_rows(self, now: int) -> list[DeviceRow]:
        rows = []
        for d in self.config.device:
            seen = self._devices[(d.site, d.id)]
            last = seen.last_seen_ms
            rows.append(
                DeviceRow(
                    site=d.site,
                    device=d.id,
                    transport=d.transport.value,
                    link=Link.of(self.link_state(d.site, d.id)),
                    last_seen_ms=last,
                    age_s=None if last is None else round((now - last) / 1000.0, 3),
                )
            )
        return rows

    def metrics_point(self, now: int) -> Reading:
        """One ``gateway`` point with the self-metrics (rates since the previous point)."""
        then, counts = self._last_counts
        span_s = max(1e-3, (now - then) / 1000.0)
        with self._lock:
            current = dict(self.readings_by_source)
            rows = self._device_rows(now)
        self._last_counts = (now, current)
        src = self.sources
        fields: dict[str, FieldValue] = {
            f"rate_{k}_per_s": round((current[k] - counts.get(k, 0)) / span_s, 3) for k in current
        }
        fields.update({f"readings_{k}": v for k, v in current.items()})
        fields.update(
            outbox_depth=src.outbox_depth(),
            outbox_age_s=round(src.outbox_age_s(), 3),
            written=src.writer_stats.written,
            write_failures=src.writer_stats.failures,
            write_latency_s=src.writer_stats.last_latency_s,
            rejects=sum(src.ingest_stats.rejects.values()),
            duplicates=src.ingest_stats.duplicates,
            mqtt_connected=src.ingest_stats.connected,
            devices_online=sum(1 for r in rows if r.link is Link.ONLINE),
            devices_offline=sum(1 for r in rows if r.link is Link.OFFLINE),
            uptime_s=round((now - self.started_ms) / 1000.0, 1),
        )
        # Cumulative rejects per reason, every known reason present (0 included) so that a
        # dashboard's per-reason series exist before the first reject.
        by_reason = {str(k): int(v) for k, v in src.ingest_stats.rejects.items()}
        for reason in sorted({*(r.value for r in RejectReason), *by_reason}):
            fields[f"rejects_{reason}"] = by_reason.get(reason, 0)
        if self.engine is not None:
            counts_a = self.engine.counts()
            fields.update(alarms_active=counts_a["active"], alarms_unacked=counts_a["unacked"])
        return Reading("gateway", {"gw": self.config.gateway.id}, fields, now)

    def prometheus(self) -> str:
        """Prometheus text exposition format 0.0.4 (gateway/metrics.py)."""
        return render_prometheus(self)

    def history(self) -> dict[str, Any]:
        """``/api/history``: ``{"devices": {"site/device": {"o2_pct": [[ts_ms, v], ...]}}}``,
        the last :data:`HISTORY_POINTS` values of each trend field, oldest first."""
        with self._lock:
            devices = {
                f"{site}/{dev}": {name: [list(p) for p in h] for name, h in seen.history.items()}
                for (site, dev), seen in self._devices.items()
            }
        return {"v": 1, "now_ms": self.clock_ms(), "points": HISTORY_POINTS, "devices": devices}

    def device_values(self, now: int) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
        """Per device, its last value of each field with the value's time and age."""
        with self._lock:
            return {
                k: {
                    name: {"value": v, "ts_ms": ts, "age_s": round((now - ts) / 1000.0, 3)}
                    for name, (v, ts) in sorted(seen.values.items())
                }
                for k, seen in self._devices.items()
            }

    def status(self) -> dict[str, Any]:
        """``/api/status`` (gateway/status.py builds it)."""
        from gateway.status import status_document

        return status_document(self)
