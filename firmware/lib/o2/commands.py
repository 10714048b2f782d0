"""Commands on ``o2/{site}/{device}/cmd`` (JSON), answered on ``.../cmd/ack``.

Every command is signed (o2.auth: HMAC-SHA256 envelope, monotonic counter); retained ones are
ignored. The body's ``cmd`` is one of, with its ``args``:

- ``report_config``: the effective config, secrets masked;
- ``set_interval`` ``{"interval_s": 30}`` (1..3600);
- ``set_thresholds`` ``{"thresholds": {"o2_high_alarm_pct": 27.5, ...}}`` (``_SETTABLE`` keys,
  each within its safe band, ``bands()``);
- ``calibrate`` ``{"mode": "fresh_air" | "span" | "zero", "ref_pct": 93.0}`` (galvanic O2, only
  when the present reading is plausible for the reference);
- ``reboot`` (only once the run is stable, ``stable_after_s``).

The ack is ``{"id", "cmd", "ctr", "ok": true, "result": ...}`` or ``{..., "ok": false, "error":
"..."}``. Settings changes are checked against their safe bands (within the config
schema's ranges) and persisted in /settings.json (laid over config.json and validated at
boot). Loaded for each command and dropped after it. ``board`` is the running ``app.Board``.
"""

import json
import time

from o2 import alarm
from o2core import oxygen

try:
    from micropython import const
except ImportError:  # CPython (tests): const() is the identity

    def const(x):  # type: ignore[misc]
        return x


_SETTINGS_FILE = const("/settings.json")
# Outdoor air at every altitude (docs/domain.md "Fraction and partial pressure").
_FRESH_AIR_PCT = const(20.95)


def handle(board, payload, retain: bool = False) -> str:
    """The JSON ack for one message on the cmd topic. Every refusal says why; never raises."""
    from o2 import auth, command_id

    cmd_id = command_id(payload)
    name = None
    ctr = None
    try:
        if retain:
            # A retained command would run again at every reconnect (a retained reboot
            # rebooted a board every ~3 s for ever): commands are for the moment they are sent.
            raise auth.Refused("retained command ignored")
        key = auth.key_bytes(board.cfg["command_key"])
        last = auth.counter()
        body = auth.verify(key, payload, board.cfg["site"], board.cfg["device"], last)
        name = body.get("cmd")
        ctr = auth.counter(
            body["ctr"]
        )  # persisted before it runs: never twice, also after a reboot
        result = command(board, name, body.get("args", {}))
        ack = {"id": cmd_id, "cmd": name, "ctr": ctr, "ok": True, "result": result}
    except Exception as e:  # noqa: BLE001 -- a bad command is answered, never a crash
        ack = {"id": cmd_id, "cmd": name, "ctr": ctr, "ok": False, "error": str(e) or repr(e)}
    print("cmd: %s -> %s" % (name, "ok" if ack["ok"] else ack["error"]))
    return json.dumps(ack)


def bands(board) -> dict:
    """``{alarm key: (lo, hi)}``: the limits a command may set and the band each may move
    within, for this site (firmware/README.md "Commands"). Anything else under alarm.* -- the
    output pins, their polarity, sampling, fault delay, warm-up -- is local only."""
    # NFPA 99 / 53 increased-burning-rate limit at the site's ISA pressure (Lhasa 29.4 %):
    # the high alarm stays 0.5 % (sensor accuracy) below it and at most 5 % below it, never
    # under 21.5 % (fresh air 20.95 % + margin).
    limit = oxygen.nfpa_burn_limit_pct(board.site_kpa)
    return {
        "o2_high_alarm_pct": (max(21.5, limit - 5.0), limit - 0.5),
        "o2_high_warn_pct": (21.5, limit - 0.5),
        # OSHA 29 CFR 1910.146: oxygen-deficient below 19.5 %, never lower; at most 20.5 %
        # so that fresh air (20.95 %) does not alarm.
        "o2_deficient_pct": (19.5, 20.5),
        "o2_low_warn_pct": (19.5, 24.0),
        # ISO 80601-2-69 / YY 9706.269: a medical concentrator alarms below 82 %, never lower.
        "purity_low_pct": (82.0, 93.0),
        "purity_warn_pct": (82.0, 96.0),  # PSA product cannot exceed ~95.7 % (argon)
        "hysteresis_pct": (0.1, 1.0),
        "on_delay_s": (0.0, 60.0),
        "off_delay_s": (0.0, 600.0),
    }


def command(board, name, args: dict):
    if name == "report_config":
        out = {}
        for key in board.cfg:  # secrets masked (the config schema's SECRETS)
            v = board.cfg[key]
            out[key] = (
                "***" if v and key in ("mqtt.password", "wifi.password", "command_key") else v
            )
        return out
    if name == "set_interval":
        v = args.get("interval_s")
        if not isinstance(v, (int, float)) or not 1 <= v <= 3600:
            raise ValueError("interval_s: refused, expected a number in 1..3600, got %r" % (v,))
        apply_settings(board, {"interval_s": v})
        board.interval_ms = int(board.cfg["interval_s"] * 1000)
        board.sample_ms = min(int(board.cfg["alarm.sample_s"] * 1000), board.interval_ms)
        return {"interval_s": board.cfg["interval_s"]}
    if name == "set_thresholds":
        changes = args.get("thresholds")
        if not isinstance(changes, dict) or not changes:
            raise ValueError("thresholds: expected an object of alarm.* keys")
        limits = bands(board)
        flat: dict = {}
        for key in changes:
            short = key[6:] if key.startswith("alarm.") else key
            if short not in limits:
                raise ValueError("alarm.%s: refused, not settable by command" % short)
            v = changes[key]
            lo, hi = limits[short]
            if v is None and short in ("o2_high_alarm_pct", "o2_high_warn_pct", "purity_warn_pct"):
                flat["alarm." + short] = None  # back to the default (NFPA-derived / off)
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(
                    "alarm.%s: refused, %r is outside the safe band %.2f..%.2f" % (short, v, lo, hi)
                )
            flat["alarm." + short] = v
        apply_settings(board, flat)
        cfg = board.cfg
        if board.room:
            rules = alarm.room_rules(board.baro_kpa, cfg)
        else:
            rules = alarm.concentrator_rules(cfg)
        for r in rules:  # keep what is raised raised
            old = board.alarms.rule(r.name)
            r.active = old is not None and old.active
        board.alarms.rules = rules
        board.alarms.hysteresis = cfg["alarm.hysteresis_pct"]
        board.alarms.on_delay_ms = int(cfg["alarm.on_delay_s"] * 1000)
        board.alarms.off_delay_ms = int(cfg["alarm.off_delay_s"] * 1000)
        return {r.name: r.threshold for r in rules}
    if name == "calibrate":
        return calibrate(board, args)
    if name == "reboot":
        # Only after the run proved stable (stable_after_s): a command can never feed a crash
        # loop, and with the counter each reboot command works once.
        if not board._stable:
            raise ValueError(
                "reboot: refused during the first %d s after boot" % board.cfg["stable_after_s"]
            )
        board._reboot_at = time.ticks_add(time.ticks_ms(), 1000)  # after the ack went out
        board._reboot_due = True
        return {"in_s": 1}
    raise ValueError("unknown command %r" % (name,))


def apply_settings(board, flat: dict) -> None:
    """Validate ``flat`` over the running config, then persist it in /settings.json."""
    # Every value was checked against its safe band (inside the schema's ranges), so the
    # config schema (~20 KB of heap) is not loaded; start-up validates /settings.json again.
    cfg = dict(board.cfg)
    for key in flat:
        cfg[key] = float(flat[key]) if isinstance(flat[key], int) else flat[key]
    if board.room:
        high, warn = oxygen.room_thresholds(
            board.site_kpa, cfg["alarm.o2_high_alarm_pct"], cfg["alarm.o2_high_warn_pct"]
        )
        if warn > high:
            raise ValueError("alarm.o2_high_warn_pct: refused, above the high alarm %.2f" % high)
    board.cfg = cfg
    # The merge-and-rename of o2.config.save_settings, written here again on purpose: that
    # module would bring the config schema back into the heap.
    try:
        with open(_SETTINGS_FILE) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        saved = {}
    if not isinstance(saved, dict):
        saved = {}
    for key in flat:
        saved[key] = flat[key]
    tmp = _SETTINGS_FILE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(saved, f)
    import os

    os.rename(tmp, _SETTINGS_FILE)


# Calibration is refused unless the reading it would correct is plausible for the reference
# (a fresh-air calibration in a 24.6 % room made it read 20.95 % for good): the present
# reading (corrected with the present calibration, or the factory one) within 2.0 % O2 of
# fresh air -- about 10 % of the cell's sensitivity, the spread of new cells around their
# nominal output -- for span within max(2.0, 10 % of ref_pct), for zero below 2.0 %.
_CAL_TOLERANCE_PCT = const(2.0)


def calibrate(board, args: dict):
    if not board.galvanic:
        raise ValueError("calibrate: not supported for sensor %r" % board.cfg["sensors.o2.type"])
    mode = args.get("mode")
    if mode not in ("zero", "span", "fresh_air"):
        raise ValueError("mode: expected one of zero, span, fresh_air")
    value, raw = board._value, board._raw
    if value is None or raw is None or raw <= 0:
        raise ValueError("calibrate: refused, no valid reading right now")
    from o2.calibration import Calibration

    cal = board.calibration or Calibration()
    if mode == "zero":  # pure nitrogen at the inlet
        if value >= _CAL_TOLERANCE_PCT:
            raise ValueError("calibrate: refused, reading %.2f %% is not zero gas" % value)
        cal.offset = -cal.gain * raw
    else:
        ref = args.get("ref_pct", _FRESH_AIR_PCT if mode == "fresh_air" else None)
        if not isinstance(ref, (int, float)) or not 15 <= ref <= 100:
            raise ValueError("ref_pct: expected a number in 15..100")
        tolerance = max(_CAL_TOLERANCE_PCT, ref * 0.1) if mode == "span" else _CAL_TOLERANCE_PCT
        if abs(value - ref) > tolerance:
            raise ValueError(
                "calibrate: refused, reading %.2f %% is not within %.1f %% of %.2f %%"
                % (value, tolerance, ref)
            )
        # (gain * raw + offset) * cal_kpa / PB = ref with cal_kpa = PB, the pressure in use.
        cal.gain = (ref - cal.offset) / raw
        cal.cal_kpa = board.baro_kpa
    cal.save()
    board.calibration = cal
    return cal.as_dict()
