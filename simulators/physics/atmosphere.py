"""Atmosphere at altitude: ISA pressure, equivalent altitude, fire-hazard limits, weather drift.

Formulas from docs/domain.md ("Formulas", "Limits and alarms"), written here independently of
``o2core.oxygen`` (the one implementation the gateway and the firmware share) on purpose: the
simulators are an oracle for both, and a simulator that shared their code could not catch its
mistakes. Both are tested against the same vectors, ``o2core/vectors.json``. Pressures in kPa,
altitudes in m, O2 in % (volume fraction x 100), CO2 in ppm (mole fraction x 1e6).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import cached_property

P0_KPA = 101.325  # ISA sea-level pressure
_ISA_K = 2.25577e-5  # 1/m
_ISA_EXP = 5.25588
AIR_O2_PCT = 20.95  # outdoor air at every altitude (docs/domain.md "Fraction and partial pressure")
AIRWAY_WATER_KPA = 6.27  # water vapour in an airway saturated at 37 degC (West)
OUTDOOR_CO2_PPM = 420.0  # global mean background, NOAA Mauna Loa annual mean 2023-2024: ~420 ppm
T0_K = 273.15  # normal conditions (DIN 1343): 0 degC and 101.325 kPa, the "N" of Nm3/h


def standard_to_room_factor(baro_kpa: float, temp_c: float) -> float:
    """Litres at room conditions per normal litre (0 degC, 101.325 kPa): ideal gas law.

    Equipment flows (Nm3/h nameplates, mass flowmeters) and metabolic gas rates (Persily &
    de Jonge 2017 state theirs at 273 K and 101 kPa) are amounts of gas; a room's ventilation
    is a volume at room conditions. At Lhasa (65.2 kPa, 20 degC) one normal litre fills 1.67 L.
    """
    return (P0_KPA / baro_kpa) * ((temp_c + T0_K) / T0_K)


def isa_pressure_kpa(altitude_m: float) -> float:
    """ISA barometric pressure at ``altitude_m`` (valid in the troposphere, below 11 km)."""
    return P0_KPA * (1.0 - _ISA_K * altitude_m) ** _ISA_EXP


def isa_altitude_m(pressure_kpa: float) -> float:
    """Inverse of :func:`isa_pressure_kpa`."""
    return (1.0 - (pressure_kpa / P0_KPA) ** (1.0 / _ISA_EXP)) / _ISA_K


def equivalent_altitude_m(o2_pct: float, baro_kpa: float) -> float:
    """Altitude whose normal air gives the same inspired PO2 (West's definition, docs/domain.md
    "Formulas")."""
    p_eq = (o2_pct / 100.0) * (baro_kpa - AIRWAY_WATER_KPA) / (AIR_O2_PCT / 100.0)
    return isa_altitude_m(p_eq + AIRWAY_WATER_KPA)


def nfpa_burn_limit_pct(baro_kpa: float) -> float:
    """NFPA increased-burning-rate O2 threshold ``23.45 / sqrt(PB/101.325)`` (docs/domain.md
    "Limits and alarms")."""
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
    offset_kpa: float = 0.0  # real station minus ISA (Lhasa: about +0.7 kPa, docs/domain.md)
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
