"""Alarm operators, hysteresis and timing (gateway/README.md, "Alarms"), with a fake clock:

- strict ``>``/``<`` leave the threshold itself alone, also while a raise is pending;
  without hysteresis every value either raises or clears (no value leaves an alarm stuck);
- readings older than the newest one judged are not judged again (readings, statuses, flags);
- the tick completes an off-delay exactly when it has run out, on the gateway's clock, so one
  old replayed reading cannot clear an alarm by its age;
- the hooks that belong in an alarm event's transaction (notifications) run inside it.

Each test kills a mutant of ``scripts/mutants.py`` that the older tests let live."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.alarms import AlarmEngine, AlarmEvent, LocalAlarmEngine
from gateway.config import parse_config
from gateway.outbox import Outbox
from gateway.readings import FieldValue, Reading
from gateway.rules import back_inside, exceeds
from gateway.state_store import StateStore
from gateway.tests.fakes import Clock

ROOM = {"site": "lhasa", "device": "room-1", "room": "1"}


def engine(
    tmp_path: Path, clock: Clock, *rules: dict[str, Any]
) -> tuple[AlarmEngine, list[tuple[str, str]]]:
    data = {
        "site": [{"id": "lhasa", "altitude_m": 3650}],
        "device": [{"id": "room-1", "site": "lhasa", "kind": "room", "transport": "mqtt"}],
        "alarm": list(rules),
        "alarm_engine": {"builtin": False},
    }
    eng = LocalAlarmEngine(
        parse_config(data), StateStore(tmp_path / "alarms.sqlite"), clock_ms=clock
    )
    events: list[tuple[str, str]] = []
    eng.listeners.append(lambda e: events.append((e.alarm["rule"], e.state)))
    return eng, events


def rule(op: str = ">", **extra: Any) -> dict[str, Any]:
    return {"id": "o2", "field": "o2_pct", "op": op, "value": 27.0, "severity": "alarm"} | extra


def room(ts: int, o2: float, **fields: FieldValue) -> Reading:
    return Reading("room", ROOM, {"o2_pct": o2, **fields}, ts)


# -- operators and hysteresis -------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "below", "on", "above"),
    [(">", False, False, True), (">=", False, True, True),
     ("<", True, False, False), ("<=", True, True, False)],
)  # fmt: skip
def test_operators_and_the_clear_condition_without_hysteresis(
    op: str, below: bool, on: bool, above: bool
) -> None:
    for value, raises in ((26.9, below), (27.0, on), (27.1, above)):
        assert exceeds(op, value, 27.0) is raises, (op, value)
        # No hysteresis: a value that does not raise clears; none leaves an alarm stuck.
        assert back_inside(op, value, 27.0, 0.0) is not raises, (op, value)


@pytest.mark.parametrize(
    ("op", "inside", "edge", "outside"),
    [(">", 26.6, 26.5, 26.4), (">=", 26.6, 26.5, 26.4),
     ("<", 27.4, 27.5, 27.6), ("<=", 27.4, 27.5, 27.6)],
)  # fmt: skip
def test_the_clear_condition_with_hysteresis(
    op: str, inside: float, edge: float, outside: float
) -> None:
    # Inside the band: neither raises nor clears (an active alarm stays); the edge belongs to it.
    for value in (inside, edge):
        assert not back_inside(op, value, 27.0, 0.5) and not exceeds(op, value, 27.0), value
    assert back_inside(op, outside, 27.0, 0.5)
    assert not back_inside(op, 27.0, 27.0, 0.5)  # on the threshold: not clear either


def test_a_pending_strict_rule_is_cancelled_by_a_value_on_the_threshold(tmp_path: Path) -> None:
    clock = Clock()
    eng, events = engine(tmp_path, clock, rule(">", on_delay_s=30))
    eng([room(clock.t_ms, 27.5)])  # pending
    for _ in range(5):  # on the threshold for 50 s: a strict > does not hold there
        clock.advance(10)
        eng([room(clock.t_ms, 27.0)])
    assert events == []


def test_without_hysteresis_a_value_back_on_a_strict_threshold_clears(tmp_path: Path) -> None:
    clock = Clock()
    eng, events = engine(tmp_path, clock, rule(">"))
    eng([room(clock.t_ms, 27.5)])
    clock.advance(10)
    eng([room(clock.t_ms, 27.0)])
    assert events == [("o2", "raise"), ("o2", "clear")]


# -- older readings are not judged again -------------------------------------------------------


def test_an_older_reading_does_not_clear_what_a_newer_one_raised(tmp_path: Path) -> None:
    clock = Clock()
    eng, events = engine(tmp_path, clock, rule(">"))
    eng([room(clock.t_ms, 28.0)])
    eng([room(clock.t_ms - 5_000, 25.0)])  # measured before the raising one: already past
    assert events == [("o2", "raise")]
    eng([room(clock.t_ms + 1_000, 25.0)])
    assert events == [("o2", "raise"), ("o2", "clear")]


def test_an_older_status_does_not_clear_what_a_newer_one_raised(tmp_path: Path) -> None:
    clock = Clock()
    skew = {"id": "skew", "field": "clock_skew_s", "op": ">", "value": 60.0,
            "severity": "warning"}  # fmt: skip
    eng, events = engine(tmp_path, clock, skew)
    health = {"site": "lhasa", "device": "room-1"}
    eng([Reading("device_health", health, {"clock_skew_s": 120.0}, clock.t_ms)])
    eng([Reading("device_health", health, {"clock_skew_s": 0.0}, clock.t_ms - 5_000)])
    assert events == [("skew", "raise")]
    eng([Reading("device_health", health, {"clock_skew_s": 0.0}, clock.t_ms + 1_000)])
    assert events == [("skew", "raise"), ("skew", "clear")]


def test_an_older_reading_without_the_flag_does_not_clear_it(tmp_path: Path) -> None:
    clock = Clock()
    flagged = {"id": "fault", "kind": "flagged", "field": "invalid", "severity": "warning"}
    eng, events = engine(tmp_path, clock, flagged)
    eng([room(clock.t_ms, 25.0, invalid="rh_pct:out_of_range")])
    eng([room(clock.t_ms - 5_000, 25.0)])
    assert events == [("fault", "raise")]
    eng([room(clock.t_ms + 1_000, 25.0)])
    assert events == [("fault", "raise"), ("fault", "clear")]


# -- the tick completes delays on the gateway's clock ----------------------------------------


def test_the_tick_clears_exactly_when_the_off_delay_has_run_out(tmp_path: Path) -> None:
    clock = Clock()
    eng, events = engine(tmp_path, clock, rule(">", off_delay_s=20))
    eng([room(clock.t_ms, 28.0)])
    clock.advance(1)
    eng([room(clock.t_ms, 25.0)])  # the clear condition starts
    clock.advance(19)  # the tick runs at most once a second: the last one before the delay
    eng([])
    assert events == [("o2", "raise")]
    clock.advance(1)
    eng([])
    assert events == [("o2", "raise"), ("o2", "clear")]


def test_one_old_replayed_reading_cannot_complete_an_off_delay_by_its_age(
    tmp_path: Path,
) -> None:
    clock = Clock()
    eng, events = engine(tmp_path, clock, rule(">", on_delay_s=30, off_delay_s=20))
    old = clock.t_ms - 3_600_000
    eng([room(old + i * 10_000, 28.0) for i in range(4)])  # high for 30 s, an hour ago: raised
    assert events == [("o2", "raise")]
    eng([room(old + 40_000, 25.0)])  # then one low reading of that hour arrives now
    clock.advance(1)
    eng([])
    assert events == [("o2", "raise")], "one old reading is no evidence it stayed low for 20 s"
    clock.advance(19)
    eng([])
    assert events == [("o2", "raise"), ("o2", "clear")]


# -- what commits with an alarm event ----------------------------------------------------------


def test_the_event_hooks_run_inside_the_points_transaction(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    store = StateStore.sharing(outbox.db, outbox.lock)
    seen: list[tuple[bool, list[str]]] = []

    def notifications(db: sqlite3.Connection, events: Sequence[Any]) -> None:
        seen.append((db.in_transaction, [e.state for e in events]))

    store.also_write.append(notifications)
    event = AlarmEvent(1, "raise", {"rule": "o2"}, None, "lhasa/room-1/o2", {"active": True})
    outbox.commit([], keep_lines=['alarm state="raise" 1'], also=store.writer([event]))
    assert seen == [(True, ["raise"])]
    assert store.load_states() == {"lhasa/room-1/o2": {"active": True}}
