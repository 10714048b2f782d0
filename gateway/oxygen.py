"""Oxygen formulas of the gateway (docs/domain.md "Formulas", "Limits and alarms").

The formulas the boards share live in ``o2core.oxygen`` (one implementation for the gateway and
the firmware, tested on both interpreters against ``o2core/vectors.json``) and are re-exported
here; this module adds what only the gateway needs: the equivalent-altitude setting as an enum,
flows at normal conditions, and public names for the core's constants (the core keeps them out
of the board's RAM as private ``const()`` names). The simulators keep an independent copy on
purpose (simulators/physics/atmosphere.py): a disagreement shows a mistake.

Pressures in kPa, altitudes in m, O2 as a volume fraction in % (20.95 for outdoor air).
"""

from __future__ import annotations

from enum import StrEnum

from o2core import oxygen as _core
from o2core.oxygen import (
    baro_plausible,
    equivalent_altitude_m,
    isa_altitude_m,
    isa_pressure_kpa,
    nfpa_burn_limit_pct,
    pio2_kpa,
    ppo2_kpa,
    room_thresholds,
)

__all__ = [
    "AIRWAY_WATER_KPA",
    "AIR_O2_PCT",
    "BARO_SITE_TOLERANCE",
    "LOX_GAS_NL_PER_L",
    "LOX_KG_PER_L",
    "NFPA_BURN_PCT_AT_P0",
    "NORMAL_KPA",
    "NORMAL_L_PER_MOL",
    "NORMAL_TEMP_C",
    "O2_G_PER_MOL",
    "P0_KPA",
    "ROOM_HIGH_ALARM_MARGIN_PCT",
    "EqAltDefinition",
    "actual_flow_from_normal",
    "baro_band_kpa",
    "baro_plausible",
    "equivalent_altitude_m",
    "isa_altitude_m",
    "isa_pressure_kpa",
    "nfpa_burn_limit_pct",
    "o2_flow_lpm",
    "o2_for_equivalent_altitude_pct",
    "pio2_kpa",
    "ppo2_kpa",
    "room_high_alarm_pct",
    "room_high_warn_pct",
    "room_thresholds",
]

P0_KPA: float = _core._P0_KPA  # ISA sea-level pressure
AIR_O2_PCT: float = _core._AIR_O2_PCT  # outdoor air at every altitude
AIRWAY_WATER_KPA: float = _core._AIRWAY_WATER_KPA  # airway saturated at 37 degC (West)
NFPA_BURN_PCT_AT_P0: float = _core._NFPA_PCT_AT_P0  # NFPA 99 limit at sea level
ROOM_HIGH_ALARM_MARGIN_PCT: float = _core._HIGH_ALARM_MARGIN_PCT  # alarm = NFPA limit - 1.5
BARO_SITE_TOLERANCE: float = _core._BARO_BAND  # a barometer is believed within ISA +/- 10 %
ZERO_C_K = 273.15
# Normal conditions of "Nm3" and "NL" unless a device profile says otherwise (DIN 1343:
# 0 degC, 101.325 kPa; some vendors quote 15 or 20 degC, hence the profile keys).
NORMAL_TEMP_C = 0.0
NORMAL_KPA = P0_KPA
# Liquid oxygen: 1.141 kg/L at its boiling point; O2 31.999 g/mol; an ideal gas mole is
# 22.414 normal litres: one litre of liquid gives about 799 normal litres of gas
# (docs/domain.md, "Medical gas supply").
LOX_KG_PER_L = 1.141
O2_G_PER_MOL = 31.999
NORMAL_L_PER_MOL = 22.414
LOX_GAS_NL_PER_L = LOX_KG_PER_L * 1000.0 / O2_G_PER_MOL * NORMAL_L_PER_MOL


def baro_band_kpa(alt_m: float) -> tuple[float, float]:
    """``(low, high)``: the barometric pressures (kPa) plausible at a site of ``alt_m``, the
    ISA pressure +/- :data:`BARO_SITE_TOLERANCE` (the band of ``o2core.oxygen.baro_plausible``,
    as two numbers for a fast comparison and for messages)."""
    isa = isa_pressure_kpa(alt_m)
    return isa * (1.0 - BARO_SITE_TOLERANCE), isa * (1.0 + BARO_SITE_TOLERANCE)


def o2_for_equivalent_altitude_pct(target_alt_m: float, baro_kpa: float) -> float:
    """O2 % needed at ``baro_kpa`` for the equivalent altitude ``target_alt_m`` (West's
    definition solved for the room's fraction; sizing, so not on the boards)."""
    return (
        AIR_O2_PCT
        * (isa_pressure_kpa(target_alt_m) - AIRWAY_WATER_KPA)
        / (baro_kpa - AIRWAY_WATER_KPA)
    )


def room_high_alarm_pct(baro_kpa: float) -> float:
    """Room high-O2 alarm threshold (%): the NFPA limit - 1.5 (Lhasa: 27.9 %)."""
    return room_thresholds(baro_kpa)[0]


def room_high_warn_pct(baro_kpa: float) -> float:
    """Room high-O2 warning threshold (%): ``min(27, NFPA limit - 3)`` (Lhasa: 26.4 %)."""
    return room_thresholds(baro_kpa)[1]


class EqAltDefinition(StrEnum):
    """How "equivalent altitude" is defined (docs/domain.md "Formulas"); a ``str``, so it is
    passed to :func:`equivalent_altitude_m` as it is."""

    WEST = "west"  # same inspired PO2 (airway at 37 degC, saturated); default
    AMBIENT = "ambient"  # same ambient PO2; common in Chinese building literature


def o2_flow_lpm(flow_lpm: float, purity_pct: float) -> float:
    """Oxygen in a product stream (L/min of O2): total flow times purity."""
    return flow_lpm * purity_pct / 100.0


def actual_flow_from_normal(
    flow_normal: float,
    baro_kpa: float,
    temp_c: float,
    normal_kpa: float = NORMAL_KPA,
    normal_temp_c: float = NORMAL_TEMP_C,
) -> float:
    """Volume flow at ``baro_kpa``/``temp_c`` of a flow given at normal conditions (same unit in
    and out): ideal gas, ``Q = Qn (Pn / P) (T / Tn)``. In Lhasa (64.5 kPa, 20 degC) one normal
    litre is 1.69 litres."""
    return (
        flow_normal * (normal_kpa / baro_kpa) * ((temp_c + ZERO_C_K) / (normal_temp_c + ZERO_C_K))
    )
