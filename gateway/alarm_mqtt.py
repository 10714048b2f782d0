"""Alarm events on MQTT (docs/contracts.md, topic ``o2/{site}/gateway/{gw}/alarm``).

One retained message per alarm needs one topic per alarm, so:

- ``{prefix}/{site}/gateway/{gw}/alarm`` -- every event (raise, ack, clear, shelve, unshelve),
  QoS 1, not retained: the live stream;
- ``{prefix}/{site}/gateway/{gw}/alarm/{device}/{rule}`` -- QoS 1, **retained while the alarm
  is active** (its latest event: raised, acknowledged, shelved); cleared with an empty
  retained message when the alarm clears.

Subscribe to ``{prefix}/+/gateway/+/alarm/#`` for both. In a group of gateways
(``[mqtt] shared_group``) ``{gw}`` is the group's name: the alarms are the group's, whichever
member judges them now (gateway/ha.py restores them from these retained messages when it takes
over). The publisher uses its own client (``o2chain-{gateway id}-alarms``, clean session) so
alarm traffic never waits on the ingest session.
After every (re)connect it republishes the active alarms and, from the retained messages the
broker sends back on its subscription, clears those of alarms that ended while it was away.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.alarms import AlarmEvent
from gateway.config import GatewayConfig
from gateway.mqtt_callbacks import on_connect
from gateway.mqtt_ingest import apply_connection_settings
from o2base.procs import name_os_thread

log = logging.getLogger(__name__)


class AlarmMqttPublisher:
    """A listener for :class:`gateway.alarms.AlarmEngine`: ``engine.listeners.append(pub)``."""

    def __init__(self, config: GatewayConfig, active: list[dict[str, Any]]):
        """``active``: the engine's active alarms at start (``engine.active()``)."""
        self.config = config
        self.prefix = config.mqtt.topic_prefix
        # Whose alarms: the gateway's, or in a group the group's (docs/contracts.md).
        self.gw = config.mqtt.shared_group or config.gateway.id
        self._muted = False
        self.published = 0
        self.connected = False
        self._lock = threading.Lock()
        self._active: dict[str, bytes] = {
            self.alarm_topic(a["site"], a["device"], a["rule"]): self._payload("raise", a)
            for a in active
        }
        cfg = config.mqtt
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"o2chain-{config.gateway.id}-alarms",
            protocol=mqtt.MQTTv5,
        )
        apply_connection_settings(client, cfg)
        client.on_connect = on_connect(
            log, "alarm publisher: MQTT refused the connection", self._on_connect
        )
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client

    def base_topic(self, site: str) -> str:
        return f"{self.prefix}/{site}/gateway/{self.gw}/alarm"

    def alarm_topic(self, site: str, device: str, rule: str) -> str:
        return f"{self.base_topic(site)}/{device}/{rule}"

    @staticmethod
    def _payload(state: str, alarm: dict[str, Any], ts_ms: int | None = None) -> bytes:
        doc = {"v": 1, "event": state, "ts": ts_ms, **alarm}
        return json.dumps(doc, separators=(",", ":")).encode()

    def start(self) -> None:
        cfg = self.config.mqtt
        self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def adopt(self, retained: dict[str, bytes]) -> None:
        """Keep the group's retained alarm messages as they are (``topic -> payload``, each an
        active alarm this gateway restored): republished unchanged after a connect instead of
        a rebuilt copy, so the event and time a subscriber sees do not change with the member
        that publishes them."""
        with self._lock:
            for topic, payload in retained.items():
                if topic in self._active:
                    self._active[topic] = payload

    def mute(self) -> None:
        """Publish nothing more (a group member that lost the group's session: the member that
        holds it now speaks for the group's alarms)."""
        self._muted = True
        self.stop()

    def __call__(self, event: AlarmEvent) -> None:
        if self._muted:
            return
        a = event.alarm
        payload = json.dumps(event.to_json(), separators=(",", ":")).encode()
        topic = self.alarm_topic(a["site"], a["device"], a["rule"])
        was_active = False
        with self._lock:
            if a["active"]:
                self._active[topic] = payload
            else:
                was_active = self._active.pop(topic, None) is not None
        # paho queues QoS 1 messages while disconnected and sends them after reconnecting.
        self.client.publish(self.base_topic(a["site"]), payload, qos=1, retain=False)
        if a["active"]:
            self.client.publish(topic, payload, qos=1, retain=True)
        elif was_active or event.state == "clear":
            self.client.publish(topic, b"", qos=1, retain=True)  # deletes the retained alarm
        self.published += 1

    def _on_connect(self, client: mqtt.Client, flags: mqtt.ConnectFlags) -> None:
        name_os_thread("mqtt-alarms")  # paho's network thread, for top -H and py-spy
        self.connected = True
        with self._lock:
            active = dict(self._active)
        for topic, payload in active.items():
            client.publish(topic, payload, qos=1, retain=True)
        client.subscribe(f"{self.prefix}/+/gateway/{self.gw}/alarm/+/+", qos=1)
        log.info("alarm publisher connected; %d active alarms republished", len(active))

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected = False

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Only messages the broker had retained: alarms that cleared while we were away.
        if not msg.retain or not msg.payload:
            return
        with self._lock:
            stale = msg.topic not in self._active
        if stale:
            log.info("alarm publisher: clearing stale retained alarm %s", msg.topic)
            client.publish(msg.topic, b"", qos=1, retain=True)
