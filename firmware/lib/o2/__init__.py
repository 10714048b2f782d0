"""o2chain board firmware (MicroPython, ESP32): application package.

Every module here runs unchanged on the board (as mpy-cross bytecode) and, for the pure ones,
under CPython in the tests: keep to the MicroPython/CPython common subset.

The few names the running board (``o2.app``) and safe mode (``o2.safemode``, via
``o2.wiring``) both need live here, in the package module every path loads anyway: neither
side then imports the other (safe mode must not load the application and its spool), and
they cost no module of their own.
"""

FW_VERSION = "0.1.0"
OFFLINE = b'{"state":"offline"}'  # the last will, and what an orderly stop publishes


def topic_prefix(cfg: dict) -> str:
    """``{prefix}/{site}/{device}/`` (docs/contracts.md)."""
    return "%s/%s/%s/" % (cfg["mqtt.topic_prefix"], cfg["site"], cfg["device"])


def command_id(payload):
    """The ``id`` inside a command envelope, for an ack sent without loading o2.commands."""
    import json

    try:
        return json.loads(json.loads(payload)["body"])["id"]
    except Exception:  # noqa: BLE001 -- unreadable: no id
        return None
