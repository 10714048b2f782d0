"""Atmosphere at altitude: ISA pressure, equivalent altitude, fire-hazard limits, weather drift.

Formulas from DOMAIN.md sections 2 and 3, written here independently of the firmware's and the
gateway's copies on purpose: a simulator that shared their code could not catch their mistakes.
Pressures in kPa, altitudes in m, O2 in % (volume fraction x 100).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import cached_property

P0_KPA = 101.325  # ISA sea-level pressure
_ISA_K = 2.25577e-5  # 1/m
_ISA_EXP = 5.25588
AIR_O2_PCT = 20.95  # outdoor air at every altitude (DOMAIN.md section 1)
AIRWAY_WATER_KPA = 6.27  # water vapour in an airway saturated at 37 degC (West)


def isa_pressure_kpa(altitude_m: float) -> float:
    """ISA barometric pressure at ``altitude_m`` (valid in the troposphere, below 11 km)."""
    return P0_KPA * (1.0 - _ISA_K * altitude_m) ** _ISA_EXP


def isa_altitude_m(pressure_kpa: float) -> float:
    """Inverse of :func:`isa_pressure_kpa`."""
    return (1.0 - (pressure_kpa / P0_KPA) ** (1.0 / _ISA_EXP)) / _ISA_K


def equivalent_altitude_m(o2_pct: float, baro_kpa: float) -> float:
    """Altitude whose normal air gives the same inspired PO2 (West's definition, DOMAIN.md 2)."""
    p_eq = (o2_pct / 100.0) * (baro_kpa - AIRWAY_WATER_KPA) / (AIR_O2_PCT / 100.0)
    return isa_altitude_m(p_eq + AIRWAY_WATER_KPA)


def nfpa_burn_limit_pct(baro_kpa: float) -> float:
    """NFPA increased-burning-rate O2 threshold ``23.45 / sqrt(PB/101.325)`` (DOMAIN.md 3)."""
    return 23.45 / math.sqrt(baro_kpa / P0_KPA)


def room_high_alarm_pct(baro_kpa: float) -> float:
    """Proposed room high alarm: NFPA limit - 1.5 % (Lhasa, ISA pressure: about 27.9 %)."""
    return nfpa_burn_limit_pct(baro_kpa) - 1.5


@dataclass(frozen=True)
class Weather:
    """Station pressure at a site: ISA pressure + offset + slow synoptic drift + the daily tide.

    ``pressure_kpa(t_s)`` is a closed-form sum of sinusoids with seeded phases, so any number
    of boards can sample it at any simulated time at O(1) cost with identical results.
    Amplitudes are typical plateau values: synoptic swings of about +-1 kPa over days and the
    semi-diurnal atmospheric tide of about 0.1 kPa.
    """

    altitude_m: float
    offset_kpa: float = 0.0  # real station minus ISA (Lhasa: about +0.7 kPa, DOMAIN.md 2)
    seed: int = 0
    synoptic_kpa: tuple[float, float] = (0.5, 0.3)
    synoptic_period_s: tuple[float, float] = (5.3 * 86400.0, 2.1 * 86400.0)
    tide_kpa: float = 0.08
    tide_period_s: float = 12.0 * 3600.0

    @cached_property
    def _phases(self) -> tuple[float, float, float]:
        rng = random.Random(f"weather-{self.seed}")
        return (
            rng.uniform(0.0, 2 * math.pi),
            rng.uniform(0.0, 2 * math.pi),
            rng.uniform(0.0, 2 * math.pi),
        )

    def pressure_kpa(self, t_s: float) -> float:
        """Barometric pressure at simulated time ``t_s`` (seconds)."""
        p1, p2, p3 = self._phases
        base = isa_pressure_kpa(self.altitude_m) + self.offset_kpa
        return (
            base
            + self.synoptic_kpa[0] * math.sin(2 * math.pi * t_s / self.synoptic_period_s[0] + p1)
            + self.synoptic_kpa[1] * math.sin(2 * math.pi * t_s / self.synoptic_period_s[1] + p2)
            + self.tide_kpa * math.sin(2 * math.pi * t_s / self.tide_period_s + p3)
        )
