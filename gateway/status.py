"""The status document, ``/api/status``: sites -> devices with their last values and ages,
links, the engine's limits and active alarms, the chain balance, the gateway's own health.

Built from the typed views of the observer (gateway/observe.py), the alarm engine, the
enricher and the delivery side (gateway/sources.py); gateway/README.md documents the JSON and
the live page (gateway/static/app.js) renders it.
"""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Any

from gateway import oxygen
from gateway.config import AlarmKind, GatewayConfig

if TYPE_CHECKING:
    from gateway.alarms import AlarmEngine
    from gateway.observe import Observer

UNKNOWN_LISTED = 50  # unknown devices listed on the live page (newest first)

Thresholds = dict[tuple[str, str], list[dict[str, Any]]]
# Fixed by the config (site altitude, profile): resolved once per engine.
_THRESHOLDS: weakref.WeakKeyDictionary[AlarmEngine, Thresholds] = weakref.WeakKeyDictionary()


def device_thresholds(config: GatewayConfig, engine: AlarmEngine | None) -> Thresholds:
    """Per device, the alarm engine's threshold rules with their resolved values, so the page
    colours values by the engine's own limits."""
    if engine is None:
        return {}
    cached = _THRESHOLDS.get(engine)
    if cached is not None:
        return cached
    out: Thresholds = {}
    sites = {s.id: s for s in config.site}
    for d in config.device:
        rows = []
        for rule in engine.rules:
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
    _THRESHOLDS[engine] = out
    return out


def status_document(observer: Observer) -> dict[str, Any]:
    """``/api/status`` from what ``observer`` and the parts it watches know now."""
    config, engine, sources = observer.config, observer.engine, observer.sources
    now = observer.clock_ms()
    active = engine.active() if engine is not None else []
    counts = engine.counts() if engine is not None else {}
    chain = observer.enricher.status() if observer.enricher is not None else {}
    readings, device_rows, _ = observer.snapshot(now)
    rows = {(r.site, r.device): r for r in device_rows}
    values = observer.device_values(now)
    thresholds = device_thresholds(config, engine)
    # Grouped once: a list per device by scanning every alarm would cost devices x alarms
    # (10,000 boards that all went offline: 10^8 comparisons per document).
    by_device: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for a in active:
        by_device.setdefault((a["site"], a["device"]), []).append(a)
    sites = []
    for site in config.site:
        pb = oxygen.isa_pressure_kpa(site.altitude_m)
        devices = []
        for d in config.device:
            if d.site != site.id:
                continue
            row = rows[(d.site, d.id)]
            devices.append({
                "id": d.id,
                "kind": d.kind.value,
                "transport": d.transport.value,
                "room": (d.room or d.id) if d.kind.value == "room" else None,
                "link": row.link.value,
                "online": row.link.online,
                "last_seen_ms": row.last_seen_ms,
                "age_s": row.age_s,
                "interval_s": d.interval_s,
                "values": values[(d.site, d.id)],
                "thresholds": thresholds.get((d.site, d.id), []),
                "alarms": by_device.get((d.site, d.id), []),
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
    unknown = sources.ingest_stats.unknown_devices
    return {
        "v": 1,
        "gateway": {
            "id": config.gateway.id,
            "now_ms": now,
            "started_ms": observer.started_ms,
            "uptime_s": round((now - observer.started_ms) / 1000.0, 1),
            "health": observer.health(),
            "outbox": {
                "depth": sources.outbox_depth(),
                "oldest_age_s": round(sources.outbox_age_s(), 3),
            },
            "mqtt_connected": sources.ingest_stats.connected,
            # Messages the broker dropped at its queue limits (all its clients) since it started,
            # as it last told ($SYS); None when it does not tell.
            "broker_dropped": sources.ingest_stats.broker_dropped,
            "readings": readings,
        },
        "alarm_counts": counts,
        "alarms": active,
        "sites": sites,
        # Boards that announce themselves (status) but are not in the config: their data are
        # refused as unknown_device until someone adds them.
        "unknown_devices": [
            {"key": key, "state": state, "seen_ms": seen_ms}
            for key, (state, seen_ms) in list(reversed(unknown.items()))[:UNKNOWN_LISTED]
        ],
    }
