"""Oxygen at altitude: the formulas of docs/domain.md "Formulas" and "Limits and alarms".

Pure, numbers in and numbers out: pressures in kPa, altitudes in m, O2 in % of volume (20.95 for
outdoor air at every altitude). The gateway uses them through ``gateway.oxygen`` (which adds the
gateway's own flow conversions and public names for the constants); the board firmware imports
this module directly. Written for single-precision floats too (ESP32): results are good to
about 0.1 m / 0.001 kPa, far below sensor resolution.

The simulators keep an independent implementation on purpose (simulators/physics/atmosphere.py,
the oracle); both are tested against the same vectors, ``o2core/vectors.json``.
"""


def const(value: float) -> float:
    # MicroPython's compiler folds ``_NAME = const(value)`` into the bytecode itself, whatever
    # ``const`` is bound to (no global, no qstr on the board); CPython calls this identity.
    return value


# ICAO / ISO 2533 standard atmosphere, troposphere (valid below 11 km): P = P0 (1 - k h) ** n.
_P0_KPA = const(101.325)  # sea level
_ISA_K = const(2.25577e-5)  # per m: lapse rate / sea-level temperature = 0.0065 / 288.15
_ISA_EXP = const(5.25588)  # g0 M / (R L)
_AIR_O2_PCT = const(20.95)  # outdoor air, every altitude
_AIRWAY_WATER_KPA = const(6.27)  # water vapour of an airway saturated at 37 degC (West)
# A barometer is believed when it is within this fraction of the ISA pressure of the site's
# altitude. Weather moves station pressure by a few percent (Lhasa's mean 65.2 kPa is 1 %
# above ISA 64.5, seasonal swings about 1.5 %), a site's configured altitude may be a hillside
# or some floors off (200 m is 2.5 % at 3650 m). 10 % keeps all of that and still catches what
# goes wrong with barometers: 0 kPa, a BME280's 82 kPa "no measurement" code, sea-level values
# on the plateau (+57 %), hPa/kPa mix-ups (x10), a site altitude wrong by more than ~900 m.
_BARO_BAND = const(0.10)
# NFPA 99 "atmosphere of increased burning rate": O2 above 23.45 % / sqrt(PB in atm).
_NFPA_PCT_AT_P0 = const(23.45)
# Room high thresholds (docs/domain.md "Limits and alarms", project choices): alarm at the NFPA
# limit - 1.5, warning at min(27, limit - 3).
_HIGH_ALARM_MARGIN_PCT = const(1.5)
_HIGH_WARN_MARGIN_PCT = const(3.0)
_HIGH_WARN_CAP_PCT = const(27.0)


def isa_pressure_kpa(alt_m: float) -> float:
    """ISA barometric pressure (kPa) at altitude ``alt_m`` (m, troposphere: below 11 km)."""
    return _P0_KPA * (1.0 - _ISA_K * alt_m) ** _ISA_EXP


def isa_altitude_m(p_kpa: float) -> float:
    """ISA altitude (m) of the pressure ``p_kpa``; inverse of :func:`isa_pressure_kpa`.

    Raises ValueError for a pressure that is not positive (no altitude has it).
    """
    if not p_kpa > 0.0:
        raise ValueError("pressure %r kPa: expected > 0" % (p_kpa,))
    return (1.0 - (p_kpa / _P0_KPA) ** (1.0 / _ISA_EXP)) / _ISA_K


def baro_plausible(p_kpa: object, site_kpa: float) -> bool:
    """True if ``p_kpa`` is a number within +/- 10 % of ``site_kpa`` (the site's ISA pressure).

    False for None, NaN, infinities, strings and anything outside the band; never raises.
    """
    if not isinstance(p_kpa, (int, float)):
        return False
    # NaN fails every comparison and +-inf fail the band: one test covers them all.
    return site_kpa * (1.0 - _BARO_BAND) <= p_kpa <= site_kpa * (1.0 + _BARO_BAND)


def ppo2_kpa(o2_pct: float, baro_kpa: float) -> float:
    """Ambient oxygen partial pressure (kPa)."""
    return o2_pct / 100.0 * baro_kpa


def pio2_kpa(o2_pct: float, baro_kpa: float) -> float:
    """Inspired oxygen partial pressure (kPa): the airway is saturated at 37 degC."""
    return o2_pct / 100.0 * (baro_kpa - _AIRWAY_WATER_KPA)


def equivalent_altitude_m(o2_pct: float, baro_kpa: float, definition: str = "west") -> float:
    """Altitude (m) whose normal air (20.95 %) gives the same oxygen pressure as this gas.

    ``definition``: ``"west"`` (same inspired PO2, the default) or ``"ambient"`` (same ambient
    PO2, common in Chinese building literature). Negative below sea-level equivalence (40 % O2
    in Lhasa). Raises ValueError for another definition, or when the equivalent pressure is not
    positive (no oxygen at all with the ambient definition).
    """
    if definition == "west":
        p_eq = pio2_kpa(o2_pct, baro_kpa) * 100.0 / _AIR_O2_PCT + _AIRWAY_WATER_KPA
    elif definition == "ambient":
        p_eq = ppo2_kpa(o2_pct, baro_kpa) * 100.0 / _AIR_O2_PCT
    else:
        raise ValueError("eq_alt_definition %r: expected 'west' or 'ambient'" % (definition,))
    return isa_altitude_m(p_eq)


def nfpa_burn_limit_pct(baro_kpa: object) -> float:
    """O2 % above which materials burn faster than in sea-level air: ``23.45 / sqrt(PB/P0)``
    (NFPA 99; Lhasa, 64.5 kPa: 29.4 %).

    A pressure that is not a number between 1 and 1000 kPa gives the sea-level limit (23.45 %),
    the lowest and so the most cautious one: never raises (a barometer reading 0 kPa must not
    stop a board's alarm).
    """
    if not (isinstance(baro_kpa, (int, float)) and 1.0 < baro_kpa < 1000.0):
        baro_kpa = _P0_KPA
    return _NFPA_PCT_AT_P0 / (baro_kpa / _P0_KPA) ** 0.5


def room_thresholds(
    baro_kpa: object, high_alarm: float | None = None, high_warn: float | None = None
) -> tuple[float, float]:
    """``(high_alarm_pct, high_warn_pct)`` of a room at ``baro_kpa``: the NFPA limit - 1.5 and
    ``min(27, NFPA limit - 3)`` (Lhasa: 27.9 % and 26.4 %); explicit values (a site's
    configuration) win. Never raises (see :func:`nfpa_burn_limit_pct`)."""
    limit = nfpa_burn_limit_pct(baro_kpa)
    if high_alarm is None:
        high_alarm = limit - _HIGH_ALARM_MARGIN_PCT
    if high_warn is None:
        high_warn = min(_HIGH_WARN_CAP_PCT, limit - _HIGH_WARN_MARGIN_PCT)
    return high_alarm, high_warn
