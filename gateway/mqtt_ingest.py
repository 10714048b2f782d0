"""MQTT ingest (paho-mqtt 2.x, MQTT 5): persistent session, QoS 1, manual acknowledgement.

A telemetry message is acknowledged only after its readings (or its dead letter) are committed
to the outbox; until then the broker keeps it in the gateway's session and redelivers it after a
crash (ARCHITECTURE.md, delivery guarantee, step 2).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import GatewayConfig
from gateway.outbox import Outbox
from gateway.readings import Reading
from gateway.telemetry import Reject, decode_telemetry, parse_topic

log = logging.getLogger(__name__)


@dataclass
class IngestStats:
    messages: int = 0
    readings: int = 0
    rejects: dict[str, int] = field(default_factory=dict)
    connects: int = 0
    connected: bool = False
    device_state: dict[str, str] = field(default_factory=dict)


class MqttIngest:
    """Subscribes to telemetry and status of every site; runs paho's network thread."""

    def __init__(
        self,
        config: GatewayConfig,
        outbox: Outbox,
        on_committed: Callable[[], None] = lambda: None,
        process: Callable[[list[Reading]], list[Reading]] = lambda readings: readings,
        wall_clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ):
        self.config = config
        self.outbox = outbox
        self.on_committed = on_committed
        self.process = process
        self.wall_clock_ms = wall_clock_ms
        self.stats = IngestStats()
        self.connected_event = threading.Event()
        self.subscribed_event = threading.Event()
        cfg = config.mqtt
        self.client_id = cfg.client_id or f"o2chain-{config.gateway.id}"
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if cfg.username:
            password = cfg.password()
            client.username_pw_set(cfg.username, password.get_secret_value() if password else None)
        if cfg.tls:
            client.tls_set(
                ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        # Bounded backoff: seconds, not minutes, so an outage ends with the broker's.
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.max_inflight_messages_set(1000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self.client = client

    def _topics(self) -> list[str]:
        prefix = self.config.mqtt.topic_prefix
        topics = [f"{prefix}/+/+/telemetry", f"{prefix}/+/+/status"]
        group = self.config.mqtt.shared_group
        if group:
            topics[0] = f"$share/{group}/{topics[0]}"
        return topics

    def start(self) -> None:
        """Connect in the background; works when the broker is down (keeps retrying)."""
        cfg = self.config.mqtt
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = cfg.session_expiry_s
        self.client.connect_async(
            cfg.host, cfg.port, keepalive=cfg.keepalive_s, clean_start=False, properties=props
        )
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("MQTT %s refused the connection: %s", self.config.mqtt.url, reason)
            return
        self.stats.connects += 1
        self.stats.connected = True
        log.info(
            "MQTT connected to %s as %s (session present: %s)",
            self.config.mqtt.url,
            self.client_id,
            flags.session_present,
        )
        self.connected_event.set()
        client.subscribe([(t, 1) for t in self._topics()])

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("MQTT subscription refused: %s", ", ".join(failed))
            return
        # Tests and the demo wait for this line before publishing.
        log.info("MQTT subscribed to %s", ", ".join(self._topics()))
        self.subscribed_event.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.stats.connected = False
        self.connected_event.clear()
        self.subscribed_event.clear()
        if reason.is_failure:
            log.warning("MQTT disconnected from %s: %s; reconnecting", self.config.mqtt.url, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._handle(msg)
        except Exception:
            # Not acknowledged: the broker redelivers it with the session after a reconnect.
            log.exception("MQTT message on %s not stored; left unacknowledged", msg.topic)
            return
        client.ack(msg.mid, msg.qos)

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        self.stats.messages += 1
        prefix = self.config.mqtt.topic_prefix
        if msg.topic.endswith("/status"):
            try:
                t = parse_topic(prefix, msg.topic)
            except Reject:
                return
            state = "online" if b'"online"' in msg.payload else "offline"
            self.stats.device_state[f"{t.site}/{t.device}"] = state
            return
        try:
            readings = decode_telemetry(
                self.config, msg.topic, bytes(msg.payload), self.wall_clock_ms()
            )
        except Reject as rej:
            self.stats.rejects[rej.reason] = self.stats.rejects.get(rej.reason, 0) + 1
            log.warning("rejected MQTT message on %s: %s", msg.topic, rej)
            self.outbox.add_dead_letter(
                "mqtt", msg.topic, rej.reason, rej.detail, bytes(msg.payload)
            )
            return
        readings = self.process(readings)
        self.outbox.add(r.to_line() for r in readings)
        self.stats.readings += len(readings)
        self.on_committed()
