"""Concentrator and PSA plant physics: purity against flow, altitude, warm-up, ageing and faults.

Numbers from docs/domain.md ("Limits and alarms", "How equipment degrades"): purity falls when
flow exceeds the bed's design point (one unit: 94 % at 2 L/min, 92 % at 4 and 87 % at 6 with a
5 L/min rating); PSA product cannot exceed about 95.7 % because argon passes the sieve; the
failure signatures of sieve wetting, dryer failure, compressor wear and over-flow use. The model
is stepped by the caller (``advance(dt_s)``) so simulations run faster than real time and tests
never sleep.

Flows are normal litres per minute (0 degC, 101.325 kPa): an amount of gas, as a nameplate in
Nm3/h and a mass flowmeter state it. A room converts them to its own conditions
(:func:`simulators.physics.atmosphere.standard_to_room_factor`).

Purity while running = air + (steady - air) x warm-up, where steady is

    min(95.7, peak - (k + wear x 4) x**2 - ageing - ambient penalty)

with x = flow / (capacity at the site x (1 - wetted fraction of the sieve)).

Altitude (a stated engineering assumption, not a vendor curve): the compressor of a PSA unit is
a fixed-displacement machine, so the mass of air it feeds the beds, and with it the product the
beds can separate at their design purity, scales with the intake air density, i.e. with the
ambient pressure at a fixed intake temperature: capacity = rated x (PB / P_rated) ** n with
n = 1. At Lhasa (3650 m, ISA 64.50 kPa) that is 0.637 of the sea-level rating: a 5 L/min
concentrator left at 5 L/min runs at x = 1.57 and gives about 81 % instead of 89 %; at its
sea-level purity it delivers 3.2 L/min. Vendors limit most concentrators to about 2,000-4,000 m
for this reason; ``altitude_exponent`` and ``rated_at_kpa`` (a unit rated at the site) let a
vendor's own derating replace the assumption. The pressure comes from the caller
(``ambient_kpa``: the site's weather), computed by the simulators' own ISA formula on purpose,
independently of the gateway's copy, so the simulators stay an oracle for the gateway.

Faults are plain attributes a scenario or a test flips: ``flow_stuck_full`` (flow goes to
``max_flow_lpm``), ``dryer_failed`` (see below), ``compressor_wear`` (0..1: lower bed and outlet
pressure, hotter compressor, more power, purity lost at high flow), ``ambient_temp_c`` (zeolite
holds less nitrogen when hot: purity falls above 25 degC), ``power_on(False)`` (the unit stops;
the Modbus server stops answering; power back means a cold start with its warm-up).

Dryer failure takes weeks to show in the purity, hours in the dew point. The feed air dew point
follows its target with ``dew_tau_s`` = 1 h (a desiccant bed breaking through or a refrigerant
dryer tripping: the pressure dew point climbs to that of a saturated receiver, about +5 degC,
within hours), so the dew point warning (above -40 degC) and alarm (above -30 degC) come first.
Water the sieve cannot take (vapour above what a -40 degC dew point carries) is adsorbed at the
feed end of the beds and is not removed by the pressure swing (zeolite needs heat to give water
up): a growing part of each bed is lost to nitrogen separation. The wetted fraction grows by
``wetting_per_day`` (1.5 % of the bed a day with a saturated +5 degC feed, in proportion to the
excess vapour pressure at lower dew points); the remaining bed sees a higher relative flow, so
the purity-flow curve shifts down at the same flow and the loss accelerates: a plant at 2/3 of
its capacity loses about 0.1 % on the first day, 0.6 % in a week, falls below the 91 % warning
in about two weeks and the 90 % alarm in about three. After the dryer is repaired the dry purge
recovers the sieve only slowly (``drying_tau_s`` = 30 days); a badly wetted sieve is in practice
regenerated or replaced. A scenario that wants to show this in a demo compresses time
(``[scenario] speed``), not the physics.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from simulators.physics.atmosphere import P0_KPA

AIR_O2_PCT = 20.95
ARGON_CAP_PCT = 95.7  # O2 + Ar leave the zeolite together (docs/domain.md "Limits and alarms")
DRY_DEW_POINT_C = -55.0  # a working refrigerant + desiccant dryer
WET_DEW_POINT_C = 5.0  # dryer failed: feed air saturated at the receiver
WETTING_ONSET_C = -40.0  # docs/domain.md "Limits and alarms": plant dew point warn above -40 degC
DRYER_ALARM_C = -30.0  # ... alarm above -30 degC
MAX_WETTED_FRACTION = 0.95


def saturation_vapour_kpa(temp_c: float) -> float:
    """Saturation vapour pressure over water (>= 0 degC) or ice (< 0 degC), Magnus form with
    the Alduchov & Eskridge (1996) coefficients; the water content of air at that dew point."""
    if temp_c >= 0.0:
        return 0.61094 * math.exp(17.625 * temp_c / (temp_c + 243.04))
    return 0.61121 * math.exp(22.587 * temp_c / (temp_c + 273.86))


_ONSET_KPA = saturation_vapour_kpa(WETTING_ONSET_C)
_WET_KPA = saturation_vapour_kpa(WET_DEW_POINT_C)


def moisture_load(dew_point_c: float) -> float:
    """Water the sieve takes up, relative to a saturated +5 degC feed: 0 at or below -40 degC."""
    if dew_point_c <= WETTING_ONSET_C:
        return 0.0
    return (saturation_vapour_kpa(dew_point_c) - _ONSET_KPA) / (_WET_KPA - _ONSET_KPA)


@dataclass
class ConcentratorParams:
    """Parameters of one unit. Flows in normal L/min, times in s, purities in %, pressures gauge
    kPa (``rated_at_kpa`` absolute)."""

    rated_flow_lpm: float = 5.0
    max_flow_lpm: float | None = None  # flowmeter end stop; None = 1.5 x rated
    # purity(x) = peak - curve_k * x**2 with x = flow / capacity; peak 94.9 and k 5.5 put the
    # docs/domain.md unit's three points (x = 0.4, 0.8, 1.2) within 0.7 % of 94, 92 and 87 %.
    peak_purity_pct: float = 94.9
    curve_k: float = 5.5
    # Altitude derating (module docstring): capacity = rated x (PB / rated_at_kpa) ** exponent.
    rated_at_kpa: float = P0_KPA  # ambient pressure of the rating (nameplates: sea level)
    altitude_exponent: float = 1.0  # 1: product mass flow in proportion to intake density
    warmup_tau_s: float = 90.0  # purity rises from air to product in about 5 min (3 tau)
    degradation_pct_per_day: float = 0.0  # sieve ageing: purity residual drift (negative effect)
    noise_pct: float = 0.08
    outlet_kpa_at_rated: float = 55.0
    ambient_temp_c: float = 20.0
    purity_alarm_pct: float = 82.0  # ISO 80601-2-69 lineage (medical); plants use 90
    # Ambient effect: -0.15 % purity per degC above 25 degC (zeolite N2 capacity falls with
    # temperature; concentrators are rated for 10-40 degC).
    hot_penalty_pct_per_c: float = 0.15
    hot_onset_c: float = 25.0
    # Dryer failure (module docstring): dew point time constant, sieve wetting with a saturated
    # +5 degC feed (fraction of the bed per day), recovery by the dry purge after the repair.
    dew_tau_s: float = 3600.0
    wetting_per_day: float = 0.015
    drying_tau_s: float = 30 * 86400.0
    wear_purity_pct: float = 4.0  # purity lost at rated flow with a fully worn compressor
    bed_peak_kpa: float = 200.0  # PSA feed / bed pressurisation peak (gauge)
    cycle_s: float = 40.0  # one PSA half cycle per bed
    power_w_at_rated: float = 350.0


class ConcentratorModel:
    """One concentrator or PSA plant, stepped in simulated time."""

    def __init__(
        self,
        params: ConcentratorParams,
        seed: int = 0,
        flow_lpm: float | None = None,
        cold_start: bool = False,
        ambient_kpa: float = P0_KPA,
    ):
        """``ambient_kpa``: barometric pressure at the unit (the site's weather; the caller
        updates the attribute as it changes). The default, sea level, means no derating."""
        self.params = params
        self._rng = random.Random(seed)
        self.flow_setpoint_lpm = params.rated_flow_lpm * 0.8 if flow_lpm is None else flow_lpm
        self.running = True
        self.powered = True
        self.sim_time_s = 0.0
        # Since the last start; a unit found running has long finished its warm-up.
        self.on_time_s = 0.0 if cold_start else 3600.0
        self.run_h = 1000.0 + self._rng.uniform(0.0, 5000.0)
        # Faults and conditions (see module docstring).
        self.flow_stuck_full = False
        self.dryer_failed = False
        self.compressor_wear = 0.0
        self.ambient_temp_c = params.ambient_temp_c
        self.ambient_kpa = ambient_kpa
        self.dew_point_c = DRY_DEW_POINT_C
        self.wetted_fraction = 0.0  # part of the sieve lost to water (0..0.95)
        self.power_faults = 0  # power losses since start (medical alarm bit 2 latches on one)
        self._purity_pct = AIR_O2_PCT
        self.advance(0.0)

    @property
    def max_flow_lpm(self) -> float:
        p = self.params
        return p.max_flow_lpm if p.max_flow_lpm is not None else 1.5 * p.rated_flow_lpm

    def power_on(self, on: bool) -> None:
        """Mains power: off stops the unit (and its controller); on is a cold start."""
        if self.powered and not on:
            self.power_faults += 1
        if on and not self.powered:
            self.on_time_s = 0.0
        self.powered = on
        self.running = on

    @property
    def capacity_lpm(self) -> float:
        """Flow at which the unit gives its rated-flow purity here (altitude derating)."""
        p = self.params
        return p.rated_flow_lpm * (self.ambient_kpa / p.rated_at_kpa) ** p.altitude_exponent

    def _penalties_pct(self) -> float:
        p = self.params
        aged = p.degradation_pct_per_day * self.sim_time_s / 86400.0
        hot = p.hot_penalty_pct_per_c * max(0.0, self.ambient_temp_c - p.hot_onset_c)
        return aged + hot

    def _curve_k(self) -> float:
        p = self.params
        return p.curve_k + p.wear_purity_pct * self.compressor_wear

    def _effective_capacity_lpm(self) -> float:
        return self.capacity_lpm * (1.0 - min(MAX_WETTED_FRACTION, self.wetted_fraction))

    def steady_purity_pct(self, flow_lpm: float) -> float:
        """Purity the sieve delivers at this flow once warm, with altitude, ageing and faults."""
        p = self.params
        x = flow_lpm / self._effective_capacity_lpm()
        purity = p.peak_purity_pct - self._curve_k() * x * x - self._penalties_pct()
        return max(AIR_O2_PCT, min(ARGON_CAP_PCT, purity))

    def deliverable_flow_lpm(self, purity_pct: float) -> float:
        """Highest flow at which the unit, warm, still gives ``purity_pct`` (0 if never)."""
        headroom = self.params.peak_purity_pct - self._penalties_pct() - purity_pct
        if headroom <= 0.0:
            return 0.0
        return self._effective_capacity_lpm() * math.sqrt(headroom / self._curve_k())

    def advance(self, dt_s: float) -> None:
        """Step the model by ``dt_s`` simulated seconds."""
        p = self.params
        self.sim_time_s += dt_s
        # Dryer: first-order dew point; water above the -40 degC onset wets the sieve while the
        # compressor feeds it; with a dry feed the purge slowly dries it again.
        dew_target = WET_DEW_POINT_C if self.dryer_failed and self.running else DRY_DEW_POINT_C
        dew_start = self.dew_point_c
        self.dew_point_c = dew_target + (dew_start - dew_target) * math.exp(-dt_s / p.dew_tau_s)
        load = moisture_load(0.5 * (dew_start + self.dew_point_c))  # mid-step dew point
        if load > 0.0 and self.running:
            self.wetted_fraction = min(
                MAX_WETTED_FRACTION, self.wetted_fraction + p.wetting_per_day * load * dt_s / 86400
            )
        elif self.wetted_fraction > 0.0 and self.running:
            self.wetted_fraction *= math.exp(-dt_s / p.drying_tau_s)
        if not self.running:
            self.on_time_s = 0.0
            self._purity_pct = AIR_O2_PCT
            return
        self.on_time_s += dt_s
        self.run_h += dt_s / 3600.0
        warm = 1.0 - math.exp(-self.on_time_s / p.warmup_tau_s)
        target = self.steady_purity_pct(self.flow_lpm)
        self._purity_pct = AIR_O2_PCT + (target - AIR_O2_PCT) * warm

    @property
    def flow_lpm(self) -> float:
        if not self.running:
            return 0.0
        return self.max_flow_lpm if self.flow_stuck_full else self.flow_setpoint_lpm

    @property
    def purity_pct(self) -> float:
        """True product purity now (no sensor noise), as the room downstream receives it."""
        return self._purity_pct

    def values(self) -> dict[str, float | int | bool]:
        """Canonical fields (docs/domain.md "Modbus equipment") as the device reports them now."""
        p = self.params
        noise = self._rng.gauss(0.0, p.noise_pct)
        flow = self.flow_lpm
        running = self.running
        wear = self.compressor_wear
        x = flow / p.rated_flow_lpm
        outlet = p.outlet_kpa_at_rated * math.sqrt(x) * (1.0 - 0.2 * wear) if running else 0.0
        # Beds alternate: one pressurises (adsorbs) while the other vents and purges.
        phase = (self.sim_time_s % (2 * p.cycle_s)) / p.cycle_s
        peak = p.bed_peak_kpa * (1.0 - 0.35 * wear)
        rising = peak * (1.0 - math.exp(-4.0 * (phase % 1.0)))
        bed_a, bed_b = (rising, 0.1 * peak) if phase < 1.0 else (0.1 * peak, rising)
        purity = max(0.0, min(100.0, self._purity_pct + noise))
        cabinet_c = self.ambient_temp_c + ((12.0 + 15.0 * wear) if running else 0.0)
        warm = self.on_time_s > 5 * p.warmup_tau_s
        low_purity = running and warm and purity < p.purity_alarm_pct
        alarm_bits = (
            (1 if low_purity else 0)
            | (2 if cabinet_c > 50.0 else 0)
            | (4 if self.power_faults else 0)
            | (8 if running and flow < 0.1 * p.rated_flow_lpm else 0)
        )
        return {
            "purity_pct": purity,
            "flow_lpm": max(0.0, flow + self._rng.gauss(0.0, 0.01 * p.rated_flow_lpm))
            if running
            else 0.0,
            "outlet_kpa": outlet,
            "tank_kpa": outlet * 1.4,
            "bed_a_kpa": bed_a if running else 0.0,
            "bed_b_kpa": bed_b if running else 0.0,
            "feed_air_kpa": peak * 1.05 if running else 0.0,
            "dew_point_c": self.dew_point_c,
            "temp_c": cabinet_c,
            "compressor_temp_c": self.ambient_temp_c + ((45.0 + 25.0 * wear) if running else 0.0),
            "ambient_temp_c": self.ambient_temp_c,
            "power_w": p.power_w_at_rated * (0.6 + 0.4 * x) * (1.0 + 0.2 * wear)
            if running
            else 0.0,
            "run_h": int(self.run_h),
            "alarm_bits": alarm_bits,
            "state": running,
            "alarm_dryer": self.dew_point_c > DRYER_ALARM_C,
            "alarm_purity": low_purity,
        }


def params_from_profile(nominal: dict[str, object], **overrides: float) -> ConcentratorParams:
    """Parameters from a profile's ``[nominal]`` table (keys named like the fields)."""
    known = set(ConcentratorParams.__dataclass_fields__)
    values = {k: float(v) for k, v in nominal.items() if k in known and isinstance(v, int | float)}
    values.update({k: v for k, v in overrides.items() if k in known})
    return ConcentratorParams(**values)
