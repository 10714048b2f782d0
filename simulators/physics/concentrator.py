"""Concentrator and PSA plant physics: purity against flow, warm-up, ageing and faults.

Numbers from DOMAIN.md: purity falls when flow exceeds the bed's design point (one unit: 94 % at
2 L/min, 92 % at 4 and 87 % at 6 with a 5 L/min rating); PSA product cannot exceed about 95.7 %
because argon passes the sieve; the failure signatures of section 6 (sieve wetting, dryer
failure, compressor wear, over-flow use). The model is stepped by the caller (``advance(dt_s)``)
so simulations run faster than real time and tests never sleep.

Purity while running = air + (steady - air) x warm-up, where steady is

    min(95.7, peak - k x**2 - ageing - wear x 4 x**2 - ambient penalty - wetting)

with x = flow / rated flow. Faults are plain attributes a scenario or a test flips:
``flow_stuck_full`` (flow goes to ``max_flow_lpm``), ``dryer_failed`` (dew point rises with
``dew_tau_s``; above -40 degC moisture wets the sieve and purity falls), ``compressor_wear``
(0..1: lower bed and outlet pressure, hotter compressor, more power, purity lost at high flow),
``ambient_temp_c`` (zeolite holds less nitrogen when hot: purity falls above 25 degC),
``power_on(False)`` (the unit stops; the Modbus server stops answering; power back means a cold
start with its warm-up).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

AIR_O2_PCT = 20.95
ARGON_CAP_PCT = 95.7  # O2 + Ar leave the zeolite together (DOMAIN.md section 3)
DRY_DEW_POINT_C = -55.0  # a working refrigerant + desiccant dryer
WET_DEW_POINT_C = 5.0  # dryer bypassed: feed air saturated at the receiver
WETTING_ONSET_C = -40.0  # DOMAIN.md section 3: plant dew point warn above -40 degC
DRYER_ALARM_C = -30.0  # ... alarm above -30 degC


@dataclass
class ConcentratorParams:
    """Parameters of one unit. Flows in L/min, times in s, purities in %, pressures gauge kPa."""

    rated_flow_lpm: float = 5.0
    max_flow_lpm: float | None = None  # flowmeter end stop; None = 1.5 x rated
    # purity(x) = peak - curve_k * x**2 with x = flow / rated flow; peak 94.9 and k 5.5 put the
    # DOMAIN.md unit's three points (x = 0.4, 0.8, 1.2) within 0.7 % of 94, 92 and 87 %.
    peak_purity_pct: float = 94.9
    curve_k: float = 5.5
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
    # Dryer failure: sieve wetting rate per degC of dew point above -40 degC, and recovery.
    dew_tau_s: float = 3600.0
    wetting_pct_per_c_h: float = 0.01
    drying_tau_s: float = 48 * 3600.0
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
    ):
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
        self.dew_point_c = DRY_DEW_POINT_C
        self.wetting_pct = 0.0
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

    def steady_purity_pct(self, flow_lpm: float) -> float:
        """Purity the sieve delivers at this flow once warm, with ageing and faults applied."""
        p = self.params
        x = flow_lpm / p.rated_flow_lpm
        aged = p.degradation_pct_per_day * self.sim_time_s / 86400.0
        worn = p.wear_purity_pct * self.compressor_wear * x * x
        hot = p.hot_penalty_pct_per_c * max(0.0, self.ambient_temp_c - p.hot_onset_c)
        purity = p.peak_purity_pct - p.curve_k * x * x - aged - worn - hot - self.wetting_pct
        return max(AIR_O2_PCT, min(ARGON_CAP_PCT, purity))

    def advance(self, dt_s: float) -> None:
        """Step the model by ``dt_s`` simulated seconds."""
        p = self.params
        self.sim_time_s += dt_s
        # Dryer: first-order dew point; moisture above the onset wets the sieve, a dry feed
        # slowly regenerates it.
        dew_target = WET_DEW_POINT_C if self.dryer_failed and self.running else DRY_DEW_POINT_C
        self.dew_point_c = dew_target + (self.dew_point_c - dew_target) * math.exp(
            -dt_s / p.dew_tau_s
        )
        excess_c = self.dew_point_c - WETTING_ONSET_C
        if excess_c > 0 and self.running:
            self.wetting_pct += p.wetting_pct_per_c_h * excess_c * dt_s / 3600.0
        elif self.wetting_pct > 0:
            self.wetting_pct *= math.exp(-dt_s / p.drying_tau_s)
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
        """Canonical fields (DOMAIN.md section 5) as the device would report them now."""
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
