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

Screenshots (desktop and phone) go to ``test-artifacts/`` under the repository root.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests
import tomli_w

from o2chain.procs import ChildProcess, o2chain_argv
from o2chain.services import InfluxDB, Mosquitto

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
# Chromium as root in a container: no sandbox, and nothing that calls home (ARCHITECTURE.md).
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
        pytest.skip("playwright is not installed (pip install -e .[dev])")
    if not CHROMIUM.exists():  # pragma: no cover - scripts/bootstrap.sh installs it
        pytest.skip("Debian chromium is not installed (scripts/bootstrap.sh)")
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


def _config(path: Path, broker: Mosquitto, influx: InfluxDB, state_dir: Path) -> Path:
    rooms = [(d, d.removeprefix("room-")) for d, *_ in ROOMS] + [("room-104", "104")]
    config = {
        "gateway": {
            "id": "gw-live", "state_dir": str(state_dir), "http_listen": "127.0.0.1:0",
            "metrics_interval_s": 2.0,
        },
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
                yield LiveGateway(url, gateway)
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
        )
        try:
            yield context
        finally:
            context.close()


def test_live_values_alarm_acknowledge_and_screenshots(
    live: LiveGateway, browser_context: Any
) -> None:
    expect = _pw().expect
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live.url + "/")

    # Live values, their band, quality and the stream's mode.
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

    # The alarms, then an acknowledgement through the UI, checked in the API.
    high = page.locator(f'li.alarm[data-key="{HIGH_O2_KEY}"]')
    expect(high).to_have_attribute("data-acked", "false", timeout=15_000)
    expect(page.locator(f'li.alarm[data-key="{OFFLINE_KEY}"]')).to_be_visible(timeout=15_000)
    page.get_by_label("Operator").fill("dolma")
    page.get_by_label("Operator").press("Tab")
    page.get_by_role("button", name="Acknowledge alarm room-o2-high on room-101").click()
    expect(high).to_have_attribute("data-acked", "true")
    expect(high.locator(".alarm-state")).to_have_text("acknowledged")
    expect(high.locator(".alarm-meta")).to_contain_text("acknowledged by dolma")
    alarms = requests.get(live.url + "/api/alarms", timeout=5).json()
    (acked,) = [a for a in alarms["alarms"] if a["key"] == HIGH_O2_KEY]
    assert acked["acked"] is True and acked["acked_by"] == "dolma"
    assert acked["state"] == "acknowledged"
    log = requests.get(live.url + "/api/alarms/log?limit=50", timeout=5).json()["events"]
    assert any(e["event"] == "ack" and e["key"] == HIGH_O2_KEY and e["by"] == "dolma" for e in log)
    # A live event (not only the POST's answer) keeps it acknowledged.
    expect(page.locator("#gw-line")).not_to_have_text(page.locator("#gw-line").inner_text())
    expect(high).to_have_attribute("data-acked", "true")

    page.screenshot(path=str(ARTIFACTS / "livepage.png"), full_page=True)

    # Phone: one column, nothing wider than the screen, buttons still there.
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator(f'li.alarm[data-key="{OFFLINE_KEY}"] .btn-ack')).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"page is {overflow} px wider than a phone screen"
    page.screenshot(path=str(ARTIFACTS / "livepage-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    # Shelve through the UI: the alarm moves to the shelved list, the API agrees.
    offline = page.locator(f'li.alarm[data-key="{OFFLINE_KEY}"]')
    offline.get_by_label("Shelve device-offline on room-104 for").select_option("900")
    page.get_by_role("button", name="Shelve alarm device-offline on room-104").click()
    expect(page.locator(f'#shelved-list li[data-key="{OFFLINE_KEY}"]')).to_have_attribute(
        "data-shelved", "true"
    )
    expect(page.locator(f'#alarm-list li[data-key="{OFFLINE_KEY}"]')).to_have_count(0)
    shelved = requests.get(live.url + "/api/alarms", timeout=5).json()["shelved"]
    (entry,) = [a for a in shelved if a["key"] == OFFLINE_KEY]
    assert entry["shelved_by"] == "dolma"
    assert 0 < entry["shelved_until_ms"] - time.time() * 1000 <= 900_000
    assert not errors, f"JavaScript errors on the page: {errors}"
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
