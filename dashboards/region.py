"""The region dashboard: every facility of a region side by side, from the central database
that the gateways' ``[central]`` forwarders feed (same schema as a facility's database; the
``site`` tag tells facilities apart). Provision it in the central Grafana with the data source
pointed at the central InfluxDB (dashboards/README.md, "Region").

Panels: the chain balance of each facility now and over time, readings arriving per facility
(a facility behind a broken WAN link shows a gap, then its backlog), and every active alarm of
the region. A facility's name links to the Facility overview for that site.
"""

from __future__ import annotations

from typing import TypeVar

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.influxql import DATASOURCE, InfluxQL

FACILITY_UID = "o2chain-facility"  # the Facility overview (dashboards/build.py)

# Each alarm's last event in the last 30 days, kept when it left the alarm active: the same
# rule as the Facility overview's list, over every site.
REGION_ALARMS_QUERY = (
    'SELECT "state", "message", "value" FROM ('
    'SELECT last("state") AS "state", last("message") AS "message", last("active") AS "active", '
    'last("value") AS "value" FROM "alarm" WHERE "site" =~ /^$site$/ AND time > now() - 30d '
    'GROUP BY "site", "device", "rule", "severity") '
    'WHERE "active" = true GROUP BY "site", "device", "rule", "severity"'
)


P = TypeVar("P", table.Panel, timeseries.Panel)
SITES = '"site" =~ /^$site$/'


def _grid(panel: P, x: int, y: int, w: int, h: int, panel_id: int) -> P:
    panel.grid_pos(dm.GridPos(h=h, w=w, x=x, y=y)).id(panel_id)
    return panel


def _site_variable() -> gd.QueryVariable:
    return (
        gd.QueryVariable("site")
        .label("Facility")
        .datasource(DATASOURCE)
        .query('SHOW TAG VALUES FROM "chain" WITH KEY = "site"')
        .multi(True)
        .include_all(True)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )


def _site_link() -> list[dm.DynamicConfigValue]:
    return [
        dm.DynamicConfigValue(
            id_val="links",
            value=[
                {
                    "title": "Facility overview",
                    "url": f"/d/{FACILITY_UID}?var-site=${{__value.raw}}&${{__url_time_range}}",
                }
            ],
        )
    ]


def region_dashboard() -> gd.Dashboard:
    d = (
        gd.Dashboard("o2chain / Region")
        .uid("o2chain-region")
        .tags(["o2chain", "region"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .editable()
        .with_variable(_site_variable())
    )
    d.with_panel(_grid(
        table.Panel().title("Facilities now").datasource(DATASOURCE).unit("suffix: L/min")
        .description("last chain balance of each facility (gateway/enrich.py): O2 produced, "
                     "delivered to the rooms, and their difference")
        .override_by_name("site", _site_link())
        .override_by_name("rooms O2", [dm.DynamicConfigValue(id_val="unit", value="percent")])
        .with_target(InfluxQL(
            'SELECT last("balance_o2_lpm") AS "balance", last("produced_o2_lpm") AS "produced", '
            'last("delivered_o2_lpm") AS "delivered", last("rooms_o2_mean_pct") AS "rooms O2" '
            f'FROM "chain" WHERE {SITES} AND $timeFilter GROUP BY "site"').table()),
        0, 0, 12, 9, 1))  # fmt: skip
    d.with_panel(_grid(
        table.Panel().title("Active alarms in the region").datasource(DATASOURCE).unit("none")
        .description("alarms whose last event (last 30 days) left them active, every facility")
        .override_by_name("site", _site_link())
        .with_target(InfluxQL(REGION_ALARMS_QUERY).table()),
        12, 0, 12, 9, 2))  # fmt: skip
    d.with_panel(_grid(
        timeseries.Panel().title("O2 balance per facility").datasource(DATASOURCE)
        .unit("suffix: L/min").line_width(1).fill_opacity(5)
        .show_points(cm.VisibilityMode.NEVER)
        .description("produced minus delivered oxygen, per facility")
        .with_target(InfluxQL(
            f'SELECT mean("balance_o2_lpm") FROM "chain" WHERE {SITES} AND $timeFilter '
            'GROUP BY time($__interval), "site" fill(none)').alias("$tag_site")),
        0, 9, 12, 8, 3))  # fmt: skip
    d.with_panel(_grid(
        timeseries.Panel().title("Room readings per facility").datasource(DATASOURCE)
        .unit("short").line_width(1).fill_opacity(5).show_points(cm.VisibilityMode.NEVER)
        .description("room readings stored per interval, by reading time: a WAN outage shows "
                     "as a gap that fills once the facility's backlog has arrived")
        .with_target(InfluxQL(
            f'SELECT count("o2_pct") FROM "room" WHERE {SITES} AND $timeFilter '
            'GROUP BY time($__interval), "site" fill(0)').alias("$tag_site")),
        12, 9, 12, 8, 4))  # fmt: skip
    return d
