"""Scenarios: the bundled Lhasa hotel, the world in simulated time, a run against a broker."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from o2base.procs import o2chain_argv
from o2base.registers import load_profile
from o2base.services import Mosquitto
from simulators.physics.atmosphere import isa_pressure_kpa, room_high_alarm_pct
from simulators.physics.room import RoomKind
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
    assert {"lhasa-hotel", "lhasa-dryer"} <= set(scenario_names())
    sc = load_scenario("lhasa-hotel")
    assert [s.altitude_m for s in sc.site] == [3650]
    assert len(sc.plant) == 1 and len(sc.concentrator) == 4 and len(sc.room) == 24
    timeline = [(e.at_s, e.target, e.action) for e in sc.event]
    assert (600, "room-104", Action.VENTILATION_FAILED) in timeline
    assert (900, "psa-1", Action.DRYER_FAILED) in timeline
    assert (1200, "", Action.BROKER_RESTART) in timeline
    assert (120, "conc-4", Action.MODBUS_SILENT) in timeline  # the demo's first alarm
    co2 = {r.id for r in sc.room if r.co2_sensor}
    assert co2 == {"room-104", "room-105", "room-201", "room-202"}
    # Rooms are hotel rooms ventilated to GB 50736 unless the file says otherwise.
    assert all(r.kind is RoomKind.HOTEL_ROOM for r in sc.room)
    assert {r.params().ach_per_h for r in sc.room if r.supply == "psa-1"} == {2.0}
    assert sc.scenario.speed is None  # real time unless --speed


def test_runner_speed_is_the_scenarios_time_compression() -> None:
    dryer = load_scenario("lhasa-dryer")
    assert dryer.scenario.speed == 3600
    assert ScenarioRunner(dryer).speed == 3600
    assert ScenarioRunner(dryer, speed=60.0).speed == 60.0  # an explicit speed wins
    assert ScenarioRunner(load_scenario("lhasa-hotel")).speed == 1.0


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
    plant = world.equipment["psa-1"]
    baseline = plant.purity_pct
    assert 92.0 < baseline < 93.0  # 720 L/min from a 100 Nm3/h plant derated to 3650 m
    assert 64.0 < plant.ambient_kpa < 66.5  # the site's weather, ISA + 0.7 kPa
    assert plant.capacity_lpm == pytest.approx(1667.0 * plant.ambient_kpa / 101.325)
    assert world.rooms["room-202"].co2_ppm > 1000.0  # two guests: the standing CO2 warning
    events = sorted(sc.event, key=lambda e: e.at_s)
    crossed_at = co2_at = dryer_alarm_at = None
    for minute in range(1, 12 * 60):
        t = minute * 60.0
        while events and events[0].at_s <= t:
            world.apply(events.pop(0))
        world.advance(60.0)
        room_104 = world.rooms["room-104"]
        if crossed_at is None and room_104.o2_pct > threshold:
            crossed_at = t
        if co2_at is None and room_104.co2_ppm > 1500.0:
            co2_at = t
        if dryer_alarm_at is None and plant.values()["alarm_dryer"]:
            dryer_alarm_at = t
        for room_id in ("room-101", "room-210"):
            assert 24.0 <= world.rooms[room_id].o2_pct <= 26.0, (room_id, t)
        for room_id in ("room-105", "room-201"):  # one guest, code ventilation
            assert world.rooms[room_id].co2_ppm < 1000.0, (room_id, t)
    # room-104 keeps its oxygen after its fan stops: the O2 alarm within the hour, then CO2.
    assert crossed_at is not None and 10 * 60 < crossed_at - 600 < 3600
    assert co2_at is not None and crossed_at < co2_at < 600 + 2 * 3600
    assert dryer_alarm_at is not None and 0 < dryer_alarm_at - 900 < 3600
    # ... but the plant's purity has hardly moved in 12 hours (the weather moves it as much):
    # the sieve wets over weeks.
    assert plant.wetted_fraction > 0.0
    assert abs(plant.purity_pct - baseline) < 0.3
    # conc-3 stuck at its 7.5 L/min end stop, 2.4 times its capacity at 3650 m: purity alarm.
    conc_3 = world.equipment["conc-3"]
    assert conc_3.flow_lpm == 7.5 and conc_3.purity_pct < 70.0
    assert int(conc_3.values()["alarm_bits"]) & 1
    assert world.equipment["conc-2"].purity_pct > 89.0  # its neighbour at 3 L/min
    # A bedside concentrator hardly enriches a ventilated room; stuck, a little more gas.
    assert world.rooms["room-302"].o2_pct < 22.0
    assert world.rooms["room-303"].o2_pct > world.rooms["room-302"].o2_pct + 0.2


def test_lhasa_supply_is_coupled_to_the_plant_and_the_rooms() -> None:
    """The plant fills the buffer tank with what the rooms' branches draw, the zone valve box
    meters them per floor, the failing riser regulator sags the zones below the area alarm
    within the demo's first minutes, and the riser leak is made up by the plant, unmetered."""
    sc = load_scenario("lhasa-hotel")
    world = World(sc)
    plant, tank, panel = (
        world.equipment["psa-1"],
        world.supplies["buffer-1"],
        world.supplies["panel-1"],
    )
    events = sorted(sc.event, key=lambda e: e.at_s)
    low_at: dict[str, float] = {}
    seen: dict[float, dict[str, Any]] = {}
    for step in range(1, 2700 // 5 + 1):
        t = step * 5.0
        while events and events[0].at_s <= t:
            event = events.pop(0)
            world.advance(event.at_s - world.t_s)
            world.apply(event)
        world.advance(t - world.t_s)
        values = panel.values()
        for zone in ("zone1_kpa", "zone2_kpa", "zone3_kpa"):
            if zone not in low_at and float(values[zone]) < 320.0:
                low_at[zone] = t
        if t in (55.0, 500.0, 1000.0, 2000.0, 2700.0):
            seen[t] = {
                "plant": plant.flow_lpm, "tank_kpa": tank.tank_kpa, **tank.values(),
                **{f"panel_{k}": v for k, v in values.items()},
            }  # fmt: skip
    branches = 20 * 36.0  # normal L/min
    start = seen[55.0]
    assert start["plant"] == branches
    assert start["panel_zone1_m3h"] == pytest.approx(10 * 36 * 0.06, abs=0.05)
    assert start["panel_flow_m3h"] == pytest.approx(branches * 0.06, abs=0.1)
    assert 360.0 < float(start["panel_zone1_kpa"]) < 375.0  # 400 less droop and branch drop
    assert start["panel_alarm_low"] is False
    # The regulator drifts from 60 s: zones 1-2 below 320 kPa at about 205 s, zone 3 later.
    assert 190.0 <= low_at["zone1_kpa"] <= 220.0 and 190.0 <= low_at["zone2_kpa"] <= 220.0
    assert 250.0 <= low_at["zone3_kpa"] <= 290.0
    assert seen[500.0]["panel_alarm_low"] is True
    assert 255.0 < float(seen[500.0]["panel_zone1_kpa"]) < 280.0  # the drift stopped at 360 s
    # The leak (600-1800 s): the plant covers it, the tank holds, no meter sees it.
    leaking = seen[1000.0]
    assert leaking["plant"] == pytest.approx(branches + 3.0 / 0.06)
    assert leaking["tank_kpa"] == pytest.approx(800.0, abs=1.0)
    assert leaking["level_pct"] == 100.0
    assert leaking["panel_flow_m3h"] == pytest.approx(start["panel_flow_m3h"], abs=0.01)
    assert seen[2000.0]["plant"] == branches
    # The regulator replaced at 2400 s: the zones are back.
    assert seen[2700.0]["panel_alarm_low"] is False
    assert float(seen[2700.0]["panel_zone1_kpa"]) > 360.0


def test_supply_scenario_errors_name_the_key(tmp_path: Path) -> None:
    head = (
        '[scenario]\nname = "x"\n[[site]]\nid = "s"\naltitude_m = 100\n'
        '[[plant]]\nid = "p"\nsite = "s"\nprofile = "psa-plant"\n'
        '[[room]]\nid = "r"\nsite = "s"\nsupply = "p"\n'
        '[[room]]\nid = "q"\nsite = "s"\n'
        '[[supply]]\nid = "tank"\nsite = "s"\nprofile = "buffer-tank"\nfed_from = ["p"]\n'
    )
    bad = tmp_path / "bad.toml"
    for extra, error in (
        ('[[supply]]\nid = "x"\nsite = "s"\nprofile = "buffer-tank"\nfed_from = ["tank"]\n',
         "fed_from 'tank' is not a plant"),
        ('[[supply]]\nid = "x"\nsite = "s"\nprofile = "area-alarm-panel"\nfed_from = ["p"]\n',
         "fed_from 'p' is not a supply device"),
        ('[[supply]]\nid = "x"\nsite = "s"\nprofile = "lox-tank"\nfed_from = ["tank"]\n',
         "simulated for a buffer tank"),
        ('[[supply]]\nid = "x"\nsite = "s"\nprofile = "area-alarm-panel"\nzones = [["q"]]\n',
         "'q' is not a room on a plant's pipeline"),
        ('[[supply]]\nid = "x"\nsite = "s"\nprofile = "lox-tank"\nzones = [["r"]]\n',
         "zones are an area alarm panel's"),
        ('[[supply]]\nid = "x"\nsite = "s"\nprofile = "area-alarm-panel"\n'
         '[[event]]\nat_s = 1\ntarget = "x"\naction = "leak"\nvalue = 1\n',
         "a leak is simulated on a buffer tank"),
        ('[[event]]\nat_s = 1\ntarget = "p"\naction = "regulator_drift"\nvalue = 1\n',
         "'p' is not a supply device"),
        ('[[event]]\nat_s = 1\ntarget = "tank"\naction = "leak"\n', "needs a value"),
    ):  # fmt: skip
        bad.write_text(head + extra)
        with pytest.raises(ScenarioError, match=error):
            load_scenario(bad)
    bad.write_text(head + '[[event]]\nat_s = 1\ntarget = "tank"\naction = "modbus_silent"\n')
    assert load_scenario(bad).event[0].target == "tank"  # supplies are served over Modbus


def test_lhasa_dryer_purity_falls_over_weeks() -> None:
    sc = load_scenario("lhasa-dryer")
    world = World(sc)
    plant = world.equipment["psa-1"]
    baseline = plant.purity_pct
    assert 92.0 < baseline < 93.0
    days: dict[str, float] = {}
    pending = sorted(sc.event, key=lambda e: e.at_s)
    duration_s, speed = sc.scenario.duration_s, sc.scenario.speed
    assert duration_s is not None and speed is not None
    while world.t_s < duration_s:
        while pending and pending[0].at_s <= world.t_s:
            world.apply(pending.pop(0))
        world.advance(600.0)
        day = world.t_s / 86400.0
        values = plant.values()
        if "dew" not in days and values["alarm_dryer"]:
            days["dew"] = day
        if "warn" not in days and plant.purity_pct < 91.0:
            days["warn"] = day
        if "alarm" not in days and values["alarm_purity"]:
            days["alarm"] = day
    assert days["dew"] < 0.1  # within the first two hours
    assert 10.0 < days["warn"] < 17.0 and 17.0 < days["alarm"] < 24.0, days
    # Rooms follow their product: a little less O2 with the wetted plant, still enriched.
    assert 23.5 < world.rooms["room-102"].o2_pct < 24.9
    # Four weeks at 3600x is about 11 real minutes.
    assert duration_s / speed < 12 * 60


def test_plant_power_loss_empties_its_branches() -> None:
    world = World(load_scenario("lhasa-hotel"))
    world.apply(EventSpec(at_s=0, target="psa-1", action=Action.POWER_OFF))
    world.advance(6 * 3600)
    assert world.rooms["room-101"].o2_pct < 22.0
    assert world.rooms["room-301"].o2_pct > world.rooms["room-101"].o2_pct  # its own unit


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
            # conc-3 stuck at full flow since 1500 s: its own low-purity alarm bit is set.
            conc = doc["modbus"]["conc-3"]
            port = int(conc["url"].rsplit(":", 1)[1])
            client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
            await client.connect()
            reg = load_profile("medical-concentrator").register("alarm_bits")
            rr = await client.read_holding_registers(reg.address, count=1, device_id=1)
            doc["conc_3_alarm_bits"] = reg.decode(list(rr.registers))
            client.close()
        finally:
            await runner.stop()
        return doc

    doc = asyncio.run(main())
    assert doc["ready"] and doc["mqtt"] == mosquitto.url
    assert set(doc["modbus"]) == {
        *("psa-1", "conc-1", "conc-2", "conc-3", "conc-4"),
        *("buffer-1", "panel-1", "manifold-1", "lox-1"),
    }
    assert doc["modbus"]["lox-1"]["kind"] == "supply"
    assert doc["modbus"]["panel-1"]["fed_from"] == ["buffer-1"]
    assert "fed_from" not in doc["modbus"]["lox-1"]
    assert len(doc["boards"]) == 24
    fired = [(e.at_s, e.action) for _, e in runner.fired]
    assert fired[:3] == [
        (60, Action.REGULATOR_DRIFT),  # the riser regulator starts failing
        (120, Action.MODBUS_SILENT),  # conc-4's link
        (360, Action.REGULATOR_DRIFT),
    ]
    assert sorted(fired[3:7]) == [
        (600, Action.LEAK),
        (600, Action.VENTILATION_FAILED),
        (900, Action.DRYER_FAILED),
        (1200, Action.BROKER_RESTART),
    ]
    assert restarts and restarts[0] == pytest.approx(1200, abs=1)
    assert doc["dew_point_c"] > -30.0  # the dryer failed at 900 s
    assert int(doc["conc_3_alarm_bits"]) & 1
    assert runner.fleet is not None
    assert sum(b.reconnects for b in runner.fleet.boards) >= 24
    rec.wait_for(lambda: len({t.split("/")[2] for t, _ in rec.readings()}) == 24)
    devices = {t.split("/")[2] for t, _ in rec.readings()}
    assert devices == set(doc["boards"])
    # Boards of rooms with a CO2 sensor publish co2_ppm, the others do not.
    co2: dict[str, list[tuple[int, float]]] = {}
    for topic, reading in rec.readings():
        if "co2_ppm" in reading:
            co2.setdefault(topic.split("/")[2], []).append((reading["seq"], reading["co2_ppm"]))
    assert set(co2) == {"room-104", "room-105", "room-201", "room-202"}
    # room-104's fan stopped at 600 s: by 3000 s its CO2 has climbed from below 1,000 ppm.
    series = sorted(co2["room-104"])
    assert series[0][1] < 1000.0 and series[-1][1] > series[0][1] + 200.0
    # ... and its O2 passed the 27.9 % high alarm about 26 simulated minutes after the failure.
    o2_104 = sorted((r["seq"], r["o2_pct"]) for t, r in rec.readings() if "room-104" in t)
    assert o2_104[0][1] < 26.0 and max(o2 for _, o2 in o2_104) > 27.9


def test_cli_rejects_an_unknown_scenario() -> None:
    done = subprocess.run(
        o2chain_argv("sim", "run", "atlantis"), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "lhasa-hotel" in done.stderr


@pytest.mark.integration
def test_cli_runs_a_time_compressed_scenario_at_its_own_speed() -> None:
    """lhasa-dryer declares speed = 3600: two simulated hours take about two real seconds."""
    done = subprocess.run(
        o2chain_argv("sim", "run", "lhasa-dryer", "--own-broker", "--sim-duration", "7200"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    ready, end = lines[0], lines[-1]
    assert ready["ready"] and ready["speed"] == 3600
    assert set(ready["boards"]) == {"room-101", "room-102", "room-103", "room-104"}
    assert end["done"] and end["sim_time_s"] >= 7200
    assert [(e["t_s"], e["action"]) for e in end["events"]] == [(3600.0, "dryer_failed")]


def test_lhasa_rooms_drive_the_gateway_alarm_engine(tmp_path: Path) -> None:
    """The scenario's room readings through the gateway's enricher and alarm engine, in
    simulated time: room-104 raises the O2 fire-hazard alarm, then the CO2 alarm; room-202
    (two guests) holds the CO2 warning; room-105 stays quiet."""
    from gateway.alarms import AlarmEngine, AlarmEvent
    from gateway.config import parse_config
    from gateway.enrich import Enricher
    from gateway.pipeline import Pipeline
    from gateway.readings import FieldValue, Reading
    from gateway.state_store import StateStore

    t0_ms, t_s = 1_750_000_000_000, [0.0]

    def clock() -> int:
        return t0_ms + int(t_s[0] * 1000)

    rooms = ("room-104", "room-105", "room-202")
    config = parse_config(
        {
            "site": [{"id": "lhasa-hotel", "altitude_m": 3650}],
            "device": [
                {"id": r, "site": "lhasa-hotel", "kind": "room", "transport": "mqtt",
                 "room": r, "interval_s": 60}
                for r in rooms
            ],
        }
    )  # fmt: skip
    store = StateStore(tmp_path / "alarms.sqlite")
    engine = AlarmEngine(config, store, clock_ms=clock)
    events: list[AlarmEvent] = []
    engine.listeners.append(events.append)
    enricher = Enricher(config, store, clock_ms=clock)
    pipeline = Pipeline([enricher, engine, engine.committed_locally])
    sc = load_scenario("lhasa-hotel")
    world = World(sc)
    pending = sorted(sc.event, key=lambda e: e.at_s)
    for _ in range(3 * 60):
        while pending and pending[0].at_s <= world.t_s:
            world.apply(pending.pop(0))
        world.advance(60.0)
        t_s[0] = world.t_s
        for room_id in rooms:
            tags = {"site": "lhasa-hotel", "device": room_id, "room": room_id}
            fields: dict[str, FieldValue] = dict(world.rooms[room_id].reading())
            pipeline.process([Reading("room", tags, fields, clock())])
    raised = {(e.alarm["device"], e.alarm["rule"]): e.ts_ms for e in events if e.state == "raise"}
    assert ("room-104", "room-o2-high") in raised and ("room-104", "co2-high") in raised
    assert raised[("room-104", "room-o2-high")] < raised[("room-104", "co2-high")]
    assert raised[("room-104", "room-o2-high")] - t0_ms < (600 + 3600) * 1000
    assert ("room-202", "co2-warn") in raised and ("room-202", "co2-high") not in raised
    assert not [k for k in raised if k[0] == "room-105"]
