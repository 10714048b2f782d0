"""The live page in headless Chromium against a real gateway, broker and database.

Playwright (Python) drives Debian's /usr/bin/chromium over the DevTools protocol: no
chromedriver whose version must match the browser, and its assertions wait for DOM conditions
by themselves (``expect(...)`` polls the page until true or timeout), so the test never sleeps.
Playwright's own browser download is not used (``executable_path``).

The gateway watches five devices of one site; a publisher thread plays their boards:

- room-101 at 28.4 % O2, above the Lhasa high-O2 alarm (27.9 %): alarm ``room-o2-high``
  (on-delay shortened by an ``[[alarm]]`` override so the test does not wait 30 s);
- room-102 in the target band, room-103 below it, conc-1 a concentrator sensor board;
- room-104 said "offline" (retained last will): alarm ``device-offline``.

Operators log in (users file with an operator and a viewer). An attacker's pages, served from a
second origin (another port; once as ``localhost``, a different site, once as ``127.0.0.1``,
the same site, which gets the SameSite=Strict cookie), try a cross-site ``fetch`` and a
cross-site form POST against the logged-in operator's session: the gateway refuses both.

Screenshots (logged out, logged in, desktop and phone) go to ``test-artifacts/`` under the
repository root.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests
import tomli_w

from o2base.procs import ChildProcess, o2chain_argv
from o2base.services import InfluxDB, Mosquitto
from o2chain.testing import wait_for_points, write_users_file

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
# Chromium as root in a container: no sandbox, and nothing that calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SITE = "lhasa-hotel"
HIGH_O2_KEY = f"{SITE}/room-101/room-o2-high"
OFFLINE_KEY = f"{SITE}/room-104/device-offline"
OPERATOR, VIEWER, PASSWORD = "dolma", "tenzin", "yak butter tea"
USERS = [(OPERATOR, "operator", PASSWORD, None), (VIEWER, "viewer", PASSWORD, None)]
PUBLISH_EVERY_S = 0.5  # the boards' reading interval in this test (data generation, not sync)
# Room boards: (device, O2 %, temperature degC, humidity %)
ROOMS = [
    ("room-101", 28.4, 19.5, 31.0),
    ("room-102", 24.8, 18.2, 30.0),
    ("room-103", 23.1, 17.6, 29.0),
]


def _pw() -> Any:
    try:
        from playwright import sync_api
    except ImportError:  # pragma: no cover - bootstrap installs it with the dev extras
        pytest.fail("playwright is not installed (scripts/bootstrap.sh --test-tools installs it)")
    if not CHROMIUM.exists():  # pragma: no cover - scripts/bootstrap.sh installs it
        pytest.fail("Debian chromium is not installed (bootstrap.sh --test-tools installs it)")
    return sync_api


class Boards(threading.Thread):
    """Room and concentrator boards publishing telemetry v1 until stopped."""

    def __init__(self, url: str):
        super().__init__(name="livepage-boards", daemon=True)
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="livepage-boards")
        self.client.connect(host, int(port))
        self.client.loop_start()
        self.stop_event = threading.Event()

    def _pub(self, device: str, kind: str, doc: dict[str, Any], retain: bool = False) -> None:
        self.client.publish(f"o2/{SITE}/{device}/{kind}", json.dumps(doc), qos=1, retain=retain)

    def run(self) -> None:
        for device, *_ in ROOMS:
            self._pub(device, "status", {"state": "online", "fw": "test", "boot": 1}, retain=True)
        self._pub("conc-1", "status", {"state": "online", "fw": "test", "boot": 1}, retain=True)
        self._pub("room-104", "status", {"state": "offline"}, retain=True)
        self._pub("ghost-9", "status", {"state": "online", "fw": "test"}, retain=True)
        seq = 0
        while not self.stop_event.is_set():
            seq += 1
            ts = int(time.time() * 1000)
            wobble = 0.1 * ((seq % 7) - 3)  # a visible, deterministic trend
            for device, o2, temp, rh in ROOMS:
                self._pub(device, "telemetry", {
                    "v": 1, "boot": 1, "seq": seq, "ts": ts, "o2_pct": round(o2 + wobble, 2),
                    "baro_kpa": 65.1, "temp_c": temp, "rh_pct": rh,
                })  # fmt: skip
            self._pub("conc-1", "telemetry", {
                "v": 1, "boot": 1, "seq": seq, "ts": ts, "purity_pct": round(93.2 + wobble, 2),
                "flow_lpm": 5.5, "temp_c": 24.0,
            })  # fmt: skip
            self.stop_event.wait(PUBLISH_EVERY_S)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class LiveGateway:
    url: str
    gateway: ChildProcess
    influx: InfluxDB


def _config(path: Path, broker: Mosquitto, influx: InfluxDB, state_dir: Path) -> Path:
    rooms = [(d, d.removeprefix("room-")) for d, *_ in ROOMS] + [("room-104", "104")]
    config = {
        "gateway": {
            "id": "gw-live", "state_dir": str(state_dir), "http_listen": "127.0.0.1:0",
            "metrics_interval_s": 2.0,
        },
        "http": {"users_file": str(write_users_file(path.parent / "users.toml", *USERS))},
        "mqtt": {"url": broker.url},
        "influx": {"url": influx.url, "database": "o2live", "flush_interval_s": 0.5},
        "enrich": {"chain_interval_s": 2.0},
        "site": [{"id": SITE, "altitude_m": 3650, "name": "Hotel in Lhasa"}],
        "device": [
            {"id": d, "site": SITE, "kind": "room", "transport": "mqtt", "room": room,
             "interval_s": PUBLISH_EVERY_S, "ventilation_m3h": 1.5}
            for d, room in rooms
        ] + [
            {"id": "conc-1", "site": SITE, "kind": "concentrator", "transport": "mqtt",
             "interval_s": PUBLISH_EVERY_S},
        ],
        # The built-in high-O2 alarm (27.89 % in Lhasa) waits 30 s; the same limit with a short
        # on-delay keeps the test fast.
        "alarm": [
            {"id": "room-o2-high", "field": "o2_pct", "op": ">", "value": 27.89,
             "severity": "critical", "device_kind": ["room"], "on_delay_s": 1.0,
             "hysteresis": 0.3, "message": "fire risk: O2 above the NFPA limit less 1.5 %"},
        ],
    }  # fmt: skip
    path.write_bytes(tomli_w.dumps(config).encode())
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    base = tmp_path_factory.mktemp("livepage")
    with Mosquitto(base / "services") as broker, InfluxDB(base / "services") as influx:
        cfg = _config(base / "gateway.toml", broker, influx, base / "state")
        with ChildProcess(
            o2chain_argv("gateway", "run", "-c", str(cfg)), base / "gateway.log"
        ) as gateway:
            url = gateway.wait_for_log(r"HTTP listening on (http://127\.0\.0\.1:\d+)").group(1)
            gateway.wait_for_log("MQTT subscribed")
            boards = Boards(broker.url)
            boards.start()
            try:
                yield LiveGateway(url, gateway, influx)
            finally:
                boards.stop()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    sync_api = _pw()
    profile = tmp_path_factory.mktemp("chromium-profile")  # fresh --user-data-dir
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            device_scale_factor=1,
            locale="en-US",  # the page follows the browser's language (test_livepage_i18n.py)
        )
        try:
            yield context
        finally:
            context.close()


ALARM_PATH = f"/api/alarms/{SITE}/room-101/room-o2-high"
# The attacker's pages (a second origin). Inline script is fine here: it is not our page.
FETCH_PAGE = """<!doctype html><meta charset="utf-8"><title>cat pictures</title>
<script>
const target = TARGET;
window.results = (async () => {
  const out = {};
  try {  // a "simple" request: no preflight, the browser sends it with the cookies it may
    const r = await fetch(target + "/ack", {method: "POST", mode: "no-cors",
      credentials: "include", headers: {"Content-Type": "text/plain"}, body: "{}"});
    out.simple = r.type;
  } catch (e) { out.simple = "failed: " + e.message; }
  try {  // JSON: needs a CORS preflight first
    const r = await fetch(target + "/ack", {method: "POST", credentials: "include",
      headers: {"Content-Type": "application/json"}, body: "{}"});
    out.json = r.status;
  } catch (e) { out.json = "failed: " + e.message; }
  return out;
})();
</script>"""
# text/plain forms send name=value: this one's body reads as JSON.
FORM_PAGE = """<!doctype html><meta charset="utf-8"><title>win a prize</title>
<form id="f" method="POST" action="TARGET/shelve" enctype="text/plain">
<input type="hidden" name='{"duration_s": 86400, "reason": "x", "pad": "' value='"}'>
</form>
<script>document.getElementById("f").submit();</script>"""


class AttackerSite:
    """Another origin on another port of this machine, serving the attacker's pages."""

    def __init__(self, gateway_url: str):
        pages = {
            "/fetch.html": FETCH_PAGE.replace("TARGET", json.dumps(gateway_url + ALARM_PATH)),
            "/form.html": FORM_PAGE.replace("TARGET", gateway_url + ALARM_PATH),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                page = pages.get(self.path)
                if page is None:
                    self.send_error(404)
                    return
                data = page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="attacker-site")

    def __enter__(self) -> AttackerSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _alarm(url: str, key: str) -> dict[str, Any] | None:
    doc = requests.get(url + "/api/alarms", timeout=5).json()
    return next((a for a in doc["alarms"] if a["key"] == key), None)


def _refused_403(url: str) -> int:
    text = requests.get(url + "/metrics", timeout=5).text
    match = re.search(r'^o2chain_http_refused_total\{status="403"\} (\d+)$', text, re.M)
    return int(match.group(1)) if match else 0


def _attack(browser_context: Any, live: LiveGateway, attacker: AttackerSite, host: str) -> None:
    """Run both attacks from ``http://{host}:{port}`` against the logged-in session."""
    expect = _pw().expect
    page = browser_context.new_page()
    sent: list[Any] = []
    page.on("request", lambda r: sent.append(r) if ALARM_PATH in r.url else None)
    refused_before = _refused_403(live.url)
    page.goto(f"http://{host}:{attacker.port}/fetch.html")
    results = page.evaluate("window.results")
    # The page learns nothing either way (the answers carry Cross-Origin-Resource-Policy:
    # same-origin, so the browser withholds them) ...
    assert results == {"simple": "failed: Failed to fetch", "json": "failed: Failed to fetch"}
    # ... but the requests did reach the gateway, which refused them: the simple POST, and
    # the JSON POST's CORS preflight (the POST itself never leaves the browser).
    assert [r.method for r in sent] == ["POST", "POST"]
    assert _refused_403(live.url) - refused_before == 2
    # The form: a top-level cross-origin POST navigation, answered 403 in the attacker's tab.
    with page.expect_response(lambda r: r.url.endswith("/shelve")) as shelve:
        page.goto(f"http://{host}:{attacker.port}/form.html")
    assert shelve.value.status == 403
    if host == "127.0.0.1":
        # Same site (ports do not count): the SameSite=Strict cookie went along. Only the
        # Origin / Sec-Fetch-Site check stops this one.
        assert "o2chain_session=" in shelve.value.request.all_headers().get("cookie", "")
    expect(page.locator("body")).to_contain_text("Sec-Fetch-Site")
    assert _refused_403(live.url) - refused_before == 3
    page.close()
    alarm = _alarm(live.url, HIGH_O2_KEY)
    assert alarm is not None and alarm["acked"] is False and alarm["shelved"] is False


def test_login_cross_site_attacks_refused_acknowledge_and_screenshots(
    live: LiveGateway, browser_context: Any
) -> None:
    expect = _pw().expect
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(  # script errors; answers like the wrong password's 401 are expected here
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.goto(live.url + "/")

    # Live values, their band, quality and the stream's mode: readable without a login on
    # loopback.
    room102 = page.locator('[data-device="room-102"]')
    expect(room102.locator(".big")).to_contain_text("%", timeout=20_000)
    expect(room102).to_have_attribute("data-band", "target")
    expect(page.locator('[data-device="room-101"]')).to_have_attribute("data-band", "high-alarm")
    expect(page.locator('[data-device="room-103"]')).to_have_attribute("data-band", "below")
    expect(room102.locator(".quality")).to_have_attribute("data-quality", "ok")
    expect(room102.locator('dd[data-field="eq_alt_m"]')).to_contain_text(" m")
    expect(page.locator('[data-device="conc-1"] .big')).to_contain_text("% purity")
    expect(page.locator("#conn")).to_have_attribute("data-mode", "live")
    expect(page.locator('[data-device="room-104"] .link')).to_have_text("offline")
    expect(room102.locator(".link")).to_have_text("online")
    # Sparklines draw once two readings are there; the chain balance once a point was made.
    expect(room102.locator("svg.spark polyline")).to_have_count(1, timeout=10_000)
    expect(page.locator(".chain .kv").first).to_be_visible(timeout=10_000)

    # Logged out: the alarms show, their buttons do not; the login form does.
    high = page.locator(f'li.alarm[data-key="{HIGH_O2_KEY}"]')
    offline = page.locator(f'li.alarm[data-key="{OFFLINE_KEY}"]')
    expect(high).to_have_attribute("data-acked", "false", timeout=15_000)
    expect(offline).to_be_visible(timeout=15_000)
    expect(high.locator(".btn-ack")).to_be_hidden()
    expect(page.locator("#act-hint")).to_contain_text("Log in as an operator")
    expect(page.get_by_label("User name")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "livepage-login.png"), full_page=False)

    page.get_by_label("User name").fill(OPERATOR)
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login-msg")).to_contain_text("wrong user name or password")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#who-name")).to_have_text(OPERATOR)
    expect(page.locator("#who-role")).to_have_text("operator")
    expect(page.locator("#login-form")).to_be_hidden()
    expect(page.locator("#login-msg")).to_be_hidden()
    expect(high.locator(".btn-ack")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "livepage-logged-in.png"), full_page=False)

    # The operator is logged in; pages of another origin try to act in their name.
    with AttackerSite(live.url) as attacker:
        _attack(browser_context, live, attacker, "localhost")  # another site
        _attack(browser_context, live, attacker, "127.0.0.1")  # same site, other origin
    log = requests.get(live.url + "/api/alarms/log?limit=200", timeout=5).json()["events"]
    assert not [e for e in log if e["event"] in ("ack", "shelve")], "an attack got through"

    # The acknowledgement through the UI: recorded under the logged-in user.
    page.get_by_role("button", name="Acknowledge alarm room-o2-high on room-101").click()
    expect(high).to_have_attribute("data-acked", "true")
    expect(high.locator(".alarm-state")).to_have_text("acknowledged")
    expect(high.locator(".alarm-meta")).to_contain_text(f"acknowledged by {OPERATOR}")
    acked = _alarm(live.url, HIGH_O2_KEY)
    assert acked is not None and acked["acked"] is True and acked["acked_by"] == OPERATOR
    assert acked["state"] == "acknowledged"
    log = requests.get(live.url + "/api/alarms/log?limit=50", timeout=5).json()["events"]
    assert any(e["event"] == "ack" and e["key"] == HIGH_O2_KEY and e["by"] == OPERATOR for e in log)
    query = """SELECT "by", "state" FROM alarm WHERE "state" = 'ack' AND "rule" = 'room-o2-high'"""
    (point,) = wait_for_points(live.influx, "o2live", query, 1)
    assert point["by"] == OPERATOR  # who, in the database, with the point's time as when
    # A live event (not only the POST's answer) keeps it acknowledged.
    expect(page.locator("#gw-line")).not_to_have_text(page.locator("#gw-line").inner_text())
    expect(high).to_have_attribute("data-acked", "true")

    page.screenshot(path=str(ARTIFACTS / "livepage.png"), full_page=True)

    # Phone: one column, nothing wider than the screen, buttons still there.
    page.set_viewport_size({"width": 390, "height": 844})
    expect(offline.locator(".btn-ack")).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"page is {overflow} px wider than a phone screen"
    page.screenshot(path=str(ARTIFACTS / "livepage-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    # Shelving: capped by severity (critical 1 h, alarm 8 h), and only with a reason.
    expect(high.locator('.shelve-duration option[value="28800"]')).to_be_disabled()
    expect(high.locator('.shelve-duration option[value="3600"]')).to_be_enabled()
    expect(offline.locator('.shelve-duration option[value="28800"]')).to_be_enabled()
    expect(offline.locator('.shelve-duration option[value="86400"]')).to_be_disabled()
    offline.get_by_label("Shelve device-offline on room-104 for").select_option("900")
    shelve = page.get_by_role("button", name="Shelve alarm device-offline on room-104")
    shelve.click()
    expect(page.locator("#action-msg")).to_contain_text("Say why")
    offline.get_by_label("Reason to shelve device-offline on room-104").fill("board swap, 15 min")
    shelve.click()
    expect(page.locator(f'#shelved-list li[data-key="{OFFLINE_KEY}"]')).to_have_attribute(
        "data-shelved", "true"
    )
    expect(page.locator(f'#alarm-list li[data-key="{OFFLINE_KEY}"]')).to_have_count(0)
    shelved = requests.get(live.url + "/api/alarms", timeout=5).json()["shelved"]
    (entry,) = [a for a in shelved if a["key"] == OFFLINE_KEY]
    assert entry["shelved_by"] == OPERATOR
    assert 0 < entry["shelved_until_ms"] - time.time() * 1000 <= 900_000

    # Logging out ends the session on the gateway: the buttons go, the form comes back.
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("User name")).to_be_visible()
    expect(high.locator(".alarm-actions")).to_be_hidden()
    assert not errors, f"JavaScript errors on the page: {errors}"
    page.close()


def test_a_viewer_sees_but_cannot_act(live: LiveGateway, browser_context: Any) -> None:
    expect = _pw().expect
    page = browser_context.new_page()
    page.set_viewport_size({"width": 390, "height": 844})  # the login form fits a phone too
    page.goto(live.url + "/")
    expect(page.get_by_label("User name")).to_be_visible()
    expect(page.locator('[data-device="room-102"] .big')).to_contain_text("%", timeout=20_000)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"logged-out page is {overflow} px wider than a phone screen"
    page.screenshot(path=str(ARTIFACTS / "livepage-login-phone.png"), full_page=False)
    page.get_by_label("User name").fill(VIEWER)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#who-role")).to_have_text("viewer")
    expect(page.locator("#act-hint")).to_contain_text(f"{VIEWER} is a viewer")
    expect(page.locator(f'li.alarm[data-key="{OFFLINE_KEY}"], li.alarm').first).to_be_visible(
        timeout=15_000
    )
    expect(page.locator("li.alarm .btn-ack:visible")).to_have_count(0)
    # Forcing the request from the page's own script: refused by role, not by the browser.
    status = page.evaluate(
        """async (path) => {
            const s = await (await fetch("/api/session")).json();
            const r = await fetch(path + "/ack", {method: "POST", body: "{}",
              headers: {"Content-Type": "application/json", "X-CSRF-Token": s.csrf}});
            return r.status;
        }""",
        ALARM_PATH,
    )
    assert status == 403
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("User name")).to_be_visible()
    page.close()


def test_boards_not_in_the_config_are_listed_with_how_to_add_them(
    live: LiveGateway, browser_context: Any
) -> None:
    expect = _pw().expect
    page = browser_context.new_page()
    page.goto(live.url + "/")
    expect(page.locator("#unknown")).to_be_visible(timeout=15_000)
    expect(page.locator("#unknown-list")).to_contain_text("ghost-9")
    expect(page.locator("#unknown .hint")).to_contain_text("[[device]]")
    page.close()


def test_a_notification_link_marks_its_alarm(live: LiveGateway, browser_context: Any) -> None:
    """Notifications link to ``#alarm/{site}/{device}/{rule}``: the page marks that alarm."""
    expect = _pw().expect
    page = browser_context.new_page()
    page.goto(live.url + "/#alarm/" + OFFLINE_KEY)
    linked = page.locator(f'li.alarm[data-key="{OFFLINE_KEY}"]')
    expect(linked).to_have_attribute("data-linked", "true", timeout=15_000)
    expect(page.locator('li.alarm[data-linked="true"]')).to_have_count(1)
    page.evaluate(f"location.hash = '#alarm/{HIGH_O2_KEY}'")
    expect(page.locator(f'li.alarm[data-key="{HIGH_O2_KEY}"]')).to_have_attribute(
        "data-linked", "true", timeout=15_000
    )
    expect(linked).to_have_attribute("data-linked", "false")
    page.close()


def test_polling_fallback_without_event_source(live: LiveGateway, browser_context: Any) -> None:
    """A browser (or proxy) without server-sent events still gets live values by polling."""
    expect = _pw().expect
    page = browser_context.new_page()
    page.add_init_script("delete window.EventSource")
    page.goto(live.url + "/")
    expect(page.locator("#conn")).to_have_attribute("data-mode", "polling", timeout=10_000)
    expect(page.locator('[data-device="room-102"] .big')).to_contain_text("%")
    first = page.locator("#gw-line").inner_text()
    expect(page.locator("#gw-line")).not_to_have_text(first, timeout=10_000)
    page.close()


def test_static_assets_are_local_only(live: LiveGateway) -> None:
    """No CDN: every asset the page references is served by the gateway itself."""
    html = requests.get(live.url + "/", timeout=5)
    assert html.status_code == 200 and html.headers["Content-Type"].startswith("text/html")
    assert "http://" not in html.text and "https://" not in html.text
    for name, ctype in (("app.js", "text/javascript"), ("app.css", "text/css")):
        r = requests.get(f"{live.url}/static/{name}", timeout=5)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(ctype)
        assert "https://" not in r.text
