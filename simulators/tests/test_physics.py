"""Physics: concentrators at altitude, dryer failure, rooms (O2, CO2), weather; simulated time."""

from __future__ import annotations

import itertools
import json
import math
from importlib.resources import files
from typing import Any

import pytest

from simulators.physics.atmosphere import (
    Weather,
    equivalent_altitude_m,
    isa_altitude_m,
    isa_pressure_kpa,
    nfpa_burn_limit_pct,
    room_high_alarm_pct,
    standard_to_room_factor,
)
from simulators.physics.concentrator import (
    ConcentratorModel,
    ConcentratorParams,
    moisture_load,
    saturation_vapour_kpa,
)
from simulators.physics.room import (
    ROOM_KINDS,
    FixedSupply,
    FlowBasis,
    RoomKind,
    RoomModel,
    RoomParams,
    room_params,
    supply_for_target_lpm,
)

LHASA_M = 3650.0
# The atmosphere model is the oracle of o2core's formulas (an independent implementation):
# both answer the same vectors.
VECTORS: dict[str, Any] = json.loads(files("o2core").joinpath("vectors.json").read_text())


@pytest.mark.parametrize("case", VECTORS["isa_pressure"]["cases"], ids=str)
def test_oracle_isa_pressure_vectors(case: dict[str, Any]) -> None:
    tol = VECTORS["isa_pressure"]
    assert isa_pressure_kpa(case["alt_m"]) == pytest.approx(case["kpa"], abs=tol["tol_kpa"])
    assert isa_altitude_m(case["kpa"]) == pytest.approx(case["alt_m"], abs=tol["tol_m"])


@pytest.mark.parametrize(
    "case",
    [c for c in VECTORS["equivalent_altitude"]["cases"] if c["definition"] == "west"],
    ids=str,
)
def test_oracle_equivalent_altitude_vectors(case: dict[str, Any]) -> None:
    # The simulators model rooms with West's definition only (the gateway's default).
    got = equivalent_altitude_m(case["o2_pct"], case["baro_kpa"])
    assert got == pytest.approx(case["eq_alt_m"], abs=VECTORS["equivalent_altitude"]["tol_m"])


@pytest.mark.parametrize("case", VECTORS["fire_limits"]["cases"], ids=str)
def test_oracle_fire_limit_vectors(case: dict[str, Any]) -> None:
    tol = VECTORS["fire_limits"]["tol_pct"]
    assert nfpa_burn_limit_pct(case["baro_kpa"]) == pytest.approx(case["nfpa_pct"], abs=tol)
    assert room_high_alarm_pct(case["baro_kpa"]) == pytest.approx(case["high_alarm_pct"], abs=tol)


def test_purity_falls_when_flow_exceeds_rated_flow() -> None:
    unit = ConcentratorModel(ConcentratorParams(rated_flow_lpm=5.0), seed=1)
    curve = [unit.steady_purity_pct(f) for f in (2.0, 4.0, 5.0, 6.0, 7.5)]
    assert curve == sorted(curve, reverse=True)
    # docs/domain.md: one unit gives 94 % at 2 L/min, 92 % at 4, 87 % at 6.
    for flow, expected in ((2.0, 94.0), (4.0, 92.0), (6.0, 87.0)):
        assert unit.steady_purity_pct(flow) == pytest.approx(expected, abs=0.7)
    # The running unit follows: over-flow use lowers the product, back at rated it recovers.
    unit.flow_setpoint_lpm = 7.5
    unit.advance(600)
    over = unit.purity_pct
    unit.flow_setpoint_lpm = 4.0
    unit.advance(600)
    assert over < unit.purity_pct - 4.0


def test_warm_up_after_a_cold_start() -> None:
    unit = ConcentratorModel(ConcentratorParams(), seed=1, cold_start=True)
    assert unit.purity_pct == pytest.approx(20.95)
    unit.advance(60)
    assert 30.0 < unit.purity_pct < 80.0
    unit.advance(600)
    assert unit.purity_pct == pytest.approx(unit.steady_purity_pct(4.0), abs=0.1)


def test_degradation_lowers_the_purity_residual_over_days() -> None:
    params = ConcentratorParams(rated_flow_lpm=5.0, degradation_pct_per_day=0.5)
    unit = ConcentratorModel(params, seed=2, flow_lpm=4.0)
    fresh = ConcentratorModel(ConcentratorParams(rated_flow_lpm=5.0), seed=2, flow_lpm=4.0)
    residuals = []
    for _day in range(7):
        for _ in range(24):
            unit.advance(3600)
        residuals.append(unit.purity_pct - fresh.steady_purity_pct(4.0))
    assert residuals == sorted(residuals, reverse=True)
    assert residuals[-1] == pytest.approx(-3.5, abs=0.05)


LHASA_KPA = isa_pressure_kpa(LHASA_M) + 0.7  # station pressure, about 65.2 kPa
PLANT_PURITY = 92.4


def lhasa_weather(seed: int) -> Weather:
    return Weather(LHASA_M, offset_kpa=0.7, seed=seed)


def piped_room(seed: int = 3, o2_pct: float | None = None, occupants: int = 2) -> RoomModel:
    """A GB 50736 hotel room on a plant branch sized to hold it at 25 % in Lhasa."""
    params = RoomParams(occupants=occupants)
    flow = supply_for_target_lpm(params, 25.0, PLANT_PURITY, LHASA_KPA)
    supply = FixedSupply(flow, PLANT_PURITY, FlowBasis.NORMAL)
    return RoomModel(params, lhasa_weather(seed), supply, seed=seed, o2_pct=o2_pct)


def room_plant(seed: int, cold_start: bool = False) -> ConcentratorModel:
    """A small plant for one hotel room: 37 normal L/min at two thirds of its Lhasa capacity."""
    params = ConcentratorParams(rated_flow_lpm=86.0)
    return ConcentratorModel(
        params, seed=seed, flow_lpm=37.0, cold_start=cold_start, ambient_kpa=LHASA_KPA
    )


def test_room_kinds_carry_their_standard_ventilation() -> None:
    hotel, classroom, ward = (ROOM_KINDS[k] for k in RoomKind)
    # GB 50736-2012 table 3.0.6-1: 30 m3/h per guest; two guests in 30 m3.
    assert hotel.ventilation_m3h == pytest.approx(30.0 * hotel.occupants)
    assert hotel.ach_per_h == pytest.approx(2.0)
    # ASHRAE 62.1-2016 table 6.2.2.1, classrooms age 9+: 5 L/s per person + 0.6 L/s per m2.
    ashrae_m3h = (5.0 * classroom.occupants + 0.6 * 63.0) * 3.6
    assert classroom.ventilation_m3h == pytest.approx(ashrae_m3h, rel=0.02)
    # GB 50736-2012 table 3.0.6-2: wards 2 air changes an hour.
    assert ward.ach_per_h == 2.0
    assert all(k.failed_ach_per_h == 0.3 for k in (hotel, classroom, ward))
    assert RoomParams() == hotel  # the plain defaults are a hotel room
    custom = room_params(RoomKind.WARD, occupants=4, volume_m3=None)
    assert custom.occupants == 4 and custom.volume_m3 == ward.volume_m3


def test_normal_litres_expand_in_thin_warm_air() -> None:
    assert standard_to_room_factor(101.325, 0.0) == 1.0
    assert standard_to_room_factor(101.325, 20.0) == pytest.approx(293.15 / 273.15)
    assert standard_to_room_factor(LHASA_KPA, 20.0) == pytest.approx(1.668, abs=0.002)


def test_co2_steady_state_is_the_mass_balance() -> None:
    """420 ppm outdoors + 0.0052 normal L/s per person diluted by the outdoor air."""
    for altitude_m, offset_kpa in ((0.0, 0.0), (LHASA_M, 0.7)):
        weather = Weather(altitude_m, offset_kpa=offset_kpa)
        room = RoomModel(RoomParams(), weather, None, seed=1)
        f = standard_to_room_factor(weather.pressure_kpa(0.0), room.temp_c)
        expected = 420.0 + 2 * 0.0052 * f / (60.0 * 1000.0 / 3600.0) * 1e6
        assert room.co2_ppm == pytest.approx(expected, rel=1e-9)
    # The same room ventilated to GB 50736 by volume: ~1,100 ppm at sea level, ~1,460 ppm in
    # Lhasa, where the same m3/h carries 0.64 of the air.
    sea = RoomModel(RoomParams(), Weather(0.0), None).co2_ppm
    lhasa = RoomModel(RoomParams(), lhasa_weather(1), None).co2_ppm
    assert 1050 < sea < 1130 and 1400 < lhasa < 1500
    assert (lhasa - 420) / (sea - 420) == pytest.approx(101.325 / LHASA_KPA, rel=0.01)
    # CO2-free product gas dilutes too; more people, more CO2.
    assert piped_room(occupants=2).co2_ppm < lhasa
    assert piped_room(occupants=1).co2_ppm < 1000 < piped_room(occupants=2).co2_ppm < 1500


def test_supply_sizing_inverts_the_balance() -> None:
    for occupants in (0, 1, 2, 3):
        room = piped_room(occupants=occupants)
        assert room.steady_o2_pct() == pytest.approx(25.0, abs=0.05)  # the daily temp swing
    flow = supply_for_target_lpm(RoomParams(), 25.0, PLANT_PURITY, LHASA_KPA)
    assert 35.0 < flow < 39.0  # normal L/min: a lot of oxygen for one ventilated room
    with pytest.raises(ValueError, match="target_o2_pct"):
        supply_for_target_lpm(RoomParams(), 95.0, PLANT_PURITY, LHASA_KPA)


def test_room_at_3650_m_reaches_the_24_26_band_and_stays() -> None:
    room = RoomModel(
        RoomParams(), lhasa_weather(4), room_plant(4, cold_start=True), seed=4, o2_pct=20.95
    )
    hours_to_band = None
    for minute in range(1, 3 * 24 * 60):
        room.advance(60)
        reading = room.reading()
        if hours_to_band is None and room.o2_pct >= 24.0:
            hours_to_band = minute / 60
        if hours_to_band is not None:
            assert 24.0 <= room.o2_pct <= 26.0, f"left the band at minute {minute}"
            assert 23.8 <= reading["o2_pct"] <= 26.2
    assert hours_to_band is not None
    # 2 air changes an hour plus the supply: the room turns over in about half an hour.
    assert 0.5 < hours_to_band < 3.0
    # ppO2 and equivalent altitude follow: about 2,400 m in a 3,650 m hotel.
    assert 1900 < room.equivalent_altitude_m() < 2700
    assert "co2_ppm" not in room.reading()  # no CO2 sensor in this room


def test_ventilation_failure_passes_the_o2_and_co2_alarms() -> None:
    room = piped_room(occupants=1)
    room.params.co2_sensor = True
    threshold = room_high_alarm_pct(isa_pressure_kpa(LHASA_M))
    room.advance(6 * 3600)
    assert room.o2_pct < threshold - 2.0
    assert room.reading()["co2_ppm"] < 1000.0
    room.ventilation_failed = True
    o2_minutes = co2_minutes = None
    for minute in range(1, 24 * 60):
        room.advance(60)
        if o2_minutes is None and room.o2_pct > threshold:
            o2_minutes = minute
        if co2_minutes is None and room.reading()["co2_ppm"] > 1500.0:
            co2_minutes = minute
    # The supply keeps pouring 37 normal L/min into a room that now exchanges 0.3 volumes an
    # hour: O2 passes the fire-hazard alarm within the hour, CO2 its alarm soon after.
    assert o2_minutes is not None and 10 < o2_minutes < 60
    assert co2_minutes is not None and o2_minutes < co2_minutes < 120
    assert room.o2_pct > 35.0  # it would not stop by itself
    room.ventilation_failed = False  # repaired: it falls back into the band
    room.advance(6 * 3600)
    assert 24.0 < room.o2_pct < 26.0
    assert room.co2_ppm < 1000.0


def test_co2_is_published_only_by_a_board_with_a_sensor() -> None:
    plain, sensed = piped_room(seed=8), piped_room(seed=8)
    sensed.params.co2_sensor = True
    a, b = plain.reading(), sensed.reading()
    assert "co2_ppm" not in a
    assert set(b) == set(a) | {"co2_ppm"}
    assert b["co2_ppm"] == pytest.approx(sensed.co2_ppm, abs=50)  # 10 ppm noise
    assert {k: b[k] for k in a} == a  # the other readings do not change


def test_concentrator_stuck_at_full_flow_drives_the_room_up() -> None:
    room = RoomModel(RoomParams(), lhasa_weather(3), room_plant(3), seed=3)
    normal = room.steady_o2_pct()
    assert isinstance(room.supply, ConcentratorModel)
    room.supply.flow_stuck_full = True
    room.advance(24 * 3600)
    assert room.supply.flow_lpm == 129.0
    assert room.supply.purity_pct < 70.0  # 2.3 times its capacity at 3650 m
    assert room.o2_pct > normal + 1.5  # but far more gas: the room still climbs


def test_occupants_consume_oxygen() -> None:
    empty = RoomModel(RoomParams(occupants=0), Weather(LHASA_M), FixedSupply(8.0, 92.0))
    full = RoomModel(RoomParams(occupants=4), Weather(LHASA_M), FixedSupply(8.0, 92.0))
    # 4 x 0.0052 / 0.83 normal L/s of O2, 1.67 times that volume here, over 1008 L/min.
    f = standard_to_room_factor(full.baro_kpa, full.temp_c)
    drop = 100.0 * 4 * 0.0052 / 0.83 * 60.0 * f / (1000.0 + 8.0)
    assert full.steady_o2_pct() == pytest.approx(empty.steady_o2_pct() - drop, rel=1e-9)
    assert drop > 0.2


def test_result_does_not_depend_on_the_step_size() -> None:
    coarse, fine = piped_room(o2_pct=21.0), piped_room(o2_pct=21.0)
    coarse.advance(3 * 3600)
    for _ in range(3 * 3600 // 10):
        fine.advance(10)
    # Exact per sub-step; only the sampling of pressure and temperature differs (1e-5 %).
    assert coarse.o2_pct == pytest.approx(fine.o2_pct, abs=1e-4)
    assert coarse.co2_ppm == pytest.approx(fine.co2_ppm, abs=1e-2)


def test_weather_drifts_slowly_and_deterministically() -> None:
    weather = Weather(LHASA_M, offset_kpa=0.7, seed=9)
    samples = [weather.pressure_kpa(h * 3600.0) for h in range(24 * 14)]
    base = isa_pressure_kpa(LHASA_M) + 0.7
    assert all(abs(p - base) < 0.9 for p in samples)
    assert max(samples) - min(samples) > 0.5  # it does move over two weeks
    hourly = [abs(b - a) for a, b in itertools.pairwise(samples)]
    assert max(hourly) < 0.12  # slowly: at most about 0.1 kPa an hour
    assert Weather(LHASA_M, offset_kpa=0.7, seed=9).pressure_kpa(1e5) == weather.pressure_kpa(1e5)
    assert Weather(LHASA_M, seed=10).pressure_kpa(1e5) != Weather(LHASA_M).pressure_kpa(1e5)


def test_same_seed_same_readings() -> None:
    a, b = piped_room(seed=5), piped_room(seed=5)
    a.params.co2_sensor = b.params.co2_sensor = True
    for _ in range(50):
        a.advance(30)
        b.advance(30)
        assert a.reading() == b.reading()


def lhasa_plant(seed: int = 6) -> ConcentratorModel:
    """The lhasa-hotel plant: 100 Nm3/h at sea level, 720 normal L/min at 3650 m."""
    params = ConcentratorParams(rated_flow_lpm=1667.0, purity_alarm_pct=90.0)
    return ConcentratorModel(params, seed=seed, flow_lpm=720.0, ambient_kpa=LHASA_KPA)


def test_dryer_failure_dew_point_within_hours_purity_over_weeks() -> None:
    plant = lhasa_plant()
    baseline = plant.purity_pct
    assert 92.0 < baseline < 93.0
    assert not plant.values()["alarm_dryer"]
    plant.dryer_failed = True
    minutes, warn_min = 0, None
    while not plant.values()["alarm_dryer"]:  # dew point above -30 degC
        plant.advance(60)
        minutes += 1
        if warn_min is None and plant.dew_point_c > -40.0:
            warn_min = minutes
        assert minutes < 3 * 60
    assert warn_min is not None and warn_min < minutes  # the -40 degC warning comes first
    # The dew point tells long before the purity does: after a day it has hardly moved.
    plant.advance(86400 - minutes * 60)
    assert plant.dew_point_c > 0.0
    assert baseline - 0.3 < plant.purity_pct < baseline
    days: dict[str, float] = {}
    for day in range(2, 43):
        for _ in range(24):
            plant.advance(3600)
        if "warn" not in days and plant.purity_pct < 91.0:
            days["warn"] = day
        if "alarm" not in days and plant.purity_pct < 90.0:
            days["alarm"] = day
            assert plant.values()["alarm_purity"]
        if day == 7:
            assert 0.3 < baseline - plant.purity_pct < 1.0  # a week: well under 1 %
    # Weeks, not days: the 91 % warning after about two, the 90 % alarm after about three.
    assert 10 <= days["warn"] <= 17 and 17 <= days["alarm"] <= 24, days
    # Dryer repaired: dew point back within hours, the sieve dries out over weeks.
    plant.dryer_failed = False
    plant.advance(6 * 3600)
    assert not plant.values()["alarm_dryer"]
    wet = plant.purity_pct
    plant.advance(7 * 86400)
    week_later = plant.purity_pct
    assert wet < week_later < baseline
    plant.advance(90 * 86400)
    assert week_later < plant.purity_pct < baseline + 0.01


def test_a_dew_point_just_above_minus_40_wets_the_sieve_slowly() -> None:
    assert moisture_load(-55.0) == 0.0 and moisture_load(-40.0) == 0.0
    assert moisture_load(5.0) == pytest.approx(1.0)
    assert 0.0 < moisture_load(-35.0) < 0.02  # ice-cold vapour: a tiny load
    assert saturation_vapour_kpa(0.0) == pytest.approx(0.611, abs=0.001)
    assert saturation_vapour_kpa(-40.0) == pytest.approx(0.0129, abs=0.0005)


def test_altitude_derates_the_unit_by_the_pressure_ratio() -> None:
    """Fixed-displacement compressor: capacity x PB/P0. Lhasa (ISA 64.50 kPa) vs sea level."""
    ratio = isa_pressure_kpa(LHASA_M) / 101.325
    assert ratio == pytest.approx(0.6366, abs=0.0005)
    sea = ConcentratorModel(ConcentratorParams(rated_flow_lpm=5.0), seed=1, flow_lpm=5.0)
    lhasa = ConcentratorModel(
        ConcentratorParams(rated_flow_lpm=5.0),
        seed=1,
        flow_lpm=5.0,
        ambient_kpa=isa_pressure_kpa(LHASA_M),
    )
    assert lhasa.capacity_lpm == pytest.approx(5.0 * ratio)
    # At the same purity the deliverable flow falls by the ratio...
    for purity in (93.0, 90.0, 87.0):
        assert lhasa.deliverable_flow_lpm(purity) == pytest.approx(
            sea.deliverable_flow_lpm(purity) * ratio, rel=1e-9
        )
        assert sea.steady_purity_pct(sea.deliverable_flow_lpm(purity)) == pytest.approx(purity)
    # ...and at the same flow setting the purity falls: 5 L/min gives ~89 % at sea level but
    # ~81 % in Lhasa, below the 82 % medical alarm.
    assert sea.purity_pct == pytest.approx(89.4, abs=0.1)
    assert lhasa.purity_pct == pytest.approx(81.3, abs=0.2)
    lhasa.advance(600)
    assert int(lhasa.values()["alarm_bits"]) & 1
    # A unit rated at the site is not derated there; a gentler vendor curve can be set.
    rated_here = ConcentratorParams(rated_flow_lpm=5.0, rated_at_kpa=isa_pressure_kpa(LHASA_M))
    here = ConcentratorModel(rated_here, ambient_kpa=isa_pressure_kpa(LHASA_M))
    assert here.capacity_lpm == pytest.approx(5.0)
    gentle = ConcentratorModel(
        ConcentratorParams(altitude_exponent=0.5), ambient_kpa=isa_pressure_kpa(LHASA_M)
    )
    assert gentle.capacity_lpm == pytest.approx(5.0 * math.sqrt(ratio))


def test_hot_ambient_lowers_purity() -> None:
    unit = ConcentratorModel(ConcentratorParams(), seed=7)
    cool = unit.steady_purity_pct(4.0)
    unit.ambient_temp_c = 40.0
    assert unit.steady_purity_pct(4.0) == pytest.approx(cool - 2.25, abs=0.01)
    unit.advance(60)
    assert unit.values()["temp_c"] == pytest.approx(52.0)
    assert int(unit.values()["alarm_bits"]) & 2  # high temperature


def test_compressor_wear_lowers_pressure_and_raises_power() -> None:
    new = ConcentratorModel(ConcentratorParams(), seed=8, flow_lpm=5.0)
    worn = ConcentratorModel(ConcentratorParams(), seed=8, flow_lpm=5.0)
    worn.compressor_wear = 0.8
    worn.advance(600)
    new.advance(600)
    n, w = new.values(), worn.values()
    assert float(w["feed_air_kpa"]) < 0.75 * float(n["feed_air_kpa"])
    assert float(w["outlet_kpa"]) < float(n["outlet_kpa"])
    assert float(w["power_w"]) > float(n["power_w"])
    assert float(w["compressor_temp_c"]) > float(n["compressor_temp_c"]) + 15
    assert worn.purity_pct < new.purity_pct - 3.0


def test_power_loss_stops_the_unit_and_power_back_is_a_cold_start() -> None:
    unit = ConcentratorModel(ConcentratorParams(), seed=9)
    unit.power_on(False)
    unit.advance(60)
    v = unit.values()
    assert v["state"] is False and v["flow_lpm"] == 0.0 and unit.purity_pct == 20.95
    unit.power_on(True)
    unit.advance(30)
    assert unit.purity_pct < 60.0  # warming up
    unit.advance(900)
    assert unit.purity_pct > 90.0
    assert int(unit.values()["alarm_bits"]) & 4  # the power fault is latched
