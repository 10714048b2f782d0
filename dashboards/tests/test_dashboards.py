"""Generated dashboards: valid Grafana JSON, reproducible, and every query answers real data."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards.build import DASHBOARDS, GENERATED, build_all, render
from o2base.services import InfluxDB
from o2chain.testing import DemoRun

PROVISIONING = Path(__file__).parents[1] / "provisioning"


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # collapsed rows
    return out


def test_committed_json_is_what_the_code_generates(tmp_path: Path) -> None:
    build_all(tmp_path)
    for name in DASHBOARDS:
        fresh = (tmp_path / f"{name}.json").read_text()
        committed = (GENERATED / f"{name}.json").read_text()
        assert fresh == committed, f"run `o2chain dashboards build`: {name}.json is stale"
    assert sorted(p.stem for p in GENERATED.glob("*.json")) == sorted(DASHBOARDS)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_is_valid_grafana_json(name: str) -> None:
    dashboard = json.loads((GENERATED / f"{name}.json").read_text())
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"].startswith("o2chain-") and dashboard["title"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}: {ids}"
    provisioned = yaml.safe_load((PROVISIONING / "datasources" / "o2chain.yaml").read_text())
    uids = {ds["uid"] for ds in provisioned["datasources"]}
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], f"{name}: panel {panel['title']!r} has no query"
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        assert unit, f"{name}: panel {panel['title']!r} has no unit"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] in uids


def test_dashboards_provider_points_at_a_folder() -> None:
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "o2chain.yaml").read_text())
    (entry,) = provider["providers"]
    assert entry["type"] == "file" and entry["options"]["path"]


def substitute(query: str, variables: dict[str, str]) -> str:
    """Do what Grafana does before sending a query: variables, time filter, interval."""
    query = query.replace("$timeFilter", "time > now() - 1h").replace("$__interval", "10s")
    for name, value in variables.items():
        query = query.replace(f"${name}", value)
    assert "$" not in re.sub(r"/\^.*?\$/", "", query), f"unsubstituted variable in {query}"
    return query


def all_values(influx: InfluxDB, variable: dict[str, Any], known: dict[str, str]) -> str:
    """The 'All' value Grafana sends for a multi-value regex variable: (a|b|c)."""
    result = influx.query(substitute(variable["query"], known), db="o2chain")
    series = result["results"][0].get("series", [])
    values = [row[1] for s in series for row in s["values"]]
    assert values, f"variable {variable['name']} has no values"
    return "(" + "|".join(re.escape(v) for v in sorted(set(values))) + ")"


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_query_answers_with_data(name: str, demo_run: DemoRun) -> None:
    dashboard = render(DASHBOARDS[name]())
    empty: set[tuple[str, str]] = set()
    with InfluxDB(demo_run.data_dir / "services") as influx:
        known: dict[str, str] = {}
        for variable in dashboard["templating"]["list"]:
            known[variable["name"]] = all_values(influx, variable, known)
        for panel in panels(dashboard):
            for target in panel["targets"]:
                query = substitute(target["query"], known)
                result = influx.query(query, db="o2chain")["results"][0]
                assert "error" not in result, f"{panel['title']}: {result.get('error')}\n{query}"
                series = result.get("series", [])
                if not (series and any(s["values"] for s in series)):
                    empty.add((panel["title"], target["refId"]))
                    continue
                assert series[0]["columns"][0] == "time"
    assert not empty, f"{name}: panels without data from the demo run: {sorted(empty)}"


@pytest.mark.integration
def test_facility_shows_the_oxygen_chain_per_site(demo_run: DemoRun) -> None:
    """Produced, stored, delivered, used, loss and days of oxygen left per site, from the
    demo's chain points: every column answers with a number, in its unit."""
    from dashboards.build import CHAIN_FIELDS, DAYS_LEFT_ALARM, DAYS_LEFT_WARN

    by_title = {p["title"]: p for p in panels(render(DASHBOARDS["facility"]()))}
    site = {"site": "(lhasa\\-hotel)"}
    table_panel = by_title["Oxygen chain by site: produced, stored, delivered, used, loss"]
    days_panel = by_title["Days of oxygen left"]
    flows_panel = by_title["Oxygen chain over time: produced, stored change, delivered, used, loss"]
    names = [name for _, name, _, _ in CHAIN_FIELDS]
    assert names == ["produced", "stored", "stored change", "delivered", "used", "loss",
                     "days left"]  # fmt: skip
    units = {
        o["matcher"]["options"]: o["properties"][0]["value"]
        for o in table_panel["fieldConfig"]["overrides"]
    }
    assert units == {name: unit for _, name, unit, _ in CHAIN_FIELDS}
    assert units["stored"] == "litre" and units["days left"] == "d"
    steps_ = days_panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps_] == [None, DAYS_LEFT_ALARM, DAYS_LEFT_WARN]
    with InfluxDB(demo_run.data_dir / "services") as influx:

        def answer(panel: dict[str, Any]) -> list[dict[str, Any]]:
            query = substitute(panel["targets"][0]["query"], site)
            result = influx.query(query, db="o2chain")["results"][0]
            assert "error" not in result, f"{panel['title']}: {result.get('error')}\n{query}"
            series = result.get("series", [])
            assert series, f"{panel['title']}: no data\n{query}"
            return series

        [row] = answer(table_panel)
        assert row["tags"] == {"site": "lhasa-hotel"} and row["columns"] == ["time", *names]
        values = dict(zip(row["columns"], row["values"][-1], strict=True))
        assert all(isinstance(values[n], int | float) for n in names), values
        assert 1.8 < values["days left"] < 2.7 and 1.9e6 < values["stored"] < 2.3e6, values
        [days] = answer(days_panel)
        assert any(v[1] is not None and 1.8 < v[1] < 2.7 for v in days["values"]), days
        [flows] = answer(flows_panel)
        assert flows["columns"] == ["time", "produced", "stored change", "delivered", "used",
                                    "loss"]  # fmt: skip
        assert any(all(x is not None for x in v) for v in flows["values"]), flows
