"""Days of supply left (gateway/supply_forecast.py) and the supply rule table: pure, fake time."""

from __future__ import annotations

import math
import subprocess
from typing import Any

import pytest

from gateway.builtin_rules import effective_rules
from gateway.config import parse_config
from gateway.readings import Reading
from gateway.supply_forecast import DAYS_LEFT_MAX, MAX_SAMPLES, SupplyForecast, days_left
from o2base.procs import o2chain_argv

HOUR = 3600.0
T0_MS = 1_700_000_000_000


def config(*devices: tuple[str, str, str]) -> Any:
    return parse_config(
        {
            "site": [{"id": "lhasa", "altitude_m": 3650}],
            "device": [
                {"id": d, "site": "lhasa", "kind": kind, "transport": "modbus",
                 "url": "tcp://127.0.0.1:5020", "unit": 1, "profile": profile}
                for d, kind, profile in devices
            ],
        }
    )  # fmt: skip


def reading(dev: str, t_s: float, measurement: str = "supply", **fields: Any) -> Reading:
    return Reading(
        measurement, {"site": "lhasa", "device": dev}, dict(fields), T0_MS + int(t_s * 1000)
    )


def test_days_left_is_stock_over_the_least_squares_rate() -> None:
    # 50 % falling 10 % a day: 5 days.
    samples = [(h * HOUR, 50.0 + 10.0 * (6 - h) / 24) for h in range(7)]
    assert days_left(samples) == pytest.approx(5.0)
    assert days_left([(0.0, 50.0), (HOUR, 50.0)]) == DAYS_LEFT_MAX  # flat: not running out
    assert days_left([(0.0, 40.0), (HOUR, 41.0)]) == DAYS_LEFT_MAX  # rising
    assert days_left([(0.0, 50.0)]) is None
    assert days_left([(5.0, 50.0), (5.0, 40.0)]) is None  # no time span
    assert days_left([(0.0, 0.1), (HOUR, 0.0)]) == 0.0
    assert days_left([(0.0, 100.0), (HOUR, 99.9999)]) == DAYS_LEFT_MAX  # capped


def test_stage_needs_history_restarts_after_a_refill_and_ignores_others() -> None:
    cfg = config(("lox", "supply", "lox-tank"), ("conc", "concentrator", "medical-concentrator"))
    stage = SupplyForecast(cfg, window_s=6 * HOUR, min_span_s=HOUR)
    level = 60.0
    for minute in range(0, 121, 10):  # 2 h at 12 %/day
        t = minute * 60.0
        r = reading("lox", t, lox_level_pct=level - 0.5 * t / HOUR)
        [out] = stage([r])
        if t < HOUR:
            assert "days_left" not in out.fields
        else:
            assert out.fields["days_left"] == pytest.approx(
                (level - 0.5 * t / HOUR) / 12.0, abs=1e-3
            )
    # A tanker delivery: +30 %. The old slope is dropped: no claim until an hour has passed.
    [out] = stage([reading("lox", 3 * HOUR, lox_level_pct=89.0)])
    assert "days_left" not in out.fields
    [out] = stage([reading("lox", 4 * HOUR, lox_level_pct=88.5)])
    assert out.fields["days_left"] == pytest.approx(88.5 / 12.0, abs=1e-3)
    # A replayed (older) reading changes nothing and still gets the present forecast.
    [out] = stage([reading("lox", 3.5 * HOUR, lox_level_pct=10.0)])
    assert out.fields["days_left"] == pytest.approx(88.5 / 12.0, abs=1e-3)
    # Other measurements, other kinds and unknown devices are left alone.
    others = [
        reading("conc", 5 * HOUR, measurement="concentrator", level_pct=50.0),
        reading("ghost", 5 * HOUR, lox_level_pct=50.0),
        reading("lox", 5 * HOUR, measurement="device_health", lox_level_pct=1.0),
    ]
    assert all("days_left" not in r.fields for r in stage(others))


def test_manifold_stock_from_both_banks_and_the_window_stays_bounded() -> None:
    stage = SupplyForecast(
        config(("mf", "supply", "cylinder-manifold")), window_s=HOUR, min_span_s=600
    )
    full, empty = 15000.0, 1000.0  # the profile's fill and changeover pressures
    assert (
        stage.stock_pct(("lhasa", "mf"), {"bank_left_kpa": full, "bank_right_kpa": full}) == 100.0
    )
    half = stage.stock_pct(("lhasa", "mf"), {"bank_left_kpa": empty, "bank_right_kpa": full})
    assert half == 50.0
    assert stage.stock_pct(("lhasa", "mf"), {"bank_left_kpa": 0.0, "bank_right_kpa": 500.0}) == 0.0
    assert stage.stock_pct(("lhasa", "mf"), {"bank_left_kpa": 3000.0}) is None  # one bank only
    # A reading every 2 s for 3 h: at most MAX_SAMPLES kept, none older than the window.
    kpa_per_s = 14000.0 / (20 * HOUR)  # the bank in service empties in 20 h
    for s in range(0, 3 * 3600 + 1, 2):
        [out] = stage([reading("mf", s, bank_left_kpa=full - kpa_per_s * s, bank_right_kpa=full)])
    trend = stage._trends[("lhasa", "mf")]
    assert len(trend.samples) <= MAX_SAMPLES
    assert trend.samples[-1][0] - trend.samples[0][0] <= HOUR
    # Both banks hold 2 x 14,000 kPa of usable gas, one bank's worth a 20 h: 40 h in all.
    remaining_h = 40.0 - 3.0
    assert out.fields["days_left"] == pytest.approx(remaining_h / 24, rel=0.01)
    with pytest.raises(ValueError, match="min_span_s"):
        SupplyForecast(config(), window_s=600, min_span_s=3600)


def test_supply_rules_are_builtin_for_supply_devices_with_sources() -> None:
    cfg = config(("mf", "supply", "cylinder-manifold"), ("conc", "concentrator", "psa-plant"))
    rules = {r.id: r for r in effective_rules(cfg)}
    supply = {k: r for k, r in rules.items() if k.startswith("supply-")}
    assert {"supply-pressure-low", "supply-pressure-high", "supply-zone1-pressure-low",
            "supply-zone4-pressure-high", "supply-reserve-in-use", "supply-bank-left-empty",
            "supply-bank-right-empty", "supply-lox-level-low", "supply-level-low",
            "supply-tank-pressure-high", "supply-vaporiser-cold", "supply-days-left",
            "supply-days-left-low"} <= set(supply)  # fmt: skip
    mf, conc = cfg.device
    site = cfg.site[0]
    for rule in supply.values():
        assert rule.doc and rule.source == "builtin"
        assert rule.applies(mf) and not rule.applies(conc)
    assert supply["supply-pressure-low"].threshold(mf, site) == pytest.approx(320.0)
    assert supply["supply-pressure-high"].threshold(mf, site) == pytest.approx(480.0)
    assert supply["supply-bank-left-empty"].threshold(mf, site) == 1500.0
    # A profile without the value: the tank-pressure rule is not judged (NaN), others default.
    assert math.isnan(supply["supply-tank-pressure-high"].threshold(mf, site))
    assert supply["supply-days-left"].threshold(mf, site) == 3.0
    assert supply["supply-days-left-low"].threshold(mf, site) == 1.0


def test_sim_profiles_lists_the_supply_profiles() -> None:
    out = subprocess.run(
        o2chain_argv("sim", "profiles"), capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert {"buffer-tank", "cylinder-manifold", "lox-tank", "area-alarm-panel"} <= set(out)


def test_demo_speed_counts_reading_time_as_simulated_time() -> None:
    """Simulators at 10x: 10 wall minutes of readings are 100 simulated minutes."""
    cfg = config(("lox", "supply", "lox-tank"))
    real = SupplyForecast(cfg, window_s=6 * HOUR, min_span_s=HOUR)
    demo = SupplyForecast(cfg, window_s=6 * HOUR, min_span_s=HOUR, speed=10.0)
    for minute in range(0, 11):
        t_wall = minute * 60.0
        level = 60.0 - 0.5 * (10.0 * t_wall) / HOUR  # 12 %/simulated day
        [r] = real([reading("lox", t_wall, lox_level_pct=level)])
        [d] = demo([reading("lox", t_wall, lox_level_pct=level)])
    assert "days_left" not in r.fields  # 10 min of history: not enough at 1x
    assert d.fields["days_left"] == pytest.approx(level / 12.0, abs=1e-3)
    with pytest.raises(ValueError, match="speed"):
        SupplyForecast(cfg, speed=0.0)
