"""Grafana dashboards as code: builds every o2chain dashboard and writes the JSON files.

    .venv/bin/o2chain dashboards build     # regenerate dashboards/generated/*.json

Thresholds come from the same places the gateway's alarm engine takes them: purity limits from
the device profiles' ``[nominal]`` values, the room fire-safety limit from ``gateway.oxygen``'s
NFPA constants (drawn as a series computed from each room's measured pressure, because the
limit moves with the weather and the site's altitude), the oxygen-deficient and low-effect
levels from ``gateway.builtin_rules.builtin_rules``, the outbox age limit from the gateway config's
default.

Dashboards: Facility overview, Rooms, Concentrators and plants, Device health, Gateway.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as gc
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.influxql import DATASOURCE, InfluxQL
from dashboards.region import region_dashboard
from gateway import oxygen, supply_rules
from gateway.builtin_rules import builtin_rules
from gateway.config import GatewaySection, parse_config
from gateway.telemetry import RejectReason
from o2base.registers import load_profile

GENERATED = Path(__file__).parent / "generated"
SCHEMA_VERSION = 39  # Grafana 11.x dashboards

SITE_FILTER = '"site" =~ /^$site$/'
DEVICE_FILTER = '"site" =~ /^$site$/ AND "device" =~ /^$device$/'

MEDICAL_PURITY_ALARM_PCT = float(load_profile("medical-concentrator").nominal["purity_alarm_pct"])
PLANT_PURITY_ALARM_PCT = float(load_profile("psa-plant").nominal["purity_alarm_pct"])
ROOM_TARGET_LOW_PCT = 24.0  # docs/domain.md "Limits and alarms": target band about 24-26 %
ROOM_TARGET_HIGH_PCT = 26.0


def _builtin_value(rule_id: str) -> float:
    """The fixed threshold of one of the alarm engine's built-in rules."""
    config = parse_config({"site": [{"id": "s", "altitude_m": 0}]})
    (rule,) = [r for r in builtin_rules(config) if r.id == rule_id]
    if rule.value is None:
        raise ValueError(f"built-in rule {rule_id} has no fixed value")
    return rule.value


ROOM_LOW_EFFECT_PCT = _builtin_value("room-o2-low-effect")
ROOM_DEFICIENT_PCT = _builtin_value("room-o2-deficient")
OUTBOX_AGE_LIMIT_S = float(GatewaySection.model_fields["health_outbox_age_s"].default)


def fire_limit_expr(baro_field: str = '"baro_kpa"') -> str:
    """InfluxQL for the room high-O2 alarm level: NFPA limit at measured pressure, less margin."""
    return (
        f"{oxygen.NFPA_BURN_PCT_AT_P0} / SQRT(mean({baro_field}) / {oxygen.P0_KPA}) "
        f"- {oxygen.ROOM_HIGH_ALARM_MARGIN_PCT}"
    )


def steps(*pairs: tuple[float | None, str]) -> gd.ThresholdsConfig:
    """Absolute thresholds: ``(None, 'green'), (82, 'red')`` etc."""
    return (
        gd.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in pairs])
    )


def site_variable() -> gd.QueryVariable:
    return (
        gd.QueryVariable("site")
        .label("Site")
        .datasource(DATASOURCE)
        .query('SHOW TAG VALUES WITH KEY = "site"')
        .multi(True)
        .include_all(True)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )


def device_variable(measurement: str, label: str) -> gd.QueryVariable:
    return (
        gd.QueryVariable("device")
        .label(label)
        .datasource(DATASOURCE)
        .query(f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "device" WHERE {SITE_FILTER}')
        .multi(True)
        .include_all(True)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )


class Layout:
    """Places panels left to right, wrapping at Grafana's 24 columns."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def place(self, panel: Any, w: int = 12, h: int = 8) -> Any:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel.grid_pos(dm.GridPos(h=h, w=w, x=self.x, y=self.y)).id(self.next_id)
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        return panel


def ts_panel(title: str, unit: str, description: str = "") -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .unit(unit)
        .description(description)
        .datasource(DATASOURCE)
        .line_width(1)
        .fill_opacity(5)
        .show_points(cm.VisibilityMode.NEVER)
    )


def new_dashboard(title: str, uid: str, tags: list[str]) -> gd.Dashboard:
    return (
        gd.Dashboard(title)
        .uid(uid)
        .tags(["o2chain", *tags])
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
        .editable()
    )


def rooms() -> gd.Dashboard:
    layout = Layout()
    d = new_dashboard("o2chain / Rooms", "o2chain-rooms", ["rooms", "use"])
    d.with_variable(site_variable()).with_variable(device_variable("room", "Room board"))
    where = f"{DEVICE_FILTER} AND $timeFilter"
    band = steps(
        (None, "red"), (ROOM_DEFICIENT_PCT, "orange"), (ROOM_LOW_EFFECT_PCT, "yellow"),
        (ROOM_TARGET_LOW_PCT, "green"), (ROOM_TARGET_HIGH_PCT, "orange"),
    )  # fmt: skip
    d.with_panel(layout.place(
        ts_panel("Room O2", "percent",
                 "O2 volume fraction; green = target band 24-26 %; the red line is the "
                 "high-O2 alarm level from the NFPA burn-rate limit at the measured pressure")
        .with_target(InfluxQL(
            f'SELECT mean("o2_pct") FROM "room" WHERE {where} '
            'GROUP BY time($__interval), "device" fill(none)').alias("$tag_device"))
        .with_target(InfluxQL(
            f'SELECT {fire_limit_expr()} FROM "room" WHERE {where} '
            'GROUP BY time($__interval), "site" fill(none)', "B")
            .alias("fire-safety limit $tag_site"))
        .thresholds(band)
        .thresholds_style(gd_thresholds_style("line+area")),
        w=24, h=9))  # fmt: skip
    d.with_panel(layout.place(
        ts_panel("Oxygen partial pressure", "pressurekpa", "ppO2 = O2 % x barometric pressure")
        .with_target(InfluxQL(
            f'SELECT mean("ppo2_kpa") FROM "room" WHERE {where} '
            'GROUP BY time($__interval), "device" fill(none)').alias("$tag_device"))))  # fmt: skip
    d.with_panel(layout.place(
        ts_panel("Equivalent altitude", "lengthm",
                 "altitude whose normal air gives the same inspired O2 pressure (West)")
        .with_target(InfluxQL(
            f'SELECT mean("eq_alt_m") FROM "room" WHERE {where} '
            'GROUP BY time($__interval), "device" fill(none)').alias("$tag_device"))))  # fmt: skip
    for title, fld, unit in (
        ("Barometric pressure", "baro_kpa", "pressurekpa"),
        ("Temperature", "temp_c", "celsius"),
        ("Relative humidity", "rh_pct", "humidity"),
    ):
        d.with_panel(layout.place(
            ts_panel(title, unit)
            .with_target(InfluxQL(
                f'SELECT mean("{fld}") FROM "room" WHERE {where} '
                'GROUP BY time($__interval), "device" fill(none)').alias("$tag_device")),
            w=8, h=7))  # fmt: skip
    return d


def gd_thresholds_style(mode: str) -> gc.GraphThresholdsStyleConfig:
    """How thresholds are drawn: ``line``, ``area``, ``line+area``."""
    return gc.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode(mode))


def concentrators() -> gd.Dashboard:
    layout = Layout()
    d = new_dashboard("o2chain / Concentrators and plants", "o2chain-concentrators", ["produce"])
    d.with_variable(site_variable()).with_variable(
        device_variable("concentrator", "Concentrator / plant")
    )
    where = f"{DEVICE_FILTER} AND $timeFilter"

    def series(title: str, fld: str, unit: str, w: int = 12, desc: str = "") -> Any:
        return layout.place(
            ts_panel(title, unit, desc).with_target(InfluxQL(
                f'SELECT mean("{fld}") FROM "concentrator" WHERE {where} '
                'GROUP BY time($__interval), "device" fill(none)').alias("$tag_device")),
            w=w)  # fmt: skip

    d.with_panel(
        series("Purity", "purity_pct", "percent", w=24,
               desc=f"alarm lines: medical concentrators {MEDICAL_PURITY_ALARM_PCT:g} % "
                    f"(ISO 80601-2-69), PSA plants {PLANT_PURITY_ALARM_PCT:g} % (Ph. Eur.)")
        .thresholds(steps((None, "red"), (MEDICAL_PURITY_ALARM_PCT, "orange"),
                          (PLANT_PURITY_ALARM_PCT, "green")))
        .thresholds_style(gd_thresholds_style("line"))
        .min(60).max(100))  # fmt: skip
    d.with_panel(series("Flow", "flow_lpm", "suffix: L/min"))
    d.with_panel(layout.place(
        table.Panel().title("Purity vs flow (last hour)").datasource(DATASOURCE)
        .unit("percent")
        .override_by_name("flow_lpm", [dm.DynamicConfigValue(id_val="unit", value="suffix: L/min")])
        .description("purity must be judged with flow: it falls when flow exceeds the rating")
        .with_target(InfluxQL(
            f'SELECT mean("flow_lpm") AS "flow_lpm", mean("purity_pct") AS "purity_pct", '
            f'min("purity_pct") AS "min_purity_pct" FROM "concentrator" WHERE {where} '
            'GROUP BY "device"').table())))  # fmt: skip
    d.with_panel(series("Outlet pressure", "outlet_kpa", "pressurekpa", w=8))
    d.with_panel(series("Product tank pressure", "tank_kpa", "pressurekpa", w=8))
    d.with_panel(layout.place(
        ts_panel("Sieve bed pressures", "pressurekpa", "A/B asymmetry points at a valve fault")
        .with_target(InfluxQL(
            f'SELECT mean("bed_a_kpa") AS "bed A", mean("bed_b_kpa") AS "bed B" '
            f'FROM "concentrator" WHERE {where} GROUP BY time($__interval), "device" fill(none)')
            .alias("$tag_device $col")), w=8))  # fmt: skip
    d.with_panel(
        series("Dew point after the dryer", "dew_point_c", "celsius", w=12,
               desc="warn above -40 degC, alarm above -30 degC")
        .thresholds(steps((None, "green"), (-40.0, "orange"), (-30.0, "red")))
        .thresholds_style(gd_thresholds_style("line")))  # fmt: skip
    d.with_panel(layout.place(
        stat.Panel().title("Run hours").unit("h").datasource(DATASOURCE)
        .reduce_options(last_value())
        .with_target(InfluxQL(
            f'SELECT last("run_h") FROM "concentrator" WHERE {where} GROUP BY "device"')
            .alias("$tag_device"))))  # fmt: skip
    d.with_panel(layout.place(
        ts_panel("Purity trend (hourly mean)", "percent",
                 "a slow slide over days at the same flow is sieve degradation")
        .with_target(InfluxQL(
            f'SELECT mean("purity_pct") FROM "concentrator" '
            f'WHERE {where} GROUP BY time(1h), "device" fill(none)').alias("$tag_device")),
        w=24))  # fmt: skip
    return d


def room_band_steps() -> gd.ThresholdsConfig:
    """Room O2 bands (docs/domain.md "Limits and alarms"), colours as on the gateway's live page."""
    return steps(
        (None, "red"), (ROOM_DEFICIENT_PCT, "orange"), (ROOM_LOW_EFFECT_PCT, "yellow"),
        (ROOM_TARGET_LOW_PCT, "green"), (ROOM_TARGET_HIGH_PCT, "blue"),
    )  # fmt: skip


def last_value() -> gc.ReduceDataOptions:
    """Stat and bar gauge panels show each series' last non-null value."""
    return gc.ReduceDataOptions().calcs(["lastNotNull"])


def stat_panel(title: str, unit: str, query: str, description: str = "") -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .unit(unit)
        .description(description)
        .datasource(DATASOURCE)
        .graph_mode(cm.BigValueGraphMode.AREA)
        .reduce_options(last_value())
        .with_target(InfluxQL(query))
    )


def bool_mappings(true_text: str, false_text: str) -> list[Any]:
    """Value mappings for boolean fields (InfluxDB returns true/false)."""
    return [
        dm.SpecialValueMap(dm.DashboardSpecialValueMapOptions(
            dm.SpecialValueMatch.TRUE, dm.ValueMappingResult(text=true_text, color="green"))),
        dm.SpecialValueMap(dm.DashboardSpecialValueMapOptions(
            dm.SpecialValueMatch.FALSE, dm.ValueMappingResult(text=false_text, color="red"))),
    ]  # fmt: skip


def facility() -> gd.Dashboard:
    """Produce / supply / use at a glance."""
    layout = Layout()
    d = new_dashboard("o2chain / Facility overview", "o2chain-facility", ["overview"])
    d.with_variable(site_variable())
    in_range = f"{SITE_FILTER} AND $timeFilter"
    for title, unit, query, desc in (
        ("O2 produced now", "suffix: L/min",
         f'SELECT last("produced_o2_lpm") FROM "chain" WHERE {in_range}',
         "oxygen in the product of all plants and concentrators (flow x purity)"),
        ("O2 used by rooms now", "suffix: L/min",
         f'SELECT last("delivered_o2_lpm") FROM "chain" WHERE {in_range}',
         "oxygen the enriched rooms need (estimate from ventilation_m3h; 0 without it)"),
        ("Rooms mean O2", "percent",
         f'SELECT last("rooms_o2_mean_pct") FROM "chain" WHERE {in_range}',
         "mean of the reporting rooms' O2; target band 24-26 %"),
        ("Active alarms", "short",
         'SELECT last("alarms_active") FROM "gateway" WHERE $timeFilter',
         "active alarms in the gateway's alarm engine (all sites of the gateway)"),
        ("Devices online", "short",
         'SELECT last("devices_online") FROM "gateway" WHERE $timeFilter',
         "boards (MQTT status/last will) and Modbus devices answering"),
        ("Devices offline", "short",
         'SELECT last("devices_offline") FROM "gateway" WHERE $timeFilter',
         "boards whose last will arrived, Modbus devices not answering"),
    ):  # fmt: skip
        panel = stat_panel(title, unit, query, desc)
        if title == "Rooms mean O2":
            panel.thresholds(room_band_steps()).color_mode(cm.BigValueColorMode.BACKGROUND)
        elif title in ("Active alarms", "Devices offline"):
            panel.thresholds(steps((None, "green"), (1.0, "red")))
        else:
            panel.thresholds(steps((None, "blue")))
        d.with_panel(layout.place(panel, w=4, h=4))
    d.with_panel(layout.place(
        ts_panel("Oxygen produced vs used by rooms", "suffix: L/min",
                 "the chain balance per site (gateway/enrich.py): produced = flow x purity of "
                 "the producers; used = the rooms' O2 demand estimated from ventilation "
                 "(field delivered_o2_lpm)")
        .with_target(InfluxQL(
            f'SELECT mean("produced_o2_lpm") AS "produced", mean("delivered_o2_lpm") AS '
            f'"used" FROM "chain" WHERE {in_range} GROUP BY time($__interval), "site" '
            "fill(none)").alias("$tag_site $col")), w=12, h=8))  # fmt: skip
    for panel, w, h in chain_panels(in_range):
        d.with_panel(layout.place(panel, w=w, h=h))
    d.with_panel(layout.place(
        bargauge.Panel().title("Rooms by O2 band").unit("percent").datasource(DATASOURCE)
        .description(f"last O2 per room board: red < {ROOM_DEFICIENT_PCT:g} % (deficient), "
                     f"orange < {ROOM_LOW_EFFECT_PCT:g} % (no effect), yellow below target, "
                     f"green target {ROOM_TARGET_LOW_PCT:g}-{ROOM_TARGET_HIGH_PCT:g} %, "
                     "blue above (the high alarm follows pressure: see Rooms)")
        .min(18).max(30).thresholds(room_band_steps()).reduce_options(last_value())
        .display_mode(cm.BarGaugeDisplayMode.BASIC).orientation(cm.VizOrientation.HORIZONTAL)
        .with_target(InfluxQL(
            f'SELECT last("o2_pct") FROM "room" WHERE {in_range} GROUP BY "site", "device"')
            .alias("$tag_device")), w=12, h=8))  # fmt: skip
    d.with_panel(layout.place(
        statetimeline.Panel().title("Plants and concentrators: running").unit("bool_on_off")
        .datasource(DATASOURCE).mappings(bool_mappings("running", "stopped"))
        .description("run state reported by each producer (Modbus coil or sensor board)")
        .with_target(InfluxQL(
            f'SELECT last("state") FROM "concentrator" WHERE {in_range} '
            'GROUP BY time($__interval), "device" fill(previous)').alias("$tag_device")),
        w=12, h=8))  # fmt: skip
    d.with_panel(layout.place(
        table.Panel().title("Producers now").unit("percent").datasource(DATASOURCE)
        .description("last purity, flow and oxygen output per plant or concentrator")
        .override_by_name("flow_lpm", [dm.DynamicConfigValue(id_val="unit", value="suffix: L/min")])
        .override_by_name("o2_lpm", [dm.DynamicConfigValue(id_val="unit", value="suffix: L/min")])
        .with_target(InfluxQL(
            f'SELECT last("purity_pct") AS "purity_pct", last("flow_lpm") AS "flow_lpm", '
            f'last("o2_lpm") AS "o2_lpm" FROM "concentrator" WHERE {in_range} '
            'GROUP BY "device"').table()), w=12, h=8))  # fmt: skip
    d.with_panel(layout.place(
        table.Panel().title("Active alarms").unit("none").datasource(DATASOURCE)
        .description("alarms whose last event (last 30 days) left them active, from the "
                     "alarm engine's events (measurement alarm); acknowledge on the gateway's "
                     "live page")
        .with_target(InfluxQL(ACTIVE_ALARMS_QUERY).table()), w=24, h=8))  # fmt: skip
    return d


# The oxygen chain with the supply (gateway/supply_chain.py, gateway/README.md "Enrichment"):
# (field of the chain point, column / series name, unit, what it is).
CHAIN_FIELDS = (
    ("produced_o2_lpm", "produced", "suffix: L/min", "O2 in the product of every producer"),
    ("stored_o2_l", "stored", "litre", "usable O2 in the tanks and cylinder banks"),
    ("stored_change_o2_lpm", "stored change", "suffix: L/min",
     "the stores' trend: + filling, - drawn"),
    ("delivered_metered_o2_lpm", "delivered", "suffix: L/min",
     "O2 through the outermost supply meters and bedside concentrators"),
    ("used_o2_lpm", "used", "suffix: L/min", "the rooms' O2 demand estimated from ventilation"),
    ("loss_o2_lpm", "loss", "suffix: L/min", "produced - stored change - delivered"),
    ("days_left", "days left", "d", "the stores' stock over their net draw"),
)  # fmt: skip
DAYS_LEFT_WARN = supply_rules.DAYS_LEFT_WARN  # the supply devices' days-left alarms
DAYS_LEFT_ALARM = supply_rules.DAYS_LEFT_ALARM


def chain_panels(in_range: str) -> list[tuple[Any, int, int]]:
    """The facility's chain panels: a table per site, the flows over time, days of O2 left."""
    columns = ", ".join(f'last("{f}") AS "{name}"' for f, name, *_ in CHAIN_FIELDS)
    described = "; ".join(f"{name}: {what}" for _, name, _, what in CHAIN_FIELDS)
    units = [dm.DynamicConfigValue(id_val="unit", value=unit) for _, _, unit, _ in CHAIN_FIELDS]
    by_site = (
        table.Panel().title("Oxygen chain by site: produced, stored, delivered, used, loss")
        .unit("suffix: L/min").datasource(DATASOURCE)
        .description("the last chain point of each site, O2 at the site's conditions; "
                     f"{described}. An empty cell: not every stage reported (left out, not 0)")
        .with_target(InfluxQL(
            f'SELECT {columns} FROM "chain" WHERE {in_range} GROUP BY "site"').table())
    )  # fmt: skip
    for (_, name, *_), unit in zip(CHAIN_FIELDS, units, strict=True):
        by_site.override_by_name(name, [unit])
    flows = [(f, name) for f, name, unit, _ in CHAIN_FIELDS if unit == "suffix: L/min"]
    flow_columns = ", ".join(f'mean("{f}") AS "{name}"' for f, name in flows)
    over_time = (
        ts_panel("Oxygen chain over time: produced, stored change, delivered, used, loss",
                 "suffix: L/min",
                 "per site, O2 L/min at the site's conditions: " + described)
        .with_target(InfluxQL(
            f'SELECT {flow_columns} FROM "chain" WHERE {in_range} '
            'GROUP BY time($__interval), "site" fill(none)').alias("$tag_site $col"))
    )  # fmt: skip
    days = (
        stat.Panel().title("Days of oxygen left").unit("d").datasource(DATASOURCE)
        .description("per site: the usable stock of its tanks and cylinder banks over their net "
                     f"draw (red below {DAYS_LEFT_ALARM:g} d, orange below {DAYS_LEFT_WARN:g} d: "
                     "the supply devices' alarm limits); 365 = not running down")
        .graph_mode(cm.BigValueGraphMode.AREA).reduce_options(last_value())
        .thresholds(steps((None, "red"), (DAYS_LEFT_ALARM, "orange"), (DAYS_LEFT_WARN, "green")))
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .with_target(InfluxQL(
            f'SELECT last("days_left") FROM "chain" WHERE {in_range} '
            'GROUP BY time($__interval), "site" fill(none)').alias("$tag_site"))
    )  # fmt: skip
    return [(days, 12, 8), (by_site, 24, 8), (over_time, 24, 8)]


# The last event of each alarm (site, device, rule) in the last 30 days, kept when it left the
# alarm active. Not limited to the dashboard's range: an alarm raised yesterday is still active.
ACTIVE_ALARMS_QUERY = (
    'SELECT "state", "message", "value", "threshold", "by" FROM ('
    'SELECT last("state") AS "state", last("message") AS "message", last("active") AS "active", '
    'last("value") AS "value", last("threshold") AS "threshold", last("by") AS "by" '
    f'FROM "alarm" WHERE {SITE_FILTER} AND time > now() - 30d '
    'GROUP BY "site", "device", "rule", "severity") '
    'WHERE "active" = true GROUP BY "site", "device", "rule", "severity"'
)


def device_health() -> gd.Dashboard:
    layout = Layout()
    d = new_dashboard("o2chain / Device health", "o2chain-device-health", ["health"])
    device = (
        gd.QueryVariable("device")
        .label("Device")
        .datasource(DATASOURCE)
        .query(f'SHOW TAG VALUES WITH KEY = "device" WHERE {SITE_FILTER}')
        .multi(True)
        .include_all(True)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )
    d.with_variable(site_variable()).with_variable(device)
    where = f"{DEVICE_FILTER} AND $timeFilter"
    d.with_panel(layout.place(
        table.Panel().title("Last seen").unit("none").datasource(DATASOURCE)
        .description("time of each device's newest reading in the range (rooms: seq of the "
                     "board; producers: purity)")
        .with_target(InfluxQL(
            f'SELECT last("seq") AS "seq" FROM "room" WHERE {where} GROUP BY "device"').table())
        .with_target(InfluxQL(
            f'SELECT last("purity_pct") AS "purity_pct" FROM "concentrator" WHERE {where} '
            'GROUP BY "device"', "B").table()), w=8, h=8))  # fmt: skip
    d.with_panel(layout.place(
        statetimeline.Panel().title("Online").unit("bool_on_off").datasource(DATASOURCE)
        .mappings(bool_mappings("online", "offline"))
        .description("device_health.online: Modbus answered its last polls / board status")
        .with_target(InfluxQL(
            f'SELECT last("online") FROM "device_health" WHERE {where} '
            'GROUP BY time($__interval), "device" fill(previous)').alias("$tag_device")),
        w=16, h=8))  # fmt: skip

    def health_series(title: str, fld: str, unit: str, desc: str = "", w: int = 8) -> Any:
        return layout.place(
            ts_panel(title, unit, desc).with_target(InfluxQL(
                f'SELECT mean("{fld}") FROM "device_health" WHERE {where} '
                'GROUP BY time($__interval), "device" fill(none)').alias("$tag_device")),
            w=w, h=7)  # fmt: skip

    d.with_panel(
        health_series("Wi-Fi RSSI", "rssi_dbm", "dBm", "boards: below -80 dBm links drop")
        .thresholds(steps((None, "red"), (-80.0, "orange"), (-70.0, "green")))
        .thresholds_style(gd_thresholds_style("line")))  # fmt: skip
    d.with_panel(health_series("Free heap", "heap_free_b", "bytes",
                               "boards: a steady slide is a leak"))  # fmt: skip
    d.with_panel(health_series("Buffered readings", "buffered", "short",
                               "boards: readings waiting in RAM/flash for the broker"))  # fmt: skip
    d.with_panel(layout.place(
        table.Panel().title("Reboots in range").unit("short").datasource(DATASOURCE)
        .description("boot counter increase of each board (persisted on flash) in the range")
        .with_target(InfluxQL(
            f'SELECT spread("boot") AS "reboots", last("boot") AS "boot" FROM "room" '
            f'WHERE {where} GROUP BY "device"').table()), w=8, h=7))  # fmt: skip
    d.with_panel(layout.place(
        ts_panel("Modbus errors (cumulative)", "short",
                 "timeouts, exception answers, CRC errors (RTU) and connection failures since "
                 "the gateway started")
        .with_target(InfluxQL(
            f'SELECT max("timeouts") AS "timeouts", max("exceptions") AS "exceptions", '
            f'max("crc_errors") AS "crc", max("io_errors") AS "io" FROM "device_health" '
            f'WHERE {where} GROUP BY time($__interval), "device" fill(none)')
            .alias("$tag_device $col")), w=8, h=7))  # fmt: skip
    d.with_panel(layout.place(
        table.Panel().title("Modbus poll success").unit("percent").datasource(DATASOURCE)
        .description("share of polls answered completely since the gateway started")
        .override_by_name("polls", [dm.DynamicConfigValue(id_val="unit", value="short")])
        .with_target(InfluxQL(
            f'SELECT last("poll_ok") / last("polls") * 100 AS "ok", last("polls") AS "polls" '
            f'FROM "device_health" WHERE {where} GROUP BY "device"').table()),
        w=8, h=7))  # fmt: skip
    d.with_panel(health_series("Modbus response time", "response_ms", "ms",
                               "duration of the last good poll", w=12))  # fmt: skip
    d.with_panel(health_series("Board uptime", "uptime_s", "s",
                               "falls to 0 at a reboot", w=12))  # fmt: skip
    return d


def gateway_dashboard() -> gd.Dashboard:
    layout = Layout()
    d = new_dashboard("o2chain / Gateway", "o2chain-gateway", ["gateway"])
    d.with_variable(
        gd.QueryVariable("gw")
        .label("Gateway")
        .datasource(DATASOURCE)
        .query('SHOW TAG VALUES FROM "gateway" WITH KEY = "gw"')
        .multi(True)
        .include_all(True)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )
    where = '"gw" =~ /^$gw$/ AND $timeFilter'

    def series(title: str, fields: list[tuple[str, str]], unit: str, desc: str = "",
               w: int = 12, agg: str = "mean") -> Any:  # fmt: skip
        select = ", ".join(f'{agg}("{f}") AS "{label}"' for f, label in fields)
        return layout.place(
            ts_panel(title, unit, desc).with_target(InfluxQL(
                f'SELECT {select} FROM "gateway" WHERE {where} '
                'GROUP BY time($__interval), "gw" fill(none)').alias("$tag_gw $col")),
            w=w, h=8)  # fmt: skip

    d.with_panel(series("Ingest rate", [("rate_mqtt_per_s", "MQTT"), ("rate_modbus_per_s",
                        "Modbus")], "suffix: readings/s",
                        "device readings through the pipeline per second"))  # fmt: skip
    d.with_panel(series("Outbox depth", [("outbox_depth", "points")], "short",
                        "points committed but not yet in InfluxDB", w=8))  # fmt: skip
    d.with_panel(
        series("Outbox oldest point age", [("outbox_age_s", "age")], "s",
               f"/healthz fails above health_outbox_age_s (default {OUTBOX_AGE_LIMIT_S:g} s)",
               w=8, agg="max")
        .thresholds(steps((None, "green"), (OUTBOX_AGE_LIMIT_S, "red")))
        .thresholds_style(gd_thresholds_style("line")))  # fmt: skip
    d.with_panel(series("InfluxDB write latency", [("write_latency_s", "latency")], "s",
                        "duration of the last batch write", w=8, agg="max"))  # fmt: skip
    reasons = sorted(r.value for r in RejectReason)
    d.with_panel(series("Rejects by reason (cumulative)",
                        [(f"rejects_{r}", r) for r in reasons], "short",
                        "MQTT messages rejected into the dead-letter store since start, "
                        "by reason (gateway/telemetry.py RejectReason)", agg="max"))  # fmt: skip
    d.with_panel(series("Points written / write failures",
                        [("written", "written"), ("write_failures", "failures")], "short",
                        "cumulative since the gateway started", agg="max"))  # fmt: skip
    d.with_panel(series("Devices online / offline",
                        [("devices_online", "online"), ("devices_offline", "offline")],
                        "short", w=8, agg="last"))  # fmt: skip
    d.with_panel(series("Alarms active / unacknowledged",
                        [("alarms_active", "active"), ("alarms_unacked", "unacked")],
                        "short", w=8, agg="last"))  # fmt: skip
    d.with_panel(layout.place(
        stat.Panel().title("MQTT connected").unit("bool_yes_no").datasource(DATASOURCE)
        .reduce_options(last_value())
        .mappings(bool_mappings("connected", "disconnected"))
        .with_target(InfluxQL(
            f'SELECT last("mqtt_connected") FROM "gateway" WHERE {where} GROUP BY "gw"')
            .alias("$tag_gw")), w=4, h=8))  # fmt: skip
    d.with_panel(layout.place(
        stat.Panel().title("Uptime").unit("s").datasource(DATASOURCE)
        .reduce_options(last_value())
        .with_target(InfluxQL(
            f'SELECT last("uptime_s") FROM "gateway" WHERE {where} GROUP BY "gw"')
            .alias("$tag_gw")), w=4, h=8))  # fmt: skip
    return d


DASHBOARDS: dict[str, Callable[[], gd.Dashboard]] = {
    "facility": facility,
    "rooms": rooms,
    "concentrators": concentrators,
    "device-health": device_health,
    "gateway": gateway_dashboard,
    "region": region_dashboard,
}


def render(builder: gd.Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana JSON (a plain dict, stable key order)."""
    model = builder.build()
    data: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    data["schemaVersion"] = SCHEMA_VERSION
    return data


def build_all(out_dir: Path = GENERATED) -> list[Path]:
    """Write every dashboard to ``out_dir/<name>.json``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in DASHBOARDS.items():
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(render(make()), indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths
