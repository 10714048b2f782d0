"""Grafana dashboards as code: builds every o2chain dashboard and writes the JSON files.

    .venv/bin/o2chain dashboards build     # regenerate dashboards/generated/*.json

Thresholds come from the same places the gateway's alarm engine takes them: purity limits from
the device profiles' ``[nominal]`` values, the room fire-safety limit from ``gateway.oxygen``'s
NFPA constants (drawn as a series computed from each room's measured pressure, because the
limit moves with the weather and the site's altitude).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as gc
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.influxql import DATASOURCE, InfluxQL
from gateway import oxygen
from o2chain.registers import load_profile

GENERATED = Path(__file__).parent / "generated"
SCHEMA_VERSION = 39  # Grafana 11.x dashboards

SITE_FILTER = '"site" =~ /^$site$/'
DEVICE_FILTER = '"site" =~ /^$site$/ AND "device" =~ /^$device$/'

MEDICAL_PURITY_ALARM_PCT = float(load_profile("medical-concentrator").nominal["purity_alarm_pct"])
PLANT_PURITY_ALARM_PCT = float(load_profile("psa-plant").nominal["purity_alarm_pct"])
ROOM_TARGET_LOW_PCT = 24.0  # DOMAIN.md section 3: target band about 24-26 %
ROOM_TARGET_HIGH_PCT = 26.0
ROOM_LOW_EFFECT_PCT = 22.0
ROOM_DEFICIENT_PCT = 19.5


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


DASHBOARDS: dict[str, Callable[[], gd.Dashboard]] = {
    "rooms": rooms,
    "concentrators": concentrators,
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
