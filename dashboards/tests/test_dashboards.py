"""Generated dashboards: valid Grafana JSON, reproducible, in every language the same panels and
queries with translated texts, and every query answers real data."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards.build import (
    DASHBOARDS,
    DEFAULT_LANGUAGE,
    GENERATED,
    I18N,
    Texts,
    build_all,
    languages,
    out_dir_for,
    render,
)
from o2base.services import InfluxDB
from o2chain.testing import DemoRun, assert_same_keys

PROVISIONING = Path(__file__).parents[1] / "provisioning"
LANGUAGES = languages()
HAN = re.compile(r"[\u4e00-\u9fff]")
PLACEHOLDER = re.compile(r"\{(\w+)(?::[^}]*)?\}")


def load(lang: str, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((out_dir_for(lang) / f"{name}.json").read_text("utf-8"))
    return doc


def catalogue(lang: str) -> dict[str, str]:
    doc: dict[str, str] = json.loads((I18N / f"{lang}.json").read_text("utf-8"))
    return doc


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # collapsed rows
    return out


def test_committed_json_is_what_the_code_generates(tmp_path: Path) -> None:
    build_all(tmp_path)
    for lang in LANGUAGES:
        for name in DASHBOARDS:
            fresh = (out_dir_for(lang, tmp_path) / f"{name}.json").read_text("utf-8")
            committed = (out_dir_for(lang) / f"{name}.json").read_text("utf-8")
            assert fresh == committed, f"run `o2chain dashboards build`: {lang} {name} is stale"
        found = sorted(p.stem for p in out_dir_for(lang).glob("*.json"))
        assert found == sorted(DASHBOARDS), f"{out_dir_for(lang)}: {found}"
    others = sorted(p.name for p in GENERATED.iterdir() if p.is_dir())
    assert others == sorted(set(LANGUAGES) - {DEFAULT_LANGUAGE}), "a language without a catalogue"


def test_english_keeps_its_files_and_uids() -> None:
    """generated/<name>.json and the uids o2chain-<name> are what existing Grafanas load."""
    for name in DASHBOARDS:
        assert load("en", name)["uid"] == f"o2chain-{name}"


def test_zh_cn_is_there() -> None:
    assert "zh-CN" in LANGUAGES


def test_catalogues_have_the_same_keys_and_placeholders() -> None:
    english = catalogue(DEFAULT_LANGUAGE)
    for lang in LANGUAGES:
        texts = catalogue(lang)
        assert_same_keys(lang, texts, english)
        for key, text in texts.items():
            assert PLACEHOLDER.findall(text) != [] or "{" not in text, key
            assert sorted(PLACEHOLDER.findall(text)) == sorted(PLACEHOLDER.findall(english[key])), (
                f"{lang}.json: {key} has other placeholders than en.json"
            )


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_text_of_the_catalogue_is_used(lang: str) -> None:
    tr = Texts(lang)
    for make in DASHBOARDS.values():
        render(make(tr))
    assert sorted(set(tr.texts) - tr.used) == [], f"{lang}.json: unused texts"


UNIT_TEXTS = {
    text: key
    for lang in LANGUAGES
    for key, text in catalogue(lang).items()
    if key.startswith("unit.")
}


def _shape(value: Any) -> Any:
    """A dashboard without its texts: what must be equal in every language."""
    texts = {"title", "description", "label", "displayName", "text", "alias"}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in texts and isinstance(v, str):
                continue
            if k == "value" and value.get("id") == "displayName":
                continue  # a column's name
            if k == "unit" and v in UNIT_TEXTS:
                v = UNIT_TEXTS[v]  # a unit with words ("readings/s") is translated
            if k == "query" and isinstance(v, str):
                v = re.sub(r'AS "[^"]*"', 'AS "_"', v)  # column labels are translated
            if k == "url" and isinstance(v, str):
                for lang in LANGUAGES:  # a data link opens the dashboard of its own language
                    v = v.replace(f"-{lang.lower()}?", "?")
            out[k] = _shape(v)
        return out
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return value


def _strings(value: Any) -> list[str]:
    """The texts of a dashboard (not the column names its overrides match)."""
    if isinstance(value, dict):
        return [s for k, v in value.items() if k != "matcher" for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize("lang", [lang for lang in LANGUAGES if lang != DEFAULT_LANGUAGE])
@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_language_has_the_same_panels_and_queries(lang: str, name: str) -> None:
    english, other = load(DEFAULT_LANGUAGE, name), load(lang, name)
    assert other["uid"] == f"{english['uid']}-{lang.lower()}"
    assert len(other["uid"]) <= 40  # Grafana's limit
    english_shape, other_shape = _shape(english), _shape(other)
    english_shape.pop("uid"), other_shape.pop("uid")
    assert other_shape.pop("tags") == [*english_shape.pop("tags"), lang]
    assert other_shape == english_shape
    # The texts are translated: no text of the English catalogue is left.
    leftover = set(catalogue(DEFAULT_LANGUAGE).values()) - set(catalogue(lang).values())
    assert not leftover & set(_strings(other)), sorted(leftover & set(_strings(other)))


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_chinese_titles_and_descriptions(name: str) -> None:
    dashboard = load("zh-CN", name)
    assert HAN.search(dashboard["title"]), dashboard["title"]
    for panel in panels(dashboard):
        assert HAN.search(panel["title"]), panel["title"]
        assert not panel.get("description") or HAN.search(panel["description"]), panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert HAN.search(variable["label"]), variable["label"]


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_is_valid_grafana_json(lang: str, name: str) -> None:
    dashboard = load(lang, name)
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


def test_dashboards_providers_one_folder_per_language() -> None:
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "o2chain.yaml").read_text("utf-8"))
    entries = provider["providers"]
    assert len(entries) == len(LANGUAGES)
    assert all(e["type"] == "file" and e["options"]["path"] for e in entries)
    assert len({e["name"] for e in entries}) == len({e["folder"] for e in entries}) == len(entries)
    paths = [e["options"]["path"].rstrip("/") + "/" for e in entries]
    for a in paths:  # Grafana reads subdirectories: no language inside another's folder
        assert not [b for b in paths if b != a and b.startswith(a)], paths
    english = [e for e in entries if e["name"] == "o2chain"]
    assert english and english[0]["folder"] == "o2chain"


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
@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_query_answers_with_data(lang: str, name: str, demo_run: DemoRun) -> None:
    """In every language: the translated column labels (AS "...") are valid InfluxQL too."""
    dashboard = render(DASHBOARDS[name](Texts(lang)))
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
    names = [name for _, name, _ in CHAIN_FIELDS]
    assert names == ["produced", "stored", "stored change", "delivered", "used", "loss",
                     "days left"]  # fmt: skip
    units = {
        o["matcher"]["options"]: p["value"]
        for o in table_panel["fieldConfig"]["overrides"]
        for p in o["properties"]
        if p["id"] == "unit"
    }
    assert units == {name: unit for _, name, unit in CHAIN_FIELDS}
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
