"""``/metrics``: the gateway's counters and gauges in the Prometheus text format 0.0.4, read
from the observer (devices, pipeline, alarms) and the typed stats of the delivery side
(gateway/sources.py). gateway/README.md lists every metric."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.observe import Observer


def render_prometheus(obs: Observer) -> str:
    """``/metrics`` of ``obs``: Prometheus text exposition format 0.0.4."""
    now = obs.clock_ms()
    src = obs.sources
    out = _Prom()
    by_source, rows, last_pass = obs.snapshot(now)
    out.add("o2chain_up", "gauge", "1 while the gateway runs", [({}, 1)])
    out.add(
        "o2chain_uptime_seconds",
        "gauge",
        "since start",
        [({}, (now - obs.started_ms) / 1000.0)],
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
        if mqtt.broker_dropped is not None:
            out.add(
                "o2chain_broker_dropped_messages_total",
                "counter",
                "messages the broker dropped at its queue limits, all clients "
                "($SYS/broker/publish/messages/dropped)",
                [({}, mqtt.broker_dropped)],
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
    out.add(
        "o2chain_device_online",
        "gauge",
        "1 online, 0 offline, -1 unknown",
        [
            (
                {"site": r.site, "device": r.device, "transport": r.transport},
                r.link.gauge,
            )
            for r in rows
        ],
    )
    out.add(
        "o2chain_device_last_seen_age_seconds",
        "gauge",
        "since the last reading",
        [({"site": r.site, "device": r.device}, r.age_s) for r in rows if r.age_s is not None],
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
    if obs.engine is not None:
        c = obs.engine.counts()
        out.add(
            "o2chain_alarms_active",
            "gauge",
            "active alarms by severity",
            [({"severity": k}, v) for k, v in c["by_severity"].items()],
        )
        out.add("o2chain_alarms_unacked", "gauge", "active, not acknowledged", [({}, c["unacked"])])
        out.add("o2chain_alarms_shelved", "gauge", "shelved alarms", [({}, c["shelved"])])
        out.add(
            "o2chain_alarm_events_total",
            "counter",
            "alarm events by kind",
            [({"event": k}, v) for k, v in sorted(c["events"].items())],
        )
    return out.text()


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
