"""Self-observation: what the gateway knows about its devices and itself.

:class:`Observer` is the last pipeline stage. It remembers each device's last values, counts
readings per source, proves the pipeline alive (the periodic tick passes through it), and every
``[gateway] metrics_interval_s`` adds one point of measurement ``gateway`` (tag ``gw``) with the
self-metrics. From the same state it renders ``/healthz``, ``/metrics`` (Prometheus text
format 0.0.4) and ``/api/status`` (gateway/http.py serves them; gateway/README.md documents
the JSON).

The delivery side (outbox, writer, MQTT ingest, Modbus pollers) belongs to other modules; this
one only reads their public ``stats``/``health`` attributes, defensively (``getattr`` with a
default), so their evolution never breaks observation.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway import oxygen
from gateway.alarms import AlarmEngine
from gateway.config import AlarmKind, Device, GatewayConfig
from gateway.enrich import Enricher
from gateway.modbus import DeviceHealth
from gateway.mqtt_ingest import IngestStats
from gateway.outbox import OutboxStats
from gateway.readings import FieldValue, Reading
from gateway.telemetry import RejectReason
from gateway.writer import WriterStats

DEVICE_MEASUREMENTS = frozenset({"room", "concentrator", "supply"})
# Fields kept as a short history per device for the live page's sparklines (/api/history).
TREND_FIELDS = frozenset({
    "o2_pct", "eq_alt_m", "ppo2_kpa", "purity_pct", "flow_lpm", "outlet_kpa", "pressure_kpa",
    "flow_m3h", "level_pct",
})  # fmt: skip
HISTORY_POINTS = 180  # per device and field: 6 min at 2 s, 30 min at the default 10 s
PIPELINE_STALL_S = 10.0  # the tick passes every second; ten missed ones is a stall
LinkState = Callable[[str, str], bool | None]


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


def _wall_ms() -> int:
    return int(time.time() * 1000)


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
    offline after two poll intervals without an answer, so one lost poll does not flap."""
    pollers = {(p.device.site, p.device.id): p for p in sources.pollers}

    def state(site: str, device: str) -> bool | None:
        poller = pollers.get((site, device))
        if poller is not None:
            health = poller.health
            if not health.polls:
                return None
            if health.online:
                return True
            last_ok = health.last_ok_monotonic
            interval = poller.device.interval_s
            # Not answering, but the last answer is recent: one lost poll is not "offline".
            return not (last_ok is None or clock_s() - last_ok > 2 * interval)
        status = sources.ingest_stats.device_state.get(f"{site}/{device}")
        return None if status is None else status == "online"

    return state


@dataclass
class _DeviceSeen:
    values: dict[str, tuple[FieldValue, int]] = field(default_factory=dict)  # field: (v, ts)
    last_seen_ms: int | None = None
    readings: int = 0
    newest_ts_ms: int = -1
    history: dict[str, deque[tuple[int, float]]] = field(default_factory=dict)
    # In-order readings (fields, ts) of the current pipeline call, folded into ``values`` at its
    # end: a reading costs one append here instead of one tuple per field, and the fold keeps
    # only each field's newest value. Readings are values: nothing mutates their fields.
    pending: list[tuple[dict[str, FieldValue], int]] = field(default_factory=list)

    def remember(self, fields: dict[str, FieldValue], ts_ms: int) -> None:
        """Append trend values newer than the field's last one (replays are left out)."""
        history = self.history
        for name in TREND_FIELDS.intersection(fields):
            value = fields[name]
            if value.__class__ is not float:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                value = float(value)
            series = history.get(name)
            if series is None:
                series = history[name] = deque(maxlen=HISTORY_POINTS)
            if not series or ts_ms > series[-1][0]:
                series.append((ts_ms, value))

    def newest(self, fields: dict[str, FieldValue], ts_ms: int) -> bool:
        """A reading at least as new as every one before: its values become the last ones at
        the next :meth:`fold`. True if it is the first one pending (the caller folds later)."""
        self.newest_ts_ms = ts_ms
        self.pending.append((fields, ts_ms))
        return len(self.pending) == 1

    def replayed(self, fields: dict[str, FieldValue], ts_ms: int) -> None:
        """An older reading (a replay): only values newer than those kept replace them."""
        self.fold()
        for name, value in fields.items():
            old = self.values.get(name)
            if old is None or ts_ms >= old[1]:
                self.values[name] = (value, ts_ms)

    def fold(self) -> dict[str, tuple[FieldValue, int]]:
        """``values`` with the pending readings folded in: each field's value from the last
        reading that had it (newest first, so older ones are skipped once covered)."""
        pending = self.pending
        if pending:
            values = self.values
            covered: set[str] = set()
            for fields, ts in reversed(pending):
                if covered.issuperset(fields):
                    continue
                for name, value in fields.items():
                    if name not in covered:
                        covered.add(name)
                        values[name] = (value, ts)
            pending.clear()
        return self.values


class Observer:
    """Pipeline stage and the source of /healthz, /metrics and /api/status."""

    def __init__(
        self,
        config: GatewayConfig,
        sources: Sources,
        engine: AlarmEngine | None = None,
        enricher: Enricher | None = None,
        link_state: LinkState | None = None,
        clock_ms: Callable[[], int] = _wall_ms,
    ):
        self.config = config
        self.sources = sources
        self.engine = engine
        self.enricher = enricher
        self.link_state = link_state or link_state_from(sources)
        self.clock_ms = clock_ms
        self.started_ms = clock_ms()
        self.last_pass_ms = self.started_ms
        self.readings_by_source: dict[str, int] = {"mqtt": 0, "modbus": 0}
        self.points_out = 0
        self._devices = {(d.site, d.id): _DeviceSeen() for d in config.device}
        self._lock = threading.Lock()
        self._interval_ms = int(config.gateway.metrics_interval_s * 1000)
        self._next_metrics_ms = self.started_ms + self._interval_ms
        self._last_counts = (self.started_ms, dict(self.readings_by_source))
        self._thresholds = self._device_thresholds()

    # ----------------------------------------------------------------- the stage
    def __call__(self, readings: list[Reading]) -> list[Reading]:
        now = self.clock_ms()
        with self._lock:
            self.last_pass_ms = now
            self.points_out += len(readings)
            devices = self._devices
            touched: list[_DeviceSeen] = []
            mqtt = modbus = 0
            try:
                for r in readings:
                    if r.measurement not in DEVICE_MEASUREMENTS:
                        continue
                    tags = r.tags
                    seen = devices.get((tags.get("site", ""), tags.get("device", "")))
                    if seen is None:
                        continue
                    if tags.get("source") == "modbus":
                        modbus += 1
                    else:
                        mqtt += 1
                    seen.readings += 1
                    seen.last_seen_ms = now
                    ts = r.ts_ms
                    seen.remember(r.fields, ts)
                    if ts >= seen.newest_ts_ms:  # the usual case: newer than all we have
                        if seen.newest(r.fields, ts):
                            touched.append(seen)
                    else:
                        seen.replayed(r.fields, ts)
            finally:  # every call leaves nothing pending, whatever happened
                for seen in touched:
                    seen.fold()
            self.readings_by_source["mqtt"] += mqtt
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
    def _device_rows(self, now: int) -> list[dict[str, Any]]:
        rows = []
        for d in self.config.device:
            seen = self._devices[(d.site, d.id)]
            link = self.link_state(d.site, d.id)
            last = seen.last_seen_ms
            rows.append({
                "site": d.site,
                "device": d.id,
                "kind": d.kind.value,
                "transport": d.transport.value,
                "link": {True: "online", False: "offline", None: "unknown"}[link],
                "last_seen_ms": last,
                "age_s": None if last is None else round((now - last) / 1000.0, 3),
                "readings": seen.readings,
            })  # fmt: skip
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
            devices_online=sum(1 for r in rows if r["link"] == "online"),
            devices_offline=sum(1 for r in rows if r["link"] == "offline"),
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
        """Prometheus text exposition format 0.0.4."""
        now = self.clock_ms()
        src = self.sources
        out = _Prom()
        with self._lock:
            by_source = dict(self.readings_by_source)
            rows = self._device_rows(now)
            last_pass = self.last_pass_ms
        out.add("o2chain_up", "gauge", "1 while the gateway runs", [({}, 1)])
        out.add(
            "o2chain_uptime_seconds",
            "gauge",
            "since start",
            [({}, (now - self.started_ms) / 1000.0)],
        )
        out.add(
            "o2chain_pipeline_last_pass_age_seconds",
            "gauge",
            "since the pipeline last ran (the tick runs it every second)",
            [({}, (now - last_pass) / 1000.0)],
        )
        out.add(
            "o2chain_readings_total",
            "counter",
            "device readings through the pipeline",
            [({"source": k}, v) for k, v in sorted(by_source.items())],
        )
        if src.mqtt is not None:
            mqtt = src.mqtt.stats
            out.add(
                "o2chain_mqtt_messages_total",
                "counter",
                "MQTT messages received",
                [({}, mqtt.messages)],
            )
            out.add(
                "o2chain_mqtt_connected",
                "gauge",
                "1 when connected to the broker",
                [({}, int(mqtt.connected))],
            )
            out.add(
                "o2chain_rejects_total",
                "counter",
                "messages rejected, by reason",
                [({"reason": str(k)}, v) for k, v in sorted(mqtt.rejects.items())],
            )
            out.add(
                "o2chain_unknown_devices_seen",
                "gauge",
                "devices not configured that sent a status (newest 1000 kept)",
                [({}, len(mqtt.unknown_devices))],
            )
            out.add(
                "o2chain_unknown_devices_evicted_total",
                "counter",
                "unknown devices forgotten at the bound",
                [({}, mqtt.unknown_evicted)],
            )
            out.add(
                "o2chain_duplicates_total",
                "counter",
                "duplicate (boot, seq) dropped",
                [({}, mqtt.duplicates)],
            )
            out.add(
                "o2chain_seq_gaps_total",
                "counter",
                "gaps in board sequence numbers",
                [({}, mqtt.gaps)],
            )
        out.add(
            "o2chain_outbox_depth",
            "gauge",
            "points waiting for InfluxDB",
            [({}, src.outbox_depth())],
        )
        out.add(
            "o2chain_outbox_oldest_age_seconds",
            "gauge",
            "age of the oldest waiting point",
            [({}, src.outbox_age_s())],
        )
        if src.outbox is not None:
            out.add(
                "o2chain_outbox_bytes",
                "gauge",
                "queued line protocol",
                [({}, src.outbox.queued_bytes)],
            )
            out.add(
                "o2chain_outbox_dropped_total",
                "counter",
                "points dropped at the bound",
                [({}, src.outbox.stats.dropped_oldest)],
            )
            out.add(
                "o2chain_outbox_full_refusals_total",
                "counter",
                "commits refused at the bound",
                [({}, src.outbox.stats.full_refusals)],
            )
            out.add(
                "o2chain_deadletters",
                "gauge",
                "dead letters stored, by reason",
                [({"reason": k}, v) for k, v in sorted(src.dead_letter_counts().items())],
            )
            out.add(
                "o2chain_deadletters_dropped_total",
                "counter",
                "oldest dead letters deleted at deadletter_max_count / deadletter_max_mb",
                [({}, src.outbox.stats.dead_letters_dropped)],
            )
            out.add(
                "o2chain_deadletters_truncated_total",
                "counter",
                "dead letters whose payload was kept cut at 4096 bytes",
                [({}, src.outbox.stats.dead_letters_truncated)],
            )
        if src.drainer is not None:
            writer = src.drainer.stats
            out.add(
                "o2chain_influx_points_written_total",
                "counter",
                "points InfluxDB accepted",
                [({}, writer.written)],
            )
            out.add(
                "o2chain_influx_batches_total",
                "counter",
                "batches written",
                [({}, writer.batches)],
            )
            out.add(
                "o2chain_influx_write_failures_total",
                "counter",
                "failed write attempts",
                [({}, writer.failures)],
            )
            out.add(
                "o2chain_influx_rejected_total",
                "counter",
                "points InfluxDB rejected",
                [({}, writer.rejected)],
            )
            out.add(
                "o2chain_influx_misconfigured",
                "gauge",
                "1 while InfluxDB refuses the gateway (credentials, database, redirect)",
                [({}, int(writer.misconfigured))],
            )
            out.add(
                "o2chain_influx_write_latency_seconds",
                "gauge",
                "last batch write time",
                [({}, writer.last_latency_s)],
            )
        if src.notifier is not None:
            nm = src.notifier.metrics()
            out.add(
                "o2chain_notify_attempts_total",
                "counter",
                "notification delivery attempts by target and result",
                [({"target": t, "result": r}, v) for (t, r), v in sorted(nm["attempts"].items())],
            )
            for key, name, help_text in (
                ("depth", "o2chain_notify_queue_depth", "notifications waiting, by target"),
                ("oldest_age_s", "o2chain_notify_oldest_age_seconds", "longest wait of a due one"),
                ("failing", "o2chain_notify_target_failing", "1 while a target fails"),
            ):
                out.add(
                    name,
                    "gauge",
                    help_text,
                    [({"target": t}, v) for t, v in sorted(nm[key].items())],
                )
        for name, fn in sorted(src.extra.items()):
            out.add(f"o2chain_{name}", "gauge", name, [({}, fn())])
        link_value = {"online": 1, "offline": 0, "unknown": -1}
        out.add(
            "o2chain_device_online",
            "gauge",
            "1 online, 0 offline, -1 unknown",
            [
                (
                    {"site": r["site"], "device": r["device"], "transport": r["transport"]},
                    link_value[r["link"]],
                )
                for r in rows
            ],
        )
        out.add(
            "o2chain_device_last_seen_age_seconds",
            "gauge",
            "since the last reading",
            [
                ({"site": r["site"], "device": r["device"]}, r["age_s"])
                for r in rows
                if r["age_s"] is not None
            ],
        )
        polls = []
        for p in src.pollers:
            labels = {"site": p.device.site, "device": p.device.id}
            for what in (
                *("polls", "ok", "timeouts", "exceptions", "io_errors"),
                *("decode_errors", "other_errors"),  # short/undecodable answers, surprises
            ):
                polls.append(({**labels, "result": what}, getattr(p.health, what)))
        if polls:
            out.add("o2chain_modbus_polls_total", "counter", "Modbus polls by result", polls)
        if self.engine is not None:
            c = self.engine.counts()
            out.add(
                "o2chain_alarms_active",
                "gauge",
                "active alarms by severity",
                [({"severity": k}, v) for k, v in c["by_severity"].items()],
            )
            out.add(
                "o2chain_alarms_unacked", "gauge", "active, not acknowledged", [({}, c["unacked"])]
            )
            out.add("o2chain_alarms_shelved", "gauge", "shelved alarms", [({}, c["shelved"])])
            out.add(
                "o2chain_alarm_events_total",
                "counter",
                "alarm events by kind",
                [({"event": k}, v) for k, v in sorted(c["events"].items())],
            )
        return out.text()

    # ----------------------------------------------------------------- status
    def _device_thresholds(self) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Per device, the alarm engine's threshold rules with their resolved values (fixed by
        config: site altitude, profile), so the page colours values by the engine's limits."""
        out: dict[tuple[str, str], list[dict[str, Any]]] = {}
        if self.engine is None:
            return out
        sites = {s.id: s for s in self.config.site}
        for d in self.config.device:
            rows = []
            for rule in self.engine.rules:
                if rule.kind is not AlarmKind.THRESHOLD or not rule.applies(d):
                    continue
                site = sites.get(d.site)
                value = rule.threshold(d, site) if site is not None else math.nan
                if math.isfinite(value):
                    rows.append({
                        "rule": rule.id, "field": rule.field, "op": rule.op,
                        "value": round(value, 3), "severity": rule.severity.value,
                    })  # fmt: skip
            out[(d.site, d.id)] = rows
        return out

    def history(self) -> dict[str, Any]:
        """``/api/history``: ``{"devices": {"site/device": {"o2_pct": [[ts_ms, v], ...]}}}``,
        the last :data:`HISTORY_POINTS` values of each trend field, oldest first."""
        with self._lock:
            devices = {
                f"{site}/{dev}": {name: [list(p) for p in h] for name, h in seen.history.items()}
                for (site, dev), seen in self._devices.items()
            }
        return {"v": 1, "now_ms": self.clock_ms(), "points": HISTORY_POINTS, "devices": devices}

    def status(self) -> dict[str, Any]:
        """``/api/status``: sites -> devices with last values and ages, links, alarms."""
        now = self.clock_ms()
        active = self.engine.active() if self.engine is not None else []
        counts = self.engine.counts() if self.engine is not None else {}
        chain = self.enricher.status() if self.enricher is not None else {}
        with self._lock:
            rows = {(r["site"], r["device"]): r for r in self._device_rows(now)}
            values = {
                k: {
                    name: {"value": v, "ts_ms": ts, "age_s": round((now - ts) / 1000.0, 3)}
                    for name, (v, ts) in sorted(seen.values.items())
                }
                for k, seen in self._devices.items()
            }
        sites = []
        for site in self.config.site:
            pb = oxygen.isa_pressure_kpa(site.altitude_m)
            devices = []
            for d in self.config.device:
                if d.site != site.id:
                    continue
                row = rows[(d.site, d.id)]
                devices.append({
                    "id": d.id,
                    "kind": d.kind.value,
                    "transport": d.transport.value,
                    "room": (d.room or d.id) if d.kind.value == "room" else None,
                    "link": row["link"],
                    "online": {"online": True, "offline": False}.get(row["link"]),
                    "last_seen_ms": row["last_seen_ms"],
                    "age_s": row["age_s"],
                    "interval_s": d.interval_s,
                    "values": values[(d.site, d.id)],
                    "thresholds": self._thresholds.get((d.site, d.id), []),
                    "alarms": [a for a in active if a["device"] == d.id and a["site"] == d.site],
                })  # fmt: skip
            site_alarms = [a for a in active if a["site"] == site.id]
            sites.append({
                "id": site.id,
                "name": site.name,
                "altitude_m": site.altitude_m,
                "isa_baro_kpa": round(pb, 3),
                "limits": {
                    "o2_nfpa_burn_pct": round(oxygen.nfpa_burn_limit_pct(pb), 2),
                    "o2_high_warn_pct": round(oxygen.room_high_warn_pct(pb), 2),
                    "o2_high_alarm_pct": round(oxygen.room_high_alarm_pct(pb), 2),
                },
                "chain": chain.get(site.id),
                "alarm_counts": {
                    "active": len(site_alarms),
                    "unacked": sum(1 for a in site_alarms if not a["acked"]),
                },
                "devices": devices,
            })  # fmt: skip
        return {
            "v": 1,
            "gateway": {
                "id": self.config.gateway.id,
                "now_ms": now,
                "started_ms": self.started_ms,
                "uptime_s": round((now - self.started_ms) / 1000.0, 1),
                "health": self.health(),
                "outbox": {
                    "depth": self.sources.outbox_depth(),
                    "oldest_age_s": round(self.sources.outbox_age_s(), 3),
                },
                "mqtt_connected": self.sources.ingest_stats.connected,
                "readings": dict(self.readings_by_source),
            },
            "alarm_counts": counts,
            "alarms": active,
            "sites": sites,
        }


class _Prom:
    """Prometheus text format: ``# HELP``, ``# TYPE``, then ``name{labels} value`` lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    @staticmethod
    def _label(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    def add(
        self, name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], Any]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            v = float(value)
            if math.isnan(v) or math.isinf(v):
                text = "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")
            else:
                text = str(int(v)) if v.is_integer() else repr(v)
            if labels:
                inner = ",".join(f'{k}="{self._label(str(x))}"' for k, x in labels.items())
                self.lines.append(f"{name}{{{inner}}} {text}")
            else:
                self.lines.append(f"{name} {text}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"
