"""The live page in English and in Simplified Chinese, in headless Chromium.

The same gateway, broker, database and boards as gateway/tests/test_livepage.py (its fixture,
a second instance for this module). A browser whose language is English gets the page in
English, one whose language is Chinese gets it in Chinese; the language control switches and
the choice survives a reload. In Chinese no text of the English catalogue is left on the page
(apart from the gateway's own alarm messages, which come as text) and no Latin word but names,
units and protocols (English written into app.js without the catalogue), and an operator can
log in and acknowledge an alarm.

Screenshots go to ``test-artifacts/`` (livepage-en.png, livepage-zh-CN.png,
livepage-zh-CN-phone.png); docs/img/livepage-zh-CN.png is one of them.
"""

# The Chinese texts use full-width colons and commas, as Chinese does.
# ruff: noqa: RUF001

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.tests.test_livepage import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    HIGH_O2_KEY,
    OFFLINE_KEY,
    OPERATOR,
    PASSWORD,
    LiveGateway,
    _pw,
    live,
)

pytestmark = pytest.mark.integration
__all__ = ["live"]  # the gateway fixture, used by the tests below

CATALOGUES = Path(__file__).resolve().parents[1] / "static" / "i18n"
HAN = re.compile(r"[\u4e00-\u9fff]")


def catalogue(lang: str) -> dict[str, str]:
    doc: dict[str, str] = json.loads((CATALOGUES / f"{lang}.json").read_text(encoding="utf-8"))
    return doc


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = _pw()
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@contextmanager
def page_in(browser: Any, locale: str, url: str) -> Iterator[Any]:
    """A page of a fresh browser context (no stored choice) whose language is ``locale``;
    fails on any script error or missing text (reported on the console)."""
    context = browser.new_context(
        locale=locale, viewport={"width": 1280, "height": 900}, device_scale_factor=1
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.goto(url + "/")
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"errors on the page: {errors}"


def wait_for_data(page: Any) -> None:
    expect = _pw().expect
    expect(page.locator('[data-device="room-102"] .big')).to_contain_text("%", timeout=20_000)
    expect(page.locator(f'li.alarm[data-key="{HIGH_O2_KEY}"]')).to_be_visible(timeout=15_000)
    expect(page.locator(f'li.alarm[data-key="{OFFLINE_KEY}"]')).to_be_visible(timeout=15_000)
    expect(page.locator('[data-device="room-102"] svg.spark polyline')).to_have_count(
        1, timeout=10_000
    )


# The text a person sees (innerText of the rendered page: hidden elements left out), less what
# the gateway sends as text (alarm messages), config syntax (<code>) and the language menu's
# native names.
VISIBLE_TEXT = """() => {
    let text = document.body.innerText;
    for (const n of document.querySelectorAll(".alarm-msg, code, #lang")) {
        if (n.innerText) text = text.split(n.innerText).join(" ");
    }
    return text;
}"""


def english_left_over(page: Any) -> list[str]:
    """Texts of the English catalogue still on the page (whole words or phrases, each part
    between placeholders), leaving out what the gateway sends as text (alarm messages)."""
    return english_in(page.evaluate(VISIBLE_TEXT) + " " + page.title())


def english_in(text: str) -> list[str]:
    """The texts of the English catalogue (that Chinese says otherwise) found in ``text``."""
    chinese = catalogue("zh-CN")
    found = []
    for key, english in catalogue("en").items():
        if chinese[key] == english:
            continue
        for part in re.split(r"\{\w+\}", english):
            part = part.strip(" :·>()")
            if len(re.sub(r"[^A-Za-z]", "", part)) < 4:
                continue  # "O₂", "ok", units
            if re.search(rf"(?<![\w-]){re.escape(part)}(?![\w-])", text):
                found.append(f"{key}: {part!r}")
    return found


# Latin words a Chinese page may show: names of protocols, standards and units, the footer's
# link to docs/domain.md "Limits and alarms", and config names in hints ([enrich] ...).
LATIN_OK = {
    "o2chain", "MQTT", "mqtt", "modbus", "Modbus", "ISA", "NFPA", "PSA", "kPa", "ppm", "CO",
    "min",
    "docs", "domain", "md", "Limits", "and", "alarms", "api", "status", "enrich",
    "chain_interval_s", "ventilation_m3h", "users_file", "http",
}  # fmt: skip


def latin_words_left(page: Any, url: str) -> list[str]:
    """Latin words on the page that are neither names from the gateway (sites, devices, the
    gateway's id) nor in LATIN_OK: English the page wrote without its catalogue."""
    text = page.evaluate(VISIBLE_TEXT)
    doc = requests.get(url + "/api/status", timeout=5).json()
    names = [doc["gateway"]["id"]]
    for site in doc["sites"]:
        names += [site["id"], site.get("name") or ""]
        names += [d["id"] for d in site["devices"]]
    names += [u["key"] for u in doc.get("unknown_devices", [])]
    ok = LATIN_OK | {w for n in names for w in re.findall(r"[A-Za-z][\w-]*", n)}
    words = re.findall(r"[A-Za-z][A-Za-z0-9_-]*", text)
    return sorted({w for w in words if len(w) > 1 and w not in ok and not re.search(r"\d", w)})


def test_an_english_browser_gets_english(live: LiveGateway, browser: Any) -> None:
    expect = _pw().expect
    with page_in(browser, "en-US", live.url) as page:
        wait_for_data(page)
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(page.locator("#lang")).to_have_value("en")
        expect(page.locator("#alarms-title")).to_contain_text("Active alarms")
        high = page.locator(f'li.alarm[data-key="{HIGH_O2_KEY}"]')
        expect(high.locator(".sev")).to_have_text("critical")
        expect(high.locator(".alarm-rule")).to_have_text("O₂ too high: fire risk")
        expect(high.locator(".alarm-rule")).to_have_attribute("title", HIGH_O2_KEY)
        expect(page.locator('[data-device="room-101"] .band')).to_contain_text("fire risk >")
        expect(page.locator('[data-device="room-104"] .link')).to_have_text("offline")
        expect(page.locator(".group-title").first).to_have_text("Rooms")
        expect(page.get_by_label("User name")).to_be_visible()
        body = page.locator("body").inner_text()
        assert not HAN.search(body.replace("简体中文", "")), "Chinese on the English page"
        page.screenshot(path=str(ARTIFACTS / "livepage-en.png"), full_page=False)


def test_a_chinese_browser_gets_chinese(live: LiveGateway, browser: Any) -> None:
    expect = _pw().expect
    ARTIFACTS.mkdir(exist_ok=True)
    with page_in(browser, "zh-CN", live.url) as page:
        wait_for_data(page)
        expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        expect(page.locator("#lang")).to_have_value("zh-CN")
        expect(page.locator("#alarms-title")).to_contain_text("活动报警")
        high = page.locator(f'li.alarm[data-key="{HIGH_O2_KEY}"]')
        expect(high.locator(".sev")).to_have_text("紧急")
        expect(high.locator(".alarm-rule")).to_have_text("氧浓度过高：火灾风险")
        expect(high.locator(".alarm-state")).to_have_text("未确认")
        expect(high.locator(".alarm-meta")).to_contain_text("触发于")
        offline = page.locator(f'li.alarm[data-key="{OFFLINE_KEY}"]')
        expect(offline.locator(".alarm-rule")).to_have_text("设备离线")
        expect(page.locator('[data-device="room-101"] .band')).to_contain_text("火灾风险 >")
        expect(page.locator('[data-device="room-102"] .band')).to_have_text("目标范围")
        expect(page.locator('[data-device="room-101"] .card-title')).to_have_text("101 号房")
        expect(page.locator('[data-device="room-104"] .link')).to_have_text("离线")
        expect(page.locator('[data-device="room-102"] .link')).to_have_text("在线")
        conc = page.locator('[data-device="conc-1"]')
        expect(conc.locator(".big")).to_contain_text("% 纯度")
        expect(conc.locator(".card-kind")).to_contain_text("制氧机")
        expect(conc.locator("dt").first).to_have_text("流量")
        expect(page.locator(".group-title").first).to_have_text("房间")
        expect(page.locator("#conn")).to_have_text("实时")
        expect(page.locator("#gw-line")).to_contain_text("更新于")
        expect(page.locator("#unknown-title")).to_have_text("已发现但未配置的设备")
        expect(page.locator("#unknown .hint code")).to_have_count(2)
        expect(page.get_by_label("用户名")).to_be_visible()
        assert page.title().startswith("(") and "o2chain 实时监测" in page.title()
        # Numbers for the locale, units SI: "3,650 m", "% O₂", "kPa".
        expect(page.locator('[data-device="room-102"] dd[data-field="eq_alt_m"]')).to_have_text(
            re.compile(r"^-?[\d,]+ m$")
        )
        expect(page.locator('[data-device="room-102"] dd[data-field="ppo2_kpa"]')).to_have_text(
            re.compile(r"^\d+\.\d\d kPa$")
        )
        assert not english_left_over(page), english_left_over(page)
        assert not latin_words_left(page, live.url), latin_words_left(page, live.url)
        page.screenshot(path=str(ARTIFACTS / "livepage-zh-CN.png"), full_page=False)
        page.screenshot(path=str(ARTIFACTS / "livepage-zh-CN-full.png"), full_page=True)
        # Chinese glyphs are drawn from a CJK font, not as boxes (tofu).
        fonts = page.evaluate(
            """async () => { await document.fonts.ready;
                return document.fonts.check('16px "Noto Sans CJK SC"', "活动报警"); }"""
        )
        assert fonts, "no Noto Sans CJK SC: scripts/bootstrap.sh --test-tools installs it"

        page.set_viewport_size({"width": 390, "height": 844})
        expect(offline.locator(".sev")).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the Chinese page is {overflow} px wider than a phone screen"
        page.screenshot(path=str(ARTIFACTS / "livepage-zh-CN-phone.png"), full_page=False)


def test_the_language_control_switches_and_is_remembered(live: LiveGateway, browser: Any) -> None:
    expect = _pw().expect
    with page_in(browser, "en-GB", live.url) as page:
        wait_for_data(page)
        expect(page.locator("#alarms-title")).to_contain_text("Active alarms")
        page.get_by_label("Language").select_option("zh-CN")
        expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        expect(page.locator("#alarms-title")).to_contain_text("活动报警")
        high = page.locator(f'li.alarm[data-key="{HIGH_O2_KEY}"]')
        expect(high.locator(".sev")).to_have_text("紧急")
        expect(page.locator('[data-device="room-104"] .link')).to_have_text("离线")
        expect(page.locator(".group-title").first).to_have_text("房间")
        # The cards were rebuilt in Chinese and still draw their trend.
        expect(page.locator('[data-device="room-102"] svg.spark polyline')).to_have_count(1)
        assert page.evaluate("localStorage.getItem('o2chain.lang')") == "zh-CN"
        assert not english_left_over(page), english_left_over(page)

        page.reload()  # the choice wins over the browser's English
        expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        expect(page.locator("#lang")).to_have_value("zh-CN")
        wait_for_data(page)
        expect(page.locator("#alarms-title")).to_contain_text("活动报警")

        # An operator acts in Chinese: labels, buttons and the result are in Chinese.
        page.get_by_label("用户名").fill(OPERATOR)
        page.get_by_label("密码").fill(PASSWORD)
        page.get_by_role("button", name="登录").click()
        expect(page.locator("#who-role")).to_have_text("操作员")
        expect(page.locator("#who")).to_contain_text(f"当前用户：{OPERATOR}")
        offline = page.locator(f'li.alarm[data-key="{OFFLINE_KEY}"]')
        page.get_by_role("button", name="确认报警：room-104 的 device-offline").click()
        expect(offline).to_have_attribute("data-acked", "true")
        expect(offline.locator(".alarm-state")).to_have_text("已确认")
        expect(offline.locator(".alarm-meta")).to_contain_text(f"已由 {OPERATOR} 确认")
        expect(offline.locator(".shelve-duration option").first).to_have_text("15 分钟")
        page.get_by_role("button", name="搁置报警：room-104 的 device-offline").click()
        expect(page.locator("#action-msg")).to_have_text("请先填写搁置原因，再搁置报警。")

        page.get_by_label("语言").select_option("en")
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(offline.locator(".alarm-state")).to_have_text("acknowledged")
        expect(page.locator("#who-role")).to_have_text("operator")
        expect(page.get_by_role("button", name="Log out")).to_be_visible()
        assert page.evaluate("localStorage.getItem('o2chain.lang')") == "en"
        page.get_by_role("button", name="Log out").click()
        expect(page.get_by_label("User name")).to_be_visible()
