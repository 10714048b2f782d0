"""Oxygen formulas (docs/domain.md "Formulas", "Limits and alarms"). Pure: numbers in, numbers out.

Pressures in kPa, altitudes in m, O2 as a volume fraction in % (20.95 for outdoor air).
The firmware keeps its own MicroPython copy (firmware/lib/o2/oxygen.py) and the simulators
another (simulators/physics/atmosphere.py): three independent copies checked against the same
docs/domain.md test vectors, so a mistake in one shows up as a disagreement.
"""

from __future__ import annotations

import math
from enum import StrEnum

P0_KPA = 101.325  # ISA sea-level pressure
ISA_K_PER_M = 2.25577e-5  # ISA troposphere: P = P0 (1 - k h) ** n
ISA_EXP = 5.25588
ZERO_C_K = 273.15
# Normal conditions of "Nm3" and "NL" unless a device profile says otherwise (DIN 1343:
# 0 degC, 101.325 kPa; some vendors quote 15 or 20 degC, hence the profile keys).
NORMAL_TEMP_C = 0.0
NORMAL_KPA = P0_KPA
# A board's barometer is believed when it is within this fraction of the ISA pressure of the
# site's altitude. Weather moves station pressure by a few percent (Lhasa's mean 65.2 kPa is
# 1 % above ISA 64.5, seasonal swings about 1.5 %, the deepest cyclones about 10 % at sea
# level), a site's configured altitude may be a hillside or some floors off (200 m is 2.5 %
# at 3650 m). 10 % keeps all of that and still catches what goes wrong with barometers: a
# factory default of 101.3 kPa on the plateau (+57 %), hPa/kPa or mbar mix-ups (x10), a
# stuck or unpowered sensor, and a site altitude wrong by more than ~900 m.
BARO_SITE_TOLERANCE = 0.10
# Liquid oxygen: 1.141 kg/L at its boiling point; O2 31.999 g/mol; an ideal gas mole is
# 22.414 normal litres: one litre of liquid gives about 799 normal litres of gas
# (docs/domain.md, "Medical gas supply").
LOX_KG_PER_L = 1.141
O2_G_PER_MOL = 31.999
NORMAL_L_PER_MOL = 22.414
LOX_GAS_NL_PER_L = LOX_KG_PER_L * 1000.0 / O2_G_PER_MOL * NORMAL_L_PER_MOL
AIR_O2_PCT = 20.95  # outdoor air at every altitude (docs/domain.md "Fraction and partial pressure")
AIRWAY_WATER_KPA = 6.27  # water vapour of an airway saturated at 37 degC (West)

# NFPA 99/53 increased-burning-rate threshold: 23.45 % at sea level, scaled with 1/sqrt(PB/P0).
NFPA_BURN_PCT_AT_P0 = 23.45
# docs/domain.md "Limits and alarms" proposals for enriched rooms (configurable defaults).
ROOM_HIGH_WARN_CAP_PCT = 27.0
ROOM_HIGH_WARN_MARGIN_PCT = 3.0
ROOM_HIGH_ALARM_MARGIN_PCT = 1.5


class EqAltDefinition(StrEnum):
    """How "equivalent altitude" is defined (docs/domain.md "Formulas")."""

    WEST = "west"  # same inspired PO2 (airway at 37 degC, saturated); default
    AMBIENT = "ambient"  # same ambient PO2; common in Chinese building literature


def isa_pressure_kpa(altitude_m: float) -> float:
    """ISA barometric pressure (kPa) at ``altitude_m`` (troposphere, below 11 km)."""
    return P0_KPA * (1.0 - ISA_K_PER_M * altitude_m) ** ISA_EXP


def isa_altitude_m(pressure_kpa: float) -> float:
    """ISA altitude (m) of ``pressure_kpa``; inverse of :func:`isa_pressure_kpa`.

    Raises ``ValueError`` for a pressure that is not positive.
    """
    if not pressure_kpa > 0.0:
        raise ValueError(f"pressure {pressure_kpa!r} kPa: expected > 0")
    return (1.0 - (pressure_kpa / P0_KPA) ** (1.0 / ISA_EXP)) / ISA_K_PER_M


def baro_band_kpa(altitude_m: float) -> tuple[float, float]:
    """Barometric pressures (kPa) plausible at a site of ``altitude_m``: the ISA pressure
    +/- :data:`BARO_SITE_TOLERANCE`."""
    isa = isa_pressure_kpa(altitude_m)
    return isa * (1.0 - BARO_SITE_TOLERANCE), isa * (1.0 + BARO_SITE_TOLERANCE)


def ppo2_kpa(o2_pct: float, baro_kpa: float) -> float:
    """Ambient oxygen partial pressure (kPa)."""
    return o2_pct / 100.0 * baro_kpa


def pio2_kpa(o2_pct: float, baro_kpa: float) -> float:
    """Inspired oxygen partial pressure (kPa): the airway is saturated at 37 degC."""
    return o2_pct / 100.0 * (baro_kpa - AIRWAY_WATER_KPA)


def equivalent_pressure_kpa(
    o2_pct: float, baro_kpa: float, definition: EqAltDefinition = EqAltDefinition.WEST
) -> float:
    """Barometric pressure whose normal air (20.95 %) matches this gas (same PIO2 or PO2)."""
    if definition is EqAltDefinition.AMBIENT:
        return ppo2_kpa(o2_pct, baro_kpa) / (AIR_O2_PCT / 100.0)
    return pio2_kpa(o2_pct, baro_kpa) / (AIR_O2_PCT / 100.0) + AIRWAY_WATER_KPA


def equivalent_altitude_m(
    o2_pct: float, baro_kpa: float, definition: EqAltDefinition = EqAltDefinition.WEST
) -> float:
    """Altitude (m) whose normal air gives the same (inspired or ambient) oxygen pressure.

    Negative below sea-level equivalence (e.g. 40 % O2 in Lhasa). Raises ``ValueError`` when
    ``o2_pct`` or ``baro_kpa`` make the equivalent pressure non-positive.
    """
    return isa_altitude_m(equivalent_pressure_kpa(o2_pct, baro_kpa, definition))


def o2_for_equivalent_altitude_pct(target_alt_m: float, baro_kpa: float) -> float:
    """O2 % needed for an equivalent altitude of ``target_alt_m`` (West definition)."""
    return (
        100.0
        * (AIR_O2_PCT / 100.0)
        * (isa_pressure_kpa(target_alt_m) - AIRWAY_WATER_KPA)
        / (baro_kpa - AIRWAY_WATER_KPA)
    )


def nfpa_burn_limit_pct(baro_kpa: float) -> float:
    """O2 % above which materials burn faster than in sea-level air: ``23.45 / sqrt(PB/P0)``.

    At altitude the fire hazard follows partial pressure (NFPA 99 "oxygen-enriched atmosphere"
    with the increased-burning-rate correction); Lhasa (64.5 kPa): about 29.4 %.
    """
    return NFPA_BURN_PCT_AT_P0 / math.sqrt(baro_kpa / P0_KPA)


def room_high_warn_pct(baro_kpa: float) -> float:
    """Room high-O2 warning, docs/domain.md proposal: ``min(27, NFPA limit - 3)``."""
    return min(ROOM_HIGH_WARN_CAP_PCT, nfpa_burn_limit_pct(baro_kpa) - ROOM_HIGH_WARN_MARGIN_PCT)


def room_high_alarm_pct(baro_kpa: float) -> float:
    """Room high-O2 alarm, docs/domain.md proposal: NFPA limit - 1.5 (Lhasa about 27.9 %)."""
    return nfpa_burn_limit_pct(baro_kpa) - ROOM_HIGH_ALARM_MARGIN_PCT


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
