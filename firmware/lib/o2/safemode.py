"""Safe mode: network only, after a crash loop or with a config that fails validation.

Publishes ``{"state": "safe_mode" | "config_error", "error": ...}`` retained on the status
topic and obeys ``reboot`` on the cmd topic; no sensors, no spool. Loaded only when needed.
"""

import asyncio
import json

import machine
import network

from o2 import FW_VERSION, state
from o2.net import Wifi
from o2.wiring import make_mqtt, reset_cause


async def safe_mode(cfg: dict, reason: str) -> None:
    """Network only: publish ``{"state":"safe_mode"|"config_error",...}`` and obey ``reboot``.

    Used after a crash loop (N rapid resets) or with a config that fails validation but still
    names a broker: the technician sees why on the status topic instead of a silent board.
    """
    what = "config_error" if reason.startswith("config") else "safe_mode"
    client = make_mqtt(cfg)
    wifi = Wifi(network.WLAN(network.STA_IF), cfg["wifi.ssid"], cfg["wifi.password"])
    prefix = "%s/%s/%s/" % (cfg["mqtt.topic_prefix"], cfg["site"], cfg["device"])
    status = json.dumps(
        {"state": what, "fw": FW_VERSION, "error": reason, "reset_cause": reset_cause()}
    )
    reboot = asyncio.Event()

    async def on_connect():
        await client.subscribe(prefix + "cmd", 1)
        await client.publish(prefix + "status", status, 1, True)

    def on_message(topic, payload):
        if b'"reboot"' in payload:
            reboot.set()

    client.on_connect = on_connect
    client.on_message = on_message
    asyncio.create_task(wifi.run())
    asyncio.create_task(client.run(wifi.up))
    await reboot.wait()
    print("reboot (command, safe mode)")
    state.mark_stable()
    client.close()
    machine.reset()
