"""Oxygen formulas (DOMAIN.md section 2). Pressures in kPa, altitudes in m, O2 in % (volume).

Written for single-precision floats (ESP32): results are good to about 0.1 m / 0.001 kPa,
far below sensor resolution.
"""

P0_KPA = 101.325  # ISA sea-level pressure
ISA_K = 2.25577e-5  # 1/m, ISA troposphere lapse constant
ISA_EXP = 5.25588
AIR_O2_FRACTION = 0.2095  # outdoor air, every altitude
WATER_VAPOUR_KPA = 6.27  # saturated at 37 degC: the airway (West)

EQ_ALT_WEST = "west"  # inspired PO2, default
EQ_ALT_AMBIENT = "ambient"  # ambient PO2, common in Chinese building literature


def isa_pressure_kpa(alt_m: float) -> float:
    """ISA barometric pressure (kPa) at altitude ``alt_m``."""
    return P0_KPA * (1 - ISA_K * alt_m) ** ISA_EXP


def isa_altitude_m(p_kpa: float) -> float:
    """ISA altitude (m) at which the pressure is ``p_kpa``; inverse of isa_pressure_kpa."""
    return (1 - (p_kpa / P0_KPA) ** (1 / ISA_EXP)) / ISA_K


def ppo2_kpa(o2_pct: float, baro_kpa: float) -> float:
    """Ambient oxygen partial pressure (kPa)."""
    return o2_pct / 100 * baro_kpa


def pio2_kpa(o2_pct: float, baro_kpa: float) -> float:
    """Inspired oxygen partial pressure (kPa), airway saturated at 37 degC."""
    return o2_pct / 100 * (baro_kpa - WATER_VAPOUR_KPA)


def equivalent_altitude_m(o2_pct: float, baro_kpa: float, definition: str = EQ_ALT_WEST) -> float:
    """Altitude whose normal air (20.95 %) gives the same PO2 as this room.

    ``definition``: EQ_ALT_WEST (inspired PO2, default) or EQ_ALT_AMBIENT (ambient PO2).
    Raises ValueError for an unknown definition.
    """
    if definition == EQ_ALT_WEST:
        p_eq = pio2_kpa(o2_pct, baro_kpa) / AIR_O2_FRACTION + WATER_VAPOUR_KPA
    elif definition == EQ_ALT_AMBIENT:
        p_eq = ppo2_kpa(o2_pct, baro_kpa) / AIR_O2_FRACTION
    else:
        raise ValueError("equivalent altitude definition %r" % definition)
    return isa_altitude_m(p_eq)


def o2_for_equivalent_altitude_pct(target_alt_m: float, baro_kpa: float) -> float:
    """O2 % needed for equivalent altitude ``target_alt_m`` (West definition)."""
    return (
        100
        * AIR_O2_FRACTION
        * (isa_pressure_kpa(target_alt_m) - WATER_VAPOUR_KPA)
        / (baro_kpa - WATER_VAPOUR_KPA)
    )
