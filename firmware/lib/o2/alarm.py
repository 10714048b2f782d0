"""Local safety alarm (pure): threshold rules with hysteresis and on/off delays.

Defaults from docs/domain.md "Limits and alarms" (proposals there, configurable here):

- room O2: high alarm at ``NFPA limit - 1.5`` where the NFPA 99 increased-burning-rate limit is
  ``23.45 / sqrt(PB / 101.325)`` % (Lhasa 64.5 kPa: 29.4 %, alarm 27.9 %); high warning at
  ``min(27, limit - 3)`` (both formulas shared with the gateway: ``o2core.oxygen``);
  low-effect warning below 22 %; oxygen-deficient alarm below 19.5 % (OSHA 1910.134);
- concentrator purity: alarm below 82 % (ISO 80601-2-69 lineage, YY 9706.269).

Threshold semantics are the gateway's (gateway/alarms.py builtin rules): a high rule is breached
when ``value > threshold``, a low rule when ``value < threshold``; a value exactly at the
threshold raises neither.

A sensor reading at full scale (the ZE03 reads 0-25 % of sea-level partial pressure) is only a
lower bound: the caller passes ``over_range=True`` and the ``o2_over_range`` warning is raised.
Missing readings -- None, and any value that is not a finite number of sane size -- never clear
an alarm; after ``fault_delay_ms`` of them the ``sensor_fault`` warning is raised. Other flags
the caller sets: ``baro_implausible`` (barometer outside the site's band, ISA used) and
``warming_up`` (a concentrator's purity rules are held after a cold start, ``held=True``).

Times are ``time.ticks_ms()`` values compared with ``ticks_diff`` (wrap-safe); the engine is
driven by the caller's clock so tests advance time without sleeping.
"""

from o2core import oxygen

try:
    from micropython import const
except ImportError:  # CPython (tests): const() is the identity

    def const(x):  # type: ignore[misc]
        return x


_ALARM = const("alarm")
_WARNING = const("warning")
_HIGH = const(1)
_LOW = const(-1)
_LOW_WARN_PCT = const(22.0)
_DEFICIENT_PCT = const(19.5)
_PURITY_ALARM_PCT = const(82.0)
_MAX_EVENTS = const(16)  # state changes kept for publishing; the oldest are dropped (counted)


def ticks_diff(a: int, b: int) -> int:
    # Same contract as time.ticks_diff; tests pass plain ints. The board passes ticks_ms()
    # values through ``Alarms(ticks_diff=time.ticks_diff)``.
    return a - b


class Rule:
    """One threshold: ``direction`` _HIGH (value > threshold) or _LOW (value < threshold)."""

    def __init__(self, name: str, direction: int, threshold: float, severity: str) -> None:
        self.name = name
        self.direction = direction
        self.threshold = threshold
        self.severity = severity
        self.active = False
        self._pending_since = -1  # ticks when the opposite condition began, or -1
        self._pending = False

    def _breached(self, value: float, hysteresis: float) -> bool:
        # Raise at the threshold; clear only beyond the hysteresis band (no chatter).
        if self.direction == _HIGH:
            edge = self.threshold if not self.active else self.threshold - hysteresis
            return value > edge
        edge = self.threshold if not self.active else self.threshold + hysteresis
        return value < edge


class Alarms:
    """A set of rules over one measured value. ``events`` collects state changes as tuples
    ``(rule, severity, "raise" | "clear", value, threshold)``; the caller takes them."""

    def __init__(
        self,
        rules,
        hysteresis: float = 0.3,
        on_delay_ms: int = 0,
        off_delay_ms: int = 5000,
        fault_delay_ms: int = 3000,
        diff=ticks_diff,
    ) -> None:
        self.rules = list(rules)
        self.hysteresis = hysteresis
        self.on_delay_ms = on_delay_ms
        self.off_delay_ms = off_delay_ms
        self.fault_delay_ms = fault_delay_ms
        self._diff = diff
        self.over_range = Rule("o2_over_range", _HIGH, 0.5, _WARNING)
        self.fault = Rule("sensor_fault", _HIGH, 0.5, _WARNING)
        # Flags the caller raises and clears through flag(index): 2 baro_implausible,
        # 3 warming_up (plain indices: no module-level names on the board's tight qstr pool).
        self.flags = (
            self.over_range,
            self.fault,
            Rule("baro_implausible", _HIGH, 0.5, _WARNING),
            Rule("warming_up", _HIGH, 0.5, _WARNING),
        )
        self._missing_since = -1
        self.events: list = []
        self.events_dropped = 0
        self.last_value = None

    def rule(self, name: str):
        for r in self.rules:
            if r.name == name:
                return r
        return None

    def set_threshold(self, name: str, threshold: float) -> bool:
        r = self.rule(name)
        if r is None:
            return False
        r.threshold = threshold
        return True

    def flag(self, index: int, on: bool, value: float, threshold: float, now_ms) -> int:
        """Raise / clear flag ``index`` (2 baro_implausible, 3 warming_up) at once; returns
        the number of new events."""
        before = len(self.events) + self.events_dropped
        r = self.flags[index]
        r.threshold = threshold
        self._step(r, on, value, now_ms, 0, 0)
        return len(self.events) + self.events_dropped - before

    def update(self, value, now_ms, over_range: bool = False, held: bool = False) -> int:
        """Feed one sample (None = no valid reading). Returns the number of new events.

        Anything but a finite number within +-1000 counts as no reading. ``held``: the
        rules are not raised (concentrator warm-up); active ones still clear normally.
        """
        before = len(self.events) + self.events_dropped
        if not isinstance(value, (int, float)) or not -1000 < value < 1000:
            value = None  # NaN fails the comparison too
        if value is None:
            if self._missing_since < 0:
                self._missing_since = now_ms
            missing = self._diff(now_ms, self._missing_since) >= self.fault_delay_ms
            self._step(self.fault, missing, 1.0 if missing else 0.0, now_ms, 0, 0)
            return len(self.events) + self.events_dropped - before
        self._missing_since = -1
        self.last_value = value
        self._step(self.fault, False, 0.0, now_ms, 0, 0)
        self._step(self.over_range, over_range, value, now_ms, self.on_delay_ms, 0)
        for r in self.rules:
            self._step(
                r,
                r._breached(value, self.hysteresis) and not held,
                value,
                now_ms,
                self.on_delay_ms,
                self.off_delay_ms,
            )
        return len(self.events) + self.events_dropped - before

    def _step(self, r: Rule, breached: bool, value: float, now, on_ms: int, off_ms: int):
        if breached == r.active:
            r._pending = False
            return
        if not r._pending:
            r._pending = True
            r._pending_since = now
        delay = on_ms if breached else off_ms
        if self._diff(now, r._pending_since) < delay:
            return
        r._pending = False
        r.active = breached
        if len(self.events) >= _MAX_EVENTS:
            self.events.pop(0)
            self.events_dropped += 1
        what = "raise" if breached else "clear"
        self.events.append((r.name, r.severity, what, value, r.threshold))

    def sounding(self) -> bool:
        """True while any alarm-severity rule is active (drives the buzzer)."""
        for r in self.rules:
            if r.active and r.severity == _ALARM:
                return True
        return False

    def warning(self) -> bool:
        """True while anything is active (drives the warning LED)."""
        for r in self.flags:
            if r.active:
                return True
        for r in self.rules:
            if r.active:
                return True
        return False

    def active_names(self) -> list:
        out = []
        for r in self.rules + list(self.flags):
            if r.active:
                out.append(r.name)
        return out


def room_rules(baro_kpa: object, cfg: dict) -> list:
    """The four room rules at pressure ``baro_kpa`` (config keys ``alarm.*`` override)."""
    high_alarm, high_warn = oxygen.room_thresholds(
        baro_kpa, cfg.get("alarm.o2_high_alarm_pct"), cfg.get("alarm.o2_high_warn_pct")
    )
    return [
        Rule("o2_high", _HIGH, high_alarm, _ALARM),
        Rule("o2_high_warn", _HIGH, high_warn, _WARNING),
        Rule("o2_low_warn", _LOW, cfg.get("alarm.o2_low_warn_pct", _LOW_WARN_PCT), _WARNING),
        Rule("o2_deficient", _LOW, cfg.get("alarm.o2_deficient_pct", _DEFICIENT_PCT), _ALARM),
    ]


def concentrator_rules(cfg: dict) -> list:
    """Purity low alarm (82 %) and an optional warning (``alarm.purity_warn_pct``)."""
    rules = [Rule("purity_low", _LOW, cfg.get("alarm.purity_low_pct", _PURITY_ALARM_PCT), _ALARM)]
    warn = cfg.get("alarm.purity_warn_pct")
    if warn is not None:
        rules.append(Rule("purity_warn", _LOW, warn, _WARNING))
    return rules


def update_room_thresholds(alarms: Alarms, baro_kpa: object, cfg: dict) -> None:
    """Follow the measured pressure (weather moves PB by a few kPa)."""
    high_alarm, high_warn = oxygen.room_thresholds(
        baro_kpa, cfg.get("alarm.o2_high_alarm_pct"), cfg.get("alarm.o2_high_warn_pct")
    )
    alarms.set_threshold("o2_high", high_alarm)
    alarms.set_threshold("o2_high_warn", high_warn)
