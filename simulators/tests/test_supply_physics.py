"""Supply physics in simulated time (deterministic): banks empty at the drawn flow and change
over, LOX falls with consumption plus boil-off, line pressure sags with flow and with a failing
regulator, and each fault shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from o2base.registers import load_profile
from simulators.modbus_server import model_for
from simulators.physics.supply import (
    ATM_KPA,
    LOX_NM3_PER_L,
    AreaPanelModel,
    BufferTankModel,
    Demand,
    LineRegulator,
    LoxTankModel,
    ManifoldModel,
    ManifoldParams,
    model_for_profile,
)

HOUR = 3600.0
DAY = 86400.0


def run_until(model, condition, step_s: float, limit_s: float) -> float:
    t = 0.0
    while not condition() and t < limit_s:
        model.advance(step_s)
        t += step_s
    assert condition(), f"not reached within {limit_s} s"
    return t


def test_manifold_bank_empties_at_the_drawn_flow_and_changes_over() -> None:
    m = ManifoldModel(ManifoldParams(demand=Demand(demand_m3h=3.0)), seed=1)
    # 10 x 40 L at 15 MPa gauge, down to the 1 MPa changeover: 0.4 m3 x 14,000 / 101.325 kPa.
    usable_nm3 = 0.4 * 14000.0 / ATM_KPA
    t = run_until(m, lambda: m.changeovers == 1, 60.0, 40 * HOUR)
    assert t / HOUR == pytest.approx(usable_nm3 / 3.0, abs=0.1)  # 18.4 h
    v = m.values()
    assert v["bank_in_service"] == 1 and v["reserve_in_use"] == 1
    assert v["bank_left_kpa"] < 1000.0 + 50.0 and v["bank_right_kpa"] > 14500.0
    assert v["pressure_kpa"] == pytest.approx(400.0 - 0.5 * 3.0, abs=3.0)
    # The empty bank replaced: the reserve is restored, the right bank stays in service.
    m.replace_bank(0)
    assert m.values()["reserve_in_use"] == 0 and m.values()["bank_in_service"] == 1
    # The right bank empties in turn: a second changeover back to the left.
    run_until(m, lambda: m.changeovers == 2, 60.0, 40 * HOUR)
    assert m.values()["bank_in_service"] == 0 and m.values()["reserve_in_use"] == 1


def test_manifold_failed_changeover_lets_the_line_collapse() -> None:
    m = ManifoldModel(seed=2)
    m.changeover_failed = True
    run_until(m, lambda: m.bank_kpa[0] < 1000.0, 60.0, 40 * HOUR)
    assert m.values()["pressure_kpa"] > 380.0  # the regulator still holds with 1 MPa inlet
    m.advance(3 * HOUR)
    v = m.values()
    assert m.changeovers == 0 and v["bank_in_service"] == 0
    assert v["pressure_kpa"] < 320.0  # below 80 % of 400 kPa: the area alarms would sound
    assert v["bank_right_kpa"] > 14500.0  # the full reserve bank is never used


def test_lox_boil_off_alone_and_pressure_to_the_safety_valve() -> None:
    lox = LoxTankModel(seed=1, level_pct=80.0)
    lox.params.demand.demand_m3h = 0.0
    lox.advance(DAY)
    assert lox.level_pct == pytest.approx(80.0 - 0.5, abs=1e-6)  # 0.5 %/day of the capacity
    assert lox.tank_kpa == pytest.approx(1000.0 + 86.0, abs=0.5)
    # With nothing drawn the safety valve lifts after about a week and vents.
    t = run_until(lox, lambda: lox.tank_kpa >= lox.params.relief_kpa, 600.0, 30 * DAY)
    assert 5 * DAY < t + DAY < 9 * DAY
    lox.advance(DAY)
    assert lox.vented_l > 0.0 and lox.tank_kpa == lox.params.relief_kpa


def test_lox_level_falls_with_consumption_plus_boil_off() -> None:
    lox = LoxTankModel(seed=1, level_pct=80.0)
    lox.params.demand.demand_m3h = 20.0
    lox.advance(DAY)
    # The regulator droop lowers the delivered flow a little (share of 390/400 kPa).
    drawn_l = 20.0 * 24 * (1 - 0.5 * 20.0 / 400.0) / LOX_NM3_PER_L
    expected = 80.0 - 100.0 * drawn_l / 5000.0 - 0.5
    assert lox.level_pct == pytest.approx(expected, abs=0.05)  # about 12.2 % a day
    assert lox.tank_kpa == pytest.approx(1000.0, abs=1.0)  # the economiser holds it
    # Run dry: no more gas, the tank pressure and the line collapse within the hour.
    run_until(lox, lambda: lox.level_pct <= 0.0, 600.0, 10 * DAY)
    assert lox.values()["flow_m3h"] < 1.0
    lox.advance(HOUR)
    assert lox.values()["pressure_kpa"] < 1.0 and lox.tank_kpa < 50.0
    lox.refill(95.0)
    assert lox.level_pct == pytest.approx(95.0)


def test_lox_faults_pressure_builder_and_iced_vaporiser() -> None:
    lox = LoxTankModel(seed=3)
    lox.params.demand.demand_m3h = 20.0
    warm = lox.values()["vaporiser_out_c"]
    lox.vaporiser_iced = True
    assert lox.values()["vaporiser_out_c"] < warm - 25.0
    lox.pressure_builder_failed = True
    lox.advance(6 * HOUR)
    assert lox.tank_kpa < 600.0  # the vapour space is drawn down
    assert lox.values()["pressure_kpa"] < 400.0 - 50.0  # and the line follows it


def test_line_pressure_sags_with_flow_and_a_drifting_regulator() -> None:
    reg = LineRegulator(setpoint_kpa=400.0, droop_kpa_per_m3h=0.5)
    assert reg.outlet_kpa(1000.0, 0.0) == 400.0
    assert reg.outlet_kpa(1000.0, 40.0) == 380.0
    assert reg.outlet_kpa(300.0, 0.0) == 250.0  # not above inlet - 50 kPa
    reg.drift_kpa_per_h = 10.0
    reg.advance(5 * HOUR)
    assert reg.outlet_kpa(1000.0, 0.0) == pytest.approx(350.0)


def test_buffer_tank_cycles_and_empties_when_the_plant_fails() -> None:
    tank = model_for_profile(load_profile("buffer-tank").nominal, seed=1)
    assert isinstance(tank, BufferTankModel)
    seen_filling = False
    lowest = 1e9
    for _ in range(6 * 60):  # 6 h in minutes: the pressure switch cycles 600..800 kPa
        tank.advance(60.0)
        seen_filling |= tank.filling
        lowest = min(lowest, tank.tank_kpa)
    assert seen_filling and 590.0 < lowest < 610.0
    tank.tank_kpa = 800.0
    tank.filling = False
    tank.plant_failed = True
    # 2 m3 from 800 to 450 kPa at 6 m3/h: 2 x 350 / 101.325 / 6 = 1.15 h.
    t = run_until(tank, lambda: tank.values()["level_pct"] <= 0.0, 60.0, 5 * HOUR)
    assert t / HOUR == pytest.approx(2 * 350 / ATM_KPA / 6, abs=0.05)
    tank.advance(HOUR)
    assert tank.values()["pressure_kpa"] < 320.0


def test_area_panel_zone_pressures_and_its_own_alarm_bits() -> None:
    panel = model_for_profile(load_profile("area-alarm-panel").nominal, seed=1)
    assert isinstance(panel, AreaPanelModel)
    v = panel.values()
    assert set(v) >= {"zone1_kpa", "zone2_kpa", "zone3_kpa", "zone1_m3h", "zone2_m3h"}
    assert "zone3_m3h" not in v  # zone 3 is not metered
    assert v["alarm_low"] is False and v["alarm_high"] is False
    assert all(390.0 < float(v[f"zone{n}_kpa"]) < 400.0 for n in (1, 2, 3))
    # A leak in zone 2: more flow, more drop in that branch, and the meter does not see it.
    panel.params.zones[1].demand.leak_m3h = 30.0
    v = panel.values()
    assert float(v["zone2_kpa"]) < float(v["zone1_kpa"]) - 40.0
    assert float(v["zone2_m3h"]) == pytest.approx(2.0, abs=0.1)
    panel.params.zones[1].demand.leak_m3h = 0.0
    # Regulator drifting up by 90 kPa: above 120 % of 400 kPa.
    panel.params.regulator.drift_kpa = -90.0
    assert panel.values()["alarm_high"] is True
    panel.params.regulator.drift_kpa = 0.0
    panel.valve_closed[2] = True
    v = panel.values()
    assert float(v["zone3_kpa"]) < 1.0 and v["alarm_low"] is True


def test_stuck_transmitter_repeats_its_values_while_the_physics_goes_on() -> None:
    m = ManifoldModel(seed=4)
    m.stuck = True
    frozen = m.values()
    m.advance(10 * HOUR)
    assert m.values() == frozen
    assert m.bank_kpa[0] < 15000.0 - 5000.0
    m.stuck = False
    assert m.values()["bank_left_kpa"] < float(frozen["bank_left_kpa"]) - 5000.0


def test_same_seed_same_values_and_models_chosen_by_profile() -> None:
    a, b = ManifoldModel(seed=7), ManifoldModel(seed=7)
    a.advance(HOUR)
    b.advance(HOUR)
    assert a.values() == b.values()
    assert isinstance(model_for(load_profile("lox-tank")), LoxTankModel)
    assert isinstance(model_for(load_profile("cylinder-manifold")), ManifoldModel)
    with pytest.raises(ValueError, match=r"\[nominal\] model = 'silo'"):
        model_for_profile({"model": "silo"})
    with pytest.raises(ValueError, match=r"\[nominal\] demand_m3h = 'lots'"):
        model_for_profile({"model": "manifold", "demand_m3h": "lots"})


@pytest.mark.integration
def test_sim_concentrator_serves_a_supply_profile_with_its_physics(tmp_path: Path) -> None:
    """`o2chain sim concentrator --profile lox-tank` serves the tank's physics, not zeros."""
    import asyncio
    import json

    from pymodbus.client import AsyncModbusTcpClient

    from o2base.procs import ChildProcess, o2chain_argv
    from o2base.registers import load_profile
    from simulators.tests.test_modbus import read_row

    profile = load_profile("lox-tank")
    level = next(r for r in profile.registers if r.name == "lox_level_pct")
    argv = o2chain_argv("sim", "concentrator", "--profile", "lox-tank", "--listen",
                        "tcp://127.0.0.1:0")  # fmt: skip
    with ChildProcess(argv, tmp_path / "sim.log") as sim:
        line = sim.wait_for_log(r"\{\"listening\": \"tcp://[^\n]*\}")
        port = int(json.loads(line.group(0))["listening"].rsplit(":", 1)[1])

        async def read() -> float:
            client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=1)
            try:
                assert await client.connect()
                return float(await read_row(client, level, unit=1))
            finally:
                client.close()

        assert 0.0 < asyncio.run(read()) <= 100.0
