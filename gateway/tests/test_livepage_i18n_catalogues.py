"""The text catalogues (gateway/static/i18n/{lang}.json) against the code of the two pages
that use them: the live page (index.html, app.js) and the region view (region.html, region.js,
its own texts under ``region.*``), both through the one mechanism in lang.js.

Every text a page shows is looked up by key: in the HTML through ``data-i18n`` attributes,
in the scripts through ``t("key")`` and ``k("key")`` (a key looked up later with ``tk``), and
the alarm rule names as ``rule.<id>`` for every built-in rule. These tests keep the catalogues
and the code in step: the same keys in every language, the same placeholders, every key used,
none missing, and one language option per catalogue on each page.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from gateway.builtin_rules import builtin_rules
from gateway.config import parse_config
from gateway.http import SECURITY_HEADERS, STATIC_NAME, static_file
from gateway.tests.test_livepage_server import get, serving
from o2chain.testing import assert_same_keys

STATIC = Path(__file__).resolve().parents[1] / "static"
CATALOGUES = {p.stem: p for p in sorted((STATIC / "i18n").glob("*.json"))}
# Every script and page that looks texts up (lang.js is the mechanism both pages load).
SCRIPTS = {n: (STATIC / n).read_text(encoding="utf-8") for n in ("lang.js", "app.js", "region.js")}
PAGES = {n: (STATIC / n).read_text(encoding="utf-8") for n in ("index.html", "region.html")}
PLACEHOLDER = re.compile(r"\{(\w+)\}")
# Texts that are the same in every language (symbols and SI units), and punctuation only.
SAME_EVERYWHERE = {"fact.co2", "unit.o2_pct", "region.lpm"}
PUNCTUATION = {"list.sep"}


def load(lang: str) -> dict[str, str]:
    doc = json.loads(CATALOGUES[lang].read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def literal_keys(scripts: list[str], pages: list[str]) -> set[str]:
    """Keys named literally in the scripts and pages."""
    keys: set[str] = set()
    for code in scripts:
        keys |= set(re.findall(r'\b(?:t|k|tParts)\(\s*"([^"]+)"', code))
    for html in pages:
        keys |= set(re.findall(r'data-i18n(?:-placeholder|-aria-label|-title)?="([^"]+)"', html))
    return keys


def all_literal_keys() -> set[str]:
    return literal_keys(list(SCRIPTS.values()), list(PAGES.values()))


def rule_ids() -> set[str]:
    config = parse_config({"site": [{"id": "s", "altitude_m": 0}]})
    return {rule.id for rule in builtin_rules(config)}


def test_english_and_chinese_are_there() -> None:
    assert {"en", "zh-CN"} <= set(CATALOGUES)


def test_every_catalogue_has_the_same_keys_and_placeholders() -> None:
    english = load("en")
    for lang in CATALOGUES:
        texts = load(lang)
        assert_same_keys(lang, texts, english)
        for key, text in texts.items():
            assert set(PLACEHOLDER.findall(text)) == set(PLACEHOLDER.findall(english[key])), (
                f"{lang}.json: {key} has other placeholders than en.json: {text!r}"
            )


def test_every_key_the_page_uses_is_there_and_every_key_is_used() -> None:
    used = all_literal_keys() | {f"rule.{rule}" for rule in rule_ids()}
    for lang in CATALOGUES:
        keys = set(load(lang))
        assert not used - keys, f"{lang}.json lacks {sorted(used - keys)}"
        assert not keys - used, f"{lang}.json has unused keys {sorted(keys - used)}"


def test_the_region_view_has_its_own_keys_and_the_live_page_does_not_use_them() -> None:
    """region.* texts are the region view's; it shares the others it shows (alarm states, link
    unknown, no alarms, the language menu; ages and severities through lang.js) with the live
    page, so the same thing reads the same on both."""
    region = literal_keys([SCRIPTS["region.js"]], [PAGES["region.html"]])
    live = literal_keys([SCRIPTS["app.js"]], [PAGES["index.html"]])
    assert {key for key in load("en") if key.startswith("region.")} <= region
    assert not {key for key in live if key.startswith("region.")}
    assert {"alarms.none", "state.unacknowledged", "link.unknown", "lang.label"} <= region


# Where t() / tParts() take a key that is not a literal: the look-up functions passing theirs
# on, and the translation of the pages' data-i18n attributes (their keys are checked there).
PASSED_ON = ("key,", "key)", "node.dataset.i18n,", "node.getAttribute(`data-i18n-${attr}`)")


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_lookup_names_its_key(name: str) -> None:
    """t() and tParts() take a literal key, so the test above sees every key; a key chosen at
    run time goes through a table of k("...") keys and tk(), or is a rule name (lang.js)."""
    code = re.sub(r"/\*.*?\*/", "", SCRIPTS[name], flags=re.S)  # comments may say t(KEY)
    for call in re.finditer(r"(?<![\w.])(t|tParts)\(\s*", code):
        rest = code[call.end() : call.end() + 60]
        if not rest.startswith('"') and not rest.startswith(PASSED_ON):
            line = code[: call.start()].count("\n") + 1
            raise AssertionError(
                f"{name}: a key that is not literal: {code.splitlines()[line - 1]}"
            )
    dynamic = re.findall(r"\btk\(\s*`([^`]*)`", SCRIPTS[name])
    expected = ["rule.${rule}"] if name == "lang.js" else []
    assert dynamic == expected, f"tk() with a built key: {dynamic}"


def test_chinese_is_translated() -> None:
    english, chinese = load("en"), load("zh-CN")
    han = re.compile(r"[\u4e00-\u9fff]")
    untranslated = sorted(
        k
        for k, v in chinese.items()
        if k not in SAME_EVERYWHERE | PUNCTUATION and not han.search(v)
    )
    assert not untranslated, f"zh-CN.json: no Chinese in {untranslated}"
    assert chinese["list.sep"] == "、" != english["list.sep"]
    for key in SAME_EVERYWHERE:
        assert chinese[key] == english[key]


def test_the_domain_terms_are_the_agreed_ones() -> None:
    """The words an operator on the plateau knows (docs: gateway/README.md, "Languages")."""
    zh = load("zh-CN")
    assert zh["kind.concentrator"] == "制氧机"
    assert zh["alarm.ack"] == "确认" and zh["alarm.shelve"] == "搁置"
    assert zh["link.online"] == "在线" and zh["link.offline"] == "离线"
    assert zh["fact.flow"] == "流量" and zh["unit.purity_pct"] == "% 纯度"
    assert zh["sev.alarm"] == "报警"
    assert zh["rule.room-o2-low-effect"] == "弥散供氧效果不足"
    assert zh["rule.supply-lox-level-low"].startswith("液氧储罐")
    assert zh["rule.supply-reserve-in-use"].startswith("汇流排")


@pytest.mark.parametrize("page", sorted(PAGES))
def test_language_options_match_the_catalogues(page: str) -> None:
    options = re.findall(r'<option value="([^"]+)" lang="([^"]+)">', PAGES[page])
    assert [value for value, lang in options] == [lang for _, lang in options]
    assert sorted(value for value, _ in options) == sorted(CATALOGUES)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_arguments_written_in_the_page_fill_their_placeholders(page: str) -> None:
    english, html = load("en"), PAGES[page]
    for key, args in re.findall(r"data-i18n=\"([^\"]+)\"\s+data-i18n-args='([^']+)'", html):
        assert set(json.loads(args)) == set(PLACEHOLDER.findall(english[key])), key
    for key, arg in re.findall(
        r'data-i18n="([^"]+)"[^>]*>(?:<[^>]+>)*?<\w+[^>]*data-i18n-arg="([^"]+)"', html
    ):
        assert f"{{{arg}}}" in english[key], key


@pytest.mark.parametrize("lang", sorted(CATALOGUES))
def test_catalogues_are_served_like_the_other_static_files(lang: str) -> None:
    ctype, body = static_file(f"i18n/{lang}.json")
    assert ctype == "application/json" and json.loads(body) == load(lang)


@pytest.mark.parametrize(
    "name",
    ["i18n/../app.js", "i18n/../../http.py", "i18n/en.js", "i18n/x/en.json", "../en.json",
     "i18n/.json", "i18n/EN.json", "i18n/en.json/", "en.json"],
)  # fmt: skip
def test_nothing_else_is_served_from_the_catalogue_folder(name: str) -> None:
    assert STATIC_NAME.match(name) is None


def test_the_server_sends_catalogues_with_the_page_headers(tmp_path: Path) -> None:
    """Over HTTP: JSON, and the same Content-Security-Policy and other headers as the page."""

    async def scenario() -> None:
        async with serving(tmp_path) as url:
            _, page_headers, _ = await get(url, "/")
            for lang in CATALOGUES:
                status, headers, body = await get(url, f"/static/i18n/{lang}.json")
                assert status == 200 and headers["content-type"] == "application/json"
                assert json.loads(body) == load(lang)
                for name, value in SECURITY_HEADERS:
                    assert headers[name.lower()] == page_headers[name.lower()] == value, name
            for bad in ("/static/i18n/../app.js", "/static/i18n/%2e%2e/app.js",
                        "/static/i18n/xx.json", "/static/i18n/", "/static/i18n"):  # fmt: skip
                status, _, _ = await get(url, bad)
                assert status == 404, bad

    asyncio.run(scenario())
