"""Supply equipment end to end over Modbus TCP: each supply profile served by the real simulator
(physics/supply.py) and read by the real gateway poller into ``supply`` readings with the
canonical fields; the built-in supply alarms judged on the polled values; days of supply left
forecast from polled values as the simulated stock falls."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.alarms import AlarmEvent, LocalAlarmEngine
from gateway.config import Device, GatewayConfig, parse_config
from gateway.modbus import DevicePoller, tcp_client_factory
from gateway.readings import Reading
from gateway.state_store import StateStore
from gateway.supply_forecast import SupplyForecast
from o2base.registers import load_profile
from simulators.modbus_server import ModbusTcpSimulator, SimulatedDevice, model_for
from simulators.physics.supply import LOX_NM3_PER_L, AreaPanelModel, LoxTankModel, ManifoldModel

T0 = 1_700_000_000_000
SUPPLY_PROFILES = ("buffer-tank", "cylinder-manifold", "lox-tank", "area-alarm-panel")
CANONICAL = {
    "buffer-tank": {"tank_kpa", "pressure_kpa", "temp_c", "level_pct", "flow_m3h", "filling",
                    "alarm_line_low", "alarm_tank_high", "pressure_low", "pressure_high"},
    "cylinder-manifold": {"bank_left_kpa", "bank_right_kpa", "bank_in_service", "changeovers",
                          "reserve_in_use", "pressure_kpa", "flow_m3h", "alarm_line_low",
                          "alarm_line_high", "pressure_low", "pressure_high"},
    "lox-tank": {"lox_level_pct", "tank_kpa", "vaporiser_out_c", "pressure_kpa", "flow_m3h",
                 "alarm_line_low", "alarm_tank_high", "pressure_low", "pressure_high"},
    "area-alarm-panel": {"zone1_kpa", "zone2_kpa", "zone3_kpa", "zone1_m3h", "zone2_m3h",
                         "flow_m3h", "alarm_low", "alarm_high", "pressure_low", "pressure_high"},
}  # fmt: skip


def device(dev_id: str, profile: str, unit: int) -> dict[str, Any]:
    return {"id": dev_id, "site": "lhasa", "kind": "supply", "transport": "modbus",
            "url": "tcp://127.0.0.1:5020", "unit": unit, "profile": profile,
            "interval_s": 1}  # fmt: skip


def sim(profile: str, unit: int) -> SimulatedDevice:
    p = load_profile(profile)
    # The test steps the physics itself (simulated time), the server only reads it.
    return SimulatedDevice(p, model_for(p, seed=unit), unit, drive_model=False)


def poll(
    served: list[tuple[dict[str, Any], SimulatedDevice]], rounds: int = 1, step_s: float = 0.0
) -> list[list[Reading]]:
    """``rounds`` polls of every device by the real poller over TCP; between rounds every
    model is advanced by ``step_s`` simulated seconds. One list of readings per round."""

    async def main() -> list[list[Reading]]:
        server = ModbusTcpSimulator([s for _, s in served])
        await server.start()
        pollers = []
        health: list[Reading] = []  # device_health points: not looked at here
        out: list[list[Reading]] = []
        try:
            for cfg, _ in served:
                dev = Device.model_validate({**cfg, "url": f"tcp://127.0.0.1:{server.port}"})
                pollers.append(
                    DevicePoller(
                        dev, load_profile(dev.profile or ""), tcp_client_factory, health.append
                    )
                )
            for n in range(rounds):
                got = []
                for poller in pollers:
                    reading = await poller.poll_once()
                    assert reading is not None, poller.health.last_error
                    got.append(reading)
                out.append(got)
                if n < rounds - 1:
                    for _, s in served:
                        s.model.advance(step_s)
        finally:
            for poller in pollers:
                if poller._client is not None:
                    poller._client.close()
            await server.stop()
        return out

    return asyncio.run(main())


def engine(state_dir: Path, config: GatewayConfig, now: list[int]) -> LocalAlarmEngine:
    state_dir.mkdir(exist_ok=True)
    return LocalAlarmEngine(
        config, StateStore(state_dir / "alarms.sqlite"), clock_ms=lambda: now[0]
    )


def judge(
    state_dir: Path, devices: list[dict[str, Any]], readings: list[Reading], hold_s: int
) -> dict[tuple[str, str], dict[str, Any]]:
    """Feed the readings every 10 s from 0 to ``hold_s``; the raised alarms."""
    now = [T0]
    config = parse_config({"site": [{"id": "lhasa", "altitude_m": 3650}], "device": devices})
    eng = engine(state_dir, config, now)
    events: list[AlarmEvent] = []
    eng.listeners.append(events.append)
    for t_s in range(0, hold_s + 1, 10):
        now[0] = T0 + t_s * 1000
        eng([Reading(r.measurement, r.tags, dict(r.fields), now[0]) for r in readings])
    return {(e.alarm["device"], e.alarm["rule"]): e.alarm for e in events if e.state == "raise"}


def test_every_supply_profile_polled_into_canonical_fields() -> None:
    devices = [device(name, name, unit) for unit, name in enumerate(SUPPLY_PROFILES, start=1)]
    sims = [sim(name, unit) for unit, name in enumerate(SUPPLY_PROFILES, start=1)]
    [readings] = poll(list(zip(devices, sims, strict=True)))
    for cfg, s, r in zip(devices, sims, readings, strict=True):
        assert r.measurement == "supply"
        assert r.tags == {
            "site": "lhasa", "device": cfg["id"], "source": "modbus", "point": cfg["id"]
        }  # fmt: skip
        assert set(r.fields) == CANONICAL[cfg["profile"]], cfg["profile"]
        assert "invalid" not in r.fields
        served = s.values()
        profile = load_profile(cfg["profile"])
        for reg in profile.registers:
            want, got = served[reg.name], r.fields[reg.name]
            if isinstance(want, bool):
                assert got is want, reg.name
            else:
                # Each read draws fresh sensor noise (< 2 %); a wrong scale or word order
                # would be off by 10x or garbage.
                tol = max(reg.scale, 0.01) + 0.02 * abs(float(want)) + 0.3
                assert got == pytest.approx(want, abs=tol), reg.name
    by_dev = {r.tags["device"]: r.fields for r in readings}
    assert by_dev["cylinder-manifold"]["bank_left_kpa"] == pytest.approx(15000.0, abs=50.0)
    assert by_dev["lox-tank"]["lox_level_pct"] == pytest.approx(80.0, abs=0.3)
    assert by_dev["area-alarm-panel"]["pressure_low"] == 0
    for name in SUPPLY_PROFILES:
        line = "zone1_kpa" if name == "area-alarm-panel" else "pressure_kpa"
        assert 390.0 < float(by_dev[name][line]) < 401.0, name  # 400 kPa less droop


def test_supply_alarms_on_polled_values(tmp_path: Path) -> None:
    devices = [
        device("manifold-changed", "cylinder-manifold", 1),
        device("manifold-failed", "cylinder-manifold", 2),
        device("lox-low", "lox-tank", 3),
        device("lox-fine", "lox-tank", 4),
        device("panel", "area-alarm-panel", 5),
        device("buffer", "buffer-tank", 6),
    ]
    sims = [sim(d["profile"], d["unit"]) for d in devices]
    changed, failed = sims[0].model, sims[1].model
    assert isinstance(changed, ManifoldModel) and isinstance(failed, ManifoldModel)
    changed.advance(19 * 3600)  # 3 m3/h empties a 60 Nm3 bank in about 18.4 h
    assert changed.changeovers == 1
    failed.changeover_failed = True
    failed.advance(22 * 3600)  # the left bank is drawn flat: the line collapses
    low = sims[2].model
    assert isinstance(low, LoxTankModel)
    low.liquid_l = 0.15 * low.params.capacity_l
    low.tank_kpa = 1550.0  # above the profile's tank_kpa_high of 1,500 kPa
    low.vaporiser_iced = True
    panel = sims[4].model
    assert isinstance(panel, AreaPanelModel)
    panel.params.regulator.drift_kpa = 100.0  # failing riser regulator: 300 kPa in every zone
    sims[5].faults.values["tank_kpa"] = 950.0  # above the buffer tank's 900 kPa
    [readings] = poll(list(zip(devices, sims, strict=True)))
    by_dev = {r.tags["device"]: r.fields for r in readings}
    assert by_dev["manifold-changed"]["reserve_in_use"] == 1
    assert by_dev["manifold-failed"]["reserve_in_use"] == 0
    assert float(by_dev["manifold-failed"]["pressure_kpa"]) < 320.0
    assert by_dev["panel"]["pressure_low"] == 1  # the panel's own bit, read over Modbus

    early = judge(tmp_path / "early", devices, readings, hold_s=20)
    assert ("manifold-changed", "supply-reserve-in-use") in early  # no on-delay
    assert not any(rule.startswith("supply-zone") for _, rule in early)  # 30 s on-delay
    raised = judge(tmp_path / "later", devices, readings, hold_s=400)
    supply = {k for k in raised if k[1].startswith("supply-") or k[1].startswith("equipment-")}
    assert supply == {
        ("manifold-changed", "supply-reserve-in-use"),
        ("manifold-changed", "supply-bank-left-empty"),
        ("manifold-failed", "supply-bank-left-empty"),
        ("manifold-failed", "supply-pressure-low"),
        ("manifold-failed", "equipment-pressure-low"),  # the manifold's own status bit
        ("lox-low", "supply-lox-level-low"),
        ("lox-low", "supply-tank-pressure-high"),
        ("lox-low", "equipment-pressure-high"),  # the unit's own bit (within 100 kPa of relief)
        ("lox-low", "supply-vaporiser-cold"),
        ("panel", "supply-zone1-pressure-low"),
        ("panel", "supply-zone2-pressure-low"),
        ("panel", "supply-zone3-pressure-low"),
        ("panel", "equipment-pressure-low"),
        ("buffer", "supply-tank-pressure-high"),
    }
    line = raised[("manifold-failed", "supply-pressure-low")]
    assert line["threshold"] == pytest.approx(320.0)  # 80 % of the 400 kPa setpoint
    assert raised[("lox-low", "supply-lox-level-low")]["threshold"] == 20.0
    assert raised[("buffer", "supply-tank-pressure-high")]["threshold"] == 900.0
    assert raised[("manifold-changed", "supply-reserve-in-use")]["message"] == (
        "manifold-changed: changed over to the reserve bank; replace the empty bank"
    )


def test_days_left_forecast_from_polled_lox_level_raises_the_alarm(tmp_path: Path) -> None:
    """A VIE tank drawn at 20 m3/h loses ~12.2 % a day (11.7 % drawn + 0.5 % boil-off): from
    45 % (3.7 days) over a simulated day the forecast follows the true days left and the
    warning rises once they fall below 3; the reading carries ``days_left``."""
    devices = [device("lox", "lox-tank", 1), device("manifold", "cylinder-manifold", 2)]
    sims = [sim("lox-tank", 1), sim("cylinder-manifold", 2)]
    lox = sims[0].model
    assert isinstance(lox, LoxTankModel)
    lox.liquid_l = 0.45 * lox.params.capacity_l
    step_s = 600.0  # 10 simulated minutes between polls, 24 h of polls
    rounds = poll(list(zip(devices, sims, strict=True)), rounds=145, step_s=step_s)
    config = parse_config({"site": [{"id": "lhasa", "altitude_m": 3650}], "device": devices})
    forecast = SupplyForecast(config, window_s=6 * 3600.0, min_span_s=2 * 3600.0)
    now = [T0]
    eng = engine(tmp_path, config, now)
    events: list[AlarmEvent] = []
    eng.listeners.append(events.append)
    rate_pct_per_day = 20.0 * (1 - 0.5 * 20.0 / 400.0) * 24 / LOX_NM3_PER_L / 5000 * 100 + 0.5
    raised_at_true_days: float | None = None
    manifold_days_2h = 0.0
    for n, readings in enumerate(rounds):
        now[0] = T0 + int(n * step_s * 1000)
        stamped = [Reading(r.measurement, r.tags, dict(r.fields), now[0]) for r in readings]
        out = eng(forecast(stamped))
        fields = next(r.fields for r in out if r.tags.get("device") == "lox")
        if n == 12:
            manifold = next(r.fields for r in out if r.tags.get("device") == "manifold")
            manifold_days_2h = float(manifold["days_left"])
        true_days = float(fields["lox_level_pct"]) / rate_pct_per_day
        if n < 12:  # less than 2 h of history: no claim yet
            assert "days_left" not in fields
            continue
        assert float(fields["days_left"]) == pytest.approx(true_days, abs=0.25), n
        if raised_at_true_days is None and any(
            e.alarm["rule"] == "supply-days-left" and e.alarm["device"] == "lox" for e in events
        ):
            raised_at_true_days = true_days
    assert raised_at_true_days is not None and 2.7 < raised_at_true_days < 3.05
    lox_rules = {e.alarm["rule"] for e in events if e.alarm["device"] == "lox"}
    assert "supply-days-left-low" not in lox_rules  # still more than a day left
    # The full manifold at 3 m3/h: both banks (2 x 55 Nm3 above changeover) last ~1.5 days;
    # after 24 h of polls about half a day is left: the alarm, not only the warning.
    manifold_rules = {e.alarm["rule"] for e in events if e.alarm["device"] == "manifold"}
    assert {"supply-days-left", "supply-days-left-low"} <= manifold_rules
    assert manifold_days_2h == pytest.approx(2 * 0.4 * 14000 / 101.325 / 3 / 24 - 2 / 24, rel=0.05)


def test_a_field_name_keeps_one_type_across_supply_profiles() -> None:
    """Every supply profile writes to the one ``supply`` measurement: a field decoded as an
    integer by one profile and as a float by another would have InfluxDB refuse the second
    device's points (docs/contracts.md: measurements are floats)."""

    def kind(reg: Any) -> str:
        if reg.type.value in ("bool", "bits"):
            return "bool"
        if reg.scale == 1.0 and reg.offset == 0.0 and reg.type.value != "float32":
            return "int"
        return "float"

    seen: dict[str, tuple[str, str]] = {}
    for name in SUPPLY_PROFILES:
        for reg in load_profile(name).registers:
            got = kind(reg)
            other = seen.setdefault(reg.name, (name, got))
            assert other[1] == got, f"{reg.name}: {got} in {name}, {other[1]} in {other[0]}"
            if reg.unit:  # a measurement with a unit is a float
                assert got == "float", f"{name}: {reg.name} ({reg.unit}) decodes as {got}"
