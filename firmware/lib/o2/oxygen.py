"""Oxygen formulas (docs/domain.md "Formulas"). Pressures in kPa, altitudes in m, O2 in % (volume).

Written for single-precision floats (ESP32): results are good to about 0.1 m / 0.001 kPa,
far below sensor resolution.
"""

try:
    from micropython import const
except ImportError:  # CPython (tests): const() is the identity

    def const(x):  # type: ignore[misc]
        return x


_P0_KPA = const(101.325)  # ISA sea-level pressure
_ISA_K = const(2.25577e-5)  # 1/m, ISA troposphere lapse constant
_ISA_EXP = const(5.25588)
_AIR_O2_FRACTION = const(0.2095)  # outdoor air, every altitude
_WATER_VAPOUR_KPA = const(6.27)  # saturated at 37 degC: the airway (West)

# Plausible station pressure: ISA pressure of the site altitude +- 10 %. Weather moves station
# pressure by a few kPa (Lhasa: about 64-66.5 kPa over a year, ISA 64.5) and ISA differs from
# the real mean by ~1 %; 10 % is ~6.5 kPa at 3650 m, so no real weather leaves the band, while
# a dead or misread barometer (0, 82 kPa from a skipped BME280 sample, sea level on a plateau)
# or a board configured ~900 m off its true altitude does (firmware/README.md).
_BARO_BAND = const(0.10)

_EQ_ALT_WEST = const("west")  # inspired PO2, default
_EQ_ALT_AMBIENT = const("ambient")  # ambient PO2, common in Chinese building literature


def isa_pressure_kpa(alt_m: float) -> float:
    """ISA barometric pressure (kPa) at altitude ``alt_m``."""
    return _P0_KPA * (1 - _ISA_K * alt_m) ** _ISA_EXP


def isa_altitude_m(p_kpa: float) -> float:
    """ISA altitude (m) at which the pressure is ``p_kpa``; inverse of isa_pressure_kpa."""
    return (1 - (p_kpa / _P0_KPA) ** (1 / _ISA_EXP)) / _ISA_K


def baro_plausible(p_kpa, site_kpa: float) -> bool:
    """True if ``p_kpa`` is a number within +-10 % of ``site_kpa`` (the site's ISA pressure).

    False for None, NaN, infinities and anything outside the band (never raises).
    """
    if not isinstance(p_kpa, (int, float)):
        return False
    # NaN fails every comparison, +-inf fail the band: one test covers them all.
    return site_kpa * (1 - _BARO_BAND) <= p_kpa <= site_kpa * (1 + _BARO_BAND)


def ppo2_kpa(o2_pct: float, baro_kpa: float) -> float:
    """Ambient oxygen partial pressure (kPa)."""
    return o2_pct / 100 * baro_kpa


def pio2_kpa(o2_pct: float, baro_kpa: float) -> float:
    """Inspired oxygen partial pressure (kPa), airway saturated at 37 degC."""
    return o2_pct / 100 * (baro_kpa - _WATER_VAPOUR_KPA)


def equivalent_altitude_m(o2_pct: float, baro_kpa: float, definition: str = _EQ_ALT_WEST) -> float:
    """Altitude whose normal air (20.95 %) gives the same PO2 as this room.

    ``definition``: "west" (inspired PO2, default) or "ambient" (ambient PO2).
    Raises ValueError for an unknown definition.
    """
    if definition == _EQ_ALT_WEST:
        p_eq = pio2_kpa(o2_pct, baro_kpa) / _AIR_O2_FRACTION + _WATER_VAPOUR_KPA
    elif definition == _EQ_ALT_AMBIENT:
        p_eq = ppo2_kpa(o2_pct, baro_kpa) / _AIR_O2_FRACTION
    else:
        raise ValueError("equivalent altitude definition %r" % definition)
    return isa_altitude_m(p_eq)


def o2_for_equivalent_altitude_pct(target_alt_m: float, baro_kpa: float) -> float:
    """O2 % needed for equivalent altitude ``target_alt_m`` (West definition)."""
    return (
        100
        * _AIR_O2_FRACTION
        * (isa_pressure_kpa(target_alt_m) - _WATER_VAPOUR_KPA)
        / (baro_kpa - _WATER_VAPOUR_KPA)
    )
