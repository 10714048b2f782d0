"""The on_connect callback the gateway's MQTT clients share."""

from __future__ import annotations

import logging
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.mqtt_callbacks import on_connect

log = logging.getLogger("t.callbacks")


def test_refused_is_logged_accepted_is_handed_on(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[Any, mqtt.ConnectFlags]] = []
    callback = on_connect(
        log, "alarm publisher: MQTT refused the connection", lambda c, f: calls.append((c, f))
    )
    client, flags = object(), mqtt.ConnectFlags(session_present=True)
    with caplog.at_level(logging.INFO, "t.callbacks"):
        callback(client, None, flags, ReasonCode(PacketTypes.CONNACK, "Not authorized"), None)  # type: ignore[arg-type]
        assert calls == []
        assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
            ("ERROR", "alarm publisher: MQTT refused the connection: Not authorized")
        ]
        callback(client, None, flags, ReasonCode(PacketTypes.CONNACK, "Success"), None)  # type: ignore[arg-type]
    assert calls == [(client, flags)] and len(caplog.records) == 1
