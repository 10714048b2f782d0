"""Safe mode: network only, after a crash loop or with a config that fails validation.

Publishes ``{"state": "safe_mode" | "config_error", "error": ...}`` retained on the status
topic and obeys a signed ``reboot`` on the cmd topic (o2.auth: the same envelope, key and
counter as the running board; retained commands ignored); anything else is refused with a
reason on ``cmd/ack``. No sensors, no spool. Loaded only when needed.
"""

import asyncio
import json

import machine
import network

from o2 import FW_VERSION, command_id, state, topic_prefix
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
    prefix = topic_prefix(cfg)
    # The local alarm does not run here: its sensor, thresholds or pins were unusable, or the
    # board is crash-looping.
    status = json.dumps(
        {
            "state": what,
            "fw": FW_VERSION,
            "error": reason,
            "reset_cause": reset_cause(),
            "local_alarm": "off",
        }
    )
    reboot = asyncio.Event()
    inbox: list = []
    got = asyncio.Event()

    async def on_connect():
        await client.subscribe(prefix + "cmd", 1)
        await client.publish(prefix + "status", status, 1, True)

    def on_message(topic, payload, retain):
        if len(inbox) < 4:
            inbox.append((payload, retain))
            got.set()

    client.on_connect = on_connect
    client.on_message = on_message
    asyncio.create_task(wifi.run())
    asyncio.create_task(client.run(wifi.up))
    while not reboot.is_set():
        await got.wait()
        got.clear()
        while inbox:
            payload, retain = inbox.pop(0)
            ack = check_reboot(cfg, payload, retain)
            if ack["ok"]:
                reboot.set()
            try:
                await client.publish(prefix + "cmd/ack", json.dumps(ack), 1)
            except OSError:
                pass  # the reboot happens anyway; the ack is best effort
    await asyncio.sleep_ms(500)  # let the ack leave
    print("reboot (command, safe mode)")
    state.mark_stable()
    client.close()
    machine.reset()


def check_reboot(cfg: dict, payload, retain: bool) -> dict:
    """The ack for one cmd message in safe mode: only an authentic, fresh ``reboot`` is ok."""
    from o2 import auth

    ack = {"id": command_id(payload), "cmd": None, "ctr": None, "ok": False}
    try:
        if retain:
            raise auth.Refused("retained command ignored")
        key = auth.key_bytes(cfg.get("command_key"))
        body = auth.verify(key, payload, cfg["site"], cfg["device"], auth.counter())
        ack["cmd"], ack["ctr"] = body.get("cmd"), auth.counter(body["ctr"])
        if body.get("cmd") != "reboot":
            raise auth.Refused("safe mode: only reboot")
        ack["ok"] = True
        ack["result"] = {"in_s": 1}
    except Exception as e:  # noqa: BLE001 -- answered, never a crash
        ack["error"] = str(e) or repr(e)
    print("cmd (safe mode): %s -> %s" % (ack["cmd"], "ok" if ack["ok"] else ack["error"]))
    return ack
