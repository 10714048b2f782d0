"""Alarm engine with a fake clock: delays, hysteresis, lifecycle, persistence, kinds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.alarms import AlarmEngine, AlarmError, AlarmEvent, LocalAlarmEngine
from gateway.builtin_rules import effective_rules
from gateway.config import ConfigError, parse_config
from gateway.readings import FieldValue, Reading
from gateway.state_store import StateStore
from gateway.tests.fakes import Clock


def cfg(rules: list[dict[str, Any]] | None = None, builtin: bool = True) -> dict[str, Any]:
    return {
        "site": [{"id": "lhasa", "altitude_m": 3650}],
        "device": [
            {"id": "room-1", "site": "lhasa", "kind": "room", "transport": "mqtt"},
            {"id": "conc-1", "site": "lhasa", "kind": "concentrator", "transport": "mqtt"},
            {"id": "psa-1", "site": "lhasa", "kind": "plant", "transport": "mqtt",
             "interval_s": 5},
        ],
        "alarm": rules or [],
        "alarm_engine": {"builtin": builtin},
    }  # fmt: skip


def engine(
    tmp_path: Path, clock: Clock, data: dict[str, Any], link: Any = None
) -> tuple[AlarmEngine, list[AlarmEvent]]:
    store = StateStore(tmp_path / "alarms.sqlite")
    eng = LocalAlarmEngine(
        parse_config(data), store, clock_ms=clock, link_state=link or (lambda s, d: None)
    )
    events: list[AlarmEvent] = []
    eng.listeners.append(events.append)
    return eng, events


def room(ts: int, o2: float) -> Reading:
    return Reading("room", {"site": "lhasa", "device": "room-1", "room": "1"}, {"o2_pct": o2}, ts)


def feed(eng: AlarmEngine, clock: Clock, values: list[float], step_s: float = 10) -> list[Reading]:
    out: list[Reading] = []
    for v in values:
        out += eng([room(clock.t_ms, v)])
        clock.advance(step_s)
    return out


HIGH = {"id": "o2-high", "field": "o2_pct", "op": ">", "value": 27.0, "hysteresis": 0.5,
        "on_delay_s": 30, "off_delay_s": 20, "severity": "alarm", "device": "room-*"}  # fmt: skip


def states(events: list[AlarmEvent], rule: str) -> list[str]:
    return [e.state for e in events if e.alarm["rule"] == rule]


def test_on_delay_hysteresis_and_off_delay(tmp_path: Path) -> None:
    clock = Clock()
    eng, events = engine(tmp_path, clock, cfg([HIGH], builtin=False))
    # A 20 s excursion is shorter than the 30 s on-delay: nothing.
    feed(eng, clock, [26.0, 27.5, 27.6, 26.9, 26.8])
    assert events == []
    # Held for 30 s: raised on the reading that completes the delay.
    start = clock.t_ms
    out = feed(eng, clock, [27.5, 27.6, 27.7, 27.8, 27.9])
    assert states(events, "o2-high") == ["raise"]
    assert events[0].ts_ms == start + 30_000
    alarm_points = [r for r in out if r.measurement == "alarm"]
    assert len(alarm_points) == 1
    point = alarm_points[0]
    assert point.tags == {
        "site": "lhasa",
        "device": "room-1",
        "rule": "o2-high",
        "severity": "alarm",
    }
    assert point.fields["state"] == "raise" and point.fields["threshold"] == 27.0
    assert point.fields["value"] == pytest.approx(27.8)
    # Below the threshold but inside the hysteresis band (26.5..27): stays raised.
    feed(eng, clock, [26.9, 26.7, 26.6, 26.8, 26.6, 26.7])
    assert states(events, "o2-high") == ["raise"]
    assert eng.active()[0]["state"] == "raised"
    # Below 26.5 for 20 s: cleared.
    feed(eng, clock, [26.4, 26.3, 26.2, 26.1])
    assert states(events, "o2-high") == ["raise", "clear"]
    assert eng.active() == []


def test_delays_complete_on_the_tick_between_readings(tmp_path: Path) -> None:
    clock = Clock()
    eng, events = engine(tmp_path, clock, cfg([HIGH], builtin=False))
    eng([room(clock.t_ms, 28.0)])
    clock.advance(29)
    eng([])
    assert events == []
    clock.advance(1)
    out = eng([])
    assert states(events, "o2-high") == ["raise"]
    assert [r.fields["state"] for r in out] == ["raise"]


def test_a_replayed_old_reading_cannot_complete_a_delay_by_its_age(tmp_path: Path) -> None:
    clock = Clock()
    eng, events = engine(tmp_path, clock, cfg([HIGH], builtin=False))
    # One reading measured an hour ago arrives now (a board's store-and-forward replay).
    eng([room(clock.t_ms - 3_600_000, 28.0)])
    clock.advance(1)
    eng([])
    assert events == [], "one old reading is no evidence that O2 stayed high for 30 s"
    # Held for the on-delay on the gateway's clock with nothing contradicting it: raise.
    clock.advance(29)
    eng([])
    assert states(events, "o2-high") == ["raise"]


def test_a_replay_spanning_the_delay_raises_on_its_own_timeline(tmp_path: Path) -> None:
    clock = Clock()
    eng, events = engine(tmp_path, clock, cfg([HIGH], builtin=False))
    old = clock.t_ms - 3_600_000
    eng([room(old + i * 10_000, 28.0) for i in range(4)])  # high for 30 s, an hour ago
    assert states(events, "o2-high") == ["raise"]


def test_ack_shelve_lifecycle_and_restart(tmp_path: Path) -> None:
    clock = Clock()
    data = cfg([HIGH], builtin=False)
    eng, _events = engine(tmp_path, clock, data)
    with pytest.raises(AlarmError) as err:
        eng.acknowledge("lhasa", "room-1", "o2-high", by="dolma")
    assert err.value.status == 409  # not active
    with pytest.raises(AlarmError) as err:
        eng.acknowledge("lhasa", "room-9", "o2-high")
    assert err.value.status == 404
    feed(eng, clock, [28.0] * 5)
    acked = eng.acknowledge("lhasa", "room-1", "o2-high", by="dolma")
    assert acked["state"] == "acknowledged" and acked["acked_by"] == "dolma"
    with pytest.raises(AlarmError):
        eng.acknowledge("lhasa", "room-1", "o2-high")
    shelved = eng.shelve("lhasa", "room-1", "o2-high", 600, by="dolma", reason="sensor swap")
    assert shelved["shelved"] and shelved["shelved_until_ms"] == clock.t_ms + 600_000
    with pytest.raises(AlarmError) as err:
        eng.shelve("lhasa", "room-1", "o2-high", 10 * 86400)
    assert err.value.status == 400  # ISA-18.2: shelving is time-limited
    # The ack and shelve events go out with the next pipeline pass.
    out = eng([])
    assert [r.fields["state"] for r in out] == ["ack", "shelve"]
    assert out[0].fields["by"] == "dolma"
    eng.close()

    # Restart: the active, acknowledged, shelved alarm comes back as it was.
    eng2, events2 = engine(tmp_path, clock, data)
    (restored,) = eng2.active()
    assert restored["state"] == "acknowledged" and restored["shelved"]
    assert eng2.counts()["active"] == 1 and eng2.counts()["shelved"] == 1
    # The shelf expires on the tick.
    clock.advance(601)
    eng2([])
    assert states(events2, "o2-high") == ["unshelve"]
    # Clearing after the restart needs the off-delay like any other.
    feed(eng2, clock, [25.0] * 4)
    assert states(events2, "o2-high") == ["unshelve", "clear"]
    log = eng2.log(10)
    assert [e["event"] for e in log][:3] == ["clear", "unshelve", "shelve"]
    eng3, _ = engine(tmp_path, clock, data)
    assert eng3.active() == []


def test_builtin_room_limits_follow_the_site_pressure(tmp_path: Path) -> None:
    clock = Clock()
    eng, _all_events = engine(tmp_path, clock, cfg())
    events: list[AlarmEvent] = []
    eng.listeners = [lambda e: events.append(e) if e.alarm["device"] == "room-1" else None]
    feed(eng, clock, [27.5] * 8)  # above warn (26.4) below alarm (27.9) in Lhasa
    assert {e.alarm["rule"] for e in events} == {"room-o2-high-warn"}
    assert events[0].alarm["threshold"] == pytest.approx(26.39, abs=0.01)
    feed(eng, clock, [28.2] * 5)
    assert states(events, "room-o2-high") == ["raise"]
    assert events[-1].alarm["severity"] == "critical"
    feed(eng, clock, [19.0] * 8)
    assert states(events, "room-o2-deficient") == ["raise"]
    assert states(events, "room-o2-high") == ["raise", "clear"]


def test_config_rule_replaces_or_disables_a_builtin(tmp_path: Path) -> None:
    data = cfg([
        {"id": "room-o2-high", "field": "o2_pct", "op": ">", "value": 26.0, "severity": "alarm"},
        {"id": "room-o2-low-effect", "enabled": False},
    ])  # fmt: skip
    rules = {r.id: r for r in effective_rules(parse_config(data))}
    assert rules["room-o2-high"].value == 26.0 and rules["room-o2-high"].source == "config"
    assert "room-o2-low-effect" not in rules
    assert rules["device-offline"].source == "builtin"
    with pytest.raises(ConfigError, match=r"alarm\[0\].*needs value"):
        parse_config(cfg([{"id": "x", "field": "o2_pct"}]))
    with pytest.raises(ConfigError, match="duplicate rule id"):
        parse_config(cfg([HIGH, HIGH]))
    with pytest.raises(ConfigError, match="needs field"):
        parse_config(cfg([{"id": "r", "kind": "rate", "value": 1.0}]))


def test_offline_by_silence_and_by_link_state(tmp_path: Path) -> None:
    clock = Clock()
    links: dict[str, bool | None] = {}
    eng, events = engine(tmp_path, clock, cfg(), link=lambda site, dev: links.get(dev))
    # psa-1 reports every 5 s: silent for more than 3 intervals = offline.
    psa = Reading("concentrator", {"site": "lhasa", "device": "psa-1", "source": "sensor"},
                  {"purity_pct": 93.0, "flow_lpm": 100.0}, clock.t_ms)  # fmt: skip
    eng([psa])
    clock.advance(14)
    eng([psa])
    clock.advance(15)
    eng([])
    assert events == []
    clock.advance(1)
    eng([])
    offline = [e for e in events if e.alarm["rule"] == "device-offline"]
    assert [(e.alarm["device"], e.state) for e in offline] == [("psa-1", "raise")]
    assert offline[0].alarm["value"] == pytest.approx(16.0)
    eng([psa])  # it talks again
    clock.advance(1)
    eng([])
    assert [e.state for e in events if e.alarm["device"] == "psa-1"] == ["raise", "clear"]
    # MQTT last will (or a Modbus poller that lost its device): offline at once.
    links["conc-1"] = False
    clock.advance(1)
    eng([])
    assert any(e.alarm["device"] == "conc-1" and e.state == "raise" for e in events), events


def test_rate_and_stale_rules(tmp_path: Path) -> None:
    clock = Clock()
    rules = [
        {"id": "o2-rising", "kind": "rate", "field": "o2_pct", "op": ">", "value": 0.5,
         "window_s": 60, "severity": "warning"},
        {"id": "o2-stale", "kind": "stale", "field": "o2_pct", "value": 30},
    ]  # fmt: skip
    eng, events = engine(tmp_path, clock, cfg(rules, builtin=False))
    feed(eng, clock, [24.0, 24.05, 24.1, 24.1, 24.15, 24.2, 24.2])  # 0.2 %/min
    assert events == []
    feed(eng, clock, [24.5, 24.9, 25.3, 25.7])  # 2.4 %/min
    assert states(events, "o2-rising") == ["raise"]
    # Stale: the board keeps reporting but without its O2 value.
    for _ in range(4):
        eng([Reading("room", {"site": "lhasa", "device": "room-1"}, {"temp_c": 20.0}, clock.t_ms)])
        clock.advance(10)
    eng([])
    assert states(events, "o2-stale") == ["raise"]
    assert events[-1].alarm["message"] == "room-1: no o2_pct for 40 s"


def test_a_flagged_field_raises_sensor_fault_and_never_silences_the_o2_alarm(
    tmp_path: Path,
) -> None:
    clock = Clock()
    eng, events = engine(tmp_path, clock, cfg())
    tags = {"site": "lhasa", "device": "room-1", "room": "1"}
    bad: dict[str, FieldValue] = {
        "o2_pct": 29.5,
        "rh_pct_raw": 150.0,
        "invalid": "rh_pct:out_of_range",
    }
    for _ in range(5):  # 40 s above the Lhasa high alarm, humidity impossible all along
        eng([Reading("room", tags, dict(bad), clock.t_ms)])
        clock.advance(10)
    raised = {e.alarm["rule"]: e for e in events if e.state == "raise"}
    assert set(raised) >= {"sensor-fault", "room-o2-high"}
    assert "rh_pct:out_of_range" in raised["sensor-fault"].alarm["message"]
    for _ in range(35):  # clean readings for 350 s: past sensor-fault's 300 s off-delay
        eng([Reading("room", tags, {"o2_pct": 25.0, "rh_pct": 30.0}, clock.t_ms)])
        clock.advance(10)
    cleared = [e.alarm["rule"] for e in events if e.state == "clear"]
    assert "sensor-fault" in cleared and "room-o2-high" in cleared


def test_flagged_rules_need_the_flag_field() -> None:
    with pytest.raises(ConfigError, match="flagged"):
        parse_config(cfg([{"id": "f", "kind": "flagged"}]))


@pytest.mark.parametrize(
    ("op", "at_threshold", "past_threshold"),
    [(">", False, True), (">=", True, True), ("<", False, False), ("<=", True, False)],
)
def test_each_operator_decides_the_value_on_the_threshold(
    tmp_path: Path, op: str, at_threshold: bool, past_threshold: bool
) -> None:
    """Strict operators leave the threshold itself alone; inclusive ones raise on it (the
    semantics docs/domain.md and the firmware share: built-ins use > and <)."""
    rule = {"id": "edge", "field": "o2_pct", "op": op, "value": 27.0, "severity": "alarm"}
    for value, expected in ((27.0, at_threshold), (27.1, past_threshold)):
        clock = Clock()
        eng, events = engine(tmp_path / f"{op}-{value}", clock, cfg([rule], builtin=False))
        eng([room(clock.t_ms, value)])
        assert [e.state for e in events] == (["raise"] if expected else []), (op, value)


def test_a_board_clock_ahead_raises_clock_ahead_and_its_status_clears_it(
    tmp_path: Path,
) -> None:
    clock = Clock()
    eng, events = engine(tmp_path, clock, cfg())
    tags = {"site": "lhasa", "device": "room-1", "room": "1"}
    # Stamped 23 h ahead: the decoder stored it at arrival with the skew (docs/contracts.md).
    ahead: dict[str, FieldValue] = {"o2_pct": 25.0, "clock_skew_s": 82_800.0}
    eng([Reading("room", tags, ahead, clock.t_ms)])
    assert [(e.alarm["rule"], e.state) for e in events] == [("clock-ahead", "raise")]
    health = {"site": "lhasa", "device": "room-1"}
    for _ in range(7):  # statuses with a synced clock, for more than the 300 s off-delay
        clock.advance(60)
        eng([Reading("device_health", health, {"clock_skew_s": 0.2, "online": True}, clock.t_ms)])
    assert ("clock-ahead", "clear") in [(e.alarm["rule"], e.state) for e in events]
    # Status points are not readings: a board that only sends its status is silent.
    assert ("device-offline", "raise") in [(e.alarm["rule"], e.state) for e in events]
