"""Scenarios: the bundled Lhasa hotel, the world in simulated time, a run against a broker."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from o2chain.procs import o2chain_argv
from o2chain.registers import load_profile
from o2chain.services import Mosquitto
from simulators.physics.atmosphere import isa_pressure_kpa, room_high_alarm_pct
from simulators.scenario import (
    Action,
    EventSpec,
    ScenarioError,
    ScenarioRunner,
    World,
    load_scenario,
    scenario_names,
)


def test_bundled_lhasa_hotel() -> None:
    assert "lhasa-hotel" in scenario_names()
    sc = load_scenario("lhasa-hotel")
    assert [s.altitude_m for s in sc.site] == [3650]
    assert len(sc.plant) == 1 and len(sc.concentrator) == 4 and len(sc.room) == 24
    timeline = [(e.at_s, e.target, e.action) for e in sc.event]
    assert (600, "room-104", Action.VENTILATION_FAILED) in timeline
    assert (900, "psa-1", Action.DRYER_FAILED) in timeline
    assert (1200, "", Action.BROKER_RESTART) in timeline
    assert (120, "conc-4", Action.MODBUS_SILENT) in timeline  # the demo's first alarm


def test_scenario_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[scenario]\nname = "x"\n[[site]]\nid = "s"\naltitude_m = 100\n'
        '[[room]]\nid = "r"\nsite = "s"\nsupply = "nope"\n'
    )
    with pytest.raises(ScenarioError, match="unknown supply 'nope'"):
        load_scenario(bad)
    bad.write_text('[scenario]\nname = "x"\ncolour = 1\n[[site]]\nid = "s"\naltitude_m = 1\n')
    with pytest.raises(ScenarioError, match=r"scenario\.colour"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match=r"bundled: .*lhasa-hotel"):
        load_scenario("atlantis")


def test_lhasa_world_in_simulated_time() -> None:
    sc = load_scenario("lhasa-hotel")
    world = World(sc)
    threshold = room_high_alarm_pct(isa_pressure_kpa(3650))
    events = sorted(sc.event, key=lambda e: e.at_s)
    crossed_at = None
    dryer_alarm_at = None
    for minute in range(1, 12 * 60):
        t = minute * 60.0
        while events and events[0].at_s <= t:
            world.apply(events.pop(0))
        world.advance(60.0)
        if crossed_at is None and world.rooms["room-104"].o2_pct > threshold:
            crossed_at = t
        if dryer_alarm_at is None and world.equipment["psa-1"].values()["alarm_dryer"]:
            dryer_alarm_at = t
        for room_id in ("room-101", "room-210", "room-301"):
            assert 24.0 <= world.rooms[room_id].o2_pct <= 26.0, (room_id, t)
    assert crossed_at is not None and 2 * 3600 < crossed_at - 600 < 8 * 3600
    assert dryer_alarm_at is not None and 0 < dryer_alarm_at - 900 < 3600
    # conc-3 stuck at full flow pushes its room up, above the others.
    assert world.rooms["room-303"].o2_pct > world.rooms["room-302"].o2_pct + 0.5
    # The plant's wetted sieve shows: purity below its starting value.
    assert world.equipment["psa-1"].purity_pct < 91.0


def test_plant_power_loss_empties_its_branches() -> None:
    world = World(load_scenario("lhasa-hotel"))
    world.apply(EventSpec(at_s=0, target="psa-1", action=Action.POWER_OFF))
    world.advance(6 * 3600)
    assert world.rooms["room-101"].o2_pct < 22.0
    assert 24.0 < world.rooms["room-301"].o2_pct < 26.0  # its own concentrator


@pytest.mark.integration
def test_runner_serves_modbus_and_boards_across_a_broker_restart(
    mosquitto: Mosquitto, mqtt_recorder: Any
) -> None:
    rec = mqtt_recorder("o2/+/+/telemetry")
    restarts: list[float] = []

    async def restart_broker() -> None:
        restarts.append(runner.sim_time_s)
        await asyncio.to_thread(mosquitto.restart)

    runner = ScenarioRunner(
        load_scenario("lhasa-hotel"),
        mqtt_url=mosquitto.url,
        speed=600.0,
        hooks={"broker_restart": restart_broker},
    )

    async def main() -> dict[str, Any]:
        endpoints = await runner.start()
        doc = json.loads(endpoints.to_json())
        try:
            await runner.run(duration_s=3000)
            plant = doc["modbus"]["psa-1"]
            port = int(plant["url"].rsplit(":", 1)[1])
            client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
            await client.connect()
            profile = load_profile("psa-plant")
            reg = profile.register("dew_point_c")
            rr = await client.read_input_registers(reg.address, count=2, device_id=1)
            doc["dew_point_c"] = reg.decode(list(rr.registers))
            client.close()
        finally:
            await runner.stop()
        return doc

    doc = asyncio.run(main())
    assert doc["ready"] and doc["mqtt"] == mosquitto.url
    assert set(doc["modbus"]) == {"psa-1", "conc-1", "conc-2", "conc-3", "conc-4"}
    assert len(doc["boards"]) == 24
    assert [e.action for _, e in runner.fired][:4] == [
        Action.MODBUS_SILENT,  # conc-4's link, at 120 s
        Action.VENTILATION_FAILED,
        Action.DRYER_FAILED,
        Action.BROKER_RESTART,
    ]
    assert restarts and restarts[0] == pytest.approx(1200, abs=1)
    assert doc["dew_point_c"] > -30.0  # the dryer failed at 900 s
    assert runner.fleet is not None
    assert sum(b.reconnects for b in runner.fleet.boards) >= 24
    devices = {t.split("/")[2] for t, _ in rec.readings()}
    rec.wait_for(lambda: len({t.split("/")[2] for t, _ in rec.readings()}) == 24)
    devices = {t.split("/")[2] for t, _ in rec.readings()}
    assert devices == set(doc["boards"])


def test_cli_rejects_an_unknown_scenario() -> None:
    done = subprocess.run(
        o2chain_argv("sim", "run", "atlantis"), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "lhasa-hotel" in done.stderr
