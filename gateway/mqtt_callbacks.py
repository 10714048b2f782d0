"""The paho ``on_connect`` callback the gateway's MQTT clients share (ingest, alarm publisher,
group member, region view): a connection the broker refused is logged at ERROR, naming whose
connection it was, and nothing else happens (paho retries); an accepted one is handed on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # paho itself only where a client is made (the region view imports it late)
    import paho.mqtt.client as mqtt
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

Connected = Callable[["mqtt.Client", "mqtt.ConnectFlags"], None]
OnConnect = Callable[
    ["mqtt.Client", Any, "mqtt.ConnectFlags", "ReasonCode", "Properties | None"], None
]


def on_connect(log: logging.Logger, refused: str, connected: Connected) -> OnConnect:
    """paho's (VERSION2) ``on_connect``: ``connected(client, flags)`` once the broker accepted
    the connection; a refusal is logged as ``{refused}: {reason}`` on ``log``."""

    def callback(
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("%s: %s", refused, reason)
            return
        connected(client, flags)

    return callback
