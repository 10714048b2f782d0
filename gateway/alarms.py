"""Alarm engine: rules from config plus docs/domain.md defaults, ISA-18.2 style lifecycle.

A pipeline stage (``engine(readings) -> readings + alarm events``). Each (rule, site, device)
has one alarm with the lifecycle

    normal --(condition held for on_delay_s)--> raised --(operator)--> acknowledged
    raised/acknowledged --(clear condition held for off_delay_s)--> normal (cleared)

Shelving (operator, time-limited by ``alarm_engine.max_shelve_s``) hides an alarm from
annunciation until it expires or is unshelved; the alarm keeps being evaluated and logged.
The clear condition includes the hysteresis: an alarm raised at ``value > T`` clears only once
the value is below ``T - hysteresis`` (for ``<`` rules: above ``T + hysteresis``).

Time: condition timing (on/off delays, rates) runs on the readings' own timestamps, so a board
replaying its buffer is judged in the order it measured; silence, staleness and shelving run on
the injected gateway clock. Readings older than the newest one already judged for an alarm are
logged but not judged again. Delays also complete on the periodic tick (``engine([])``) when
no reading arrives, timed on the gateway clock from when the gateway first saw the condition:
one reading replayed long after it was measured cannot satisfy a delay by its age alone.

Every transition becomes a point of measurement ``alarm`` returned from the stage; the point
carries the alarm's new lifecycle state, and whoever commits the point to the durable outbox
commits that state in the same transaction (``StateStore.writer``), so after a crash an alarm is
either raised with its point or not raised at all. Listeners (MQTT publisher, the live page) hear
of an event only after that commit (:meth:`AlarmEngine.notify`).
"""

from __future__ import annotations

import logging
import math
import operator
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.baseline import Baseline
from gateway.builtin_rules import effective_rules
from gateway.config import (
    AlarmKind,
    Device,
    DeviceKind,
    GatewayConfig,
    Severity,
)
from gateway.links import LinkState
from gateway.readings import DEVICE_MEASUREMENTS, Reading, wall_ms
from gateway.rules import Rule, back_inside, exceeds
from gateway.state_store import StateStore

log = logging.getLogger(__name__)

# A board's self-report (status) and a Modbus poller's own state: judged by the rules whose
# field they carry (clock skew, poller restarts), but they are not readings: they neither keep
# a device "seen" nor feed the stale and warm-up logic.
HEALTH_MEASUREMENTS = frozenset({"device_health", "modbus_poller"})
PRODUCERS = frozenset({DeviceKind.CONCENTRATOR, DeviceKind.PLANT})
SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ALARM: 2, Severity.CRITICAL: 3}
# A concentrator reaches product purity in about 5 min (3 time constants of the sieve's
# warm-up); purity rules wait this long after a start they saw (ISO 80601-2-69 units
# likewise hold their low-O2 alarm during warm-up).
WARMUP_S = 600.0
TICK_MS = 1000  # time-based checks (silence, delays, shelving) at most once a second
SAVE_INTERVAL_MS = 60_000  # learned baselines to SQLite
_MAX_LAYOUTS = 64  # field layouts a device plan keeps its checks for; then it starts again
# A threshold rule's raise condition (as gateway.rules.exceeds) and, with hysteresis, its clear
# side (as gateway.rules.back_inside: below threshold - hysteresis for the high rules, above
# threshold + hysteresis for the low ones), as one call each.
_RAISES: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}  # fmt: skip


class AlarmError(Exception):
    """An operator action that cannot be done; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# What of an alarm's state is saved and restored (and sent to a standby gateway). Not a class
# attribute of AlarmState: a compiled dataclass (bench/bench_compiled.py) would take it for a field.
PERSISTED = (
    *("site", "device", "rule", "kind", "severity", "field", "active", "acked"),
    *("raised_ms", "acked_ms", "acked_by", "cleared_ms", "shelved_until_ms", "shelved_by"),
    *("shelve_reason", "value", "threshold", "message"),
)


@dataclass
class AlarmState:
    """One alarm (rule x device). Lifecycle fields persist; the rest is evaluation scratch."""

    site: str
    device: str
    rule: str
    kind: str
    severity: str
    field: str | None = None
    active: bool = False
    acked: bool = False
    raised_ms: int | None = None
    acked_ms: int | None = None
    acked_by: str | None = None
    cleared_ms: int | None = None
    shelved_until_ms: int | None = None
    shelved_by: str | None = None
    shelve_reason: str | None = None
    value: float | None = None
    threshold: float | None = None
    message: str = ""
    # scratch (not persisted)
    pending_since_ms: int | None = None  # on the clock of what started it (reading ts or tick)
    clearing_since_ms: int | None = None
    # The gateway clock when the pending/clearing began: the tick completes delays between
    # readings on this clock, so a reading replayed long after it was measured cannot satisfy
    # a delay by its age alone.
    pending_wall_ms: int | None = None
    clearing_wall_ms: int | None = None
    last_ts_ms: int | None = None
    last_raise_cond: bool = False
    last_clear_cond: bool = False

    @property
    def key(self) -> str:
        return f"{self.site}/{self.device}/{self.rule}"

    def persisted(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in PERSISTED}

    def shelved(self, now_ms: int) -> bool:
        return self.shelved_until_ms is not None and now_ms < self.shelved_until_ms

    def public(self, now_ms: int) -> dict[str, Any]:
        """The JSON the HTTP API and the MQTT retained message show for this alarm."""
        state = "normal"
        if self.active:
            state = "acknowledged" if self.acked else "raised"
        return {
            "key": self.key,
            "site": self.site,
            "device": self.device,
            "rule": self.rule,
            "kind": self.kind,
            "severity": self.severity,
            "field": self.field,
            "state": state,
            "active": self.active,
            "acked": self.acked,
            "acked_ms": self.acked_ms,
            "acked_by": self.acked_by,
            "raised_ms": self.raised_ms,
            "cleared_ms": self.cleared_ms,
            "shelved": self.shelved(now_ms),
            "shelved_until_ms": self.shelved_until_ms if self.shelved(now_ms) else None,
            "shelved_by": self.shelved_by if self.shelved(now_ms) else None,
            "shelve_reason": self.shelve_reason if self.shelved(now_ms) else None,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
        }


@dataclass(frozen=True)
class AlarmEvent:
    """One lifecycle transition: ``state`` is raise, ack, clear, shelve or unshelve."""

    ts_ms: int
    state: str
    alarm: dict[str, Any]  # AlarmState.public() after the transition
    by: str | None = None
    key: str = ""  # site/device/rule
    # What the store keeps of the alarm after this transition (None: forget it).
    persisted: dict[str, Any] | None = field(default=None, compare=False)

    def to_reading(self) -> Reading:
        """The ``alarm`` point; it carries the event (``meta["alarm_event"]``) so whoever
        commits the point commits the state change with it (:func:`alarm_events`)."""
        a = self.alarm
        fields: dict[str, float | int | bool | str] = {
            "state": self.state,
            "message": a["message"],
            "active": bool(a["active"]),
            "shelved": bool(a["shelved"]),
        }
        if a["value"] is not None and math.isfinite(a["value"]):
            fields["value"] = float(a["value"])
        if a["threshold"] is not None and math.isfinite(a["threshold"]):
            fields["threshold"] = float(a["threshold"])
        if self.by:
            fields["by"] = self.by
        if self.state == "shelve" and a.get("shelve_reason"):
            fields["reason"] = str(a["shelve_reason"])[:200]  # why it was hidden, on record
        tags = {
            "site": a["site"],
            "device": a["device"],
            "rule": a["rule"],
            "severity": a["severity"],
        }
        return Reading("alarm", tags, fields, self.ts_ms, {"alarm_event": self})

    def to_json(self) -> dict[str, Any]:
        return {"v": 1, "event": self.state, "ts": self.ts_ms, "by": self.by, **self.alarm}


def alarm_events(readings: Sequence[Reading]) -> list[AlarmEvent]:
    """The alarm events behind the ``alarm`` points among ``readings`` (pipeline output)."""
    events = []
    for r in readings:
        if r.measurement == "alarm":
            event = r.meta.get("alarm_event")
            if isinstance(event, AlarmEvent):
                events.append(event)
    return events


Listener = Callable[[AlarmEvent], None]


@dataclass
class _DeviceTrack:
    last_seen_ms: int  # gateway clock, last reading received
    # Gateway clock when each field a ``stale`` rule watches was last received (only those:
    # nothing else reads it, and stamping every field of every reading cost a dict per reading).
    field_seen_ms: dict[str, int] = field(default_factory=dict)
    running_since_ms: float | None = None  # -inf: found running (warm)


@dataclass(slots=True)
class _Check:
    """One rule judged on one device's readings, prepared once: the alarm's state and its
    threshold are looked up on first use and then kept here (both are fixed per rule and
    device), so judging a reading costs no key building or dict lookups."""

    rule: Rule
    field: str
    kind: AlarmKind
    op: str
    hysteresis: float
    only_warm: bool
    state: AlarmState | None = None
    threshold: float | None = None
    # Threshold rules, fixed with the threshold: the raise condition, and the clear side's
    # comparison and bound (None: no hysteresis, the clear condition is "not raised").
    raises: Callable[[float, float], bool] = operator.le
    clears: Callable[[float, float], bool] = operator.gt
    clear_at: float | None = None

    def resolve(self, threshold: float) -> float:
        """Keep this rule's threshold for this device and what follows from it."""
        self.raises = _RAISES.get(self.op, operator.le)
        high = self.op == ">" or self.op == ">="
        self.clears = operator.lt if high else operator.gt
        if self.hysteresis > 0:
            self.clear_at = threshold - self.hysteresis if high else threshold + self.hysteresis
        self.threshold = threshold
        return threshold


@dataclass(slots=True)
class _DevicePlan:
    """Per device: what a reading of it updates and which rules judge it, in rule order."""

    dev: Device
    track: _DeviceTrack
    producer: bool
    stale_fields: tuple[str, ...]
    checks: list[_Check]
    flag_checks: list[_Check]  # kind flagged: judged on every reading, flag present or not
    # Kinds offline and stale (with a field), in rule order: what the tick judges per device.
    timed: list[_Check]
    # Per field layout (the reading's field names in order; a device sends the same fields
    # every time, and most rules' fields are absent): the checks whose field a reading has,
    # and the fields it has that a stale rule watches.
    by_layout: dict[tuple[str, ...], tuple[list[_Check], tuple[str, ...]]] = field(
        default_factory=dict
    )

    def layout(self, names: tuple[str, ...]) -> tuple[list[_Check], tuple[str, ...]]:
        """:attr:`checks` less those whose field is not in ``names``, in rule order, and
        :attr:`stale_fields` in ``names``."""
        if len(self.by_layout) >= _MAX_LAYOUTS:
            self.by_layout.clear()
        present = set(names)
        entry = (
            [c for c in self.checks if c.field in present],
            tuple(name for name in self.stale_fields if name in present),
        )
        self.by_layout[names] = entry
        return entry


class AlarmEngine:
    """``AlarmEngine(config, store, clock_ms=...)``; a pipeline stage. Thread-safe."""

    def __init__(
        self,
        config: GatewayConfig,
        store: StateStore,
        clock_ms: Callable[[], int] = wall_ms,
        link_state: LinkState = lambda site, device: None,
        rules: Sequence[Rule] | None = None,
    ):
        self.config = config
        self.store = store
        self.clock_ms = clock_ms
        self.link_state = link_state
        self.rules = list(effective_rules(config) if rules is None else rules)
        self.listeners: list[Listener] = []
        self.event_counts: dict[str, int] = {}
        self._lock = threading.RLock()
        self._sites = {s.id: s for s in config.site}
        self._devices = {(d.site, d.id): d for d in config.device}
        self._rules_for = {
            k: [r for r in self.rules if r.applies(d)] for k, d in self._devices.items()
        }
        self._rule_by_id = {r.id: r for r in self.rules}
        # Per-device thresholds are fixed by config (site altitude, profile): compute once.
        self._thresholds: dict[tuple[str, str, str], float] = {}
        self._state_cache: dict[tuple[str, str, str], AlarmState] = {}
        self._states: dict[str, AlarmState] = {}
        self._pending: list[AlarmEvent] = []
        self._rate_windows: dict[str, deque[tuple[int, float]]] = {}
        self._flag_text: dict[str, str] = {}  # flagged rules: the latest flag, per alarm
        self._baselines: dict[str, Baseline] = {}
        self._seen_producers: set[tuple[str, str]] = set()
        start = clock_ms()
        self._tracks = {k: _DeviceTrack(last_seen_ms=start) for k in self._devices}
        self._plans = {k: self._plan(k) for k in self._devices}
        self._next_tick_ms = 0
        self._next_save_ms = start + SAVE_INTERVAL_MS
        self._restore()
        builtin = sum(1 for r in self.rules if r.source == "builtin")
        log.info(
            "alarms: %d rules (%d built-in, %d from config) over %d devices",
            len(self.rules),
            builtin,
            len(self.rules) - builtin,
            len(self._devices),
        )

    # ----------------------------------------------------------------- persistence
    def _restore(self) -> None:
        for key, saved in self.store.load_states().items():
            if saved.get("rule") not in self._rule_by_id:
                self.store.save_state(key, None)  # rule removed from config
                continue
            if (saved.get("site"), saved.get("device")) not in self._devices:
                self.store.save_state(key, None)
                continue
            st = AlarmState(**{k: saved[k] for k in PERSISTED if k in saved})
            self._states[key] = st
        active = sum(1 for s in self._states.values() if s.active)
        if active:
            log.info("alarms: %d active alarms restored from the state file", active)
        for r in self.rules:
            if r.kind is not AlarmKind.RESIDUAL:
                continue
            for (site, dev), rules in self._rules_for.items():
                if r in rules:
                    k = f"{site}/{dev}/{r.id}"
                    saved_b = self.store.get_kv(f"baseline:{k}")
                    if saved_b is not None:
                        self._baselines[k] = Baseline.from_json(saved_b, r.baseline)

    def save(self) -> None:
        """Learned state to the store (periodic, and at shutdown)."""
        with self._lock:
            for k, b in self._baselines.items():
                if not b.points:
                    self.store.put_kv(f"baseline:{k}", b.to_json())

    # ----------------------------------------------------------------- the stage
    def __call__(self, readings: list[Reading]) -> list[Reading]:
        with self._lock:
            now = self.clock_ms()
            plans = self._plans
            for r in readings:
                health = r.measurement in HEALTH_MEASUREMENTS
                if not health and r.measurement not in DEVICE_MEASUREMENTS:
                    continue
                tags = r.tags
                plan = plans.get((tags.get("site", ""), tags.get("device", "")))
                if plan is None:
                    continue
                if health:
                    self._on_health(plan, r)
                else:
                    self._on_reading(plan, r, now)
            if now >= self._next_tick_ms:
                self._next_tick_ms = now + TICK_MS
                self._tick(now)
            if now >= self._next_save_ms:
                self._next_save_ms = now + SAVE_INTERVAL_MS
                self.save()
            if not self._pending:
                return readings
            events, self._pending = self._pending, []
        return readings + [e.to_reading() for e in events]

    def _plan(self, key: tuple[str, str]) -> _DevicePlan:
        rules = self._rules_for[key]
        judged = (AlarmKind.THRESHOLD, AlarmKind.RATE, AlarmKind.RESIDUAL)
        stale = (r.field for r in rules if r.kind is AlarmKind.STALE and r.field is not None)
        return _DevicePlan(
            dev=self._devices[key],
            track=self._tracks[key],
            producer=self._devices[key].kind in PRODUCERS,
            stale_fields=tuple(dict.fromkeys(stale)),
            flag_checks=[
                _Check(r, r.field, r.kind, r.op, 0.0, False)
                for r in rules
                if r.kind is AlarmKind.FLAGGED and r.field is not None
            ],
            # A rule without a field never judges a reading (its value would be None).
            checks=[
                _Check(r, r.field, r.kind, r.op, r.hysteresis, r.only_warm)
                for r in rules
                if r.kind in judged and r.field is not None
            ],
            timed=[
                _Check(r, r.field or "", r.kind, r.op, 0.0, False)
                for r in rules
                if r.kind is AlarmKind.OFFLINE
                or (r.kind is AlarmKind.STALE and r.field is not None)
            ],
        )

    def _state(self, rule: Rule, dev: Device) -> AlarmState:
        ckey = (dev.site, dev.id, rule.id)
        st = self._state_cache.get(ckey)
        if st is not None:
            return st
        key = f"{dev.site}/{dev.id}/{rule.id}"
        st = self._states.get(key)
        if st is None:
            st = AlarmState(dev.site, dev.id, rule.id, rule.kind.value, rule.severity.value)
            st.field = rule.field
            self._states[key] = st
        self._state_cache[ckey] = st
        return st

    def _threshold(self, rule: Rule, dev: Device) -> float:
        key = (dev.site, dev.id, rule.id)
        value = self._thresholds.get(key)
        if value is None:
            value = self._thresholds[key] = rule.threshold(dev, self._sites[dev.site])
        return value

    def _on_reading(self, plan: _DevicePlan, r: Reading, now: int) -> None:
        dev, track, fields, ts = plan.dev, plan.track, r.fields, r.ts_ms
        track.last_seen_ms = now
        names = tuple(fields)
        layout = plan.by_layout.get(names)
        if layout is None:
            layout = plan.layout(names)
        checks, stale = layout
        for name in stale:
            track.field_seen_ms[name] = now
        if plan.producer:
            flow = fields.get("flow_lpm")
            running = fields.get("state") is not False and (
                not isinstance(flow, int | float) or flow > 0.0
            )
            if not running:
                track.running_since_ms = None
            elif track.running_since_ms is None:
                # First sight of a running unit: it has long finished its warm-up.
                seen_before = (dev.site, dev.id) in self._seen_producers
                track.running_since_ms = ts if seen_before else -math.inf
            self._seen_producers.add((dev.site, dev.id))
        warm = track.running_since_ms is not None and (
            ts - track.running_since_ms >= WARMUP_S * 1000
        )
        for check in plan.flag_checks:
            flag = fields.get(check.field)
            st = check.state
            if (
                st is not None
                and not st.active
                and (flag is None or flag is False or flag == "")
                and (st.last_ts_ms is None or ts >= st.last_ts_ms)
            ):
                # Quiet and no flag (nearly every reading): what _judge_flag and _judge do
                # for a reading without the flag, without the calls.
                st.last_ts_ms = ts
                st.last_raise_cond, st.last_clear_cond = False, True
                st.clearing_since_ms = st.pending_since_ms = None
                continue
            self._judge_flag(check, dev, flag, ts)
        for check in checks:  # those whose field the reading has
            value = fields.get(check.field)
            if value is None:
                continue
            if value.__class__ is not float and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                continue
            st = check.state
            if st is None:
                st = check.state = self._state(check.rule, dev)
            if st.last_ts_ms is not None and ts < st.last_ts_ms:
                continue  # an older replayed reading: already past it
            st.last_ts_ms = ts
            rule = check.rule
            if check.only_warm and not warm:
                if not st.active:
                    st.pending_since_ms = None
                    continue
                self._judge(rule, st, False, True, st.value, st.threshold, ts)
                continue
            kind = check.kind
            if kind is AlarmKind.THRESHOLD:
                threshold = check.threshold
                if threshold is None:
                    threshold = check.resolve(self._threshold(rule, dev))
                v = value if value.__class__ is float else float(value)
                if not st.active and st.pending_since_ms is None and not check.raises(v, threshold):
                    # Quiet, nothing pending, the raise condition does not hold (nearly every
                    # reading): what _judge_value and _judge would do, without the calls.
                    st.last_raise_cond = False
                    clear_at = check.clear_at
                    st.last_clear_cond = clear_at is None or check.clears(v, clear_at)
                    st.clearing_since_ms = None
                    continue
                self._judge_value(rule, st, v, threshold, ts)
            elif kind is AlarmKind.RATE:
                rate = self._rate(st.key, rule, ts, float(value))
                if rate is not None:
                    self._judge_value(rule, st, rate, self._threshold(rule, dev), ts)
            elif kind is AlarmKind.RESIDUAL:
                flow = fields.get(rule.flow_field)
                if isinstance(flow, bool) or not isinstance(flow, int | float):
                    continue
                b = self._baselines.setdefault(st.key, Baseline(points=rule.baseline))
                expected = b.predict(float(flow))
                b.learn(float(flow), float(value), ts, rule.learn_s)
                if expected is not None:
                    residual = float(value) - expected
                    self._judge_value(rule, st, residual, self._threshold(rule, dev), ts)

    def _on_health(self, plan: _DevicePlan, r: Reading) -> None:
        """Threshold rules on the fields a status carries (e.g. ``clock_skew_s``)."""
        for check in plan.checks:
            value = r.fields.get(check.field)
            if check.kind is not AlarmKind.THRESHOLD or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            st = check.state
            if st is None:
                st = check.state = self._state(check.rule, plan.dev)
            if st.last_ts_ms is not None and r.ts_ms < st.last_ts_ms:
                continue
            st.last_ts_ms = r.ts_ms
            threshold = self._threshold(check.rule, plan.dev)
            self._judge_value(check.rule, st, float(value), threshold, r.ts_ms)

    def _judge_flag(self, check: _Check, dev: Device, flag: object, ts: int) -> None:
        """A ``flagged`` rule: raised while the readings carry the flag, cleared by readings
        without it; the flag's text (e.g. ``rh_pct:out_of_range``) goes into the message."""
        st = check.state
        if st is None:
            st = check.state = self._state(check.rule, dev)
        if st.last_ts_ms is not None and ts < st.last_ts_ms:
            return
        st.last_ts_ms = ts
        flagged = flag is not None and flag is not False and flag != ""
        if flagged:
            self._flag_text[st.key] = str(flag)[:200]
        self._judge(check.rule, st, flagged, not flagged, None, None, ts)

    def _rate(self, key: str, rule: Rule, ts_ms: int, value: float) -> float | None:
        """Change per minute over the rule's window (None until half a window is seen)."""
        window = self._rate_windows.setdefault(key, deque())
        window.append((ts_ms, value))
        while len(window) > 2 and ts_ms - window[1][0] >= rule.window_s * 1000:
            window.popleft()
        t0, v0 = window[0]
        span_ms = ts_ms - t0
        if span_ms < rule.window_s * 500:
            return None
        return (value - v0) / (span_ms / 60_000.0)

    def _judge_value(
        self, rule: Rule, st: AlarmState, value: float, threshold: float, t_ms: int
    ) -> None:
        raise_cond = exceeds(rule.op, value, threshold)
        clear_cond = back_inside(rule.op, value, threshold, rule.hysteresis)
        self._judge(rule, st, raise_cond, clear_cond, value, threshold, t_ms)

    def _judge(
        self,
        rule: Rule,
        st: AlarmState,
        raise_cond: bool,
        clear_cond: bool,
        value: float | None,
        threshold: float | None,
        t_ms: int,
    ) -> None:
        st.last_raise_cond, st.last_clear_cond = raise_cond, clear_cond
        if not st.active:
            st.clearing_since_ms = None
            if not raise_cond:
                st.pending_since_ms = None
                return
            if st.pending_since_ms is None:
                st.pending_since_ms = t_ms
                st.pending_wall_ms = self.clock_ms()
            st.value, st.threshold = value, threshold
            if t_ms - st.pending_since_ms >= rule.on_delay_s * 1000:
                self._raise(rule, st, t_ms)
            return
        # Active: the clear side mirrors the raise side above (clear condition, off-delay).
        st.pending_since_ms = None
        if value is not None:
            st.value = value
        if not clear_cond:
            st.clearing_since_ms = None
            return
        if st.clearing_since_ms is None:
            st.clearing_since_ms = t_ms
            st.clearing_wall_ms = self.clock_ms()
        if t_ms - st.clearing_since_ms >= rule.off_delay_s * 1000:
            self._clear(rule, st, t_ms)

    # ----------------------------------------------------------------- time-based checks
    def _tick(self, now: int) -> None:
        """Once a second: offline and stale judged per device, then the delays that ran out
        between readings and the shelves that ended. Walks only the timed rules of each
        device (from its plan) and, of all alarm states, only those with something pending,
        clearing or shelved: at 10,000 boards the whole walk took a quarter of a core, under
        the engine's lock."""
        link_state = self.link_state
        for (site_id, dev_id), plan in self._plans.items():
            dev, track = plan.dev, plan.track
            for check in plan.timed:
                rule = check.rule
                st = check.state
                if check.kind is AlarmKind.OFFLINE:
                    if st is None:
                        st = check.state = self._state(rule, dev)
                    silence_s = (now - track.last_seen_ms) / 1000.0
                    limit_s = rule.silence_intervals * dev.interval_s
                    link = link_state(site_id, dev_id)
                    offline = link is False or silence_s > limit_s
                    st.field = None
                    if not offline and not st.active:
                        # Reporting and quiet (nearly every device, every second): what
                        # _judge does for it, without the call.
                        st.last_raise_cond, st.last_clear_cond = False, True
                        st.clearing_since_ms = st.pending_since_ms = None
                        continue
                    self._judge(rule, st, offline, not offline, silence_s, limit_s, now)
                else:
                    seen = track.field_seen_ms.get(check.field)
                    if seen is None:
                        continue  # this device never had the field: nothing to go stale
                    if st is None:
                        st = check.state = self._state(rule, dev)
                    stale_s = check.threshold
                    if stale_s is None:
                        stale_s = check.threshold = self._threshold(rule, dev)
                    age_s = (now - seen) / 1000.0
                    reporting = (now - track.last_seen_ms) / 1000.0 <= stale_s
                    stale = age_s > stale_s and reporting
                    if not stale and not st.active:  # as for offline above
                        st.last_raise_cond, st.last_clear_cond = False, True
                        st.clearing_since_ms = st.pending_since_ms = None
                        continue
                    self._judge(rule, st, stale, not stale, age_s, stale_s, now)
        for st in list(self._states.values()):
            if (
                st.pending_since_ms is None
                and st.clearing_since_ms is None
                and st.shelved_until_ms is None
            ):
                continue  # nothing that time alone completes (the checks below need one)
            st_rule = self._rule_by_id.get(st.rule)
            if st_rule is None:
                continue
            if st_rule.kind in (AlarmKind.THRESHOLD, AlarmKind.RATE, AlarmKind.RESIDUAL):
                # Complete delays that run out between readings.
                on_ms, off_ms = st_rule.on_delay_s * 1000, st_rule.off_delay_s * 1000
                pending = None if st.pending_since_ms is None else st.pending_wall_ms
                clearing = None if st.clearing_since_ms is None else st.clearing_wall_ms
                if not st.active and pending is not None and st.last_raise_cond:
                    if now - pending >= on_ms:
                        self._raise(st_rule, st, now)
                elif (
                    st.active
                    and clearing is not None
                    and st.last_clear_cond
                    and now - clearing >= off_ms
                ):
                    self._clear(st_rule, st, now)
            if st.shelved_until_ms is not None and now >= st.shelved_until_ms:
                by = st.shelved_by
                st.shelved_until_ms = st.shelved_by = st.shelve_reason = None
                self._emit(st, "unshelve", now, by=by)

    # ----------------------------------------------------------------- transitions
    def _message(self, rule: Rule, st: AlarmState) -> str:
        values = {
            "site": st.site,
            "device": st.device,
            "rule": st.rule,
            "field": st.field or "",
            "op": rule.op,
            "value": st.value if st.value is not None else math.nan,
            "threshold": st.threshold if st.threshold is not None else math.nan,
        }
        if rule.message:
            try:
                return rule.message.format(**values)
            except (KeyError, ValueError, IndexError):
                return rule.message
        if rule.kind is AlarmKind.OFFLINE:
            return f"{st.device}: offline (silent {values['value']:.0f} s)"
        if rule.kind is AlarmKind.STALE:
            return f"{st.device}: no {st.field} for {values['value']:.0f} s"
        if rule.kind is AlarmKind.FLAGGED:
            return f"{st.device}: {rule.id}: {self._flag_text.get(st.key, st.field or '')}"
        what = {AlarmKind.RATE: f"{st.field} change/min", AlarmKind.RESIDUAL: "purity residual"}
        name = what.get(rule.kind, st.field or "")
        return (
            f"{st.device}: {name} {values['value']:.2f} {rule.op} {values['threshold']:.2f} "
            f"({rule.id})"
        )

    def _raise(self, rule: Rule, st: AlarmState, t_ms: int) -> None:
        st.active, st.acked = True, False
        st.acked_ms = st.acked_by = None
        st.raised_ms, st.cleared_ms = t_ms, None
        st.pending_since_ms = None
        st.message = self._message(rule, st)
        log.warning("alarm raised: %s [%s] %s", st.key, st.severity, st.message)
        self._emit(st, "raise", t_ms)

    def _clear(self, rule: Rule, st: AlarmState, t_ms: int) -> None:
        st.active = st.acked = False
        st.cleared_ms = t_ms
        st.clearing_since_ms = None
        log.info("alarm cleared: %s", st.key)
        self._emit(st, "clear", t_ms)

    def _emit(self, st: AlarmState, state: str, t_ms: int, by: str | None = None) -> None:
        """Queue a transition: it leaves with the next pipeline output as an ``alarm`` point
        carrying the state to store; nothing is written or announced before that commits."""
        keep = st.active or st.shelved_until_ms is not None
        persisted = st.persisted() if keep else None
        event = AlarmEvent(t_ms, state, st.public(self.clock_ms()), by, st.key, persisted)
        self.event_counts[state] = self.event_counts.get(state, 0) + 1
        self._pending.append(event)

    def committed_locally(self, out: list[Reading]) -> list[Reading]:
        """Store and announce the events in pipeline output ``out`` without an outbox (an
        engine on its own: tools and tests); the gateway commits them with their points."""
        events = alarm_events(out)
        self.store.write(events)
        self.notify(events)
        return out

    def notify(self, events: Sequence[AlarmEvent]) -> None:
        """Announce events whose points and state are committed (MQTT, the live page)."""
        for event in events:
            for listener in self.listeners:
                try:
                    listener(event)
                except Exception:
                    log.exception("alarm listener failed for %s", event.key)

    # ----------------------------------------------------------------- operator actions
    def _lookup(self, site: str, device: str, rule_id: str) -> tuple[Rule, AlarmState]:
        dev = self._devices.get((site, device))
        rule = self._rule_by_id.get(rule_id)
        if dev is None or rule is None or not rule.applies(dev):
            raise AlarmError(404, f"no alarm {site}/{device}/{rule_id}")
        return rule, self._state(rule, dev)

    def acknowledge(self, site: str, device: str, rule_id: str, by: str = "") -> dict[str, Any]:
        """Acknowledge an active alarm; raises :class:`AlarmError` (404 unknown, 409 not
        active or already acknowledged). Returns the alarm's public JSON."""
        with self._lock:
            _, st = self._lookup(site, device, rule_id)
            if not isinstance(by, str) or not by.strip():  # every action names who did it
                raise AlarmError(400, "by: the acting operator's name is required")
            if not st.active:
                raise AlarmError(409, f"alarm {st.key} is not active")
            if st.acked:
                raise AlarmError(409, f"alarm {st.key} is already acknowledged")
            now = self.clock_ms()
            st.acked, st.acked_ms, st.acked_by = True, now, by or None
            self._emit(st, "ack", now, by=by or None)
            return st.public(now)

    def shelve(
        self,
        site: str,
        device: str,
        rule_id: str,
        duration_s: float,
        by: str = "",
        reason: str = "",
    ) -> dict[str, Any]:
        """Shelve an active alarm for ``duration_s``, at most ``[alarm_engine] shelve_max_s``
        of its severity (and ``max_shelve_s``), with a reason and the operator's name (ISA-18.2:
        shelving is time-limited, authorised and recorded). Raises :class:`AlarmError` 400
        (duration, reason, name), 404 unknown, 409 not active."""
        with self._lock:
            _, st = self._lookup(site, device, rule_id)
            if not isinstance(by, str) or not by.strip():  # every action names who did it
                raise AlarmError(400, "by: the acting operator's name is required")
            cfg = self.config.alarm_engine
            max_s = min(cfg.max_shelve_s, cfg.shelve_max_s.get(Severity(st.severity), math.inf))
            if isinstance(duration_s, bool) or not isinstance(duration_s, int | float):
                raise AlarmError(400, "duration_s: expected a number of seconds")
            if not 0 < duration_s <= max_s:
                raise AlarmError(
                    400,
                    f"duration_s: a {st.severity} alarm may be shelved for at most {max_s:g} s "
                    f"(got {duration_s:g})",
                )
            if not isinstance(reason, str) or not reason.strip():
                raise AlarmError(400, "reason: say why the alarm is shelved (non-empty text)")
            if not st.active:
                raise AlarmError(409, f"alarm {st.key} is not active: only active alarms shelve")
            reason = reason.strip()
            now = self.clock_ms()
            st.shelved_until_ms = now + int(duration_s * 1000)
            st.shelved_by, st.shelve_reason = by or None, reason or None
            self._emit(st, "shelve", now, by=by or None)
            return st.public(now)

    def unshelve(self, site: str, device: str, rule_id: str, by: str = "") -> dict[str, Any]:
        with self._lock:
            _, st = self._lookup(site, device, rule_id)
            if not isinstance(by, str) or not by.strip():  # every action names who did it
                raise AlarmError(400, "by: the acting operator's name is required")
            now = self.clock_ms()
            if not st.shelved(now):
                raise AlarmError(409, f"alarm {st.key} is not shelved")
            st.shelved_until_ms = st.shelved_by = st.shelve_reason = None
            self._emit(st, "unshelve", now, by=by or None)
            return st.public(now)

    # ----------------------------------------------------------------- views
    def active(self) -> list[dict[str, Any]]:
        """Active alarms, most severe first, then oldest first."""
        with self._lock:
            now = self.clock_ms()
            rows = [st for st in self._states.values() if st.active]
            rows.sort(key=lambda s: (-SEVERITY_RANK[Severity(s.severity)], s.raised_ms or 0))
            return [s.public(now) for s in rows]

    def shelved(self) -> list[dict[str, Any]]:
        with self._lock:
            now = self.clock_ms()
            return [s.public(now) for s in self._states.values() if s.shelved(now)]

    def counts(self) -> dict[str, Any]:
        with self._lock:
            now = self.clock_ms()
            by_sev = {s.value: 0 for s in Severity}
            unacked = shelved = 0
            for st in self._states.values():
                if st.active:
                    by_sev[st.severity] += 1
                    unacked += not st.acked
                shelved += st.shelved(now)
            return {
                "active": sum(by_sev.values()),
                "unacked": unacked,
                "shelved": shelved,
                "by_severity": by_sev,
                "events": dict(self.event_counts),
            }

    def log(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.store.recent_log(limit)

    def rules_json(self) -> list[dict[str, Any]]:
        return [r.describe() for r in self.rules]

    def close(self) -> None:
        self.save()


class LocalAlarmEngine(AlarmEngine):
    """An engine without an outbox (simulations, tools, tests): each call's events are stored
    in its own store and announced at once, as the gateway does after its commit."""

    def __call__(self, readings: list[Reading]) -> list[Reading]:
        return self.committed_locally(super().__call__(readings))
