"""Alarm acceptance on the simulators' physics, in process, in simulated time.

- Ventilation failure: an enriched Lhasa room's O2 climbs towards the fire-hazard limit; the
  room-high alarm rises after its on-delay, and after the ventilation is repaired it clears only
  once the O2 is below the threshold minus the hysteresis for the off-delay.
- Degraded sieve: a concentrator whose sieve ages loses purity at the same flow; the purity
  residual against its own learned purity-flow curve alarms, while big flow swings (over-flow
  use, not a fault) never do, and the hard purity limit stays quiet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import oxygen
from gateway.alarms import AlarmEngine, AlarmEvent
from gateway.config import parse_config
from gateway.enrich import Enricher
from gateway.pipeline import Pipeline, Stage
from gateway.readings import FieldValue, Reading
from gateway.state_store import StateStore
from simulators.physics.atmosphere import Weather
from simulators.physics.concentrator import ConcentratorModel, ConcentratorParams
from simulators.physics.room import RoomModel, RoomParams

T0_MS = 1_750_000_000_000


class SimClock:
    def __init__(self) -> None:
        self.t_s = 0.0

    def __call__(self) -> int:
        return T0_MS + int(self.t_s * 1000)


CONFIG: dict[str, Any] = {
    "site": [{"id": "lhasa-hotel", "altitude_m": 3650}],
    "device": [
        {"id": "room-101", "site": "lhasa-hotel", "kind": "room", "transport": "mqtt",
         "interval_s": 60},
        {"id": "conc-1", "site": "lhasa-hotel", "kind": "concentrator", "transport": "mqtt",
         "interval_s": 300},
    ],
}  # fmt: skip


def build(tmp_path: Path, clock: SimClock) -> tuple[Pipeline, AlarmEngine, list[AlarmEvent]]:
    config = parse_config(CONFIG)
    store = StateStore(tmp_path / "alarms.sqlite")
    engine = AlarmEngine(config, store, clock_ms=clock)
    events: list[AlarmEvent] = []
    engine.listeners.append(events.append)
    stages: list[Stage] = [
        Enricher(config, store, clock_ms=clock),
        engine,
        engine.committed_locally,
    ]
    return Pipeline(stages), engine, events


def of(events: list[AlarmEvent], rule: str) -> list[AlarmEvent]:
    return [e for e in events if e.alarm["rule"] == rule]


def test_ventilation_failure_raises_and_recovery_clears_with_hysteresis(tmp_path: Path) -> None:
    clock = SimClock()
    pipeline, engine, events = build(tmp_path, clock)
    # A hotel room ventilated to GB 50736 (2 air changes an hour) on a small plant at 3650 m:
    # 37 normal L/min at two thirds of its derated capacity hold it near 25 %.
    supply = ConcentratorModel(
        ConcentratorParams(rated_flow_lpm=86.0),
        seed=1,
        flow_lpm=37.0,
        ambient_kpa=oxygen.isa_pressure_kpa(3650),
    )
    model = RoomModel(RoomParams(), Weather(3650, seed=2), supply, seed=3)
    rule = next(r for r in engine.rules if r.id == "room-o2-high")
    threshold = oxygen.room_high_alarm_pct(oxygen.isa_pressure_kpa(3650))
    assert threshold == pytest.approx(27.9, abs=0.05)
    assert 24.0 < model.o2_pct < 26.0  # the room starts in its target band

    samples: list[tuple[int, float]] = []
    stored: list[Reading] = []
    step_s = 60.0
    for minute in range(12 * 60):
        if minute == 60:
            model.ventilation_failed = True
        if minute == 7 * 60:
            model.ventilation_failed = False  # repaired
        model.advance(step_s)
        clock.t_s += step_s
        values = model.reading()
        ts = clock()
        samples.append((ts, float(values["o2_pct"])))
        tags = {"site": "lhasa-hotel", "device": "room-101", "room": "101"}
        stored += pipeline.process([Reading("room", tags, dict(values), ts)])

    high = of(events, "room-o2-high")
    assert [e.state for e in high] == ["raise", "clear"], [e.alarm for e in high]
    raise_ts, clear_ts = high[0].ts_ms, high[1].ts_ms
    # The ventilation failed at 1 h: O2 climbs for hours; raised while it is failed.
    assert T0_MS + 3600_000 < raise_ts < T0_MS + 7 * 3600_000
    # On-delay: every sample of the last on_delay_s before the raise was above the threshold,
    # and the raise came no earlier than on_delay_s after the run of exceedances began.
    run_start = raise_ts
    for ts, v in reversed([s for s in samples if s[0] <= raise_ts]):
        if v <= threshold:
            break
        run_start = ts
    assert raise_ts - run_start >= rule.on_delay_s * 1000
    assert all(
        v > threshold for ts, v in samples if raise_ts - rule.on_delay_s * 1000 <= ts <= raise_ts
    )
    # Hysteresis: after the repair the O2 went below the threshold while the alarm stayed up...
    between = [v for ts, v in samples if raise_ts < ts < clear_ts]
    assert any(threshold - rule.hysteresis <= v < threshold for v in between)
    # ...and it cleared only after off_delay_s below threshold - hysteresis.
    last_window = [v for ts, v in samples if clear_ts - rule.off_delay_s * 1000 <= ts <= clear_ts]
    assert last_window and all(v < threshold - rule.hysteresis for v in last_window)
    assert clear_ts > T0_MS + 7 * 3600_000
    # The warning level came first and went last.
    warn = of(events, "room-o2-high-warn")
    assert [e.state for e in warn] == ["raise", "clear"]
    assert warn[0].ts_ms < raise_ts and warn[1].ts_ms > clear_ts
    # Every transition is also a point for InfluxDB, next to the enriched room readings.
    alarm_points = [
        r for r in stored if r.measurement == "alarm" and r.tags["device"] == "room-101"
    ]
    assert [(p.tags["rule"], p.fields["state"]) for p in alarm_points] == [
        ("room-o2-high-warn", "raise"),
        ("room-o2-high", "raise"),
        ("room-o2-high", "clear"),
        ("room-o2-high-warn", "clear"),
    ]
    rooms = [r for r in stored if r.measurement == "room"]
    assert all("eq_alt_m" in r.fields for r in rooms)
    assert min(float(r.fields["eq_alt_m"]) for r in rooms) < 1900  # enriched well below 3650


def test_degraded_sieve_raises_the_purity_residual(tmp_path: Path) -> None:
    clock = SimClock()
    pipeline, engine, events = build(tmp_path, clock)
    params = ConcentratorParams(rated_flow_lpm=5.0, degradation_pct_per_day=0.0)
    unit = ConcentratorModel(params, seed=5)
    step_s = 300.0
    flows = [2.0, 3.0, 4.0, 5.0, 6.0, 4.5, 3.5, 2.5]  # over-flow use is normal, not a fault

    def run(days: float) -> None:
        for _ in range(int(days * 86400 / step_s)):
            unit.flow_setpoint_lpm = flows[int(clock.t_s // 3600) % len(flows)]
            unit.advance(step_s)
            clock.t_s += step_s
            tags = {"site": "lhasa-hotel", "device": "conc-1", "source": "sensor"}
            v = unit.values()
            fields: dict[str, FieldValue] = {k: v[k] for k in ("purity_pct", "flow_lpm", "state")}
            pipeline.process([Reading("concentrator", tags, fields, clock())])

    run(3.0)  # the first day teaches the baseline; two more days at swinging flows: quiet
    assert of(events, "purity-residual") == []
    assert of(events, "purity-low") == []
    # The sieve starts to wet: -1 % purity a day at every flow (docs/domain.md, How equipment
    # degrades).
    aged_from = unit.sim_time_s
    params.degradation_pct_per_day = 1.0
    unit.sim_time_s = 0.0  # the model ages from sim_time_s = 0: restart its ageing clock
    run(6.0)
    residual = of(events, "purity-residual")
    assert [e.state for e in residual] == ["raise"]
    raised_after_days = (residual[0].ts_ms - T0_MS) / 86400_000 - aged_from / 86400
    assert 3.0 < raised_after_days < 4.5  # -3 % plus the 30 min on-delay, noise aside
    assert residual[0].alarm["value"] < -3.0
    # The residual, judged against flow, warns more than a day before the hard limit: at
    # 6 L/min (over-flow) the worn sieve eventually drops below 82 % too.
    low = of(events, "purity-low")
    assert not low or low[0].ts_ms - residual[0].ts_ms > 86400_000
    # Sieve replaced: purity back on its curve, the residual clears after its off-delay.
    params.degradation_pct_per_day = 0.0
    run(0.5)
    assert [e.state for e in of(events, "purity-residual")] == ["raise", "clear"]
    assert [a["rule"] for a in engine.active() if a["device"] == "conc-1"] == []
