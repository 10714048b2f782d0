"""Alarms, enrichment and the status server through real parts: the gateway process, Mosquitto
and InfluxDB. A room board's O2 goes over the limit and back; the alarm's raise, ack and clear
reach InfluxDB (measurement ``alarm``) and the retained MQTT alarm topic, and /api/status shows
the device."""

from __future__ import annotations

import json
import queue
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import tomli_w

from gateway.tests.conftest import publish_all
from o2base.procs import ChildProcess, o2chain_argv
from o2base.services import InfluxDB, Mosquitto
from o2chain.testing import wait_for_points, write_users_file

pytestmark = pytest.mark.integration

SITE, GW, DEVICE, RULE = "lhasa-hotel", "gw-alarm", "room-101", "room-o2-high"
ALARM_TOPIC = f"o2/{SITE}/gateway/{GW}/alarm/{DEVICE}/{RULE}"
TOKEN = "integration-test-token"  # operator "dolma"'s API token (gateway/auth.py)
OPERATOR = ("dolma", "operator", "unused", TOKEN)


def write_config(path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, state: Path) -> Path:
    config: dict[str, Any] = {
        "gateway": {"id": GW, "state_dir": str(state), "http_listen": "127.0.0.1:0",
                    "metrics_interval_s": 1.0},
        "http": {"users_file": str(write_users_file(path.parent / "users.toml", OPERATOR))},
        "mqtt": {"url": mosquitto.url},
        "influx": {"url": influxdb.url, "database": "o2alarm", "flush_interval_s": 0.2},
        "enrich": {"chain_interval_s": 1.0},
        "site": [{"id": SITE, "altitude_m": 3650}],
        "device": [{"id": DEVICE, "site": SITE, "kind": "room", "transport": "mqtt",
                    "room": "101", "ventilation_m3h": 7.5}],
        # The built-in rule with its delays shortened, so the test runs in seconds.
        "alarm": [{"id": RULE, "field": "o2_pct", "op": ">", "value": 27.9, "hysteresis": 0.3,
                   "severity": "critical", "device_kind": ["room"]}],
    }  # fmt: skip
    path.write_bytes(tomli_w.dumps(config).encode())
    return path


class Watcher:
    """An MQTT client whose messages land in a queue (to be awaited, not slept on)."""

    def __init__(self, mosquitto: Mosquitto, client_id: str, topics: list[str]):
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subacks: queue.Queue[int] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda c, u, mid, rc, props: self.subacks.put(mid)
        self.client.connect(mosquitto.host, mosquitto.port)
        self.client.loop_start()
        for topic in topics:  # one SUBSCRIBE each: their retained messages arrive in order
            self.client.subscribe(topic, qos=1)
        for _ in topics:
            self.subacks.get(timeout=10)

    def next(self, timeout_s: float = 15.0) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_alarm(mosquitto: Mosquitto, name: str) -> dict[str, Any] | None:
    """The retained message on the alarm's topic, or None: a marker topic subscribed after it
    (its retained message arrives after any on the first subscription) ends the wait."""
    marker = f"test/{name}/marker"
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-pub")
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    pub.publish(marker, b"end", qos=1, retain=True).wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()
    watcher = Watcher(mosquitto, name, [ALARM_TOPIC, marker])
    try:
        msg = watcher.next()
        if msg.topic == marker:
            return None
        assert msg.retain
        doc: dict[str, Any] = json.loads(msg.payload)
        return doc
    finally:
        watcher.close()


def publish(mosquitto: Mosquitto, payloads: list[dict[str, Any]]) -> None:
    topic = f"o2/{SITE}/{DEVICE}/telemetry"
    publish_all(mosquitto, [(topic, json.dumps(p)) for p in payloads], "test-board-101")


def http(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def test_alarm_events_reach_influxdb_and_the_retained_topic(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB
) -> None:
    cfg = write_config(tmp_path / "gw.toml", mosquitto, influxdb, tmp_path / "state")
    live = Watcher(mosquitto, "live-watcher", [f"o2/{SITE}/gateway/{GW}/alarm/#"])
    seen: list[mqtt.MQTTMessage] = []
    with ChildProcess(o2chain_argv("gateway", "run", "-c", str(cfg)), tmp_path / "gw.log") as gw:
        url = gw.wait_for_log(r"HTTP listening on (http://127\.0\.0\.1:\d+)").group(1)
        gw.wait_for_log("MQTT subscribed")
        ts = int(time.time() * 1000) - 10_000
        board = {"v": 1, "boot": 1, "baro_kpa": 65.0, "temp_c": 20.0}
        publish(mosquitto, [{**board, "seq": 1, "ts": ts, "o2_pct": 25.0},
                            {**board, "seq": 2, "ts": ts + 1000, "o2_pct": 28.4}])  # fmt: skip

        raised = wait_for_points(influxdb, "o2alarm", "SELECT * FROM alarm", 1)
        assert raised[0]["state"] == "raise" and raised[0]["time"] == ts + 1000
        assert (raised[0]["rule"], raised[0]["device"], raised[0]["severity"]) == (
            RULE, DEVICE, "critical",
        )  # fmt: skip
        assert raised[0]["value"] == pytest.approx(28.4) and raised[0]["threshold"] == 27.9
        while (msg := live.next()).topic != ALARM_TOPIC:
            seen.append(msg)  # until the broker has the retained alarm
        seen.append(msg)
        retained = retained_alarm(mosquitto, "probe-1")
        assert retained is not None and retained["state"] == "raised"
        assert retained["event"] == "raise" and retained["value"] == pytest.approx(28.4)

        # Enriched room points, and /api/status shows the device with its values and alarm.
        (room,) = wait_for_points(
            influxdb, "o2alarm", f"SELECT * FROM room WHERE time = {ts + 1000}ms", 1
        )
        assert room["baro_source"] == "sensor" and room["ppo2_kpa"] == pytest.approx(18.46)
        assert 1000 < room["eq_alt_m"] < 1500
        status = http(url + "/api/status")
        (device,) = status["sites"][0]["devices"]
        assert device["id"] == DEVICE and device["link"] == "unknown"  # no status message
        assert device["values"]["o2_pct"]["value"] == 28.4
        assert [a["rule"] for a in device["alarms"]] == [RULE]
        assert http(url + "/healthz")["status"] == "ok"

        # The operator acknowledges over HTTP: the event reaches InfluxDB and the retained topic.
        acked = http(f"{url}/api/alarms/{SITE}/{DEVICE}/{RULE}/ack", {})  # as the token's user
        assert acked["alarm"]["state"] == "acknowledged"
        points = wait_for_points(influxdb, "o2alarm", "SELECT * FROM alarm WHERE state = 'ack'", 1)
        assert points[0]["by"] == "dolma"

        # Back below 27.9 - 0.3: cleared; the retained message goes away.
        publish(mosquitto, [{**board, "seq": 3, "ts": ts + 2000, "o2_pct": 27.7},
                            {**board, "seq": 4, "ts": ts + 3000, "o2_pct": 27.5}])  # fmt: skip
        cleared = wait_for_points(
            influxdb, "o2alarm", "SELECT * FROM alarm WHERE state = 'clear'", 1
        )
        assert cleared[0]["time"] == ts + 3000  # 27.7 is inside the hysteresis band
        while (msg := live.next()).topic != ALARM_TOPIC or msg.payload:
            seen.append(msg)  # until the empty retained message that deletes the alarm
        seen.append(msg)
        assert retained_alarm(mosquitto, "probe-2") is None

        # Self-metrics and the chain balance are written too. The metrics point comes once a
        # second: the newest one may predate the last readings, so wait for one that counts them.
        wait_for_points(
            influxdb,
            "o2alarm",
            f"SELECT readings_mqtt FROM gateway WHERE gw = '{GW}' AND readings_mqtt >= 4",
            1,
        )
        wait_for_points(influxdb, "o2alarm", f"SELECT * FROM chain WHERE site = '{SITE}'", 1)
        metrics_text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
        assert 'o2chain_alarm_events_total{event="clear"} 1' in metrics_text
        gw.stop()
        assert gw.returncode == 0, gw.log_tail()

    # The live stream saw raise, ack and clear on the base topic, and the retained alarm topic
    # was set, updated and emptied.
    live.close()
    events = []
    for msg in seen:
        doc = json.loads(msg.payload) if msg.payload else {"rule": RULE, "event": ""}
        if doc["rule"] == RULE:
            events.append((msg.topic == ALARM_TOPIC, doc["event"]))
    assert events == [
        (False, "raise"), (True, "raise"),
        (False, "ack"), (True, "ack"),
        (False, "clear"), (True, ""),
    ]  # fmt: skip
