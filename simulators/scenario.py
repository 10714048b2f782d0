"""Scenarios: a facility in a TOML file, run as Modbus equipment plus MQTT room boards.

A scenario declares sites (altitude), PSA plants and concentrators (served over Modbus TCP or
RTU from their device profiles), rooms (fed by a concentrator or by a branch of a plant's
pipeline; each with a board publishing telemetry over MQTT like the fleet's boards) and a
timeline of events (faults and repairs). :class:`ScenarioRunner` runs one: a world clock steps
every physics model in simulated time (``speed`` simulated seconds per real second), events
fire at their simulated time, Modbus reads see the present state, boards report every
``boards.interval_s`` simulated seconds.

    runner = ScenarioRunner(load_scenario("lhasa-hotel"), mqtt_url="mqtt://127.0.0.1:1883")
    endpoints = await runner.start()       # Modbus servers listening, boards connecting
    print(endpoints.to_json())             # what listens where
    await runner.run(duration_s=1800)      # simulated seconds; None = until stop()
    await runner.stop()

``broker_restart`` events need a broker the runner can restart: with ``own_broker_dir`` the
runner starts its own private Mosquitto (o2base.services) and restarts it; otherwise a
``hooks={"broker_restart": fn}`` callback is called, and without one the event is logged and
skipped. Bundled scenarios live in ``simulators/scenarios/*.toml``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import time
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from o2base.registers import load_profile
from simulators.fleet import Fleet, FleetConfig, ReadingSource
from simulators.modbus_server import (
    DeviceFaults,
    ModbusRtuSimulator,
    ModbusTcpSimulator,
    SimulatedDevice,
    model_for,
)
from simulators.physics.atmosphere import Weather
from simulators.physics.concentrator import ConcentratorModel, params_from_profile
from simulators.physics.room import FixedSupply, FlowBasis, RoomKind, RoomModel, room_params
from simulators.physics.supply import AreaPanelModel, BufferTankModel

NL_MIN_TO_M3H = 60.0 / 1000.0  # normal litres per minute to normal m3 per hour

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None] | None]
ID_PATTERN = r"^[a-z0-9-]{1,32}$"


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file and the key."""


class Action(StrEnum):
    """What an event does to its target."""

    VENTILATION_FAILED = "ventilation_failed"  # room
    VENTILATION_RESTORED = "ventilation_restored"  # room
    OCCUPANTS = "occupants"  # room, value = people
    DRYER_FAILED = "dryer_failed"  # plant / concentrator
    DRYER_REPAIRED = "dryer_repaired"
    FLOW_STUCK_FULL = "flow_stuck_full"
    FLOW_RELEASED = "flow_released"
    FLOW_LPM = "flow_lpm"  # value = setpoint
    COMPRESSOR_WEAR = "compressor_wear"  # value 0..1
    AMBIENT_TEMP_C = "ambient_temp_c"  # value
    POWER_OFF = "power_off"
    POWER_ON = "power_on"
    MODBUS_SILENT = "modbus_silent"  # the device stops answering
    MODBUS_ANSWER = "modbus_answer"  # ... and answers again (clears every Modbus fault)
    MODBUS_SLOW = "modbus_slow"  # value = delay in real seconds
    MODBUS_EXCEPTION = "modbus_exception"  # value = exception code
    MODBUS_CORRUPT = "modbus_corrupt"  # value = every n-th answer damaged
    BROKER_RESTART = "broker_restart"  # target ignored
    REGULATOR_DRIFT = "regulator_drift"  # supply, value = kPa/h the outlet sinks (0 stops it)
    REGULATOR_REPAIRED = "regulator_repaired"  # supply: the outlet back at its setpoint
    LEAK = "leak"  # buffer tank / manifold / LOX tank, value = normal m3/h (0: fixed)


_ROOM_ACTIONS = {Action.VENTILATION_FAILED, Action.VENTILATION_RESTORED, Action.OCCUPANTS}
_SUPPLY_ACTIONS = {Action.REGULATOR_DRIFT, Action.REGULATOR_REPAIRED, Action.LEAK}
_VALUE_ACTIONS = {
    Action.REGULATOR_DRIFT,
    Action.LEAK,
    Action.OCCUPANTS,
    Action.FLOW_LPM,
    Action.COMPRESSOR_WEAR,
    Action.AMBIENT_TEMP_C,
    Action.MODBUS_SLOW,
    Action.MODBUS_EXCEPTION,
    Action.MODBUS_CORRUPT,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScenarioHead(_Strict):
    name: str = Field(pattern=ID_PATTERN)
    description: str = ""
    seed: int = 0
    duration_s: float | None = Field(default=None, gt=0)  # default run length (simulated)
    # The scenario's time compression (simulated seconds per real second) when the runner is
    # given none: a scenario about a fault that takes weeks says so here, the physics stays real.
    speed: float | None = Field(default=None, gt=0)


class SiteSpec(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    altitude_m: float = Field(ge=-500, le=9000)
    baro_offset_kpa: float = 0.0  # station pressure minus ISA


class EquipmentSpec(_Strict):
    """A PSA plant or a concentrator served over Modbus (or an MQTT sensor board)."""

    id: str = Field(pattern=ID_PATTERN)
    site: str
    profile: str
    transport: Literal["modbus", "mqtt"] = "modbus"
    listen: str = "tcp://127.0.0.1:0"  # same non-zero listen URL = one shared server
    unit: int = Field(default=1, ge=1, le=247)
    rated_flow_lpm: float | None = Field(default=None, gt=0)  # default: profile nominal
    flow_lpm: float | None = Field(default=None, ge=0)  # concentrator setpoint
    ambient_temp_c: float = 20.0
    degradation_pct_per_day: float = 0.0


class SupplySpec(_Strict):
    """Supply equipment served over Modbus (``kind = "supply"`` profiles: buffer tank, cylinder
    manifold, LOX tank, area alarm panel), with its own physics (simulators/physics/supply.py)
    stepped at the runner's speed, and the state it starts in."""

    id: str = Field(pattern=ID_PATTERN)
    site: str
    profile: str
    listen: str = "tcp://127.0.0.1:0"
    unit: int = Field(default=1, ge=1, le=247)
    demand_m3h: float | None = Field(default=None, ge=0)  # normal m3/h drawn
    left_bank_kpa: float | None = Field(default=None, ge=0)  # manifold: the bank in service
    level_pct: float | None = Field(default=None, ge=0, le=100)  # LOX tank at the start
    changeover_failed: bool = False  # manifold fault
    regulator_drift_kpa_per_h: float = 0.0  # a failing line regulator
    # Coupled supply: a buffer tank fed from a plant takes the plant's product and gives the
    # plant's pipeline branches (the plant also covers the tank's leak); an area alarm panel fed
    # from a supply device draws on that device's pressure. Also the gateway's fed_from.
    fed_from: list[str] = Field(default=[], max_length=1)
    zones: list[list[str]] = []  # area panel: the rooms (pipeline branches) behind each zone


class RoomSpec(_Strict):
    """A room; unset sizes come from its ``kind`` (simulators.physics.room.ROOM_KINDS)."""

    id: str = Field(pattern=ID_PATTERN)
    site: str
    kind: RoomKind = RoomKind.HOTEL_ROOM
    supply: str | None = None  # a concentrator id or a plant id; None = no enrichment
    supply_flow_lpm: float = Field(default=10.0, ge=0)  # branch flow (normal L/min) from a plant
    volume_m3: float | None = Field(default=None, gt=0)
    ach_per_h: float | None = Field(default=None, gt=0)  # outdoor air, ventilation working
    failed_ach_per_h: float | None = Field(default=None, ge=0)  # infiltration when it fails
    occupants: int | None = Field(default=None, ge=0)
    temp_c: float | None = None
    co2_sensor: bool = False  # the room's board also publishes co2_ppm
    board: str | None = Field(default=None, pattern=ID_PATTERN)  # device id; default = room id

    def params(self) -> Any:
        """The room's physics parameters: its kind's defaults with what the file sets."""
        return room_params(
            self.kind,
            volume_m3=self.volume_m3,
            ach_per_h=self.ach_per_h,
            failed_ach_per_h=self.failed_ach_per_h,
            occupants=self.occupants,
            temp_c=self.temp_c,
            co2_sensor=self.co2_sensor,
        )


class BoardsSpec(_Strict):
    interval_s: float = Field(default=10.0, gt=0)  # simulated seconds between readings
    prefix: str = "o2"


class EventSpec(_Strict):
    at_s: float = Field(ge=0)
    target: str = ""
    action: Action
    value: float | None = None

    @model_validator(mode="after")
    def _value_when_needed(self) -> EventSpec:
        if self.action in _VALUE_ACTIONS and self.value is None:
            raise ValueError(f"action {self.action.value!r} needs a value")
        if self.action is not Action.BROKER_RESTART and not self.target:
            raise ValueError(f"action {self.action.value!r} needs a target")
        return self


class Scenario(_Strict):
    scenario: ScenarioHead
    site: list[SiteSpec] = Field(min_length=1)
    plant: list[EquipmentSpec] = []
    concentrator: list[EquipmentSpec] = []
    room: list[RoomSpec] = []
    supply: list[SupplySpec] = []
    boards: BoardsSpec = BoardsSpec()
    event: list[EventSpec] = []

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        sites = {s.id for s in self.site}
        equipment = {e.id: e for e in [*self.plant, *self.concentrator]}
        rooms = {r.id for r in self.room}
        ids = [e.id for e in [*self.plant, *self.concentrator]] + [r.id for r in self.room]
        ids += [s.id for s in self.supply]
        if len(set(ids)) != len(ids):
            raise ValueError("plant, concentrator, supply and room ids must be unique")
        supplies = {s.id: s for s in self.supply}
        plants = {p.id for p in self.plant}
        rooms_by_id = {r.id: r for r in self.room}
        for sup in self.supply:
            if sup.site not in sites:
                raise ValueError(f"{sup.id}: unknown site {sup.site!r}")
            if load_profile(sup.profile).kind != "supply":
                raise ValueError(
                    f"supply {sup.id}: profile {sup.profile!r} is not a supply profile"
                )
            model = _supply_model_name(sup)
            for up in sup.fed_from:
                if model == "buffer-tank" and up not in plants:
                    raise ValueError(f"supply {sup.id}: fed_from {up!r} is not a plant")
                if model == "area-panel" and up not in supplies:
                    raise ValueError(f"supply {sup.id}: fed_from {up!r} is not a supply device")
                if model not in ("buffer-tank", "area-panel"):
                    raise ValueError(
                        f"supply {sup.id}: fed_from is simulated for a buffer tank (from a "
                        "plant) and an area alarm panel (from a supply device) only"
                    )
            if sup.zones:
                if model != "area-panel":
                    raise ValueError(f"supply {sup.id}: zones are an area alarm panel's")
                nominal_zones = load_profile(sup.profile).nominal.get("zones", 3)
                if len(sup.zones) > int(str(nominal_zones)):
                    raise ValueError(
                        f"supply {sup.id}: {len(sup.zones)} zones, the profile has {nominal_zones}"
                    )
                for zone in sup.zones:
                    for room_id in zone:
                        fed_room = rooms_by_id.get(room_id)
                        if fed_room is None or fed_room.supply not in plants:
                            raise ValueError(
                                f"supply {sup.id}: zones: {room_id!r} is not a room on a "
                                "plant's pipeline"
                            )
        placed: list[tuple[str, str]] = [(e.id, e.site) for e in [*self.plant, *self.concentrator]]
        for thing_id, site in placed + [(r.id, r.site) for r in self.room]:
            if site not in sites:
                raise ValueError(f"{thing_id}: unknown site {site!r}")
        fed: set[str] = set()
        for room in self.room:
            if room.supply is not None and room.supply not in equipment:
                raise ValueError(f"room {room.id}: unknown supply {room.supply!r}")
            if room.supply in {c.id for c in self.concentrator}:
                if room.supply in fed:
                    raise ValueError(f"concentrator {room.supply} feeds more than one room")
                fed.add(room.supply)
        for event in self.event:
            if event.action is Action.BROKER_RESTART:
                continue
            where = f"event at {event.at_s} s: {event.target!r}"
            if event.action in _ROOM_ACTIONS:
                if event.target not in rooms:
                    raise ValueError(f"{where} is not a room")
            elif event.action in _SUPPLY_ACTIONS:
                if event.target not in supplies:
                    raise ValueError(f"{where} is not a supply device")
                if event.action is Action.LEAK and _supply_model_name(
                    supplies[event.target]
                ) not in ("buffer-tank", "manifold", "lox-tank"):
                    raise ValueError(
                        f"{where}: a leak is simulated on a buffer tank, manifold or LOX tank"
                    )
            elif event.action.value.startswith("modbus_"):
                if event.target not in equipment and event.target not in supplies:
                    raise ValueError(f"{where} is not served over Modbus")
            elif event.target not in equipment:
                raise ValueError(f"{where} is not equipment")
        for e in [*self.plant, *self.concentrator]:
            load_profile(e.profile)  # raises ProfileError naming the profile
        return self

    def site_of(self, site_id: str) -> SiteSpec:
        return next(s for s in self.site if s.id == site_id)


def scenario_names() -> list[str]:
    """Names of the bundled scenarios, sorted."""
    folder = Path(str(resources.files("simulators") / "scenarios"))
    return sorted(p.stem for p in folder.glob("*.toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a bundled scenario by name or any scenario file; raises :class:`ScenarioError`."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = Path(str(resources.files("simulators") / "scenarios" / f"{name_or_path}.toml"))
        if not path.exists():
            raise ScenarioError(
                f"unknown scenario {name_or_path!r}; bundled: {', '.join(scenario_names())}"
            )
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    # A profile file named in the scenario is found beside the scenario file first.
    for items in data.values():
        for item in items if isinstance(items, list) else []:
            ref = item.get("profile") if isinstance(item, dict) else None
            if isinstance(ref, str) and ref.endswith(".toml") and not Path(ref).is_absolute():
                beside = path.parent / ref
                if beside.is_file():
                    item["profile"] = str(beside)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg'].removeprefix('Value error, ')}")
        raise ScenarioError(f"{path}: invalid scenario:\n" + "\n".join(lines)) from None
    except ValueError as exc:  # ProfileError from the references check
        raise ScenarioError(f"{path}: {exc}") from exc


# -- the world: every model, stepped together -----------------------------------------------------


def _equipment_model(spec: EquipmentSpec, seed: int) -> ConcentratorModel:
    profile = load_profile(spec.profile)
    overrides = {
        "ambient_temp_c": spec.ambient_temp_c,
        "degradation_pct_per_day": spec.degradation_pct_per_day,
    }
    if spec.rated_flow_lpm is not None:
        overrides["rated_flow_lpm"] = spec.rated_flow_lpm
    params = params_from_profile(profile.nominal, **overrides)
    return ConcentratorModel(params, seed=seed, flow_lpm=spec.flow_lpm)


def _supply_model_name(spec: SupplySpec) -> str:
    """The physics a supply profile names (``[nominal] model``)."""
    return str(load_profile(spec.profile).nominal.get("model", ""))


def _supply_model(spec: SupplySpec, seed: int) -> Any:
    """A supply device's physics in the state the scenario starts it in."""
    model: Any = model_for(load_profile(spec.profile), seed=seed)
    if spec.demand_m3h is not None:
        for demand in _demands(model):
            demand.demand_m3h = spec.demand_m3h
    if spec.left_bank_kpa is not None and hasattr(model, "bank_kpa"):
        model.bank_kpa[model.in_service] = spec.left_bank_kpa
    if spec.level_pct is not None and hasattr(model, "liquid_l"):
        model.liquid_l = model.params.capacity_l * spec.level_pct / 100.0
    if spec.changeover_failed:
        model.changeover_failed = True
    regulator = getattr(getattr(model, "params", None), "regulator", None)
    if regulator is not None:
        regulator.drift_kpa_per_h = spec.regulator_drift_kpa_per_h
    if isinstance(model, BufferTankModel) and spec.fed_from:
        # The plant's pipeline draws the rooms' branch flows, whatever the line pressure; the
        # pressure the rooms see is modelled at the zone valve box downstream.
        model.params.regulator.droop_kpa_per_m3h = 0.0
        model.inflow_m3h = 0.0
    if isinstance(model, AreaPanelModel) and spec.zones:
        for zone in model.params.zones:
            zone.demand.demand_m3h = 0.0  # set from its rooms' branches as the world runs
    return model


def _demands(model: Any) -> list[Any]:
    """The flow demands of a supply model (one, or one per zone of an area panel)."""
    params: Any = getattr(model, "params", None)
    if hasattr(params, "demand"):
        return [params.demand]
    return [z.demand for z in getattr(params, "zones", [])]


class World:
    """Every plant, concentrator and room of a scenario, in one simulated time."""

    def __init__(self, scenario: Scenario) -> None:
        seed = scenario.scenario.seed
        self.scenario = scenario
        self.t_s = 0.0
        self.equipment: dict[str, ConcentratorModel] = {}
        weathers = {
            s.id: Weather(s.altitude_m, offset_kpa=s.baro_offset_kpa, seed=seed)
            for s in scenario.site
        }
        # Each unit breathes its site's air: the compressor's output follows the pressure.
        self.equipment_weather: dict[str, Weather] = {}
        for n, spec in enumerate([*scenario.plant, *scenario.concentrator]):
            self.equipment[spec.id] = _equipment_model(spec, seed * 1000 + n)
            self.equipment_weather[spec.id] = weathers[spec.site]
        self.plants = {p.id for p in scenario.plant}
        self.branches: dict[str, list[tuple[FixedSupply, float]]] = {p: [] for p in self.plants}
        # Supply equipment, stepped with everything else (coupled to plants and rooms).
        self.supply_specs = {s.id: s for s in scenario.supply}
        self.supplies: dict[str, Any] = {
            s.id: _supply_model(s, seed * 1000 + 500 + n) for n, s in enumerate(scenario.supply)
        }
        self.room_branch: dict[str, FixedSupply] = {}
        supplies: list[Any] = []
        for room_spec in scenario.room:
            supply: Any
            if room_spec.supply is None:
                supply = FixedSupply()
            elif room_spec.supply in self.plants:
                supply = FixedSupply(room_spec.supply_flow_lpm, 93.0, FlowBasis.NORMAL)
                self.branches[room_spec.supply].append((supply, room_spec.supply_flow_lpm))
                self.room_branch[room_spec.id] = supply
            else:
                supply = self.equipment[room_spec.supply]
            supplies.append(supply)
        # Plant flows from their branches and every unit at its site's pressure, then the
        # product of that state, so each room starts at its true steady state.
        self._sync_branches()
        self._sync_ambient()
        for model in self.equipment.values():
            model.advance(0.0)
        self._sync_branches()
        self.rooms: dict[str, RoomModel] = {}
        for n, (room_spec, supply) in enumerate(zip(scenario.room, supplies, strict=True)):
            self.rooms[room_spec.id] = RoomModel(
                room_spec.params(),
                weathers[room_spec.site],
                supply,
                seed=seed * 1000 + 500 + n,
                drives_supply=False,
            )
        self._sync_supplies()

    def _sync_ambient(self) -> None:
        for equipment_id, weather in self.equipment_weather.items():
            self.equipment[equipment_id].ambient_kpa = weather.pressure_kpa(self.t_s)

    def _tanks_of(self, plant_id: str) -> list[Any]:
        return [
            self.supplies[s.id]
            for s in self.supply_specs.values()
            if plant_id in s.fed_from and isinstance(self.supplies[s.id], BufferTankModel)
        ]

    def _sync_branches(self) -> None:
        """Plant flow = sum of its branches (plus the leaks of the buffer tanks it fills, which
        it covers to hold their pressure); each branch gets the plant's product."""
        for plant_id, branches in self.branches.items():
            plant = self.equipment[plant_id]
            leaks = sum(t.params.demand.leak_m3h for t in self._tanks_of(plant_id))
            if branches:
                plant.flow_setpoint_lpm = sum(flow for _, flow in branches) + leaks / NL_MIN_TO_M3H
            for supply, flow in branches:
                supply.flow_lpm = flow if plant.running else 0.0
                supply.purity_pct = plant.purity_pct

    def _sync_supplies(self) -> None:
        """Coupled supply devices follow their plant, their upstream device and their rooms."""
        for sup_id, spec in self.supply_specs.items():
            model = self.supplies[sup_id]
            if not spec.fed_from:
                continue
            up = spec.fed_from[0]
            if isinstance(model, BufferTankModel):
                plant = self.equipment[up]
                branches = sum(flow for _, flow in self.branches.get(up, []))
                model.params.demand.demand_m3h = branches * NL_MIN_TO_M3H
                model.inflow_m3h = plant.flow_lpm * NL_MIN_TO_M3H
            elif isinstance(model, AreaPanelModel):
                model.params.source_kpa = self.supplies[up].source_kpa()
        for sup_id, spec in self.supply_specs.items():
            model = self.supplies[sup_id]
            if isinstance(model, AreaPanelModel) and spec.zones:
                for zone, rooms in zip(model.params.zones, spec.zones, strict=False):
                    zone.demand.demand_m3h = NL_MIN_TO_M3H * sum(
                        self.room_branch[r].flow_lpm for r in rooms
                    )

    def advance(self, dt_s: float) -> None:
        """Step everything by ``dt_s`` simulated seconds."""
        self._sync_ambient()
        for model in self.equipment.values():
            model.advance(dt_s)
        self._sync_branches()
        for room in self.rooms.values():
            room.advance(dt_s)
        self._sync_supplies()
        for supply in self.supplies.values():
            supply.advance(dt_s)
        self.t_s += dt_s

    def apply(self, event: EventSpec) -> None:
        """Apply a physics event (Modbus and broker events are the runner's)."""
        a, v = event.action, event.value
        if a in _ROOM_ACTIONS:
            room = self.rooms[event.target]
            if a is Action.VENTILATION_FAILED:
                room.ventilation_failed = True
            elif a is Action.VENTILATION_RESTORED:
                room.ventilation_failed = False
            elif a is Action.OCCUPANTS and v is not None:
                room.params.occupants = int(v)
            return
        supply = self.supplies.get(event.target)
        if supply is not None:
            regulator = supply.params.regulator
            if a is Action.REGULATOR_DRIFT and v is not None:
                regulator.drift_kpa_per_h = v
            elif a is Action.REGULATOR_REPAIRED:
                regulator.drift_kpa_per_h = regulator.drift_kpa = 0.0
            elif a is Action.LEAK and v is not None:
                supply.params.demand.leak_m3h = max(0.0, v)
            return
        model = self.equipment.get(event.target)
        if model is None:
            return
        if a is Action.DRYER_FAILED:
            model.dryer_failed = True
        elif a is Action.DRYER_REPAIRED:
            model.dryer_failed = False
        elif a is Action.FLOW_STUCK_FULL:
            model.flow_stuck_full = True
        elif a is Action.FLOW_RELEASED:
            model.flow_stuck_full = False
        elif a is Action.FLOW_LPM and v is not None:
            model.flow_setpoint_lpm = v
        elif a is Action.COMPRESSOR_WEAR and v is not None:
            model.compressor_wear = min(1.0, max(0.0, v))
        elif a is Action.AMBIENT_TEMP_C and v is not None:
            model.ambient_temp_c = v
        elif a is Action.POWER_OFF:
            model.power_on(False)
        elif a is Action.POWER_ON:
            model.power_on(True)


class RoomBoardSource:
    """A scenario room's board: reads the room as the world has stepped it."""

    def __init__(self, room: RoomModel) -> None:
        self.room = room

    def measure(self, dt_s: float) -> dict[str, float]:
        return self.room.reading()


class SensorBoardSource:
    """An ESP32 clipped on a concentrator without a bus: purity, flow, temperature."""

    def __init__(self, model: ConcentratorModel) -> None:
        self.model = model

    def measure(self, dt_s: float) -> dict[str, float]:
        v = self.model.values()
        return {
            "purity_pct": round(float(v["purity_pct"]), 1),
            "flow_lpm": round(float(v["flow_lpm"]), 1),
            "temp_c": round(float(v["temp_c"]), 1),
        }


# -- the runner ---------------------------------------------------------------------------------


@dataclass
class Endpoints:
    """What listens where once a scenario runs (printed as one JSON line by the CLI)."""

    scenario: str
    speed: float
    mqtt: str | None
    sites: dict[str, float]  # site id -> altitude
    modbus: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> url, unit, profile
    boards: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> site, kind, room

    def to_json(self) -> str:
        return json.dumps({"ready": True, **asdict(self)})


def _listen_key(url: str) -> tuple[str, str, int, dict[str, list[str]]]:
    parts = urlsplit(url)
    if parts.scheme == "tcp":
        return ("tcp", parts.hostname or "127.0.0.1", parts.port or 0, {})
    if parts.scheme == "rtu":
        return ("rtu", parts.path or parts.netloc, 0, parse_qs(parts.query))
    raise ScenarioError(f"listen {url!r}: expected tcp://HOST:PORT or rtu:///dev/ttyX")


class ScenarioRunner:
    """Run a scenario: Modbus servers, room boards, world clock and timeline (see module doc)."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        mqtt_url: str | None = None,
        speed: float | None = None,
        hooks: Mapping[str, Hook] | None = None,
        own_broker_dir: Path | None = None,
        provision_dir: Path | None = None,
        tick_s: float = 0.1,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed is None:  # the scenario's own time compression, else real time
            speed = scenario.scenario.speed or 1.0
        if speed <= 0:
            raise ValueError(f"speed = {speed}: expected > 0")
        self.scenario = scenario
        self.world = World(scenario)
        self.mqtt_url = mqtt_url
        self.speed = speed
        self.hooks = dict(hooks or {})
        self.own_broker_dir = own_broker_dir
        # A provisioned site: each board logs in with its own account and TLS (fleet.py);
        # None leaves FleetConfig's default ($O2CHAIN_PROVISION_DIR).
        self.provision_dir = provision_dir
        self.tick_s = tick_s
        self.monotonic = monotonic
        self.devices: dict[str, SimulatedDevice] = {}
        self.servers: list[ModbusTcpSimulator | ModbusRtuSimulator] = []
        self.fleet: Fleet | None = None
        self.fired: list[tuple[float, EventSpec]] = []
        self._broker: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = asyncio.Event()
        self._pending = sorted(scenario.event, key=lambda e: e.at_s)

    @property
    def sim_time_s(self) -> float:
        return self.world.t_s

    async def start(self) -> Endpoints:
        """Serve the Modbus equipment, start the boards and the clock; return the endpoints."""
        sc = self.scenario
        endpoints = Endpoints(
            scenario=sc.scenario.name,
            speed=self.speed,
            mqtt=None,
            sites={s.id: s.altitude_m for s in sc.site},
        )
        await self._start_modbus(endpoints)
        if self.mqtt_url is None and self.own_broker_dir is not None:
            from o2base.services import Mosquitto

            self._broker = Mosquitto(self.own_broker_dir)
            await asyncio.to_thread(self._broker.start)
            self.mqtt_url = self._broker.url
        endpoints.mqtt = self.mqtt_url
        if self.mqtt_url is not None:
            self._start_boards(endpoints)
        self._tasks.append(asyncio.create_task(self._clock()))
        return endpoints

    def _supply_device(self, spec: SupplySpec) -> SimulatedDevice:
        # The world steps the physics (coupled to plants and rooms); the device reads it.
        return SimulatedDevice(
            load_profile(spec.profile), self.world.supplies[spec.id], unit=spec.unit,
            drive_model=False,
        )  # fmt: skip

    async def _start_modbus(self, endpoints: Endpoints) -> None:
        groups: dict[tuple[str, str, int, str], list[tuple[Any, SimulatedDevice]]] = {}
        for sup in self.scenario.supply:
            device = self._supply_device(sup)
            self.devices[sup.id] = device
            scheme, where, port, _query = _listen_key(sup.listen)
            key = (scheme, where, port, sup.id if scheme == "tcp" and port == 0 else "")
            groups.setdefault(key, []).append((sup, device))
        for spec in [*self.scenario.plant, *self.scenario.concentrator]:
            if spec.transport != "modbus":
                continue
            device = SimulatedDevice(
                load_profile(spec.profile),
                self.world.equipment[spec.id],
                unit=spec.unit,
                drive_model=False,
                faults=DeviceFaults(),
            )
            self.devices[spec.id] = device
            scheme, where, port, query = _listen_key(spec.listen)
            # Port 0 (pick a free one) never shares; the same explicit address does.
            key = (scheme, where, port, spec.id if scheme == "tcp" and port == 0 else "")
            groups.setdefault(key, []).append((spec, device))
        for (scheme, where, port, _), members in groups.items():
            devices = [d for _, d in members]
            server: ModbusTcpSimulator | ModbusRtuSimulator
            if scheme == "tcp":
                server = ModbusTcpSimulator(devices, host=where, port=port)
            else:
                query = _listen_key(members[0][0].listen)[3]
                baud = int(query.get("baudrate", ["9600"])[0])
                server = ModbusRtuSimulator(devices, port=where, baudrate=baud)
            await server.start()
            self.servers.append(server)
            for spec, device in members:
                endpoints.modbus[spec.id] = {
                    "url": server.url,
                    "unit": device.unit,
                    "profile": spec.profile,
                    "kind": (
                        "supply"
                        if isinstance(spec, SupplySpec)
                        else "plant"
                        if spec.id in self.world.plants
                        else "concentrator"
                    ),
                    "site": spec.site,
                }
                if isinstance(spec, SupplySpec) and spec.fed_from:
                    endpoints.modbus[spec.id]["fed_from"] = list(spec.fed_from)

    def _start_boards(self, endpoints: Endpoints) -> None:
        sc = self.scenario
        ids: list[str] = []
        sources: list[ReadingSource] = []
        for room in sc.room:
            device = room.board or room.id
            ids.append(device)
            sources.append(RoomBoardSource(self.world.rooms[room.id]))
            endpoints.boards[device] = {
                "site": room.site,
                "kind": "room",
                "room": room.id,
                # Outdoor air exchanged per hour: the gateway's chain balance estimates the
                # oxygen a room consumes from it.
                "ventilation_m3h": round(room.params().ventilation_m3h, 3),
            }
        for conc in sc.concentrator:
            if conc.transport == "mqtt":
                ids.append(conc.id)
                sources.append(SensorBoardSource(self.world.equipment[conc.id]))
                endpoints.boards[conc.id] = {"site": conc.site, "kind": "concentrator"}
        if not ids:
            return
        sites = {r.site for r in sc.room} | {c.site for c in sc.concentrator}
        if len(sites) > 1:
            raise ScenarioError("boards of several sites: run one scenario per site for now")
        url = urlsplit(self.mqtt_url or "")
        duration = sc.scenario.duration_s
        readings = (
            10**9
            if duration is None
            else math.ceil(duration / sc.boards.interval_s) + 1  # stop() ends it earlier
        )
        extra: dict[str, Any] = {}
        if self.provision_dir is not None:
            extra["provision_dir"] = str(self.provision_dir)
        config = FleetConfig(
            host=url.hostname or "127.0.0.1",
            port=url.port or (8883 if url.scheme == "mqtts" else 1883),
            site=sites.pop(),
            boards=len(ids),
            interval_s=sc.boards.interval_s / self.speed,
            readings=readings,
            seed=sc.scenario.seed,
            prefix=sc.boards.prefix,
            client_prefix=f"o2scenario-{sc.scenario.name}",
            timeout_s=1e9,
            **extra,
        )
        self.fleet = Fleet(config, sources, device_ids=ids)
        self._tasks.append(asyncio.create_task(self.fleet.run()))

    async def _clock(self) -> None:
        """Step the world by real elapsed time x speed, firing due events."""
        last = self.monotonic()
        while not self._stopped.is_set():
            await asyncio.sleep(self.tick_s)
            now = self.monotonic()
            target = self.world.t_s + (now - last) * self.speed
            last = now
            # Step to each due event exactly, so it fires at its simulated time.
            while self._pending and self._pending[0].at_s <= target:
                event = self._pending.pop(0)
                if event.at_s > self.world.t_s:
                    self.world.advance(event.at_s - self.world.t_s)
                await self._fire(event)
            if target > self.world.t_s:
                self.world.advance(target - self.world.t_s)

    async def _fire(self, event: EventSpec) -> None:
        self.fired.append((self.world.t_s, event))
        log.info("t=%.0f s: %s %s %s", self.world.t_s, event.target, event.action, event.value)
        a = event.action
        if a is Action.BROKER_RESTART:
            hook = self.hooks.get("broker_restart")
            if hook is not None:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            elif self._broker is not None:
                await asyncio.to_thread(self._broker.restart)
            else:
                log.warning("broker_restart skipped: no hook and no broker of our own")
            return
        device = self.devices.get(event.target)
        if a.value.startswith("modbus_"):
            if device is None:
                log.warning("%s: not served over Modbus, %s ignored", event.target, a)
                return
            f = device.faults
            if a is Action.MODBUS_SILENT:
                f.silent = True
            elif a is Action.MODBUS_ANSWER:
                f.silent, f.delay_s, f.exception_code, f.corrupt_every = False, 0.0, None, 0
            elif a is Action.MODBUS_SLOW:
                f.delay_s = float(event.value or 0.0)
            elif a is Action.MODBUS_EXCEPTION:
                f.exception_code = int(event.value or 4)
            elif a is Action.MODBUS_CORRUPT:
                f.corrupt_every = int(event.value or 1)
            return
        self.world.apply(event)

    async def run(self, duration_s: float | None = None) -> None:
        """Wait until ``duration_s`` simulated seconds have passed, or until :meth:`stop`."""
        duration_s = duration_s if duration_s is not None else self.scenario.scenario.duration_s
        while not self._stopped.is_set():
            if duration_s is not None and self.world.t_s >= duration_s:
                return
            left = None if duration_s is None else (duration_s - self.world.t_s) / self.speed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), max(self.tick_s, left or 1.0))

    async def stop(self) -> None:
        """Boards say goodbye, servers close, our broker (if any) stops."""
        self._stopped.set()
        if self.fleet is not None:
            self.fleet.stop()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, 15.0)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        for server in self.servers:
            await server.stop()
        if self._broker is not None:
            await asyncio.to_thread(self._broker.stop)
