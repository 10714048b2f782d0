"""Concentrator and PSA plant physics: purity against flow, warm-up, sieve degradation.

Numbers from DOMAIN.md: purity falls when flow exceeds the bed's design point (one unit: 94 % at
2 L/min, 92 % at 4 and 87 % at 6 with a 5 L/min rating); PSA product cannot exceed about 95.7 %
because argon passes the sieve. The model is time-stepped by the caller (``advance(dt_s)``) so
simulations can run faster than real time and tests never sleep.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

AIR_O2_PCT = 20.95
ARGON_CAP_PCT = 95.7  # O2 + Ar leave the zeolite together (DOMAIN.md section 3)


@dataclass
class ConcentratorParams:
    """Parameters of one unit. Flows in L/min, times in s, purities in %."""

    rated_flow_lpm: float = 5.0
    # purity(x) = peak - curve_k * x**2 with x = flow / rated flow; peak 94.9 and k 5.5 put the
    # DOMAIN.md unit's three points (x = 0.4, 0.8, 1.2) within 0.6 % of 94, 92 and 87 %.
    peak_purity_pct: float = 94.9
    curve_k: float = 5.5
    warmup_tau_s: float = 90.0  # purity rises from air to product in about 5 min (3 tau)
    degradation_pct_per_day: float = 0.0  # sieve ageing: purity residual drift (negative effect)
    noise_pct: float = 0.08
    outlet_kpa_at_rated: float = 55.0
    ambient_temp_c: float = 20.0


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
        self.sim_time_s = 0.0
        # Since the last start; a unit found running has long finished its warm-up.
        self.on_time_s = 0.0 if cold_start else 3600.0
        self.run_h = 1000.0 + self._rng.uniform(0.0, 5000.0)
        self._purity_pct = AIR_O2_PCT
        self.advance(0.0)

    def steady_purity_pct(self, flow_lpm: float) -> float:
        """Purity the sieve delivers at this flow once warm, with ageing applied."""
        p = self.params
        x = flow_lpm / p.rated_flow_lpm
        aged = p.degradation_pct_per_day * self.sim_time_s / 86400.0
        return min(ARGON_CAP_PCT, p.peak_purity_pct - p.curve_k * x * x - aged)

    def advance(self, dt_s: float) -> None:
        """Step the model by ``dt_s`` simulated seconds."""
        self.sim_time_s += dt_s
        if not self.running:
            self.on_time_s = 0.0
            self._purity_pct = AIR_O2_PCT
            return
        self.on_time_s += dt_s
        self.run_h += dt_s / 3600.0
        warm = 1.0 - math.exp(-self.on_time_s / self.params.warmup_tau_s)
        target = self.steady_purity_pct(self.flow_lpm)
        self._purity_pct = AIR_O2_PCT + (target - AIR_O2_PCT) * warm

    @property
    def flow_lpm(self) -> float:
        return self.flow_setpoint_lpm if self.running else 0.0

    def values(self) -> dict[str, float | int | bool]:
        """Canonical fields (DOMAIN.md section 5) as the device would report them now."""
        p = self.params
        noise = self._rng.gauss(0.0, p.noise_pct)
        flow = self.flow_lpm
        outlet = p.outlet_kpa_at_rated * (flow / p.rated_flow_lpm) ** 0.5 if self.running else 0.0
        return {
            "purity_pct": max(0.0, min(100.0, self._purity_pct + noise)),
            "flow_lpm": max(0.0, flow + self._rng.gauss(0.0, 0.01 * p.rated_flow_lpm)),
            "outlet_kpa": outlet,
            "tank_kpa": outlet * 1.4,
            "bed_a_kpa": 180.0 if self.running else 0.0,
            "bed_b_kpa": 175.0 if self.running else 0.0,
            "dew_point_c": -55.0,
            "temp_c": p.ambient_temp_c + (12.0 if self.running else 0.0),
            "run_h": int(self.run_h),
            "alarm_bits": 0,
            "state": self.running,
            "alarm_dryer": False,
            "alarm_purity": False,
        }
