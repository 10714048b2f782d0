"""Commands on ``o2/{site}/{device}/cmd`` (JSON), answered on ``.../cmd/ack``.

``{"id": "any", "cmd": NAME, ...}`` with NAME one of:

- ``report_config``: the effective config, secrets masked;
- ``set_interval`` ``{"interval_s": 5}``;
- ``set_thresholds`` ``{"thresholds": {"o2_high_alarm_pct": 27.5, ...}}`` (``alarm.*`` keys);
- ``calibrate`` ``{"mode": "fresh_air" | "span" | "zero", "ref_pct": 20.95}`` (galvanic O2);
- ``reboot``.

The ack is ``{"id", "cmd", "ok": true, "result": ...}`` or ``{"id", "cmd", "ok": false,
"error": "..."}``. Settings changes are validated against the config schema and persisted in
/settings.json (laid over config.json at boot). Loaded on the first command only. ``board`` is
the running ``app.Board``.
"""

import json
import time

from o2 import alarm, config

try:
    from micropython import const
except ImportError:  # CPython (tests): const() is the identity

    def const(x):  # type: ignore[misc]
        return x


_SETTINGS_FILE = const("/settings.json")
CALIBRATE_MODES = ("zero", "span", "fresh_air")
# Outdoor air at every altitude (docs/domain.md "Fraction and partial pressure").
FRESH_AIR_PCT = 20.95


def handle(board, payload) -> str:
    cmd_id = None
    name = None
    try:
        doc = json.loads(payload)
        if not isinstance(doc, dict):
            raise ValueError("expected a JSON object")
        cmd_id = doc.get("id")
        name = doc.get("cmd")
        result = command(board, name, doc)
        ack = {"id": cmd_id, "cmd": name, "ok": True, "result": result}
    except Exception as e:  # noqa: BLE001 -- a bad command is answered, never a crash
        ack = {"id": cmd_id, "cmd": name, "ok": False, "error": str(e) or repr(e)}
    print("cmd: %s -> %s" % (name, "ok" if ack["ok"] else ack["error"]))
    return json.dumps(ack)


def command(board, name, doc: dict):
    if name == "report_config":
        return config.public(board.cfg)
    if name == "set_interval":
        v = doc.get("interval_s")
        apply_settings(board, {"interval_s": v})
        board.interval_ms = int(board.cfg["interval_s"] * 1000)
        board.sample_ms = min(int(board.cfg["alarm.sample_s"] * 1000), board.interval_ms)
        return {"interval_s": board.cfg["interval_s"]}
    if name == "set_thresholds":
        changes = doc.get("thresholds")
        if not isinstance(changes, dict) or not changes:
            raise ValueError("thresholds: expected an object of alarm.* keys")
        flat = {}
        for key in changes:
            full = key if key.startswith("alarm.") else "alarm." + key
            if full not in config.KEYS:
                raise ValueError("%s: unknown setting" % key)
            flat[full] = changes[key]
        apply_settings(board, flat)
        rebuild_rules(board)
        return {r.name: r.threshold for r in board.alarms.rules}
    if name == "calibrate":
        return calibrate(board, doc)
    if name == "reboot":
        board._reboot_at = time.ticks_add(time.ticks_ms(), 1000)  # after the ack went out
        board._reboot_due = True
        return {"in_s": 1}
    raise ValueError("unknown command %r" % (name,))


def apply_settings(board, flat: dict) -> None:
    """Validate ``flat`` over the running config, then persist it in /settings.json."""
    board.cfg = config.revalidate(board.cfg, flat)  # raises ConfigError naming the key
    config.save_settings(_SETTINGS_FILE, flat)


def rebuild_rules(board) -> None:
    cfg = board.cfg
    if board.room:
        rules = alarm.room_rules(board.baro_kpa, cfg)
    else:
        rules = alarm.concentrator_rules(cfg)
    old = {}
    for r in board.alarms.rules:
        old[r.name] = r.active
    for r in rules:
        r.active = old.get(r.name, False)
    board.alarms.rules = rules
    board.alarms.hysteresis = cfg["alarm.hysteresis_pct"]


def calibrate(board, doc: dict):
    if not board.room or board.cfg["sensors.o2.type"] not in ("ze03", "ads1115"):
        raise ValueError("calibrate: not supported for sensor %r" % board.cfg["sensors.o2.type"])
    mode = doc.get("mode")
    if mode not in CALIBRATE_MODES:
        raise ValueError("mode: expected one of %s" % ", ".join(CALIBRATE_MODES))
    if board.calibration is None:
        from o2.calibration import Calibration

        board.calibration = Calibration()
    cal = board.calibration
    raw = raw_reading(board)
    if mode == "zero":  # pure nitrogen at the inlet
        cal.offset = -cal.gain * raw
    else:
        ref = doc.get("ref_pct", FRESH_AIR_PCT if mode == "fresh_air" else None)
        if not isinstance(ref, (int, float)) or not 15 <= ref <= 100:
            raise ValueError("ref_pct: expected a number in 15..100")
        if raw <= 0:
            raise ValueError("calibrate: raw reading %r" % raw)
        cal.gain = (ref - cal.offset) / raw
        # The cell reads partial pressure: remember the pressure it was calibrated at.
        cal.cal_kpa = board.baro_kpa if board.baro_measured else 0.0
    cal.save()
    return cal.as_dict()


def raw_reading(board) -> float:
    value = board._value
    if value is None:
        raise ValueError("calibrate: no valid reading right now")
    # Undo the current correction: calibration works on the sensor's own value.
    cal = board.calibration
    if cal is None:
        return value
    if cal.cal_kpa and board.baro_measured:
        value = value * board.baro_kpa / cal.cal_kpa
    return (value - cal.offset) / cal.gain
