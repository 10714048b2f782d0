"""Oxygen mass balance of an enriched room at altitude.

A well-mixed room of volume V (L) receives product gas from its supply (flow Qs L/min at purity
Cs %), exchanges air with the outdoors (Qv = ACH x V / 60 L/min at 20.95 %) and loses the
oxygen its occupants consume (n x q L/min). With C the room's O2 %:

    V dC/dt = Qs (Cs - C) + Qv (Ca - C) - 100 n q

Over a step with constant inputs this is linear with the exact solution
``C(t) = C* + (C0 - C*) exp(-t (Qs + Qv) / V)``, ``C* = (Qs Cs + Qv Ca - 100 n q) / (Qs + Qv)``,
so a step of any length costs a few float operations (10,000 rooms stay cheap) and the result
does not depend on the step size. The supply is sampled once per sub-step of at most
``max_step_s`` so warm-up and faults of the concentrator still shape the curve.

Defaults: a 30 m3 hotel room (12 m2 x 2.5 m), 0.25 air changes per hour of outdoor air
(a closed room in a Lhasa winter: infiltration plus a trickle vent), two resting occupants at
0.3 L/min O2 each, fed by a 10 L/min concentrator at 8 L/min: the room settles near 24.7 %,
inside the 24-26 % band (DOMAIN.md section 3), with a time constant of about 3.8 h.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol

from simulators.physics.atmosphere import AIR_O2_PCT, Weather, equivalent_altitude_m


class Supply(Protocol):
    """What a room needs from its oxygen source at this moment."""

    @property
    def flow_lpm(self) -> float: ...

    @property
    def purity_pct(self) -> float: ...

    def advance(self, dt_s: float) -> None: ...


@dataclass
class FixedSupply:
    """A pipeline branch from a plant (the scenario sets flow and purity), or no supply at all."""

    flow_lpm: float = 0.0
    purity_pct: float = AIR_O2_PCT

    def advance(self, dt_s: float) -> None:
        return None


@dataclass
class RoomParams:
    """One room. Volumes in m3, flows in L/min, rates per hour."""

    volume_m3: float = 30.0
    ach_per_h: float = 0.25  # outdoor air changes per hour with the ventilation working
    failed_ach_per_h: float = 0.05  # infiltration only, ventilation failed
    occupants: int = 2
    o2_use_lpm_per_person: float = 0.3  # resting adult, net O2 removal at room conditions
    temp_c: float = 20.0  # heated room; a +-1 degC daily swing is added
    rh_pct: float = 28.0  # dry plateau air
    o2_noise_pct: float = 0.05  # sensor noise, standard deviation
    baro_noise_kpa: float = 0.01


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
        drives_supply: bool = True,
        t_s: float = 0.0,
        max_step_s: float = 60.0,
    ):
        """``o2_pct`` None starts the room at its steady state; ``drives_supply`` False means
        someone else advances the supply (a scenario sharing one plant among rooms)."""
        self.params = params
        self.weather = weather
        self.supply: Supply = supply if supply is not None else FixedSupply()
        self.drives_supply = drives_supply
        self.ventilation_failed = False
        self.t_s = t_s
        self.max_step_s = max_step_s
        self._rng = random.Random(seed)
        self._phase = self._rng.uniform(0.0, 2 * math.pi)
        self.o2_pct = self.steady_o2_pct() if o2_pct is None else o2_pct

    @property
    def ventilation_lpm(self) -> float:
        ach = self.params.failed_ach_per_h if self.ventilation_failed else self.params.ach_per_h
        return ach * self.params.volume_m3 * 1000.0 / 60.0

    def _balance(self) -> tuple[float, float]:
        """(C*, rate 1/s) of the linear balance for the present inputs."""
        p = self.params
        qs = max(0.0, self.supply.flow_lpm)
        qv = self.ventilation_lpm
        use = 100.0 * p.occupants * p.o2_use_lpm_per_person
        total = qs + qv
        if total <= 0.0:
            return -math.inf, 0.0
        target = (qs * self.supply.purity_pct + qv * AIR_O2_PCT - use) / total
        return target, total / (p.volume_m3 * 1000.0) / 60.0

    def steady_o2_pct(self) -> float:
        """O2 % the room settles at with the present supply and ventilation."""
        target, _ = self._balance()
        return max(0.0, target)

    def advance(self, dt_s: float) -> None:
        """Step by ``dt_s`` simulated seconds (sub-steps of at most ``max_step_s``)."""
        remaining = dt_s
        while remaining > 0.0:
            step = min(remaining, self.max_step_s)
            if self.drives_supply:
                self.supply.advance(step)
            target, rate = self._balance()
            if rate > 0.0:
                self.o2_pct = target + (self.o2_pct - target) * math.exp(-rate * step)
            else:  # sealed room, no supply: only the occupants act
                use = 100.0 * self.params.occupants * self.params.o2_use_lpm_per_person
                self.o2_pct -= use / (self.params.volume_m3 * 1000.0) * step / 60.0
            self.o2_pct = min(100.0, max(0.0, self.o2_pct))
            self.t_s += step
            remaining -= step

    @property
    def baro_kpa(self) -> float:
        return self.weather.pressure_kpa(self.t_s)

    @property
    def temp_c(self) -> float:
        return self.params.temp_c + math.sin(2 * math.pi * self.t_s / 86400.0 + self._phase)

    def reading(self) -> dict[str, float]:
        """What the room's board measures now (telemetry v1 room fields), with sensor noise."""
        p = self.params
        o2 = max(0.0, self.o2_pct + self._rng.gauss(0.0, p.o2_noise_pct))
        baro = self.baro_kpa + self._rng.gauss(0.0, p.baro_noise_kpa)
        rh = min(100.0, max(0.0, p.rh_pct + self._rng.gauss(0.0, 0.3)))
        return {
            "o2_pct": round(o2, 2),
            "baro_kpa": round(baro, 2),
            "temp_c": round(self.temp_c + self._rng.gauss(0.0, 0.05), 2),
            "rh_pct": round(rh, 1),
            "ppo2_kpa": round(o2 / 100.0 * baro, 3),
        }

    def equivalent_altitude_m(self) -> float:
        return equivalent_altitude_m(self.o2_pct, self.baro_kpa)
