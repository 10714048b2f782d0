"""The region view (`o2chain region serve`, gateway/region_view.py): every facility's worst alarm
and chain balance from the central broker and database, one facility in detail.

The state is unit-tested on messages; the server runs as a process against a real central broker
(provisioned by `o2chain region provision`, TLS, the viewer's login) and a real InfluxDB, with
facility accounts publishing what their bridges would (the bridge itself: test_region_bridge.py,
test_region_wan.py), and the page is loaded in Debian's chromium."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import tomli_w

from gateway.region_view import RegionState, RegionView, RegionViewConfig
from o2base.procs import ChildProcess, o2chain_argv
from o2base.services import InfluxDB, Mosquitto, free_ports
from o2chain.region_provision import provision_region
from o2chain.testing import MqttProbe

A, B, C = "lhasa-hotel", "nyingchi-clinic", "shigatse-school"


def alarm(site: str, device: str, rule: str, severity: str, **extra: Any) -> bytes:
    doc = {"v": 1, "event": "raise", "site": site, "device": device, "rule": rule}
    doc.update(severity=severity, active=True, acked=False, shelved=False, message="m")
    doc.update(extra)
    return json.dumps(doc).encode()


def topic(site: str, device: str, rule: str) -> str:
    return f"region/{site}/gateway/gw-1/alarm/{device}/{rule}"


# -- the state, from messages -----------------------------------------------------------------


def test_worst_alarm_first_cleared_and_shelved_ones_do_not_count() -> None:
    s = RegionState()
    s.on_message(topic(A, "room-1", "o2-low"), alarm(A, "room-1", "o2-low", "warning"))
    s.on_message(topic(B, "room-2", "o2-high"), alarm(B, "room-2", "o2-high", "critical"))
    s.on_message(topic(B, "room-3", "x"), alarm(B, "room-3", "x", "info"))
    s.on_message(topic(C, "room-4", "y"), alarm(C, "room-4", "y", "critical", shelved=True))
    s.on_message(f"region/{C}/bridge/state", b"0")
    s.on_message(f"region/{A}/room-1/status", b'{"state":"offline"}')
    s.on_message(f"region/{A}/room-5/status", b'{"state":"online"}')
    s.on_message("region/Bad Site/x/status", b'{"state":"online"}')  # not a site id: ignored
    s.on_message(topic(A, "room-9", "z"), b"not json")  # unreadable: not an alarm
    rows = s.overview()["facilities"]
    assert [(r["site"], r["worst"], r["alarms"]) for r in rows] == [
        (B, "critical", 2),
        (A, "warning", 1),
        (C, None, 0),
    ]
    assert rows[2]["shelved"] == 1 and rows[2]["bridge"] is False
    assert (rows[1]["boards_online"], rows[1]["boards_offline"]) == (1, 1)
    s.on_message(topic(B, "room-2", "o2-high"), b"")  # cleared: the bridge's empty retained
    assert s.overview()["facilities"][0]["worst"] == "warning"
    detail = s.facility(B)
    assert detail is not None and [a["key"] for a in detail["active"]] == ["room-3/x"]
    assert s.facility("nowhere") is None


# -- the server, against the central tier -----------------------------------------------------


def test_the_catalogues_are_served_and_nothing_else_from_their_folder() -> None:
    """The page's texts come from the live page's catalogues (static/i18n/), served by name:
    only a catalogue that is there, nothing beside or above it."""
    cfg = RegionViewConfig("mqtt://127.0.0.1:1", "u", "p", Path("ca.pem"), "http://x", "d")
    view = RegionView(cfg)
    host = {"host": "127.0.0.1:8480"}
    folder = Path(__file__).resolve().parents[2] / "gateway" / "static"
    for lang in ("en", "zh-CN"):
        status, ctype, body = view._route("GET", f"/static/i18n/{lang}.json", host)
        assert (status, ctype) == ("200 OK", "application/json")
        assert json.loads(body) == json.loads((folder / "i18n" / f"{lang}.json").read_text())
    status, ctype, body = view._route("GET", "/static/lang.js", host)
    assert status == "200 OK" and body == (folder / "lang.js").read_bytes()
    for bad in ("/static/i18n/../app.js", "/static/i18n/%2e%2e/region.js", "/static/i18n/xx.json",
                "/static/i18n/", "/static/i18n/en.json/", "/static/i18n/../../region_view.py",
                "/static/app.js"):  # fmt: skip
        assert view._route("GET", bad, host)[0] == "404 Not Found", bad


@contextmanager
def central_tier(tmp_path: Path) -> Iterator[tuple[Path, Mosquitto, InfluxDB]]:
    """A provisioned central tier (broker with TLS and the region's accounts, InfluxDB with
    its database) for the facilities A and B: (the region's folder, broker, database)."""
    (port,) = free_ports(1)
    with InfluxDB(tmp_path / "central") as db:
        inv = {
            "region": {"id": "test"},
            "broker": {"hosts": ["127.0.0.1"], "port": port, "bind": "127.0.0.1"},
            "database": {"url": db.url, "database": "o2region"},
            "facilities": {A: {}, B: {}},
        }
        (tmp_path / "region.toml").write_bytes(tomli_w.dumps(inv).encode())
        provision_region(tmp_path / "region.toml", tmp_path / "region")
        conf = (tmp_path / "region" / "broker" / "o2region.conf").read_text()
        with Mosquitto(tmp_path / "central", port, listeners=conf) as broker:
            db.create_database("o2region")
            yield tmp_path / "region", broker, db


@pytest.fixture
def central(tmp_path: Path) -> Iterator[tuple[Path, Mosquitto, InfluxDB]]:
    with central_tier(tmp_path) as tier:
        yield tier


@contextmanager
def region_serve(region: Path, log: Path) -> Iterator[str]:
    """`o2chain region serve` on a free port with the region's viewer config: its base URL;
    stopped (and its exit code checked) at the end."""
    view = ChildProcess(
        o2chain_argv(
            "region", "serve", "-c", str(region / "viewer" / "region.toml"),
            "--listen", "127.0.0.1:0",
        ),
        log,
    ).start()  # fmt: skip
    try:
        port = int(view.wait_for_log(r"listening on http://127\.0\.0\.1:(\d+)").group(1))
        yield f"http://127.0.0.1:{port}"
    finally:
        view.stop()
    assert view.returncode == 0, view.log_tail()


def facility(region: Path, broker: Mosquitto, site: str) -> MqttProbe:
    bridge = json.loads((region / "facilities" / site / "bridge.json").read_text())
    return MqttProbe(
        broker.port,
        username=bridge["username"],
        password=bridge["password"],
        ca_file=region / "broker" / "ca.pem",
    )


@pytest.mark.integration
def test_region_serve_lists_facilities_and_drills_down(
    tmp_path: Path, central: tuple[Path, Mosquitto, InfluxDB]
) -> None:
    region, broker, db = central
    now = int(time.time() * 1000)
    db.write_lines(
        "o2region",
        f"chain,site={A} balance_o2_lpm=12.5,produced_o2_lpm=40.0,delivered_o2_lpm=27.5 {now}\n"
        f"chain,site={B} balance_o2_lpm=-3.0,produced_o2_lpm=10.0,delivered_o2_lpm=13.0 {now}\n"
        f"room,site={A},device=room-1,room=room-1 o2_pct=24.1 {now}",
    )
    with facility(region, broker, A) as fa, facility(region, broker, B) as fb:
        assert fa.connect() == 0 and fb.connect() == 0
        assert fa.publish(topic(A, "room-1", "o2-low"), alarm(A, "room-1", "o2-low", "warning"),
                          retain=True) == 0  # fmt: skip
        assert fb.publish(topic(B, "room-7", "o2-high"), alarm(B, "room-7", "o2-high", "alarm"),
                          retain=True) == 0  # fmt: skip
        assert fb.publish(f"region/{B}/bridge/state", b"1", retain=True) == 0

        with region_serve(region, tmp_path / "region-view.log") as base:

            def overview() -> dict[str, Any]:
                doc: dict[str, Any] = requests.get(f"{base}/api/region", timeout=5).json()
                return doc

            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                rows = overview()["facilities"]
                if len(rows) == 2 and rows[0].get("balance_o2_lpm") is not None:
                    break
                time.sleep(0.2)
            rows = overview()["facilities"]
            assert [(r["site"], r["worst"], r["alarms"]) for r in rows] == [
                (B, "alarm", 1),
                (A, "warning", 1),
            ], rows
            assert rows[0]["balance_o2_lpm"] == -3.0 and rows[0]["bridge"] is True
            assert rows[1]["balance_o2_lpm"] == 12.5 and rows[1]["last_reading_age_s"] < 60
            detail = requests.get(f"{base}/api/region/{B}", timeout=5).json()
            assert [a["key"] for a in detail["active"]] == ["room-7/o2-high"]
            assert detail["chain"]["produced_o2_lpm"] == 10.0
            assert requests.get(f"{base}/api/region/nowhere", timeout=5).status_code == 404
            # Another name in Host (DNS rebinding) is refused; so is anything but GET.
            r = requests.get(f"{base}/api/region", headers={"Host": "evil.example"}, timeout=5)
            assert r.status_code == 403
            assert requests.post(f"{base}/api/region", timeout=5).status_code == 405
            assert requests.get(f"{base}/healthz", timeout=5).status_code == 200

            # The alarm clears at B: the region follows.
            assert fb.publish(topic(B, "room-7", "o2-high"), b"", retain=True) == 0
            deadline = time.monotonic() + 10
            while overview()["facilities"][0]["site"] != A and time.monotonic() < deadline:
                time.sleep(0.1)
            assert [r["site"] for r in overview()["facilities"]] == [A, B]

            page_text = _render(base, tmp_path)
            assert re.search(rf"{A}\s+warning\s+1", page_text, re.IGNORECASE), page_text
            assert "o2-low" in page_text and "balance 12.5 L/min" in page_text


def _render(base: str, tmp_path: Path) -> str:
    """Open the page in chromium, drill down to facility A; the visible text (and a
    screenshot next to the test's files)."""
    from playwright import sync_api

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                     args=["--no-sandbox"])  # fmt: skip
        try:
            page = browser.new_page(locale="en-US", viewport={"width": 1100, "height": 700})
            page.goto(f"{base}/#{A}")
            page.wait_for_selector("#detail:not([hidden]) .alarm", timeout=15_000)
            page.screenshot(path=str(tmp_path / "region.png"), full_page=True)
            return str(page.inner_text("body"))
        finally:
            browser.close()
