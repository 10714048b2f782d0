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

from typing import TYPE_CHECKING

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import table
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


def _site_column(tr: Texts) -> list[dm.DynamicConfigValue]:
    """The site column: named, and a link to that site's Facility overview."""
    from dashboards.build import columns

    link = {
        "title": tr("region.link"),
        "url": f"/d/{tr.uid(FACILITY_UID)}?var-site=${{__value.raw}}&${{__url_time_range}}",
    }
    [(_, named)] = columns(tr, {"site": "col.site"})
    return [*named, dm.DynamicConfigValue(id_val="links", value=[link])]


def region_dashboard(tr: Texts | None = None) -> gd.Dashboard:
    # dashboards.build imports this module for its list of dashboards: its helpers come late.
    from dashboards.build import (
        Layout,
        Texts,
        keyed_series,
        new_dashboard,
        site_variable,
        with_columns,
    )

    tr = tr if tr is not None else Texts()
    layout = Layout()
    d = (
        new_dashboard(tr, "region.title", "o2chain-region", ["region"])
        .refresh("30s")
        .time("now-6h", "now")
        .with_variable(site_variable(tr, "region.var.facility", measurement="chain"))
    )
    now = with_columns(
        table.Panel().title(tr("region.now")).datasource(DATASOURCE).unit("suffix: L/min")
        .description(tr("region.now.desc"))
        .override_by_name("site", _site_column(tr)),
        tr, {"balance": "region.col.balance", "produced": "chain.produced",
             "used": "chain.used", "rooms_o2": "region.col.rooms_o2:percent"},
    ).with_target(InfluxQL(
        'SELECT last("balance_o2_lpm") AS "balance", last("produced_o2_lpm") AS "produced", '
        'last("delivered_o2_lpm") AS "used", last("rooms_o2_mean_pct") AS "rooms_o2" '
        f'FROM "chain" WHERE {SITES} AND $timeFilter GROUP BY "site"').table())  # fmt: skip
    d.with_panel(layout.place(now, w=12, h=9))
    alarms = with_columns(
        table.Panel().title(tr("region.alarms")).datasource(DATASOURCE).unit("none")
        .description(tr("region.alarms.desc"))
        .override_by_name("site", _site_column(tr)),
        tr, {"device": "col.device", "rule": "col.rule", "severity": "col.severity",
             "state": "col.state", "message": "col.message", "value": "col.value"},
    ).with_target(InfluxQL(REGION_ALARMS_QUERY).table())  # fmt: skip
    d.with_panel(layout.place(alarms, w=12, h=9))
    per_site = 'GROUP BY time($__interval), "site"'
    for key, unit, query in (
        ("region.balance", "suffix: L/min",
         f'SELECT mean("balance_o2_lpm") FROM "chain" WHERE {SITES} AND $timeFilter '
         f"{per_site} fill(none)"),
        ("region.readings", "short",
         f'SELECT count("o2_pct") FROM "room" WHERE {SITES} AND $timeFilter {per_site} fill(0)'),
    ):  # fmt: skip
        d.with_panel(layout.place(keyed_series(tr, key, unit, query, "$tag_site"), w=12, h=8))
    return d
