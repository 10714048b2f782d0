"""Days of oxygen supply left, forecast from each supply device's consumption trend.

A pipeline stage (:class:`SupplyForecast`, placed before the alarm engine) that adds the field
``days_left`` to every ``supply`` reading of a configured supply device whose stock it can
measure, so the alarm engine judges it like any other number (rules ``supply-days-left`` and
``supply-days-left-low`` in gateway/supply_rules.py).

The stock is the per cent of usable supply left, read from the reading itself:

- ``lox_level_pct`` (liquid-oxygen tank) or ``level_pct`` (buffer tank): the level as is;
- ``bank_left_kpa`` + ``bank_right_kpa`` (cylinder manifold): the gas both banks hold above
  the empty pressure, in % of two full banks, ``(L + R - 2 E) / (2 (F - E))``, with F the
  profile's ``[nominal] bank_full_kpa`` (default 15,000 kPa) and E its ``changeover_kpa``
  (the manifold leaves a bank there; default 1,000 kPa). Gauge pressure is proportional to
  the gas content (ideal gas, constant temperature) closely enough for a forecast.

The consumption rate is the least-squares slope of the stock over the last ``window_s`` of
readings (their own timestamps, so replays and simulated time give the same answer). Pure
arithmetic (:func:`days_left`); the class only keeps a bounded window per device:

- fewer than ``min_span_s`` of history: no ``days_left`` (no claim yet);
- the stock rising by more than ``refill_jump_pct`` between two readings (a tanker delivery,
  cylinders replaced): the window restarts from that reading;
- stock flat or rising: ``days_left`` = :data:`DAYS_LEFT_MAX` (nothing is being used up);
- otherwise ``stock / consumption``, capped at :data:`DAYS_LEFT_MAX`.

Kept in memory: after a gateway restart the forecast needs ``min_span_s`` of readings again.

``speed`` (1 in production) is for demos whose simulators run ``speed`` times faster than the
wall clock the gateway stamps readings with: reading times are multiplied by it, so windows and
``days_left`` are in simulated time, as the operator of the simulated site would see them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.config import DeviceKind, GatewayConfig
from gateway.readings import FieldValue, Reading, number
from gateway.rules import nominal

DAYS_LEFT_MAX = 365.0  # "not running out": a number, so the alarm clears
WINDOW_S = 6 * 3600.0  # a LOX tank's level falls ~0.5 %/h at typical hospital draw: clean slope
MIN_SPAN_S = 1800.0
REFILL_JUMP_PCT = 5.0
MAX_SAMPLES = 720  # per device: one sample every window / 720 at most (30 s for 6 h)
BANK_FULL_KPA = 15000.0  # the common 15 MPa cylinder filling pressure
CHANGEOVER_KPA = 1000.0  # physics/supply.py ManifoldParams.changeover_kpa


def slope_pct_per_s(samples: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(t_s, stock_pct)`` samples; ``None`` without two distinct
    times."""
    n = len(samples)
    if n < 2:
        return None
    mean_t = sum(t for t, _ in samples) / n
    mean_s = sum(s for _, s in samples) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in samples)
    if var_t <= 0.0:
        return None
    return sum((t - mean_t) * (s - mean_s) for t, s in samples) / var_t


def days_from(stock_pct: float, slope: float) -> float:
    """Days until ``stock_pct`` reaches 0 % at ``slope`` (%/s), capped at
    :data:`DAYS_LEFT_MAX`, which is also the answer when the stock is not falling."""
    if slope >= 0.0:
        return DAYS_LEFT_MAX
    return min(DAYS_LEFT_MAX, max(0.0, stock_pct) / (-slope * 86400.0))


def days_left(samples: Sequence[tuple[float, float]]) -> float | None:
    """Days until the stock reaches 0 % from ``(t_s, stock_pct)`` samples (time ascending):
    the last stock over the least-squares consumption rate. ``None`` with fewer than two
    distinct times; :data:`DAYS_LEFT_MAX` when the stock is not falling."""
    slope = slope_pct_per_s(samples)
    return None if slope is None else days_from(samples[-1][1], slope)


@dataclass
class _Trend:
    samples: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    slope: float | None = None  # %/s over the window; None: not enough history for a claim
    last_t_s: float = -math.inf  # the newest reading seen (kept or not)


class SupplyForecast:
    """Pipeline stage adding ``days_left`` to supply readings (module docstring)."""

    def __init__(
        self,
        config: GatewayConfig,
        window_s: float = WINDOW_S,
        min_span_s: float = MIN_SPAN_S,
        refill_jump_pct: float = REFILL_JUMP_PCT,
        speed: float = 1.0,
    ):
        if not 0 < min_span_s <= window_s:
            raise ValueError(
                f"supply forecast: min_span_s {min_span_s} must be > 0 and <= window_s {window_s}"
            )
        if not speed > 0:
            raise ValueError(f"supply forecast: speed {speed} must be > 0")
        self.speed = speed
        self.window_s = window_s
        self.min_span_s = min_span_s
        self.refill_jump_pct = refill_jump_pct
        self._spacing_s = window_s / MAX_SAMPLES
        # Only configured supply devices: the number of trends is bounded by the config.
        self._banks: dict[tuple[str, str], tuple[float, float]] = {}
        for dev in config.device:
            if dev.kind is DeviceKind.SUPPLY:
                full = nominal(dev, "bank_full_kpa") or BANK_FULL_KPA
                empty = nominal(dev, "changeover_kpa") or CHANGEOVER_KPA
                self._banks[(dev.site, dev.id)] = (full, empty)
        self._trends: dict[tuple[str, str], _Trend] = {}

    def stock_pct(self, key: tuple[str, str], fields: dict[str, FieldValue]) -> float | None:
        """Per cent of usable supply left, from whichever stock field the reading carries."""
        for name in ("lox_level_pct", "level_pct"):
            level = number(fields, name)
            if level is not None:
                return level
        left, right = number(fields, "bank_left_kpa"), number(fields, "bank_right_kpa")
        if left is None or right is None:
            return None
        full, empty = self._banks[key]
        usable = max(0.0, left - empty) + max(0.0, right - empty)
        return 100.0 * usable / (2.0 * (full - empty))

    def __call__(self, readings: list[Reading]) -> list[Reading]:
        for r in readings:
            if r.measurement != "supply":
                continue
            key = (r.tags.get("site", ""), r.tags.get("device", ""))
            if key not in self._banks:
                continue
            stock = self.stock_pct(key, r.fields)
            if stock is None:
                continue
            days = self._observe(key, r.ts_ms / 1000.0 * self.speed, stock)
            if days is not None:
                r.fields["days_left"] = round(days, 3)
        return readings

    def _observe(self, key: tuple[str, str], t_s: float, stock: float) -> float | None:
        """Record one reading's stock; the forecast for it. The regression is refitted only
        when a sample is kept (at most every ``window_s / MAX_SAMPLES``); readings in between
        use the last fit with their own stock."""
        trend = self._trends.setdefault(key, _Trend())
        samples = trend.samples
        if t_s <= trend.last_t_s:
            # A replay or out of order: nothing new; the forecast of the newest stock.
            return None if trend.slope is None else days_from(samples[-1][1], trend.slope)
        trend.last_t_s = t_s
        if samples and stock - samples[-1][1] > self.refill_jump_pct:
            samples.clear()  # refilled: the old slope says nothing about the new stock
            trend.slope = None
        if not samples or t_s - samples[-1][0] >= self._spacing_s:
            samples.append((t_s, stock))
            while t_s - samples[0][0] > self.window_s:
                samples.popleft()
            span_ok = samples[-1][0] - samples[0][0] >= self.min_span_s
            trend.slope = slope_pct_per_s(samples) if span_ok else None
        return None if trend.slope is None else days_from(stock, trend.slope)
