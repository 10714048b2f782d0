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
readings (``[forecast] window_s``, 6 h; their own timestamps, so replays and simulated time give
the same answer). Pure arithmetic (:func:`days_left`); a :class:`StockTrend` per device keeps a
bounded window (the chain balance, gateway/supply_chain.py, uses the same class per store):

- fewer than ``min_span_s`` (``[forecast] min_span_s``, 30 min) of history: no ``days_left``;
- the stock rising by more than ``refill_jump_pct`` between two readings (a tanker delivery,
  cylinders replaced): the window restarts from that reading;
- stock flat or rising: ``days_left`` = :data:`DAYS_LEFT_MAX` (nothing is being used up);
- otherwise ``stock / consumption``, capped at :data:`DAYS_LEFT_MAX`.

Kept in memory: after a gateway restart the forecast needs ``min_span_s`` of readings again.

``speed`` (``[enrich] speed``, 1 in production) is for demos whose simulators run ``speed``
times faster than the wall clock the gateway stamps readings with: reading times are multiplied
by it, so windows and ``days_left`` are in simulated time, as the simulated site's operator
would see them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from gateway import oxygen
from gateway.config import Device, DeviceKind, GatewayConfig
from gateway.readings import FieldValue, Reading, number
from gateway.rules import nominal
from o2base.registers import ProfileError, load_profile

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


class StockTrend:
    """The consumption trend of one stock, in whatever unit it is given (per cent, litres):
    the least-squares slope (stock units per second) over a sliding window of samples.

    - samples are kept at most every ``window_s / max_samples`` (the slope is refitted only
      then; readings in between reuse it) and dropped once older than ``window_s``;
    - no slope (``None``: no claim) until the kept samples span ``min_span_s``;
    - the stock rising by more than ``refill_jump`` between two readings (a delivery, cylinders
      replaced) restarts the window from that reading;
    - a reading not newer than the newest seen (a replay) changes nothing.

    Used per supply device by :class:`SupplyForecast` and per store by the chain balance
    (gateway/enrich.py), so both read the same arithmetic.
    """

    def __init__(
        self, window_s: float, min_span_s: float, refill_jump: float, max_samples: int = MAX_SAMPLES
    ):
        self.window_s = window_s
        self.min_span_s = min_span_s
        self.refill_jump = refill_jump
        self._spacing_s = window_s / max_samples
        self.samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self.slope: float | None = None  # stock units / s over the window; None: no claim yet
        self.stock: float | None = None  # the newest reading's stock
        self.last_t_s = -math.inf  # the newest reading seen (kept or not)

    def observe(self, t_s: float, stock: float) -> float | None:
        """Record one reading's stock at ``t_s`` (s); the slope to judge it by."""
        if t_s <= self.last_t_s:
            return self.slope  # a replay or out of order: nothing new
        self.last_t_s = t_s
        self.stock = stock
        samples = self.samples
        if samples and stock - samples[-1][1] > self.refill_jump:
            samples.clear()  # refilled: the old slope says nothing about the new stock
            self.slope = None
        if not samples or t_s - samples[-1][0] >= self._spacing_s:
            samples.append((t_s, stock))
            while t_s - samples[0][0] > self.window_s:
                samples.popleft()
            span_ok = samples[-1][0] - samples[0][0] >= self.min_span_s
            self.slope = slope_pct_per_s(samples) if span_ok else None
        return self.slope


@dataclass(frozen=True)
class StockGauge:
    """How much usable oxygen a supply device holds, from its reading and its profile.

    :meth:`pct` is the forecast's stock (per cent of the usable supply, module docstring);
    :meth:`normal_l` the same stock in normal litres of gas (0 degC, 101.325 kPa) for the chain
    balance, ``pct`` x :attr:`capacity_nl`, the usable capacity the profile's ``[nominal]``
    table declares:

    - LOX tank: ``capacity_l`` litres of liquid x :data:`gateway.oxygen.LOX_GAS_NL_PER_L`;
    - buffer tank: ``volume_m3`` x (``cut_out_kpa`` - ``min_inlet_kpa``) / 101.325 kPa, the
      gas between the regulator's minimum inlet and the cut-out (what ``level_pct`` spans);
    - cylinder manifold: two banks of ``cylinders_per_bank`` x ``cylinder_water_l`` x
      (``bank_full_kpa`` - ``changeover_kpa``) / 101.325 kPa.

    Gauge pressure above a floor is proportional to the gas above it (ideal gas, constant
    temperature), as in the simulators' physics. ``capacity_nl`` is ``None`` when the profile
    leaves a key out (:attr:`missing` names it): the device then has a ``pct`` but no litres.
    """

    stock_field: str | None  # the profile's stock register: lox_level_pct, level_pct, banks
    full_kpa: float = BANK_FULL_KPA
    empty_kpa: float = CHANGEOVER_KPA
    capacity_nl: float | None = None
    missing: str = ""  # the [nominal] key(s) the capacity needs and the profile lacks
    o2_pct: float | None = None  # [nominal] o2_pct of the stored gas; None: as its source's

    @classmethod
    def of(cls, dev: Device) -> StockGauge:
        full = nominal(dev, "bank_full_kpa") or BANK_FULL_KPA
        empty = nominal(dev, "changeover_kpa") or CHANGEOVER_KPA
        o2 = nominal(dev, "o2_pct")
        registers: set[str] = set()
        if dev.profile:
            try:
                registers = {r.name for r in load_profile(dev.profile).registers}
            except (ProfileError, OSError):
                registers = set()  # the config check reports unknown profiles
        need: dict[str, float | None]
        if "lox_level_pct" in registers:
            field_name = "lox_level_pct"
            need = {"capacity_l": nominal(dev, "capacity_l")}
        elif "level_pct" in registers:
            field_name = "level_pct"
            need = {k: nominal(dev, k) for k in ("volume_m3", "cut_out_kpa", "min_inlet_kpa")}
        elif {"bank_left_kpa", "bank_right_kpa"} <= registers:
            field_name = "banks"
            need = {k: nominal(dev, k) for k in ("cylinders_per_bank", "cylinder_water_l")}
        else:
            return cls(None, full, empty, o2_pct=o2)
        missing = ", ".join(k for k, v in need.items() if v is None)
        capacity: float | None = None
        if not missing:
            n = {k: float(v or 0.0) for k, v in need.items()}
            if field_name == "lox_level_pct":
                capacity = n["capacity_l"] * oxygen.LOX_GAS_NL_PER_L
            elif field_name == "level_pct":
                usable_kpa = n["cut_out_kpa"] - n["min_inlet_kpa"]
                capacity = n["volume_m3"] * 1000.0 * usable_kpa / oxygen.NORMAL_KPA
            else:
                bank_l = n["cylinders_per_bank"] * n["cylinder_water_l"]
                capacity = 2.0 * bank_l * (full - empty) / oxygen.NORMAL_KPA
        return cls(field_name, full, empty, capacity, missing, o2)

    def pct(self, fields: dict[str, FieldValue]) -> float | None:
        """Per cent of usable supply left, from whichever stock field the reading carries."""
        for name in ("lox_level_pct", "level_pct"):
            level = number(fields, name)
            if level is not None:
                return level
        left, right = number(fields, "bank_left_kpa"), number(fields, "bank_right_kpa")
        if left is None or right is None:
            return None
        usable = max(0.0, left - self.empty_kpa) + max(0.0, right - self.empty_kpa)
        return 100.0 * usable / (2.0 * (self.full_kpa - self.empty_kpa))

    def normal_l(self, fields: dict[str, FieldValue]) -> float | None:
        """The usable stock in normal litres of gas; None without a stock or a capacity."""
        pct = self.pct(fields)
        if pct is None or self.capacity_nl is None:
            return None
        return max(0.0, pct) / 100.0 * self.capacity_nl


class SupplyForecast:
    """Pipeline stage adding ``days_left`` to supply readings (module docstring).

    ``window_s``, ``min_span_s`` and ``speed`` default to the config's ``[forecast] window_s``,
    ``min_span_s`` and ``[enrich] speed``."""

    def __init__(
        self,
        config: GatewayConfig,
        window_s: float | None = None,
        min_span_s: float | None = None,
        refill_jump_pct: float = REFILL_JUMP_PCT,
        speed: float | None = None,
    ):
        window_s = config.forecast.window_s if window_s is None else window_s
        min_span_s = config.forecast.min_span_s if min_span_s is None else min_span_s
        speed = config.enrich.speed if speed is None else speed
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
        # Only configured supply devices: the number of trends is bounded by the config.
        self.gauges: dict[tuple[str, str], StockGauge] = {
            (dev.site, dev.id): StockGauge.of(dev)
            for dev in config.device
            if dev.kind is DeviceKind.SUPPLY
        }
        self._trends: dict[tuple[str, str], StockTrend] = {}

    def stock_pct(self, key: tuple[str, str], fields: dict[str, FieldValue]) -> float | None:
        """Per cent of usable supply left, from whichever stock field the reading carries."""
        return self.gauges[key].pct(fields)

    def slope_pct_per_s(self, key: tuple[str, str]) -> float | None:
        """The device's present consumption trend (% of its usable supply per simulated s,
        negative when it is used up); None before the forecast makes a claim."""
        trend = self._trends.get(key)
        return None if trend is None else trend.slope

    def __call__(self, readings: list[Reading]) -> list[Reading]:
        for r in readings:
            if r.measurement != "supply":
                continue
            key = (r.tags.get("site", ""), r.tags.get("device", ""))
            gauge = self.gauges.get(key)
            if gauge is None:
                continue
            stock = gauge.pct(r.fields)
            if stock is None:
                continue
            days = self._observe(key, r.ts_ms / 1000.0 * self.speed, stock)
            if days is not None:
                r.fields["days_left"] = round(days, 3)
        return readings

    def _observe(self, key: tuple[str, str], t_s: float, stock: float) -> float | None:
        """Record one reading's stock; the forecast for it (a replayed reading gets the
        forecast of the newest stock)."""
        trend = self._trends.get(key)
        if trend is None:
            trend = StockTrend(self.window_s, self.min_span_s, self.refill_jump_pct)
            self._trends[key] = trend
        newer = t_s > trend.last_t_s
        slope = trend.observe(t_s, stock)
        if slope is None:
            return None
        return days_from(stock if newer or trend.stock is None else trend.stock, slope)
