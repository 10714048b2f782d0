"""Board configuration: ``/config.json`` checked once at boot against a table of rows.

Each row is ``(dotted key, type, default, check)``; REQUIRED marks keys without a default.
Errors name the key, the expected value and what was found. The effective configuration
(defaults filled in, secrets masked) is printed at boot by the app. Reference: firmware/README.md.
"""

import gc
import json

REQUIRED = object()
NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"


class ConfigError(ValueError):
    """The configuration is unusable; the message names the key."""


def _name(v) -> str:
    # Site and device names go into topics and InfluxDB tags: [a-z0-9-]{1,32} (docs/contracts.md).
    if not isinstance(v, str) or not 1 <= len(v) <= 32:
        return "a name of 1..32 characters [a-z0-9-]"
    for c in v:
        if c not in NAME_CHARS:
            return "a name of 1..32 characters [a-z0-9-]"
    return ""


def _hex64(v) -> str:
    # Board command key: 32 random bytes as 64 hex characters (provisioning writes it).
    try:
        if len(v) == 64 and len(bytes.fromhex(v)) == 32:
            return ""
    except ValueError:
        pass
    return "64 hex characters"


def _range(lo, hi):
    def check(v):
        return "" if lo <= v <= hi else "a value in %s..%s" % (lo, hi)

    return check


def _gpio(lo, hi=0):
    # ESP32 (WROOM/WROVER) pads: 0-19, 21-23, 25-27, 32-39. 6-11 drive the module's flash
    # chip; 34-39 have no output driver (a buzzer, LED, UART TX or I2C line needs one).
    # ``lo``: the board drives this pin; ``hi``: -1 (no pin) is allowed. (Parameter names
    # reused from _range: every new name is a qstr kept for good on the board.)
    def check(v):
        if hi and v == -1:
            return ""
        if not 0 <= v <= 39 or v in (20, 24, 28, 29, 30, 31):
            return "an ESP32 GPIO (0-19, 21-23, 25-27, 32-39%s)" % (", -1 = none" if hi else "")
        if 6 <= v <= 11:
            return "a GPIO other than 6-11 (they are wired to the flash chip)"
        if lo and v > 33:
            return "a GPIO that can drive an output (34-39 are input-only)"
        return ""

    return check


def _one_of(*choices):
    def check(v):
        return "" if v in choices else "one of " + ", ".join([repr(c) for c in choices])

    return check


SCHEMA = (
    ("site", str, REQUIRED, _name),
    ("device", str, REQUIRED, _name),
    ("kind", str, "room", _one_of("room", "concentrator")),
    # HMAC-SHA256 key of signed commands; without it the board refuses every command.
    ("command_key", str, None, _hex64),
    # Required: the ISA pressure of the site is the fallback and the plausibility reference
    # for the barometer; a default of 0 m would make a plateau board behave as at sea level.
    ("site_altitude_m", float, REQUIRED, _range(-500, 9000)),
    # Telemetry period. Below 0.2 s only for the heap soak test (fast cycles), never on site.
    ("interval_s", float, 10.0, _range(0.01, 3600)),
    ("eq_alt_definition", str, "west", _one_of("west", "ambient")),
    ("health_interval_s", float, 60.0, _range(1, 86400)),
    ("wdt_timeout_s", float, 30.0, _range(0, 600)),
    ("safe_mode_resets", int, 5, _range(2, 100)),
    ("stable_after_s", float, 120.0, _range(1, 86400)),
    ("spool.segment_kb", int, 16, _range(2, 64)),
    ("spool.segments", int, 32, _range(2, 1024)),
    ("spool.batch_max", int, 100, _range(1, 500)),  # gateway: max 500 readings per message
    ("spool.batch_kb", int, 2, _range(1, 64)),  # gateway: max 64 KiB per message
    ("alarm.sample_s", float, 0.5, _range(0.01, 10)),
    ("alarm.pin", int, -1, _gpio(1, 1)),
    ("alarm.warn_pin", int, -1, _gpio(1, 1)),
    ("alarm.active_high", bool, True, None),
    ("alarm.o2_high_alarm_pct", float, None, _range(19, 100)),
    ("alarm.o2_high_warn_pct", float, None, _range(19, 100)),
    ("alarm.o2_low_warn_pct", float, 22.0, _range(0, 25)),
    ("alarm.o2_deficient_pct", float, 19.5, _range(0, 25)),
    ("alarm.purity_low_pct", float, 82.0, _range(0, 100)),
    ("alarm.purity_warn_pct", float, None, _range(0, 100)),
    ("alarm.hysteresis_pct", float, 0.3, _range(0, 5)),
    ("alarm.on_delay_s", float, 0.0, _range(0, 300)),
    # Concentrators: purity alarms held while the unit reaches product purity after a cold
    # start (ISO 80601-2-69 units hold their low-O2 alarm during warm-up). Rooms: unused.
    ("alarm.warmup_s", float, 600.0, _range(0, 3600)),
    ("alarm.off_delay_s", float, 5.0, _range(0, 600)),
    ("alarm.fault_delay_s", float, 3.0, _range(0.5, 600)),
    ("mqtt.host", str, REQUIRED, lambda v: "" if v else "a broker IP address (not empty)"),
    ("mqtt.port", int, 1883, _range(1, 65535)),
    ("mqtt.topic_prefix", str, "o2", None),
    ("mqtt.keepalive_s", int, 30, _range(2, 65535)),
    ("mqtt.connect_timeout_s", float, 10.0, _range(0.5, 120)),
    ("mqtt.backoff_max_s", float, 30.0, _range(0.5, 600)),
    ("mqtt.username", str, None, None),
    ("mqtt.password", str, None, None),
    ("mqtt.tls.ca_file", str, None, None),  # PEM on the board's fs: enables TLS, pins the CA
    ("mqtt.tls.server_hostname", str, None, None),
    ("wifi.ssid", str, "", None),
    ("wifi.password", str, "", None),
    ("ntp.host", str, "pool.ntp.org", None),
    ("ntp.port", int, 123, _range(1, 65535)),
    ("sensors.o2.type", str, "ze03", _one_of("ze03", "gasboard", "luminox", "ads1115", "none")),
    ("sensors.o2.uart", int, 2, _range(0, 2)),
    ("sensors.o2.tx", int, 17, _gpio(1)),
    ("sensors.o2.rx", int, 16, _gpio(0)),
    ("sensors.o2.timeout_ms", int, 500, _range(50, 5000)),
    ("sensors.o2.flow_scale", float, 0.1, _one_of(0.1, 0.01)),  # Gasboard: per model
    ("sensors.o2.mode", str, "poll", _one_of("poll", "stream")),  # Gasboard
    ("sensors.o2.i2c", int, 0, _range(0, 1)),  # ADS1115
    ("sensors.o2.addr", int, 0x48, _range(0x48, 0x4B)),  # ADS1115
    ("sensors.co2.type", str, "none", _one_of("mhz19", "none")),  # optional room CO2 (NDIR)
    ("sensors.co2.uart", int, 1, _range(0, 2)),
    ("sensors.co2.tx", int, 4, _gpio(1)),
    ("sensors.co2.rx", int, 5, _gpio(0)),
    ("sensors.env.type", str, "bme280", _one_of("bme280", "none")),
    ("sensors.env.i2c", int, 0, _range(0, 1)),
    ("sensors.env.sda", int, 21, _gpio(1)),
    ("sensors.env.scl", int, 22, _gpio(1)),
    ("sensors.env.addr", int, 0x76, _one_of(0x76, 0x77)),
)
SECRETS = ("mqtt.password", "wifi.password", "command_key")
KEYS = [row[0] for row in SCHEMA]


def _type_ok(v, kind) -> bool:
    if kind is bool:
        return v is True or v is False
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


def _check_one(raw: dict, key: str, kind, default, check):
    v = _lookup(raw, key)
    if v is REQUIRED or (v is None and default is None):
        if default is REQUIRED:
            raise ConfigError("%s: missing (required)" % key)
        return default
    if not _type_ok(v, kind):
        raise ConfigError("%s: expected %s, got %r" % (key, kind.__name__, v))
    if kind is float:
        v = float(v)
    if check is not None:
        expected = check(v)
        if expected:
            raise ConfigError("%s: expected %s, got %r" % (key, expected, v))
    return v


def _near(key: str) -> str:
    # " (did you mean alarm.o2_high_alarm_pct?)": a known key within 2 edits (Levenshtein),
    # or the same name in another table (mqtt.ssid -> wifi.ssid).
    best = ""
    n = 3
    leaf = "." + key.split(".")[-1]
    for k in KEYS:
        d = 9
        if -3 < len(k) - len(key) < 3:
            row = list(range(len(k) + 1))
            for i in range(len(key)):
                prev = row[0]
                row[0] = i + 1
                for j in range(len(k)):
                    cur = row[j + 1]
                    row[j + 1] = min(cur + 1, row[j] + 1, prev + (key[i] != k[j]))
                    prev = cur
            d = row[-1]
        if d > 1 and ("." + k).endswith(leaf):
            d = 1
        if d < n:
            best = k
            n = d
    return " (did you mean %s?)" % best if best else ""


def _unknown(raw: dict, key: str) -> None:
    # Every key of the file must be one of the schema's: a misspelt key would otherwise leave
    # its default in force without a word (an alarm threshold, the reading interval).
    for k in raw:
        v = raw[k]
        name = key + k
        if name in KEYS:
            continue
        k = name + "."
        for known in KEYS:
            if known.startswith(k):  # a table: alarm, mqtt.tls, sensors.o2, ...
                if not isinstance(v, dict):
                    raise ConfigError("%s: expected a table of %s.* keys, got %r" % (name, name, v))
                _unknown(v, name + ".")
                break
        else:
            raise ConfigError("%s: unknown key%s" % (name, _near(name)))


def validate(raw) -> dict:
    """Checked flat config ``{dotted key: value}`` with defaults; raises ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a JSON object")
    _unknown(raw, "")
    gc.collect()  # its garbage gone before the config's own dict grows (a board's heap)
    out = {}
    for key, kind, default, check in SCHEMA:
        out[key] = _check_one(raw, key, kind, default, check)
    _cross_check(out)
    return out


def _cross_check(cfg: dict) -> None:
    # Rules that span keys: the O2 sensor must suit the board kind.
    o2 = cfg["sensors.o2.type"]
    if cfg["kind"] == "concentrator" and o2 not in ("gasboard", "none"):
        raise ConfigError("sensors.o2.type: expected 'gasboard' for a concentrator, got %r" % o2)
    if cfg["kind"] == "room" and o2 == "gasboard":
        raise ConfigError("sensors.o2.type: 'gasboard' measures concentrator gas, not a room")
    if cfg["sensors.co2.type"] != "none":
        if cfg["kind"] != "room":
            raise ConfigError("sensors.co2.type: a CO2 sensor belongs to a room board")
        if o2 in ("ze03", "luminox") and cfg["sensors.co2.uart"] == cfg["sensors.o2.uart"]:
            raise ConfigError("sensors.co2.uart: expected a UART other than sensors.o2.uart")
    # One GPIO, one job: the pins this board drives or reads (I2C: one bus, BME280 and ADS1115
    # share it).
    keys = []
    if o2 in ("ze03", "gasboard", "luminox"):
        keys += ["sensors.o2.tx", "sensors.o2.rx"]
    if o2 == "ads1115" or (cfg["kind"] == "room" and cfg["sensors.env.type"] == "bme280"):
        keys += ["sensors.env.sda", "sensors.env.scl"]
    if cfg["sensors.co2.type"] != "none":
        keys += ["sensors.co2.tx", "sensors.co2.rx"]
    keys += ["alarm.pin", "alarm.warn_pin"]
    used: dict = {}
    for k in keys:
        v = cfg[k]
        if v in used:
            raise ConfigError("%s: expected a GPIO of its own, got %d (also %s)" % (k, v, used[v]))
        if v >= 0:
            used[v] = k


def read(path: str = "/config.json"):
    """The raw JSON of the config file; raises ConfigError (unreadable / not JSON)."""
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise ConfigError("%s: cannot read (%s)" % (path, e))
    except ValueError as e:
        raise ConfigError("%s: not valid JSON (%s)" % (path, e))


def load(path: str = "/config.json") -> dict:
    """Read and validate the config file; raises ConfigError (also for unreadable JSON)."""
    return validate(read(path))


def overlay(raw, flat: dict):
    """``raw`` (nested JSON) with dotted ``flat`` keys laid over it (runtime settings)."""
    if not isinstance(raw, dict):
        return raw
    for key in flat:
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = flat[key]
    return raw


def load_settings(path: str) -> dict:
    """Runtime settings saved by commands (``{dotted key: value}``); {} if none or damaged."""
    try:
        with open(path) as f:
            doc = json.load(f)
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def save_settings(path: str, flat: dict) -> None:
    """Merge ``flat`` into the settings file (write-then-rename)."""
    import os

    doc = load_settings(path)
    for key in flat:
        doc[key] = flat[key]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.rename(tmp, path)


def revalidate(cfg: dict, flat: dict) -> dict:
    """The flat ``cfg`` with ``flat`` changes applied, checked like the file; ConfigError."""
    raw: dict = {}
    for key in cfg:
        if cfg[key] is not None:
            overlay(raw, {key: cfg[key]})
    return validate(overlay(raw, flat))


def salvage(raw):
    """After a config error: the config with each unusable key at its default and the part
    it configures switched off (a pin, the CO2 or environment sensor, the network), if the
    local alarm can still run on it -- O2 sensor, thresholds and site altitude usable --
    else None. The board then keeps its alarm armed and says what is wrong."""
    if not isinstance(raw, dict):
        return None
    out = {}
    bad = []
    for key, kind, default, check in SCHEMA:
        try:
            out[key] = _check_one(raw, key, kind, default, check)
        except ConfigError:
            out[key] = None if default is REQUIRED else default
            bad.append(key)
    for _ in range(8):
        # Switch off what each bad key configures; None when the alarm cannot do without it.
        for key in bad:
            if key in ("alarm.pin", "alarm.warn_pin"):
                out[key] = -1
            elif (
                key[:6] == "alarm."
                or key[:11] == "sensors.o2."
                or key in ("kind", "site_altitude_m")
            ):
                return None
            elif key[:12] == "sensors.co2.":
                out["sensors.co2.type"] = "none"
            elif key[:12] == "sensors.env.":
                if out["sensors.o2.type"] == "ads1115":  # the cell's ADC is on that I2C bus
                    return None
                out["sensors.env.type"] = "none"
        try:
            _cross_check(out)
            return out
        except ConfigError as e:
            bad = [str(e).split(":")[0]]
    return None


def network_only(raw):
    """Just the keys needed to reach the broker (for the config-error status), or None."""
    if not isinstance(raw, dict):
        return None
    out = {}
    try:
        for key, kind, default, check in SCHEMA:
            if key in ("site", "device", "command_key") or key[:5] in ("mqtt.", "wifi."):
                out[key] = _check_one(raw, key, kind, default, check)
    except ConfigError:
        return None
    return out


def public(cfg: dict) -> dict:
    """The effective config with secrets masked (``report_config`` command)."""
    out = {}
    for key in cfg:
        v = cfg[key]
        out[key] = "***" if key in SECRETS and v else v
    return out


def describe(cfg: dict) -> str:
    """One line per key for the boot log, secrets masked."""
    lines = []
    for key, _, _, _ in SCHEMA:
        v = cfg[key]
        if key in SECRETS and v:
            v = "***"
        lines.append("  %s = %r" % (key, v))
    return "\n".join(lines)
