"""The region dashboard: every facility of a region side by side, from the central database
that the gateways' ``[central]`` forwarders feed (same schema as a facility's database; the
``site`` tag tells facilities apart). Provision it in the central Grafana with the data source
pointed at the central InfluxDB (dashboards/README.md, "Region").

Panels: the chain balance of each facility now and over time, room readings arriving per
facility (a facility behind a broken WAN link shows a gap, then its backlog), and every active
alarm of the region. A facility's name links to the Facility overview for that site. Texts come
from the catalogues (dashboards/i18n) like every other dashboard's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.influxql import DATASOURCE, InfluxQL

if TYPE_CHECKING:
    from dashboards.build import Texts

FACILITY_UID = "o2chain-facility"  # the Facility overview (dashboards/build.py)
SITES = '"site" =~ /^$site$/'

# Each alarm's last event in the last 30 days, kept when it left the alarm active: the same
# rule as the Facility overview's list, over every site of the region.
REGION_ALARMS_QUERY = (
    'SELECT "state", "message", "value" FROM ('
    'SELECT last("state") AS "state", last("message") AS "message", last("active") AS "active", '
    f'last("value") AS "value" FROM "alarm" WHERE {SITES} AND time > now() - 30d '
    'GROUP BY "site", "device", "rule", "severity") '
    'WHERE "active" = true GROUP BY "site", "device", "rule", "severity"'
)

P = TypeVar("P", table.Panel, timeseries.Panel)


def _grid(panel: P, x: int, y: int, w: int, h: int, panel_id: int) -> P:
    panel.grid_pos(dm.GridPos(h=h, w=w, x=x, y=y)).id(panel_id)
    return panel


def _name(tr: Texts, key: str, unit: str | None = None) -> list[dm.DynamicConfigValue]:
    props = [dm.DynamicConfigValue(id_val="displayName", value=tr(key))]
    if unit:
        props.append(dm.DynamicConfigValue(id_val="unit", value=unit))
    return props


def _site_column(tr: Texts) -> list[dm.DynamicConfigValue]:
    """The site column: named, and a link to that site's Facility overview."""
    link = {
        "title": tr("region.link"),
        "url": f"/d/{tr.uid(FACILITY_UID)}?var-site=${{__value.raw}}&${{__url_time_range}}",
    }
    return [*_name(tr, "col.site"), dm.DynamicConfigValue(id_val="links", value=[link])]


def region_dashboard(tr: Texts | None = None) -> gd.Dashboard:
    from dashboards.build import DEFAULT_LANGUAGE, Texts

    tr = tr if tr is not None else Texts()
    lang_tags = [] if tr.lang == DEFAULT_LANGUAGE else [tr.lang]
    d = (
        gd.Dashboard(tr("region.title"))
        .uid(tr.uid("o2chain-region"))
        .tags(["o2chain", "region", *lang_tags])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .editable()
        .with_variable(
            gd.QueryVariable("site")
            .label(tr("region.var.facility"))
            .datasource(DATASOURCE)
            .query('SHOW TAG VALUES FROM "chain" WITH KEY = "site"')
            .multi(True)
            .include_all(True)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
        )
    )
    now = (
        table.Panel().title(tr("region.now")).datasource(DATASOURCE).unit("suffix: L/min")
        .description(tr("region.now.desc"))
        .override_by_name("site", _site_column(tr))
        .override_by_name("balance", _name(tr, "region.col.balance"))
        .override_by_name("produced", _name(tr, "chain.produced"))
        .override_by_name("used", _name(tr, "chain.used"))
        .override_by_name("rooms_o2", _name(tr, "region.col.rooms_o2", "percent"))
        .with_target(InfluxQL(
            'SELECT last("balance_o2_lpm") AS "balance", last("produced_o2_lpm") AS "produced", '
            'last("delivered_o2_lpm") AS "used", last("rooms_o2_mean_pct") AS "rooms_o2" '
            f'FROM "chain" WHERE {SITES} AND $timeFilter GROUP BY "site"').table())
    )  # fmt: skip
    d.with_panel(_grid(now, 0, 0, 12, 9, 1))
    alarms = (
        table.Panel().title(tr("region.alarms")).datasource(DATASOURCE).unit("none")
        .description(tr("region.alarms.desc"))
        .override_by_name("site", _site_column(tr))
        .override_by_name("device", _name(tr, "col.device"))
        .override_by_name("rule", _name(tr, "col.rule"))
        .override_by_name("severity", _name(tr, "col.severity"))
        .override_by_name("state", _name(tr, "col.state"))
        .override_by_name("message", _name(tr, "col.message"))
        .override_by_name("value", _name(tr, "col.value"))
        .with_target(InfluxQL(REGION_ALARMS_QUERY).table())
    )  # fmt: skip
    d.with_panel(_grid(alarms, 12, 0, 12, 9, 2))
    d.with_panel(_grid(
        timeseries.Panel().title(tr("region.balance")).datasource(DATASOURCE)
        .unit("suffix: L/min").line_width(1).fill_opacity(5)
        .show_points(cm.VisibilityMode.NEVER)
        .description(tr("region.balance.desc"))
        .with_target(InfluxQL(
            f'SELECT mean("balance_o2_lpm") FROM "chain" WHERE {SITES} AND $timeFilter '
            'GROUP BY time($__interval), "site" fill(none)').alias("$tag_site")),
        0, 9, 12, 8, 3))  # fmt: skip
    d.with_panel(_grid(
        timeseries.Panel().title(tr("region.readings")).datasource(DATASOURCE)
        .unit("short").line_width(1).fill_opacity(5).show_points(cm.VisibilityMode.NEVER)
        .description(tr("region.readings.desc"))
        .with_target(InfluxQL(
            f'SELECT count("o2_pct") FROM "room" WHERE {SITES} AND $timeFilter '
            'GROUP BY time($__interval), "site" fill(0)').alias("$tag_site")),
        12, 9, 12, 8, 4))  # fmt: skip
    return d
