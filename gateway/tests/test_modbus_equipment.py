"""Built-in equipment rules judged on what the real poller reads from the simulator: product
pressure +-15 % of the profile's setpoint, no flow while running, flow above rating, service,
filter and O2-cell intervals; profile [nominal] values override the defaults."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.alarms import AlarmEvent, LocalAlarmEngine
from gateway.builtin_rules import effective_rules
from gateway.config import Device, parse_config
from gateway.equipment_rules import EquipmentFields
from gateway.modbus import DevicePoller, tcp_client_factory
from gateway.readings import Reading
from gateway.state_store import StateStore
from o2base.registers import load_profile
from simulators.modbus_server import ModbusTcpSimulator, SimulatedDevice
from simulators.physics.concentrator import ConcentratorModel, params_from_profile

T0 = 1_700_000_000_000
PROFILES = Path(__file__).resolve().parents[2] / "o2base" / "profiles"


def profile_with_setpoint(tmp_path: Path, setpoint_kpa: float) -> Path:
    """A site copy of the medical concentrator's profile with a product pressure setpoint."""
    text = (PROFILES / "medical-concentrator.toml").read_text()
    text = text.replace("[nominal]\n", f"[nominal]\noutlet_kpa_setpoint = {setpoint_kpa}\n", 1)
    path = tmp_path / "medical-concentrator.toml"
    path.write_text(text)
    assert tomllib.loads(text)["nominal"]["outlet_kpa_setpoint"] == setpoint_kpa
    return path


def device(dev_id: str, profile: str, kind: str, unit: int) -> dict[str, Any]:
    return {"id": dev_id, "site": "lhasa", "kind": kind, "transport": "modbus",
            "url": "tcp://127.0.0.1:5020", "unit": unit, "profile": profile,
            "interval_s": 1}  # fmt: skip


def read_once(served: list[tuple[dict[str, Any], SimulatedDevice]]) -> list[Reading]:
    """One poll of each device by the real poller over TCP."""

    async def main() -> list[Reading]:
        server = ModbusTcpSimulator([sim for _, sim in served])
        await server.start()
        out: list[Reading] = []
        try:
            for cfg, _ in served:
                dev = Device.model_validate({**cfg, "url": f"tcp://127.0.0.1:{server.port}"})
                poller = DevicePoller(
                    dev, load_profile(dev.profile or ""), tcp_client_factory, out.append
                )
                reading = await poller.poll_once()
                assert reading is not None, poller.health.last_error
                out.append(reading)
                if poller._client is not None:
                    poller._client.close()
        finally:
            await server.stop()
        return [r for r in out if r.measurement != "device_health"]

    return asyncio.run(main())


def sim(profile: str | Path, unit: int) -> SimulatedDevice:
    p = load_profile(profile)
    return SimulatedDevice(p, ConcentratorModel(params_from_profile(p.nominal), seed=unit), unit)


def judge(
    state_dir: Path, devices: list[dict[str, Any]], readings: list[Reading], hold_s: int
) -> dict[tuple[str, str], dict[str, Any]]:
    """Feed the readings every 10 s (as polls would) from 0 to ``hold_s``; the raised alarms."""
    state_dir.mkdir(exist_ok=True)
    now = [T0]
    config = parse_config({"site": [{"id": "lhasa", "altitude_m": 3650}], "device": devices})
    eng = LocalAlarmEngine(config, StateStore(state_dir / "alarms.sqlite"), clock_ms=lambda: now[0])
    events: list[AlarmEvent] = []
    eng.listeners.append(events.append)
    for t_s in range(0, hold_s + 1, 10):
        now[0] = T0 + t_s * 1000
        eng([Reading(r.measurement, r.tags, r.fields, now[0]) for r in readings])
    return {(e.alarm["device"], e.alarm["rule"]): e.alarm for e in events if e.state == "raise"}


def test_pressure_flow_and_service_rules_on_polled_values(tmp_path: Path) -> None:
    setpoint = profile_with_setpoint(tmp_path, 55.0)
    devices = [
        device("conc-low-p", str(setpoint), "concentrator", 1),
        device("conc-high-p", str(setpoint), "concentrator", 2),
        device("conc-fine", str(setpoint), "concentrator", 3),
        device("conc-no-flow", "medical-concentrator", "concentrator", 4),
        device("conc-over", "medical-concentrator", "concentrator", 5),
        device("psa-1", "psa-plant-modular", "plant", 6),
        device("psa-2", "psa-plant-modular", "plant", 7),
    ]
    sims = [sim(d["profile"], d["unit"]) for d in devices]
    fine = {"outlet_kpa": 55.0, "flow_lpm": 4.0, "state": True}
    sims[0].faults.values.update(fine, outlet_kpa=46.0)  # 16 % below 55 kPa
    sims[1].faults.values.update(fine, outlet_kpa=64.0)  # 16 % above
    sims[2].faults.values.update(fine, outlet_kpa=48.0)  # 13 % below: inside the band
    sims[3].faults.values.update(fine, flow_lpm=0.2)  # running, below 10 % of 5 L/min
    sims[4].faults.values.update(fine, flow_lpm=5.8)  # > 110 % of the rated 5 L/min
    # psa-1: counters past the profile's intervals (4,000 h, 2,000 h, 730 d); psa-2 just below.
    sims[5].faults.values.update(compressor_h=4001, filter_h=2000, o2_cell_age_d=731)
    sims[6].faults.values.update(compressor_h=3999, filter_h=1999, o2_cell_age_d=729)
    readings = read_once(list(zip(devices, sims, strict=True)))
    by_dev = {r.tags["device"]: r.fields for r in readings}
    assert by_dev["conc-no-flow"]["no_flow_running"] == 1
    assert by_dev["conc-fine"]["no_flow_running"] == 0

    raised = judge(tmp_path / "early", devices, readings, hold_s=50)
    equipment = {"outlet-pressure-low", "outlet-pressure-high", "flow-none-while-running",
                 "flow-above-rated", "service-due", "filter-service-due",
                 "o2-cell-age"}  # fmt: skip
    early = {k for k in raised if k[1] in equipment}
    # The 60 s on-delays have not run out; the service reminders have none.
    assert early == {("psa-1", "service-due"), ("psa-1", "filter-service-due"),
                     ("psa-1", "o2-cell-age")}  # fmt: skip
    raised = judge(tmp_path / "later", devices, readings, hold_s=300)
    assert {k for k in raised if k[1] in equipment} == {
        ("conc-low-p", "outlet-pressure-low"),
        ("conc-high-p", "outlet-pressure-high"),
        ("conc-no-flow", "flow-none-while-running"),
        ("conc-over", "flow-above-rated"),
        ("psa-1", "service-due"),
        ("psa-1", "filter-service-due"),
        ("psa-1", "o2-cell-age"),
    }
    low = raised[("conc-low-p", "outlet-pressure-low")]
    assert low["threshold"] == pytest.approx(55.0 * 0.85) and low["value"] == 46.0
    assert raised[("conc-over", "flow-above-rated")]["threshold"] == pytest.approx(5.5)
    assert raised[("psa-1", "filter-service-due")]["message"] == (
        "psa-1: filter change due (2000 h, interval 2000 h)"
    )
    assert raised[("conc-no-flow", "flow-none-while-running")]["message"] == (
        "conc-no-flow: running but no product flow"
    )


def test_no_flow_field_follows_the_run_state_and_profile(tmp_path: Path) -> None:
    derive = EquipmentFields(load_profile("medical-concentrator"))
    assert derive.no_flow_lpm == 0.5  # 10 % of the rated 5 L/min
    for state, flow, expected in ((True, 0.0, 1), (True, 0.6, 0), (False, 0.0, 0)):
        fields: dict[str, Any] = {"state": state, "flow_lpm": flow}
        derive(fields)
        assert fields["no_flow_running"] == expected, (state, flow)
    fields = {"state": True}  # flow flagged invalid: no claim
    derive(fields)
    assert "no_flow_running" not in fields


def test_every_equipment_rule_documents_its_default() -> None:
    """Each default carries its source (shown by /api/rules and listed in the README)."""
    config = parse_config({"site": [{"id": "lhasa", "altitude_m": 3650}]})
    ids = ("equipment-", "outlet-", "flow-", "service-", "filter-", "o2-cell", "calibration-")
    rules = [r for r in effective_rules(config) if r.id.startswith((*ids, "modbus-poller"))]
    assert len(rules) == 12 + 8 + 1  # one per canonical alarm, 8 limits/reminders, the poller
    assert all(r.doc and r.source == "builtin" for r in rules)
