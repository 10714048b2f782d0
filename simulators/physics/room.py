"""Oxygen and CO2 mass balance of a ventilated, enriched room at altitude.

A well-mixed room of volume V (L) receives product gas from its supply (Qs at purity Cs %, no
CO2: the zeolite holds CO2 even harder than nitrogen), exchanges air with the outdoors (Qv = ACH
x V / 60 L/min at 20.95 % O2 and ``OUTDOOR_CO2_PPM``) and its n occupants each breathe out CO2 at
g and take up O2 at g / RQ. With C the room's O2 % and X its CO2 ppm:

    V dC/dt = Qs (Cs - C) + Qv (20.95 - C) - 100 n g / RQ
    V dX/dt = Qs (0 - X)  + Qv (Xo - X)    + 1e6 n g

All flows are litres at room conditions: the ventilation is a volume (a fan, like a compressor,
moves a fixed volume), while supply flows (normal litres, see
:mod:`simulators.physics.concentrator`) and metabolic rates (normal litres: Persily & de Jonge
2017 give theirs at 273 K and 101 kPa) are converted with
:func:`~simulators.physics.atmosphere.standard_to_room_factor`, 1.67 at Lhasa. Over a step with
constant inputs both equations are linear with the same rate (Qs + Qv) / V and the exact
solution ``C(t) = C* + (C0 - C*) exp(-t (Qs + Qv) / V)``, so a step of any length costs a few
float operations (10,000 rooms stay cheap) and the result does not depend on the step size. The
supply is sampled once per sub-step of at most ``max_step_s`` so warm-up and faults of the
concentrator still shape the curve.

Defaults by room kind (:data:`ROOM_KINDS`), outdoor air as installed (volume at room
conditions):

- hotel room: 30 m3 (12 m2 x 2.5 m), 2 guests, 30 m3/h of outdoor air per person (GB 50736-2012
  clause 3.0.6, table 3.0.6-1, guest rooms) = 60 m3/h = 2.0 air changes per hour. ASHRAE 62.1-2016
  table 6.2.2.1 (hotel bedroom: 2.5 L/s per person + 0.3 L/s per m2) would ask 31 m3/h, 1.0 h-1.
- classroom: 63 m2 x 3.1 m = 195 m3, 45 pupils (a Chinese primary class), ASHRAE 62.1-2016 table
  6.2.2.1 (classrooms age 9 plus: 5 L/s per person + 0.6 L/s per m2) = 946 m3/h = 4.8 h-1.
- ward: 3 beds, 25 m2 x 2.8 m = 70 m3, 2 outdoor air changes per hour (GB 50736-2012 table
  3.0.6-2, wards; ASHRAE 170 also asks 2 outdoor air changes for a patient room).
- ventilation failed: 0.3 h-1, infiltration of a closed modern building (ASHRAE Handbook -
  Fundamentals gives about 0.2-0.5 h-1 for tight construction).

Occupants: 0.0052 L/s of CO2 (normal litres) per sedentary adult at about 1.2 met (ASHRAE 62.1
informative appendix on CO2; Persily & de Jonge 2017), respiratory quotient 0.83, so 0.38 normal
L/min of O2. The classroom uses the adult rate too (conservative: children emit less).

Consequence at altitude worth knowing: ventilation sized in m3/h carries fewer molecules up
there while people breathe out the same amount of CO2, so the CO2 mole fraction (what GB/T 18883
limits: 0.10 %) rises by PB0/PB against the same room at sea level. A hotel room ventilated to
the letter of GB 50736 with two guests sits near 1,100 ppm at sea level and near 1,450 ppm in
Lhasa; ASHRAE 62.1 allows its rates to be adjusted for air density.

An enriched room needs a lot of oxygen for this: to hold a 2.0 h-1 hotel room at 25 % with 92 %
product takes about 36 normal L/min at Lhasa (:func:`supply_for_target_lpm`); a 5 L/min bedside
concentrator cannot enrich a ventilated room, it serves a cannula.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

from simulators.physics.atmosphere import (
    AIR_O2_PCT,
    OUTDOOR_CO2_PPM,
    Weather,
    equivalent_altitude_m,
    standard_to_room_factor,
)

CO2_LPS_PER_PERSON = 0.0052  # normal L/s, sedentary adult (ASHRAE 62.1 appendix, Persily 2017)
RESPIRATORY_QUOTIENT = 0.83  # CO2 out / O2 in, mixed diet (Persily & de Jonge 2017)
PRODUCT_CO2_PPM = 0.0  # PSA product: zeolite 13X/LiX adsorbs CO2 with the nitrogen


class FlowBasis(StrEnum):
    """How a supply's ``flow_lpm`` is measured."""

    NORMAL = "normal"  # normal litres (0 degC, 101.325 kPa): equipment, Nm3/h
    ROOM = "room"  # litres at the room's pressure and temperature


class Supply(Protocol):
    """What a room needs from its oxygen source at this moment."""

    @property
    def flow_lpm(self) -> float: ...

    @property
    def purity_pct(self) -> float: ...

    def advance(self, dt_s: float) -> None: ...


@dataclass
class FixedSupply:
    """A pipeline branch from a plant (the scenario sets flow and purity), or no supply at all.

    ``basis`` ROOM (the default) takes ``flow_lpm`` as litres at room conditions, NORMAL as
    normal litres like the equipment's."""

    flow_lpm: float = 0.0
    purity_pct: float = AIR_O2_PCT
    basis: FlowBasis = FlowBasis.ROOM

    def advance(self, dt_s: float) -> None:
        return None


class RoomKind(StrEnum):
    HOTEL_ROOM = "hotel_room"
    CLASSROOM = "classroom"
    WARD = "ward"


@dataclass
class RoomParams:
    """One room. Volumes in m3, flows in L/min, rates per hour; defaults: a hotel room."""

    volume_m3: float = 30.0
    ach_per_h: float = 2.0  # outdoor air changes per hour, ventilation working (GB 50736)
    failed_ach_per_h: float = 0.3  # infiltration only, ventilation failed
    occupants: int = 2
    co2_lps_per_person: float = CO2_LPS_PER_PERSON  # normal L/s
    respiratory_quotient: float = RESPIRATORY_QUOTIENT
    outdoor_co2_ppm: float = OUTDOOR_CO2_PPM
    co2_sensor: bool = False  # the room's board has an NDIR CO2 sensor (publishes co2_ppm)
    temp_c: float = 20.0  # heated room; a +-1 degC daily swing is added
    rh_pct: float = 28.0  # dry plateau air
    o2_noise_pct: float = 0.05  # sensor noise, standard deviation
    baro_noise_kpa: float = 0.01
    # NDIR sensor (Sensirion SCD4x class, pressure-compensated from the board's barometer):
    # noise of a single reading; accuracy +-(50 ppm + 5 %) is not simulated.
    co2_noise_ppm: float = 10.0

    @property
    def o2_use_lps_per_person(self) -> float:
        """O2 taken up per person, normal L/s."""
        return self.co2_lps_per_person / self.respiratory_quotient

    @property
    def ventilation_m3h(self) -> float:
        """Outdoor air with the ventilation working, m3/h at room conditions."""
        return self.ach_per_h * self.volume_m3


ROOM_KINDS: dict[RoomKind, RoomParams] = {
    RoomKind.HOTEL_ROOM: RoomParams(),
    RoomKind.CLASSROOM: RoomParams(volume_m3=195.0, ach_per_h=4.8, occupants=45, temp_c=18.0),
    RoomKind.WARD: RoomParams(volume_m3=70.0, ach_per_h=2.0, occupants=3, temp_c=22.0),
}


def room_params(kind: RoomKind = RoomKind.HOTEL_ROOM, **overrides: Any) -> RoomParams:
    """The defaults of a room kind (module docstring), with ``overrides`` (None = default)."""
    return replace(ROOM_KINDS[kind], **{k: v for k, v in overrides.items() if v is not None})


def supply_for_target_lpm(
    params: RoomParams,
    target_o2_pct: float,
    purity_pct: float,
    baro_kpa: float,
    basis: FlowBasis = FlowBasis.NORMAL,
) -> float:
    """Supply flow that holds the room at ``target_o2_pct`` with its ventilation working,
    occupants included (normal L/min by default). Raises ValueError if no flow can."""
    if not AIR_O2_PCT < target_o2_pct < purity_pct:
        raise ValueError(
            f"target_o2_pct = {target_o2_pct}: expected between {AIR_O2_PCT} and the purity "
            f"{purity_pct}"
        )
    f = standard_to_room_factor(baro_kpa, params.temp_c)
    qv = params.ach_per_h * params.volume_m3 * 1000.0 / 60.0
    use = 100.0 * params.occupants * params.o2_use_lps_per_person * 60.0 * f
    room_lpm = (qv * (target_o2_pct - AIR_O2_PCT) + use) / (purity_pct - target_o2_pct)
    return room_lpm / f if basis is FlowBasis.NORMAL else room_lpm


class RoomModel:
    """A room stepped in simulated time; reads like the sensors of the room's board."""

    def __init__(
        self,
        params: RoomParams,
        weather: Weather,
        supply: Supply | None = None,
        *,
        seed: int = 0,
        o2_pct: float | None = None,
        co2_ppm: float | None = None,
        drives_supply: bool = True,
        t_s: float = 0.0,
        max_step_s: float = 60.0,
    ):
        """``o2_pct`` / ``co2_ppm`` None start the room at its steady state; ``drives_supply``
        False means someone else advances the supply (a scenario sharing one plant)."""
        self.params = params
        self.weather = weather
        self.supply: Supply = supply if supply is not None else FixedSupply()
        self.drives_supply = drives_supply
        self.ventilation_failed = False
        self.t_s = t_s
        self.max_step_s = max_step_s
        self._rng = random.Random(seed)
        self._phase = self._rng.uniform(0.0, 2 * math.pi)
        o2_star, co2_star, _ = self._balance()
        self.o2_pct = max(0.0, o2_star) if o2_pct is None else o2_pct
        self.co2_ppm = co2_star if co2_ppm is None else co2_ppm

    @property
    def ventilation_lpm(self) -> float:
        ach = self.params.failed_ach_per_h if self.ventilation_failed else self.params.ach_per_h
        return ach * self.params.volume_m3 * 1000.0 / 60.0

    def _room_factor(self) -> float:
        return standard_to_room_factor(self.baro_kpa, self.temp_c)

    def supply_room_lpm(self, room_factor: float | None = None) -> float:
        """The supply's flow in litres at room conditions."""
        qs = max(0.0, self.supply.flow_lpm)
        if getattr(self.supply, "basis", FlowBasis.NORMAL) is FlowBasis.ROOM:
            return qs
        return qs * (self._room_factor() if room_factor is None else room_factor)

    def _sources_lpm(self, room_factor: float) -> tuple[float, float]:
        """(O2 taken up, CO2 breathed out) by the occupants, L/min at room conditions."""
        p = self.params
        f = 60.0 * p.occupants * room_factor
        return p.o2_use_lps_per_person * f, p.co2_lps_per_person * f

    def _balance(self) -> tuple[float, float, float]:
        """(O2 %, CO2 ppm) the room tends to, and the rate (1/s), for the present inputs."""
        p = self.params
        room_factor = self._room_factor()  # one weather sample per step: 10,000 rooms
        qs = self.supply_room_lpm(room_factor)
        qv = self.ventilation_lpm
        o2_use, co2_out = self._sources_lpm(room_factor)
        total = qs + qv
        if total <= 0.0:
            return -math.inf, math.inf, 0.0
        o2 = (qs * self.supply.purity_pct + qv * AIR_O2_PCT - 100.0 * o2_use) / total
        co2 = (qs * PRODUCT_CO2_PPM + qv * p.outdoor_co2_ppm + 1e6 * co2_out) / total
        return o2, co2, total / (p.volume_m3 * 1000.0) / 60.0

    def steady_o2_pct(self) -> float:
        """O2 % the room settles at with the present supply and ventilation."""
        return max(0.0, self._balance()[0])

    def steady_co2_ppm(self) -> float:
        """CO2 ppm the room settles at with the present ventilation and occupants."""
        return self._balance()[1]

    def advance(self, dt_s: float) -> None:
        """Step by ``dt_s`` simulated seconds (sub-steps of at most ``max_step_s``)."""
        remaining = dt_s
        while remaining > 0.0:
            step = min(remaining, self.max_step_s)
            if self.drives_supply:
                self.supply.advance(step)
            o2_star, co2_star, rate = self._balance()
            if rate > 0.0:
                decay = math.exp(-rate * step)
                self.o2_pct = o2_star + (self.o2_pct - o2_star) * decay
                self.co2_ppm = co2_star + (self.co2_ppm - co2_star) * decay
            else:  # sealed room, no supply: only the occupants act
                o2_use, co2_out = self._sources_lpm(self._room_factor())
                litres = self.params.volume_m3 * 1000.0
                self.o2_pct -= 100.0 * o2_use / litres * step / 60.0
                self.co2_ppm += 1e6 * co2_out / litres * step / 60.0
            self.o2_pct = min(100.0, max(0.0, self.o2_pct))
            self.co2_ppm = max(0.0, self.co2_ppm)
            self.t_s += step
            remaining -= step

    @property
    def baro_kpa(self) -> float:
        return self.weather.pressure_kpa(self.t_s)

    @property
    def temp_c(self) -> float:
        return self.params.temp_c + math.sin(2 * math.pi * self.t_s / 86400.0 + self._phase)

    def reading(self) -> dict[str, float]:
        """What the room's board measures now (telemetry v1 room fields), with sensor noise.

        ``co2_ppm`` only when the room has a CO2 sensor: a mole fraction, as a pressure-
        compensated NDIR sensor reports it (an uncompensated one would read low by PB/101.325).
        """
        p = self.params
        o2 = max(0.0, self.o2_pct + self._rng.gauss(0.0, p.o2_noise_pct))
        baro = self.baro_kpa + self._rng.gauss(0.0, p.baro_noise_kpa)
        rh = min(100.0, max(0.0, p.rh_pct + self._rng.gauss(0.0, 0.3)))
        out = {
            "o2_pct": round(o2, 2),
            "baro_kpa": round(baro, 2),
            "temp_c": round(self.temp_c + self._rng.gauss(0.0, 0.05), 2),
            "rh_pct": round(rh, 1),
            "ppo2_kpa": round(o2 / 100.0 * baro, 3),
        }
        if p.co2_sensor:
            co2 = self.co2_ppm + self._rng.gauss(0.0, p.co2_noise_ppm)
            out["co2_ppm"] = float(round(max(0.0, co2)))
        return out

    def equivalent_altitude_m(self) -> float:
        return equivalent_altitude_m(self.o2_pct, self.baro_kpa)
