"""A unit's own purity-flow baseline, for the ``residual`` alarm kind: purity judged against
what this unit delivered at the same flow when it was new (docs/domain.md, How equipment
degrades: a wetted sieve shows as lower purity at the same flow)."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Baseline:
    """Purity-flow baseline of one unit: ``purity = a + b * flow**2`` fitted by least squares
    over its first ``learn_s`` of warm running (the shape of the curve in docs/domain.md: 94 % at
    2 L/min, 92 % at 4, 87 % at 6), or given as points and interpolated."""

    points: tuple[tuple[float, float], ...] = ()
    started_ms: int | None = None
    n: int = 0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    flow_min: float = math.inf
    flow_max: float = -math.inf
    frozen: bool = False

    def learn(self, flow: float, purity: float, ts_ms: int, learn_s: float) -> None:
        if self.points or self.frozen:
            return
        if self.started_ms is None:
            self.started_ms = ts_ms
        if ts_ms - self.started_ms >= learn_s * 1000 and self.n >= 10:
            self.frozen = True
            return
        x = flow * flow
        self.n += 1
        self.sx += x
        self.sy += purity
        self.sxx += x * x
        self.sxy += x * purity
        self.flow_min = min(self.flow_min, flow)
        self.flow_max = max(self.flow_max, flow)

    def predict(self, flow: float) -> float | None:
        """Expected purity at ``flow``; ``None`` while learning or far outside the learned
        flows (a baseline cannot judge a flow it never saw)."""
        if self.points:
            pts = self.points
            if flow <= pts[0][0]:
                return pts[0][1]
            for (f0, p0), (f1, p1) in itertools.pairwise(pts):
                if flow <= f1:
                    return p0 + (p1 - p0) * (flow - f0) / (f1 - f0) if f1 > f0 else p1
            return pts[-1][1]
        if not self.frozen:
            return None
        span = max(self.flow_max - self.flow_min, 0.1 * max(self.flow_max, 1e-9))
        if not self.flow_min - 0.2 * span <= flow <= self.flow_max + 0.2 * span:
            return None
        mean_x = self.sx / self.n
        var = self.sxx / self.n - mean_x * mean_x
        slope = (
            0.0
            if var <= 1e-9 * max(1.0, mean_x * mean_x)
            else ((self.sxy / self.n - mean_x * self.sy / self.n) / var)
        )
        return self.sy / self.n + slope * (flow * flow - mean_x)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("points")
        d["flow_min"] = None if math.isinf(self.flow_min) else self.flow_min
        d["flow_max"] = None if math.isinf(self.flow_max) else self.flow_max
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], points: tuple[tuple[float, float], ...]) -> Baseline:
        b = cls(points=points, **{k: v for k, v in d.items() if k not in ("flow_min", "flow_max")})
        b.flow_min = math.inf if d.get("flow_min") is None else float(d["flow_min"])
        b.flow_max = -math.inf if d.get("flow_max") is None else float(d["flow_max"])
        return b
