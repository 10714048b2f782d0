"""Board configuration: ``/config.json`` checked once at boot against a table of rows.

Each row is ``(dotted key, type, default, check)``; REQUIRED marks keys without a default.
Errors name the key, the expected value and what was found. The effective configuration
(defaults filled in, secrets masked) is printed at boot by the app. Reference: firmware/README.md.
"""

import json

REQUIRED = object()
NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"


class ConfigError(ValueError):
    """The configuration is unusable; the message names the key."""


def _name(v) -> str:
    # Site and device names go into topics and InfluxDB tags: [a-z0-9-]{1,32} (ARCHITECTURE.md).
    if not isinstance(v, str) or not 1 <= len(v) <= 32:
        return "a name of 1..32 characters [a-z0-9-]"
    for c in v:
        if c not in NAME_CHARS:
            return "a name of 1..32 characters [a-z0-9-]"
    return ""


def _range(lo, hi):
    def check(v):
        return "" if lo <= v <= hi else "a value in %s..%s" % (lo, hi)

    return check


def _one_of(*choices):
    def check(v):
        return "" if v in choices else "one of " + ", ".join([repr(c) for c in choices])

    return check


SCHEMA = (
    ("site", str, REQUIRED, _name),
    ("device", str, REQUIRED, _name),
    ("kind", str, "room", _one_of("room", "concentrator")),
    ("site_altitude_m", float, 0.0, _range(-500, 9000)),
    ("interval_s", float, 10.0, _range(0.2, 3600)),
    ("eq_alt_definition", str, "west", _one_of("west", "ambient")),
    ("outbox_len", int, 32, _range(1, 1000)),
    ("mqtt.host", str, REQUIRED, None),
    ("mqtt.port", int, 1883, _range(1, 65535)),
    ("mqtt.topic_prefix", str, "o2", None),
    ("mqtt.keepalive_s", int, 30, _range(2, 65535)),
    ("mqtt.connect_timeout_s", float, 10.0, _range(0.5, 120)),
    ("mqtt.username", str, None, None),
    ("mqtt.password", str, None, None),
    ("wifi.ssid", str, "", None),
    ("wifi.password", str, "", None),
    ("sensors.o2.type", str, "ze03", _one_of("ze03", "none")),
    ("sensors.o2.uart", int, 2, _range(0, 2)),
    ("sensors.o2.tx", int, 17, _range(0, 48)),
    ("sensors.o2.rx", int, 16, _range(0, 48)),
    ("sensors.o2.timeout_ms", int, 500, _range(50, 5000)),
    ("sensors.env.type", str, "bme280", _one_of("bme280", "none")),
    ("sensors.env.i2c", int, 0, _range(0, 1)),
    ("sensors.env.sda", int, 21, _range(0, 48)),
    ("sensors.env.scl", int, 22, _range(0, 48)),
    ("sensors.env.addr", int, 0x76, _one_of(0x76, 0x77)),
)
SECRETS = ("mqtt.password", "wifi.password")


def _type_ok(v, kind) -> bool:
    if kind is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, kind)


def _lookup(raw: dict, key: str):
    node = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return REQUIRED
        node = node[part]
    return node


def validate(raw) -> dict:
    """Checked flat config ``{dotted key: value}`` with defaults; raises ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a JSON object")
    out = {}
    for key, kind, default, check in SCHEMA:
        v = _lookup(raw, key)
        if v is REQUIRED or (v is None and default is None):
            if default is REQUIRED:
                raise ConfigError("%s: missing (required)" % key)
            out[key] = default
            continue
        if not _type_ok(v, kind):
            raise ConfigError("%s: expected %s, got %r" % (key, kind.__name__, v))
        if kind is float:
            v = float(v)
        if check is not None:
            expected = check(v)
            if expected:
                raise ConfigError("%s: expected %s, got %r" % (key, expected, v))
        out[key] = v
    return out


def load(path: str = "/config.json") -> dict:
    """Read and validate the config file; raises ConfigError (also for unreadable JSON)."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError as e:
        raise ConfigError("%s: cannot read (%s)" % (path, e))
    except ValueError as e:
        raise ConfigError("%s: not valid JSON (%s)" % (path, e))
    return validate(raw)


def describe(cfg: dict) -> str:
    """One line per key for the boot log, secrets masked."""
    lines = []
    for key, _, _, _ in SCHEMA:
        v = cfg[key]
        if key in SECRETS and v:
            v = "***"
        lines.append("  %s = %r" % (key, v))
    return "\n".join(lines)
