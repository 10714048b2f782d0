"""Grafana dashboards as code: builds every o2chain dashboard and writes the JSON files.

    .venv/bin/o2chain dashboards build     # regenerate dashboards/generated/*.json

Thresholds come from the same places the gateway's alarm engine takes them: purity limits from
the device profiles' ``[nominal]`` values, the room fire-safety limit from ``gateway.oxygen``'s
NFPA constants (drawn as a series computed from each room's measured pressure, because the
limit moves with the weather and the site's altitude), the oxygen-deficient and low-effect
levels from ``gateway.builtin_rules.builtin_rules``, the outbox age limit from the gateway config's
default.

Dashboards: Facility overview, Rooms, Concentrators and plants, Device health, Gateway.

Languages: every text (titles, panel titles, descriptions, legends, column names, value
mappings) comes from one catalogue per language, ``dashboards/i18n/{lang}.json``, through
``tr("key", name=value)`` (``str.format`` placeholders). English is written to
``generated/<name>.json`` with the uids ``o2chain-<name>``; every other language to
``generated/<lang>/<name>.json`` with the uids ``o2chain-<name>-<lang>`` (lower case). The
panels and their queries are the same in every language; only the labels a query gives its
columns (``AS "..."``) are translated, because Grafana shows them as the legend.
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
from gateway.config import GatewaySection, Severity, parse_config
from gateway.telemetry import RejectReason
from o2base.registers import load_profile

GENERATED = Path(__file__).parent / "generated"
I18N = Path(__file__).parent / "i18n"
DEFAULT_LANGUAGE = "en"  # generated into GENERATED itself, with the uids it always had
SCHEMA_VERSION = 39  # Grafana 11.x dashboards


def languages() -> list[str]:
    """Every language with a catalogue, English first."""
    others = sorted(p.stem for p in I18N.glob("*.json") if p.stem != DEFAULT_LANGUAGE)
    return [DEFAULT_LANGUAGE, *others]


class Texts:
    """One language's catalogue: ``tr("key", pct=82.0)`` is the text with its placeholders
    filled (``str.format``). Remembers which keys were used (the tests want all of them)."""

    def __init__(self, lang: str = DEFAULT_LANGUAGE) -> None:
        self.lang = lang
        self.texts: dict[str, str] = json.loads((I18N / f"{lang}.json").read_text("utf-8"))
        self.used: set[str] = set()

    def __call__(self, key: str, **params: Any) -> str:
        text = self.texts.get(key)
        if text is None:
            raise KeyError(f"dashboards/i18n/{self.lang}.json has no text {key!r}")
        self.used.add(key)
        return text.format(**params) if params else text

    def col(self, key: str) -> str:
        """``AS "<label>"`` for a query column whose label Grafana shows."""
        label = self(key)
        if '"' in label or "\\" in label:
            raise ValueError(f"{self.lang}.json {key}: a column label cannot hold quotes")
        return f'AS "{label}"'

    def uid(self, base: str) -> str:
        return base if self.lang == DEFAULT_LANGUAGE else f"{base}-{self.lang.lower()}"


def _texts(tr: Texts | None) -> Texts:
    return tr if tr is not None else Texts()


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


def query_variable(name: str, label: str, query: str) -> gd.QueryVariable:
    """A dashboard variable from a query: several values or All, refreshed with the time
    range, sorted A-Z."""
    return (
        gd.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .multi(True)
        .include_all(True)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )


def site_variable(
    tr: Texts, label_key: str = "var.site", measurement: str | None = None
) -> gd.QueryVariable:
    source = "" if measurement is None else f'FROM "{measurement}" '
    return query_variable("site", tr(label_key), f'SHOW TAG VALUES {source}WITH KEY = "site"')


def device_variable(measurement: str, label: str) -> gd.QueryVariable:
    return query_variable(
        "device",
        label,
        f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "device" WHERE {SITE_FILTER}',
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


def keyed_series(
    tr: Texts, key: str, unit: str, query: str, alias: str, **params: Any
) -> timeseries.Panel:
    """A :func:`ts_panel` titled ``tr(key)`` and described by ``tr(key + ".desc")`` that draws
    one InfluxQL ``query``, a line per ``alias`` (e.g. ``$tag_device``)."""
    panel = ts_panel(tr(key), unit, tr(f"{key}.desc", **params))
    return panel.with_target(InfluxQL(query).alias(alias))


def new_dashboard(tr: Texts, title_key: str, uid: str, tags: list[str]) -> gd.Dashboard:
    lang_tags = [] if tr.lang == DEFAULT_LANGUAGE else [tr.lang]
    return (
        gd.Dashboard(tr(title_key))
        .uid(tr.uid(uid))
        .tags(["o2chain", *tags, *lang_tags])
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
        .editable()
    )


def columns(tr: Texts, names: dict[str, str]) -> list[tuple[str, list[dm.DynamicConfigValue]]]:
    """Table columns named by the catalogue: query column -> display name (and unit)."""
    out = []
    for column, key in names.items():
        unit = None
        if ":" in key:
            key, unit = key.split(":", 1)
        props = [dm.DynamicConfigValue(id_val="displayName", value=tr(key))]
        if unit:
            props.append(dm.DynamicConfigValue(id_val="unit", value=UNITS[unit]))
        out.append((column, props))
    return out


UNITS = {"lpm": "suffix: L/min", "short": "short", "percent": "percent"}


def with_columns(panel: table.Panel, tr: Texts, names: dict[str, str]) -> table.Panel:
    for column, props in columns(tr, names):
        panel.override_by_name(column, props)
    return panel


def table_panel(
    tr: Texts, key: str, unit: str, queries: list[InfluxQL], names: dict[str, str]
) -> table.Panel:
    """A table titled by the catalogue's ``key`` and described by ``key.desc``: one target a
    query, its columns named by the catalogue (``names`` as for :func:`columns`)."""
    panel = (
        table.Panel().title(tr(key)).unit(unit).datasource(DATASOURCE)
        .description(tr(f"{key}.desc"))
    )  # fmt: skip
    for query in queries:
        panel.with_target(query.table())
    return with_columns(panel, tr, names)


def rooms(tr: Texts | None = None) -> gd.Dashboard:
    tr = _texts(tr)
    layout = Layout()
    d = new_dashboard(tr, "rooms.title", "o2chain-rooms", ["rooms", "use"])
    d.with_variable(site_variable(tr)).with_variable(device_variable("room", tr("var.room_board")))
    where = f"{DEVICE_FILTER} AND $timeFilter"
    band = steps(
        (None, "red"), (ROOM_DEFICIENT_PCT, "orange"), (ROOM_LOW_EFFECT_PCT, "yellow"),
        (ROOM_TARGET_LOW_PCT, "green"), (ROOM_TARGET_HIGH_PCT, "orange"),
    )  # fmt: skip
    d.with_panel(layout.place(
        ts_panel(tr("rooms.o2"), "percent",
                 tr("rooms.o2.desc", lo=ROOM_TARGET_LOW_PCT, hi=ROOM_TARGET_HIGH_PCT))
        .with_target(InfluxQL(
            f'SELECT mean("o2_pct") FROM "room" WHERE {where} '
            'GROUP BY time($__interval), "device" fill(none)').alias("$tag_device"))
        .with_target(InfluxQL(
            f'SELECT {fire_limit_expr()} FROM "room" WHERE {where} '
            'GROUP BY time($__interval), "site" fill(none)', "B")
            .alias(tr("rooms.o2.fire_limit_series")))
        .thresholds(band)
        .thresholds_style(gd_thresholds_style("line+area")),
        w=24, h=9))  # fmt: skip
    d.with_panel(layout.place(
        ts_panel(tr("rooms.ppo2"), "pressurekpa", tr("rooms.ppo2.desc"))
        .with_target(InfluxQL(
            f'SELECT mean("ppo2_kpa") FROM "room" WHERE {where} '
            'GROUP BY time($__interval), "device" fill(none)').alias("$tag_device"))))  # fmt: skip
    d.with_panel(layout.place(
        ts_panel(tr("rooms.eq_alt"), "lengthm", tr("rooms.eq_alt.desc"))
        .with_target(InfluxQL(
            f'SELECT mean("eq_alt_m") FROM "room" WHERE {where} '
            'GROUP BY time($__interval), "device" fill(none)').alias("$tag_device"))))  # fmt: skip
    for key, fld, unit in (
        ("rooms.baro", "baro_kpa", "pressurekpa"),
        ("rooms.temp", "temp_c", "celsius"),
        ("rooms.rh", "rh_pct", "humidity"),
    ):
        d.with_panel(layout.place(
            ts_panel(tr(key), unit)
            .with_target(InfluxQL(
                f'SELECT mean("{fld}") FROM "room" WHERE {where} '
                'GROUP BY time($__interval), "device" fill(none)').alias("$tag_device")),
            w=8, h=7))  # fmt: skip
    return d


def gd_thresholds_style(mode: str) -> gc.GraphThresholdsStyleConfig:
    """How thresholds are drawn: ``line``, ``area``, ``line+area``."""
    return gc.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode(mode))


def concentrators(tr: Texts | None = None) -> gd.Dashboard:
    tr = _texts(tr)
    layout = Layout()
    d = new_dashboard(tr, "conc.title", "o2chain-concentrators", ["produce"])
    d.with_variable(site_variable(tr)).with_variable(
        device_variable("concentrator", tr("var.producer"))
    )
    where = f"{DEVICE_FILTER} AND $timeFilter"

    def series(title: str, fld: str, unit: str, w: int = 12, desc: str = "") -> Any:
        return layout.place(
            ts_panel(title, unit, desc).with_target(InfluxQL(
                f'SELECT mean("{fld}") FROM "concentrator" WHERE {where} '
                'GROUP BY time($__interval), "device" fill(none)').alias("$tag_device")),
            w=w)  # fmt: skip

    d.with_panel(
        series(tr("conc.purity"), "purity_pct", "percent", w=24,
               desc=tr("conc.purity.desc", medical=MEDICAL_PURITY_ALARM_PCT,
                       plant=PLANT_PURITY_ALARM_PCT))
        .thresholds(steps((None, "red"), (MEDICAL_PURITY_ALARM_PCT, "orange"),
                          (PLANT_PURITY_ALARM_PCT, "green")))
        .thresholds_style(gd_thresholds_style("line"))
        .min(60).max(100))  # fmt: skip
    d.with_panel(series(tr("conc.flow"), "flow_lpm", "suffix: L/min"))
    d.with_panel(layout.place(table_panel(
        tr, "conc.purity_vs_flow", "percent", [InfluxQL(
            f'SELECT mean("flow_lpm") AS "flow_lpm", mean("purity_pct") AS "purity_pct", '
            f'min("purity_pct") AS "min_purity_pct" FROM "concentrator" WHERE {where} '
            'GROUP BY "device"')],
        {"device": "col.device", "flow_lpm": "col.mean_flow:lpm",
         "purity_pct": "col.mean_purity", "min_purity_pct": "col.min_purity"})))  # fmt: skip
    d.with_panel(series(tr("conc.outlet"), "outlet_kpa", "pressurekpa", w=8))
    d.with_panel(series(tr("conc.tank"), "tank_kpa", "pressurekpa", w=8))
    d.with_panel(layout.place(
        ts_panel(tr("conc.beds"), "pressurekpa", tr("conc.beds.desc"))
        .with_target(InfluxQL(
            f'SELECT mean("bed_a_kpa") {tr.col("conc.beds.a")}, '
            f'mean("bed_b_kpa") {tr.col("conc.beds.b")} '
            f'FROM "concentrator" WHERE {where} GROUP BY time($__interval), "device" fill(none)')
            .alias("$tag_device $col")), w=8))  # fmt: skip
    d.with_panel(
        series(tr("conc.dew_point"), "dew_point_c", "celsius", w=12,
               desc=tr("conc.dew_point.desc", warn=-40.0, alarm=-30.0))
        .thresholds(steps((None, "green"), (-40.0, "orange"), (-30.0, "red")))
        .thresholds_style(gd_thresholds_style("line")))  # fmt: skip
    d.with_panel(layout.place(
        stat.Panel().title(tr("conc.run_hours")).unit("h").datasource(DATASOURCE)
        .reduce_options(last_value())
        .with_target(InfluxQL(
            f'SELECT last("run_h") FROM "concentrator" WHERE {where} GROUP BY "device"')
            .alias("$tag_device"))))  # fmt: skip
    d.with_panel(layout.place(
        ts_panel(tr("conc.purity_trend"), "percent", tr("conc.purity_trend.desc"))
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


def on_off_timeline(
    tr: Texts, key: str, texts: tuple[str, str], fld: str, measurement: str, where: str
) -> statetimeline.Panel:
    """Each device's boolean ``fld`` over time (``texts``: the catalogue keys of true, false);
    title and description are ``key`` and ``key.desc``."""
    return (
        statetimeline.Panel().title(tr(key)).unit("bool_on_off").datasource(DATASOURCE)
        .mappings(bool_mappings(tr(texts[0]), tr(texts[1])))
        .description(tr(f"{key}.desc"))
        .with_target(InfluxQL(
            f'SELECT last("{fld}") FROM "{measurement}" WHERE {where} '
            'GROUP BY time($__interval), "device" fill(previous)').alias("$tag_device"))
    )  # fmt: skip


def text_mappings(tr: Texts, values: dict[str, list[str]]) -> list[Any]:
    """One value mapping for text fields: each value shown as the catalogue's
    ``<prefix>.<value>`` (``values``: prefix -> the values)."""
    pairs = [(v, tr(f"{prefix}.{v}")) for prefix, vs in values.items() for v in vs]
    return [
        dm.ValueMap(
            {v: dm.ValueMappingResult(text=text, index=i) for i, (v, text) in enumerate(pairs)}
        )
    ]


def facility(tr: Texts | None = None) -> gd.Dashboard:
    """Produce / supply / use at a glance."""
    tr = _texts(tr)
    layout = Layout()
    d = new_dashboard(tr, "facility.title", "o2chain-facility", ["overview"])
    d.with_variable(site_variable(tr))
    in_range = f"{SITE_FILTER} AND $timeFilter"
    for key, unit, query, params in (
        ("facility.produced_now", "suffix: L/min",
         f'SELECT last("produced_o2_lpm") FROM "chain" WHERE {in_range}', {}),
        ("facility.delivered_now", "suffix: L/min",
         f'SELECT last("delivered_o2_lpm") FROM "chain" WHERE {in_range}', {}),
        ("facility.rooms_mean", "percent",
         f'SELECT last("rooms_o2_mean_pct") FROM "chain" WHERE {in_range}',
         {"lo": ROOM_TARGET_LOW_PCT, "hi": ROOM_TARGET_HIGH_PCT}),
        ("facility.alarms_active", "short",
         'SELECT last("alarms_active") FROM "gateway" WHERE $timeFilter', {}),
        ("facility.online", "short",
         'SELECT last("devices_online") FROM "gateway" WHERE $timeFilter', {}),
        ("facility.offline", "short",
         'SELECT last("devices_offline") FROM "gateway" WHERE $timeFilter', {}),
    ):  # fmt: skip
        panel = stat_panel(tr(key), unit, query, tr(f"{key}.desc", **params))
        if key == "facility.rooms_mean":
            panel.thresholds(room_band_steps()).color_mode(cm.BigValueColorMode.BACKGROUND)
        elif key in ("facility.alarms_active", "facility.offline"):
            panel.thresholds(steps((None, "green"), (1.0, "red")))
        else:
            panel.thresholds(steps((None, "blue")))
        d.with_panel(layout.place(panel, w=4, h=4))
    d.with_panel(layout.place(keyed_series(
        tr, "facility.chain", "suffix: L/min",
        f'SELECT mean("produced_o2_lpm") {tr.col("facility.chain.produced")}, '
        f'mean("delivered_o2_lpm") {tr.col("facility.chain.used")} '
        f'FROM "chain" WHERE {in_range} GROUP BY time($__interval), "site" fill(none)',
        "$tag_site $col"), w=12, h=8))  # fmt: skip
    for panel, w, h in chain_panels(in_range, tr):
        d.with_panel(layout.place(panel, w=w, h=h))
    d.with_panel(layout.place(
        bargauge.Panel().title(tr("facility.bands")).unit("percent").datasource(DATASOURCE)
        .description(tr("facility.bands.desc", deficient=ROOM_DEFICIENT_PCT,
                        low=ROOM_LOW_EFFECT_PCT, lo=ROOM_TARGET_LOW_PCT,
                        hi=ROOM_TARGET_HIGH_PCT))
        .min(18).max(30).thresholds(room_band_steps()).reduce_options(last_value())
        .display_mode(cm.BarGaugeDisplayMode.BASIC).orientation(cm.VizOrientation.HORIZONTAL)
        .with_target(InfluxQL(
            f'SELECT last("o2_pct") FROM "room" WHERE {in_range} GROUP BY "site", "device"')
            .alias("$tag_device")), w=12, h=8))  # fmt: skip
    d.with_panel(layout.place(
        on_off_timeline(tr, "facility.running", ("value.running", "value.stopped"),
                        "state", "concentrator", in_range), w=12, h=8))  # fmt: skip
    d.with_panel(layout.place(table_panel(
        tr, "facility.producers", "percent", [InfluxQL(
            f'SELECT last("purity_pct") AS "purity_pct", last("flow_lpm") AS "flow_lpm", '
            f'last("o2_lpm") AS "o2_lpm" FROM "concentrator" WHERE {in_range} '
            'GROUP BY "device"')],
        {"device": "col.device", "purity_pct": "col.purity", "flow_lpm": "col.flow:lpm",
         "o2_lpm": "col.o2_out:lpm"}), w=12, h=8))  # fmt: skip
    d.with_panel(layout.place(table_panel(
        tr, "facility.alarms", "none", [InfluxQL(ACTIVE_ALARMS_QUERY)],
        {"site": "col.site", "device": "col.device", "rule": "col.rule",
         "severity": "col.severity", "state": "col.state", "message": "col.message",
         "value": "col.value", "threshold": "col.threshold", "by": "col.by"})
        .mappings(text_mappings(tr, {"alarm_state": ALARM_EVENTS, "severity": SEVERITIES})),
        w=24, h=8))  # fmt: skip
    return d


# What the alarm measurement's "state" and "severity" hold (gateway/alarms.py AlarmEvent and
# gateway/config.py Severity): the active alarms table shows them through the catalogue.
ALARM_EVENTS = ["raise", "ack", "shelve", "unshelve", "clear"]
SEVERITIES = [s.value for s in Severity]


# The oxygen chain with the supply (gateway/supply_chain.py, gateway/README.md "Enrichment"):
# (field of the chain point, its name in the table's query, unit); the names shown and what
# each is come from the catalogue (chain.<name>, chain.<name>.what).
CHAIN_FIELDS = (
    ("produced_o2_lpm", "produced", "suffix: L/min"),
    ("stored_o2_l", "stored", "litre"),
    ("stored_change_o2_lpm", "stored change", "suffix: L/min"),
    ("delivered_metered_o2_lpm", "delivered", "suffix: L/min"),
    ("used_o2_lpm", "used", "suffix: L/min"),
    ("loss_o2_lpm", "loss", "suffix: L/min"),
    ("days_left", "days left", "d"),
)  # fmt: skip
DAYS_LEFT_WARN = supply_rules.DAYS_LEFT_WARN  # the supply devices' days-left alarms
DAYS_LEFT_ALARM = supply_rules.DAYS_LEFT_ALARM


def chain_key(name: str) -> str:
    return "chain." + name.replace(" ", "_")


def chain_panels(in_range: str, tr: Texts) -> list[tuple[Any, int, int]]:
    """The facility's chain panels: a table per site, the flows over time, days of O2 left."""
    columns = ", ".join(f'last("{f}") AS "{name}"' for f, name, _ in CHAIN_FIELDS)
    described = tr("list.semicolon").join(
        tr("chain.item", name=tr(chain_key(name)), what=tr(chain_key(name) + ".what"))
        for _, name, _ in CHAIN_FIELDS
    )
    by_site = (
        table.Panel().title(tr("facility.chain_by_site"))
        .unit("suffix: L/min").datasource(DATASOURCE)
        .description(tr("facility.chain_by_site.desc", described=described))
        .with_target(InfluxQL(
            f'SELECT {columns} FROM "chain" WHERE {in_range} GROUP BY "site"').table())
    )  # fmt: skip
    # The table's columns keep the query's names; Grafana shows the catalogue's.
    by_site.override_by_name(
        "site", [dm.DynamicConfigValue(id_val="displayName", value=tr("col.site"))]
    )
    for _, name, unit in CHAIN_FIELDS:
        by_site.override_by_name(name, [
            dm.DynamicConfigValue(id_val="displayName", value=tr(chain_key(name))),
            dm.DynamicConfigValue(id_val="unit", value=unit),
        ])  # fmt: skip
    flows = [(f, name) for f, name, unit in CHAIN_FIELDS if unit == "suffix: L/min"]
    flow_columns = ", ".join(f'mean("{f}") {tr.col(chain_key(name))}' for f, name in flows)
    over_time = (
        ts_panel(tr("facility.chain_over_time"), "suffix: L/min",
                 tr("facility.chain_over_time.desc", described=described))
        .with_target(InfluxQL(
            f'SELECT {flow_columns} FROM "chain" WHERE {in_range} '
            'GROUP BY time($__interval), "site" fill(none)').alias("$tag_site $col"))
    )  # fmt: skip
    days = (
        stat.Panel().title(tr("facility.days_left")).unit("d").datasource(DATASOURCE)
        .description(tr("facility.days_left.desc", alarm=DAYS_LEFT_ALARM, warn=DAYS_LEFT_WARN))
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


def device_health(tr: Texts | None = None) -> gd.Dashboard:
    tr = _texts(tr)
    layout = Layout()
    d = new_dashboard(tr, "health.title", "o2chain-device-health", ["health"])
    device = query_variable(
        "device", tr("var.device"), f'SHOW TAG VALUES WITH KEY = "device" WHERE {SITE_FILTER}'
    )
    d.with_variable(site_variable(tr)).with_variable(device)
    where = f"{DEVICE_FILTER} AND $timeFilter"
    d.with_panel(layout.place(table_panel(
        tr, "health.last_seen", "none", [
            InfluxQL(f'SELECT last("seq") AS "seq" FROM "room" WHERE {where} GROUP BY "device"'),
            InfluxQL(f'SELECT last("purity_pct") AS "purity_pct" FROM "concentrator" '
                     f'WHERE {where} GROUP BY "device"', "B")],
        {"device": "col.device", "seq": "col.seq", "purity_pct": "col.purity"}),
        w=8, h=8))  # fmt: skip
    d.with_panel(layout.place(
        on_off_timeline(tr, "health.online", ("value.online", "value.offline"),
                        "online", "device_health", where), w=16, h=8))  # fmt: skip

    def health_series(key: str, fld: str, unit: str, w: int = 8, **params: Any) -> Any:
        query = (f'SELECT mean("{fld}") FROM "device_health" WHERE {where} '
                 'GROUP BY time($__interval), "device" fill(none)')  # fmt: skip
        return layout.place(keyed_series(tr, key, unit, query, "$tag_device", **params), w=w, h=7)

    d.with_panel(
        health_series("health.rssi", "rssi_dbm", "dBm", drop=-80.0)
        .thresholds(steps((None, "red"), (-80.0, "orange"), (-70.0, "green")))
        .thresholds_style(gd_thresholds_style("line")))  # fmt: skip
    d.with_panel(health_series("health.heap", "heap_free_b", "bytes"))
    d.with_panel(health_series("health.buffered", "buffered", "short"))
    d.with_panel(layout.place(table_panel(
        tr, "health.reboots", "short", [InfluxQL(
            f'SELECT spread("boot") AS "reboots", last("boot") AS "boot" FROM "room" '
            f'WHERE {where} GROUP BY "device"')],
        {"device": "col.device", "reboots": "col.reboots", "boot": "col.boot"}),
        w=8, h=7))  # fmt: skip
    d.with_panel(layout.place(keyed_series(
        tr, "health.modbus_errors", "short",
        f'SELECT max("timeouts") {tr.col("health.modbus_errors.timeouts")}, '
        f'max("exceptions") {tr.col("health.modbus_errors.exceptions")}, '
        f'max("crc_errors") {tr.col("health.modbus_errors.crc")}, '
        f'max("io_errors") {tr.col("health.modbus_errors.io")} FROM "device_health" '
        f'WHERE {where} GROUP BY time($__interval), "device" fill(none)',
        "$tag_device $col"), w=8, h=7))  # fmt: skip
    d.with_panel(layout.place(table_panel(
        tr, "health.poll_success", "percent", [InfluxQL(
            f'SELECT last("poll_ok") / last("polls") * 100 AS "ok", last("polls") AS "polls" '
            f'FROM "device_health" WHERE {where} GROUP BY "device"')],
        {"device": "col.device", "ok": "col.poll_ok", "polls": "col.polls:short"}),
        w=8, h=7))  # fmt: skip
    d.with_panel(health_series("health.response", "response_ms", "ms", w=12))
    d.with_panel(health_series("health.uptime", "uptime_s", "s", w=12))
    return d


def gateway_dashboard(tr: Texts | None = None) -> gd.Dashboard:
    tr = _texts(tr)
    layout = Layout()
    d = new_dashboard(tr, "gateway.title", "o2chain-gateway", ["gateway"])
    d.with_variable(
        gd.QueryVariable("gw")
        .label(tr("var.gateway"))
        .datasource(DATASOURCE)
        .query('SHOW TAG VALUES FROM "gateway" WITH KEY = "gw"')
        .multi(True)
        .include_all(True)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )
    where = '"gw" =~ /^$gw$/ AND $timeFilter'

    def series(key: str, fields: list[tuple[str, str]], unit: str, w: int = 12,
               agg: str = "mean", **params: Any) -> Any:  # fmt: skip
        """``fields``: (field, label), the label a catalogue key or, starting with "=", as is."""
        select = ", ".join(
            f'{agg}("{f}") ' + (f'AS "{label[1:]}"' if label.startswith("=") else tr.col(label))
            for f, label in fields
        )
        query = (f'SELECT {select} FROM "gateway" WHERE {where} '
                 'GROUP BY time($__interval), "gw" fill(none)')  # fmt: skip
        return layout.place(keyed_series(tr, key, unit, query, "$tag_gw $col", **params), w=w, h=8)

    d.with_panel(
        series(
            "gateway.ingest",
            [("rate_mqtt_per_s", "=MQTT"), ("rate_modbus_per_s", "=Modbus")],
            tr("unit.readings_per_s"),
        )
    )
    d.with_panel(series("gateway.outbox", [("outbox_depth", "gateway.outbox.points")], "short",
                        w=8))  # fmt: skip
    d.with_panel(
        series("gateway.outbox_age", [("outbox_age_s", "gateway.outbox_age.age")], "s", w=8,
               agg="max", limit=OUTBOX_AGE_LIMIT_S)
        .thresholds(steps((None, "green"), (OUTBOX_AGE_LIMIT_S, "red")))
        .thresholds_style(gd_thresholds_style("line")))  # fmt: skip
    d.with_panel(series("gateway.latency", [("write_latency_s", "gateway.latency.latency")],
                        "s", w=8, agg="max"))  # fmt: skip
    reasons = sorted(r.value for r in RejectReason)  # reason codes, as the logs name them
    d.with_panel(series("gateway.rejects", [(f"rejects_{r}", f"={r}") for r in reasons],
                        "short", agg="max"))  # fmt: skip
    d.with_panel(series("gateway.written", [("written", "gateway.written.written"),
                        ("write_failures", "gateway.written.failures")], "short",
                        agg="max"))  # fmt: skip
    d.with_panel(series("gateway.devices", [("devices_online", "value.online"),
                        ("devices_offline", "value.offline")], "short", w=8,
                        agg="last"))  # fmt: skip
    d.with_panel(series("gateway.alarms", [("alarms_active", "gateway.alarms.active"),
                        ("alarms_unacked", "gateway.alarms.unacked")], "short", w=8,
                        agg="last"))  # fmt: skip
    d.with_panel(layout.place(
        stat.Panel().title(tr("gateway.mqtt")).unit("bool_yes_no").datasource(DATASOURCE)
        .reduce_options(last_value())
        .mappings(bool_mappings(tr("value.connected"), tr("value.disconnected")))
        .with_target(InfluxQL(
            f'SELECT last("mqtt_connected") FROM "gateway" WHERE {where} GROUP BY "gw"')
            .alias("$tag_gw")), w=4, h=8))  # fmt: skip
    d.with_panel(layout.place(
        stat.Panel().title(tr("gateway.uptime")).unit("s").datasource(DATASOURCE)
        .reduce_options(last_value())
        .with_target(InfluxQL(
            f'SELECT last("uptime_s") FROM "gateway" WHERE {where} GROUP BY "gw"')
            .alias("$tag_gw")), w=4, h=8))  # fmt: skip
    return d


DASHBOARDS: dict[str, Callable[..., gd.Dashboard]] = {  # (tr: Texts = English)
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


def out_dir_for(lang: str, base: Path = GENERATED) -> Path:
    """Where a language's dashboards go: English in ``base``, the others in ``base/<lang>``."""
    return base if lang == DEFAULT_LANGUAGE else base / lang


def build_all(out_dir: Path = GENERATED) -> list[Path]:
    """Write every dashboard in every language (``out_dir/<name>.json`` in English,
    ``out_dir/<lang>/<name>.json`` for the others); returns the paths."""
    paths = []
    for lang in languages():
        tr = Texts(lang)
        folder = out_dir_for(lang, out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for name, make in DASHBOARDS.items():
            path = folder / f"{name}.json"
            text = json.dumps(render(make(tr)), indent=2, sort_keys=True, ensure_ascii=False)
            path.write_text(text + "\n", encoding="utf-8")
            paths.append(path)
    return paths
