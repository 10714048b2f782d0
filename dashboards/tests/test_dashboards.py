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
