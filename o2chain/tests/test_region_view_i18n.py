"""The region view in English and in Simplified Chinese, in headless Chromium.

`o2chain region serve` against a real central tier (the broker provisioned by `o2chain region
provision`, TLS and the viewer's login; a real InfluxDB), fed as the facilities' bridges would
feed it (test_region_view.py). The page uses the live page's catalogues and language mechanism
(gateway/static/lang.js): a Chinese browser gets every text in Chinese (no text of the English
catalogue and no English word written into region.js without the catalogue), numbers and ages
for the language; the language menu switches at once and the choice survives a reload.

Screenshots go to ``test-artifacts/`` (region-view-zh-CN.png, region-view-en.png);
docs/img/region-view-zh.png is the Chinese one.
"""

# The Chinese texts use full-width colons and commas, as Chinese does.
# ruff: noqa: RUF001

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from gateway.tests.test_livepage import ARTIFACTS, _pw
from gateway.tests.test_livepage_i18n import browser, catalogue, english_in, page_in
from o2chain.tests.test_region_view import A, B, alarm, central_tier, facility, region_serve, topic

pytestmark = pytest.mark.integration
__all__ = ["browser"]  # the Chromium fixture, used by the tests below

A_ALARM = ("room-101", "room-o2-high-warn")  # a built-in rule: its name is in the catalogue
B_ALARM = ("room-7", "room-o2-high")
A_OFFLINE = ["room-3", "room-4"]


@pytest.fixture(scope="module")
def region_view(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The region view's URL, once it has both facilities with their chain figures: A with a
    warning, its link down, two boards offline and a reading; B with a critical alarm, its
    link up and no reading yet."""
    tmp = tmp_path_factory.mktemp("region-i18n")
    with central_tier(tmp) as (region, broker, db):
        now = int(time.time() * 1000)
        db.write_lines(
            "o2region",
            f"chain,site={A} balance_o2_lpm=34.5,produced_o2_lpm=1234.5,"
            f"delivered_o2_lpm=1200.0 {now}\n"
            f"chain,site={B} balance_o2_lpm=-3.0,produced_o2_lpm=10.0,delivered_o2_lpm=13.0 {now}\n"
            f"room,site={A},device=room-101,room=room-101 o2_pct=26.6 {now}",
        )
        with facility(region, broker, A) as fa, facility(region, broker, B) as fb:
            assert fa.connect() == 0 and fb.connect() == 0
            # The message is the gateway's text, shown as it came (not translated).
            raised = alarm(A, *A_ALARM, "warning", message="room-101: O2 26.6 % above 26.4 %")
            assert fa.publish(topic(A, *A_ALARM), raised, retain=True) == 0
            assert fb.publish(topic(B, *B_ALARM), alarm(B, *B_ALARM, "critical"), retain=True) == 0
            assert fa.publish(f"region/{A}/bridge/state", b"0", retain=True) == 0
            assert fb.publish(f"region/{B}/bridge/state", b"1", retain=True) == 0
            boards = {**dict.fromkeys(A_OFFLINE, "offline"), "room-101": "online"}
            for board, state in boards.items():
                status = f'{{"state":"{state}"}}'.encode()
                assert fa.publish(f"region/{A}/{board}/status", status, retain=True) == 0
            with region_serve(region, tmp / "region-view.log") as base:
                deadline = time.monotonic() + 30
                while True:
                    rows = requests.get(f"{base}/api/region", timeout=5).json()["facilities"]
                    ready = [r for r in rows if r["balance_o2_lpm"] is not None and r["alarms"]]
                    if len(ready) == 2 and any(r["boards_offline"] == 2 for r in rows):
                        break
                    assert time.monotonic() < deadline, f"the region view has not got it: {rows}"
                    time.sleep(0.2)
                yield base


def row(page: Any, site: str) -> Any:
    return page.locator(f'tr.fac-row[data-site="{site}"]')


def wait_for_region(page: Any) -> None:
    """Both rows drawn, facility A in detail."""
    expect = _pw().expect
    expect(row(page, A).locator(".fac-balance")).to_have_text(re.compile(r"\d"), timeout=20_000)
    expect(page.locator("#detail .alarm")).to_have_count(1, timeout=20_000)


# The text a person sees, less what the facilities send as text (alarm messages), the language
# menu's native names and the footer's link to the API.
VISIBLE_TEXT = """() => {
    let text = document.body.innerText;
    for (const n of document.querySelectorAll(".alarm-msg, #lang, .foot a")) {
        if (n.innerText) text = text.split(n.innerText).join(" ");
    }
    return text;
}"""
# Names (sites, devices), the product, and the unit L/min.
NAMES = {A, B, *A_OFFLINE, A_ALARM[0], B_ALARM[0]}
LATIN_OK = {"o2chain", "min"} | {w for n in NAMES for w in re.findall(r"[A-Za-z][\w-]*", n)}


def latin_words_left(text: str) -> list[str]:
    """Latin words that are neither names nor units: English written without the catalogue."""
    words = re.findall(r"[A-Za-z][A-Za-z0-9_-]*", text)
    return sorted(
        {w for w in words if len(w) > 1 and w not in LATIN_OK and not re.search(r"\d", w)}
    )


def assert_chinese(page: Any) -> None:
    expect = _pw().expect
    zh = catalogue("zh-CN")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.locator("#lang")).to_have_value("zh-CN")
    expect(page).to_have_title("o2chain 区域总览")
    expect(page.locator("#fac-title")).to_have_text(re.compile(r"^站点\s*2$"))
    expect(page.locator(".region-table th")).to_have_text(
        ["站点", "最高报警级别", "报警数", "连接", "离线设备板", "氧气差额（L/min）", "最新读数"]
    )
    expect(page.locator("#region-line")).to_have_text("2 个站点，其中 1 个有报警")
    expect(page.locator("#broker")).to_have_text("消息代理")
    expect(page.locator("#database")).to_have_text("数据库")
    b, a = row(page, B), row(page, A)
    expect(page.locator("tr.fac-row .fac-link")).to_have_text([B, A])  # worst first
    expect(b.locator(".sev")).to_have_text("紧急")
    expect(b.locator(".fac-link-state")).to_have_text("已连接")
    expect(b.locator(".fac-balance")).to_have_text("-3.0")
    expect(b.locator(".fac-age")).to_have_text("尚无")
    expect(a.locator(".sev")).to_have_text("警告")
    expect(a.locator(".fac-link-state")).to_have_text("已断开")
    expect(a.locator(".fac-offline")).to_have_text("2")
    expect(a.locator(".fac-age")).to_have_text(re.compile(r"^\d+ (秒|分钟)前$"))
    # One facility in detail: the chain's figures with the language's grouping, its alarm with
    # the built-in rule's Chinese name, its boards offline as a Chinese list.
    expect(page.locator("#detail-title")).to_have_text(A)
    expect(page.locator("#detail-chain")).to_have_text(
        re.compile(
            r"^产氧 1,234\.5 L/min，送氧 1,200\.0 L/min，差额 34\.5 L/min；连接：已断开；"
            r"最新读数：\d+ (秒|分钟)前$"
        )
    )
    li = page.locator("#detail .alarm")
    expect(li.locator(".sev")).to_have_text("警告")
    expect(li.locator(".alarm-rule")).to_have_text("氧浓度偏高警告")
    expect(li.locator(".alarm-rule")).to_have_attribute("title", A_ALARM[1])
    expect(li.locator(".alarm-state")).to_have_text("未确认")
    expect(page.locator("#detail-offline")).to_have_text("离线设备板：room-3、room-4")
    expect(page.locator("#detail-close")).to_have_text("全部站点")
    # The empty states, hidden here, are in Chinese too.
    expect(page.locator("#detail-none")).to_have_text(zh["alarms.none"])
    expect(page.locator("#fac-none")).to_have_text("尚无站点上报。")
    text = page.evaluate(VISIBLE_TEXT) + " " + page.title()
    assert not english_in(text), english_in(text)
    assert not latin_words_left(text), latin_words_left(text)


def test_a_chinese_browser_gets_the_region_view_in_chinese(region_view: str, browser: Any) -> None:
    expect = _pw().expect
    ARTIFACTS.mkdir(exist_ok=True)
    with page_in(browser, "zh-CN", region_view) as page:
        page.goto(f"{region_view}/#{A}")
        wait_for_region(page)
        assert_chinese(page)
        fonts = page.evaluate(
            """async () => { await document.fonts.ready;
                return document.fonts.check('16px "Noto Sans CJK SC"', "离线设备板"); }"""
        )
        assert fonts, "no Noto Sans CJK SC: scripts/bootstrap.sh --test-tools installs it"
        page.set_viewport_size({"width": 1100, "height": 520})  # the page, little margin
        page.screenshot(path=str(ARTIFACTS / "region-view-zh-CN.png"), full_page=True)

        page.set_viewport_size({"width": 390, "height": 844})
        expect(row(page, A).locator(".sev")).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the Chinese region view is {overflow} px wider than a phone"
        clipped = page.evaluate(
            """() => { const t = document.querySelector(".region-table");
                const box = t.parentElement.getBoundingClientRect();
                return t.getBoundingClientRect().right - box.right; }"""
        )
        assert clipped <= 0, f"the facilities table sticks {clipped} px out of its box on a phone"
        page.screenshot(path=str(ARTIFACTS / "region-view-zh-CN-phone.png"), full_page=False)


def test_the_language_menu_switches_the_region_view_and_is_remembered(
    region_view: str, browser: Any
) -> None:
    expect = _pw().expect
    with page_in(browser, "en-GB", region_view) as page:
        page.goto(f"{region_view}/#{A}")
        wait_for_region(page)
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(page.locator(".region-table th").first).to_have_text("Facility")
        expect(row(page, B).locator(".sev")).to_have_text("critical")
        expect(row(page, B).locator(".fac-link-state")).to_have_text("up")
        expect(row(page, B).locator(".fac-age")).to_have_text("never")
        expect(row(page, A).locator(".fac-link-state")).to_have_text("down")
        expect(page.locator("#region-line")).to_have_text("2 facilities, 1 with alarms")
        expect(page.locator("#detail-chain")).to_contain_text(
            "O₂ produced 1,234.5 L/min, delivered 1,200.0 L/min, balance 34.5 L/min; link down"
        )
        expect(page.locator("#detail .alarm-rule")).to_have_text("O₂ high warning")
        expect(page.locator("#detail-offline")).to_have_text("Boards offline: room-3, room-4")
        body = page.locator("body").inner_text()
        assert not re.search(r"[\u4e00-\u9fff]", body.replace("简体中文", "")), body
        page.screenshot(path=str(ARTIFACTS / "region-view-en.png"), full_page=True)

        page.get_by_label("Language").select_option("zh-CN")  # redrawn at once, no poll needed
        assert_chinese(page)
        assert page.evaluate("localStorage.getItem('o2chain.lang')") == "zh-CN"

        page.reload()  # the choice wins over the browser's English
        wait_for_region(page)
        assert_chinese(page)

        page.get_by_label("语言").select_option("en")
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(row(page, B).locator(".sev")).to_have_text("critical")
        expect(page.locator("#detail .alarm-state")).to_have_text("unacknowledged")
        assert page.evaluate("localStorage.getItem('o2chain.lang')") == "en"
