"""Shared helpers for the simulator tests: an MQTT recorder on a real broker."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from o2base.services import Mosquitto


class MqttRecorder:
    """Subscribes to ``topic`` (QoS 1, persistent session) and keeps every message."""

    def __init__(self, broker: Mosquitto, topic: str, client_id: str = "recorder") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda c, u, mid, rc, p: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 2)
        self._client.connect(broker.host, broker.port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("recorder did not subscribe within 10 s")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
        """Block until ``predicate()`` holds (re-checked on every message); raises on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout_s} s waiting for {predicate}")
                self._cond.wait(min(left, 0.5))

    def readings(self) -> list[tuple[str, dict[str, Any]]]:
        """(topic, reading) for every telemetry reading, arrays flattened."""
        out = []
        with self._cond:
            messages = list(self.messages)
        for topic, payload, _ in messages:
            if not topic.endswith("/telemetry"):
                continue
            doc = json.loads(payload)
            for item in doc if isinstance(doc, list) else [doc]:
                out.append((topic, item))
        return out

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def mqtt_recorder(mosquitto: Mosquitto) -> Iterator[Callable[[str], MqttRecorder]]:
    """Factory: ``mqtt_recorder("o2/#")`` subscribes on the test's broker; closed afterwards."""
    made: list[MqttRecorder] = []

    def make(topic: str) -> MqttRecorder:
        rec = MqttRecorder(mosquitto, topic, client_id=f"recorder-{len(made)}")
        made.append(rec)
        return rec

    yield make
    for rec in made:
        rec.close()
