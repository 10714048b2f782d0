"""The supply's part of the chain balance: produced -> stored -> delivered -> used, with losses.

Called by the enrichment stage (gateway/enrich.py), which owns the ``chain`` point of each site
and gives this module the supply readings and, every chain period, the producers' state. All
oxygen amounts are litres of O2 at the site's conditions (the chain point's ``site_baro_kpa``
and ``site_temp_c``), gas amounts times the O2 fraction of the gas.

- **Stores** are the site's supply devices whose profile has a stock register (LOX level,
  buffer-tank level, cylinder bank pressures): their usable stock in normal litres of gas
  (:class:`gateway.supply_forecast.StockGauge`, from the capacities the profiles declare).
- **Stored change** is the sum of the stores' least-squares trends over ``[enrich]
  stock_window_s`` (a :class:`gateway.supply_forecast.StockTrend` per store, in simulated
  time with ``[enrich] speed``): positive while they fill, negative while they are drawn.
- **Delivered where metered** is the gas measured at the site's *outermost* supply meters
  (a supply device with a flow register that feeds no other metered supply device, following
  ``[[device]] fed_from``) times its O2 fraction, plus the output of bedside concentrators
  (kind ``concentrator`` that no supply device is fed from: their product goes straight to the
  user, through their own flowmeter).
- **Loss** = pipeline production - stored change - pipeline delivery, each over the same
  window: the plants' (and concentrators feeding a supply device) mean ``o2_lpm``, the stores'
  trend, the outermost meters' mean O2 flow. Leaks, venting, boil-off and consumers nobody
  meters show here. Computed only when every plant reports, every store has a trend and every
  outermost meter reports (at least one); otherwise the field is left out.
- **Days left** = the stores' stock over their net draw: the same :func:`days_from` as the
  per-device forecast, with the forecast's per-device trends (``[forecast] window_s``)
  converted to litres and summed. Left out until every store has a forecast.

The O2 fraction of a device's gas is its profile's ``[nominal] o2_pct`` (bought medical oxygen:
99.5 %), else the mean of what it is fed from (a plant's latest purity), else the site's
product purity.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.config import Device, DeviceKind, GatewayConfig
from gateway.readings import FieldValue
from gateway.supply_forecast import (
    REFILL_JUMP_PCT,
    StockGauge,
    StockTrend,
    SupplyForecast,
    days_from,
)
from o2base.registers import ProfileError, load_profile

log = logging.getLogger(__name__)

FLOW_FIELDS = ("flow_lpm", "flow_m3h", "flow_nm3h")
# The stores' trend needs a third of its window before it makes a claim.
MIN_SPAN_FRACTION = 1.0 / 3.0


class ProducerState(Protocol):
    """What the chain needs of a producer (gateway.enrich._Producer)."""

    o2_lpm: float
    purity_pct: float | None
    seen_ms: int | None


@dataclass
class _Store:
    trend: StockTrend
    stock_nl: float | None = None  # usable stock, normal litres of gas
    seen_ms: int | None = None  # gateway clock


@dataclass
class _SiteTopology:
    stores: list[tuple[str, str]] = field(default_factory=list)
    meters: list[tuple[str, str]] = field(default_factory=list)  # outermost supply meters
    pipeline_producers: list[tuple[str, str]] = field(default_factory=list)
    bedside: list[tuple[str, str]] = field(default_factory=list)  # concentrators at the user


def _has_flow_register(dev: Device) -> bool:
    if not dev.profile:
        return False
    try:
        names = {r.name for r in load_profile(dev.profile).registers}
    except (ProfileError, OSError):
        return False
    return any(f in names for f in FLOW_FIELDS)


class SupplyChain:
    """``SupplyChain(config, forecast, fresh)``: the supply fields of each site's chain point.

    ``fresh(device, seen_ms, now_ms)`` is the enrichment's "heard from recently" test; not
    thread-safe on its own (the enrichment calls it under its lock).
    """

    def __init__(
        self,
        config: GatewayConfig,
        forecast: SupplyForecast | None,
        fresh: Callable[[Device, int | None, int], bool],
    ):
        self.forecast = forecast
        self.fresh = fresh
        self.speed = config.enrich.speed
        self.window_s = config.enrich.stock_window_s
        self.devices = {(d.site, d.id): d for d in config.device}
        self.gauges = {
            (d.site, d.id): StockGauge.of(d) for d in config.device if d.kind is DeviceKind.SUPPLY
        }
        self.sites: dict[str, _SiteTopology] = {s.id: _SiteTopology() for s in config.site}
        fed: set[tuple[str, str]] = {(d.site, up) for d in config.device for up in d.fed_from}
        meters = {
            (d.site, d.id)
            for d in config.device
            if d.kind is DeviceKind.SUPPLY and _has_flow_register(d)
        }
        for d in config.device:
            key = (d.site, d.id)
            topo = self.sites[d.site]
            if d.kind is DeviceKind.PLANT or (d.kind is DeviceKind.CONCENTRATOR and key in fed):
                topo.pipeline_producers.append(key)
            elif d.kind is DeviceKind.CONCENTRATOR:
                topo.bedside.append(key)
            elif d.kind is DeviceKind.SUPPLY:
                gauge = self.gauges[key]
                if gauge.stock_field is not None:
                    topo.stores.append(key)
                    if gauge.capacity_nl is None:
                        log.warning(
                            "%s/%s: profile %s lacks [nominal] %s: its stock is left out of "
                            "the chain balance",
                            d.site, d.id, d.profile, gauge.missing,
                        )  # fmt: skip
                if key in meters and not self._meters_below(key, meters):
                    topo.meters.append(key)
        self._stores: dict[tuple[str, str], _Store] = {}
        # Per site: (t_s simulated, pipeline production L/min, pipeline delivery L/min) of the
        # chain periods when both were complete, over the stock window.
        self._flows: dict[str, deque[tuple[float, float, float]]] = {}

    def _meters_below(self, key: tuple[str, str], meters: set[tuple[str, str]]) -> bool:
        """Whether any metered supply device is fed, directly or further down, from ``key``."""
        site, _ = key
        below = {key}
        grew = True
        while grew:
            grew = False
            for d in self.devices.values():
                k = (d.site, d.id)
                if (
                    d.site == site
                    and k not in below
                    and any((site, u) in below for u in d.fed_from)
                ):
                    below.add(k)
                    grew = True
        return any(k in meters for k in below if k != key)

    # ----------------------------------------------------------------- readings
    def observe(self, dev: Device, fields: dict[str, FieldValue], ts_ms: int, now: int) -> None:
        """A supply reading: its stock goes into the store's trend (simulated time)."""
        key = (dev.site, dev.id)
        gauge = self.gauges.get(key)
        if gauge is None or gauge.capacity_nl is None:
            return
        stock = gauge.normal_l(fields)
        if stock is None:
            return
        store = self._stores.get(key)
        if store is None:
            jump = REFILL_JUMP_PCT / 100.0 * gauge.capacity_nl
            trend = StockTrend(self.window_s, self.window_s * MIN_SPAN_FRACTION, jump)
            store = self._stores[key] = _Store(trend)
        store.trend.observe(ts_ms / 1000.0 * self.speed, stock)
        if store.trend.stock is not None:
            store.stock_nl = store.trend.stock
        store.seen_ms = now

    # ----------------------------------------------------------------- the chain's fields
    def gas_o2_pct(
        self,
        key: tuple[str, str],
        producers: dict[tuple[str, str], ProducerState],
        product_purity: float,
    ) -> float:
        """O2 % of the gas a supply device holds or passes on (module docstring)."""
        gauge = self.gauges.get(key)
        if gauge is not None and gauge.o2_pct is not None:
            return gauge.o2_pct
        dev = self.devices[key]
        ups = []
        for up in dev.fed_from:
            up_key = (dev.site, up)
            if self.devices[up_key].kind is DeviceKind.SUPPLY:
                ups.append(self.gas_o2_pct(up_key, producers, product_purity))
            else:
                p = producers.get(up_key)
                purity = p.purity_pct if p is not None else None
                ups.append(purity if purity is not None else product_purity)
        return sum(ups) / len(ups) if ups else product_purity

    def fields(
        self,
        site: str,
        now: int,
        producers: dict[tuple[str, str], ProducerState],
        supply_lpm: dict[tuple[str, str], tuple[float, int]],
        product_purity: float,
        to_site: float,
    ) -> dict[str, FieldValue]:
        """The supply fields of ``site``'s chain point (gateway/README.md, "Enrichment").

        ``supply_lpm``: each supply device's latest gas flow at the site's conditions and when
        it came; ``to_site``: normal litres to litres at the site's conditions."""
        topo = self.sites[site]
        out: dict[str, FieldValue] = {}

        def o2(key: tuple[str, str]) -> float:
            return self.gas_o2_pct(key, producers, product_purity) / 100.0

        # Stores: stock, capacity, change, and the forecast's draw for days left.
        change_lpm: float | None = None
        if topo.stores:
            stock_l = capacity_l = 0.0
            change = draw = 0.0
            reporting = 0
            have_change = have_draw = True
            for key in topo.stores:
                gauge, store = self.gauges[key], self._stores.get(key)
                factor = o2(key) * to_site
                if gauge.capacity_nl is not None:
                    capacity_l += gauge.capacity_nl * factor
                if store is None or store.stock_nl is None:
                    have_change = have_draw = False
                    continue
                if not self.fresh(self.devices[key], store.seen_ms, now):
                    have_change = have_draw = False
                    continue
                reporting += 1
                stock_l += store.stock_nl * factor
                if store.trend.slope is None:
                    have_change = False
                else:
                    change += store.trend.slope * factor * 60.0
                slope_pct = None if self.forecast is None else self.forecast.slope_pct_per_s(key)
                if slope_pct is None or gauge.capacity_nl is None:
                    have_draw = False
                else:
                    draw += slope_pct / 100.0 * gauge.capacity_nl * factor
            complete = reporting == len(topo.stores)
            out["stores"] = len(topo.stores)
            out["stores_reporting"] = reporting
            if complete:
                out["stored_o2_l"] = round(stock_l, 1)
                out["stored_capacity_o2_l"] = round(capacity_l, 1)
                if have_change:
                    change_lpm = change
                    out["stored_change_o2_lpm"] = round(change, 3)
                if have_draw:
                    out["days_left"] = round(days_from(stock_l, draw), 3)
        else:
            change_lpm = 0.0  # nothing stored on the site: nothing to change

        # Delivered where metered: the outermost supply meters and the bedside concentrators.
        metered = 0.0
        meters_reporting = 0
        for key in topo.meters:
            flow = supply_lpm.get(key)
            if flow is None or not self.fresh(self.devices[key], flow[1], now):
                continue
            meters_reporting += 1
            metered += flow[0] * o2(key)
        bedside = 0.0
        for key in topo.bedside:
            p = producers.get(key)
            if p is not None and self.fresh(self.devices[key], p.seen_ms, now):
                bedside += p.o2_lpm
        if topo.meters:
            out["meters"] = len(topo.meters)
            out["meters_reporting"] = meters_reporting
        if topo.meters or topo.bedside:
            out["delivered_metered_o2_lpm"] = round(metered + bedside, 3)

        # Loss over the stock window, when everything it needs reports.
        produced = 0.0
        plants_reporting = 0
        for key in topo.pipeline_producers:
            p = producers.get(key)
            if p is not None and self.fresh(self.devices[key], p.seen_ms, now):
                plants_reporting += 1
                produced += p.o2_lpm
        t_s = now / 1000.0 * self.speed
        flows = self._flows.setdefault(site, deque())
        complete_flows = (
            bool(topo.meters)
            and meters_reporting == len(topo.meters)
            and plants_reporting == len(topo.pipeline_producers)
        )
        if complete_flows:
            flows.append((t_s, produced, metered))
        while flows and t_s - flows[0][0] > self.window_s:
            flows.popleft()
        if complete_flows and change_lpm is not None:
            n = len(flows)
            mean_produced = sum(f[1] for f in flows) / n
            mean_metered = sum(f[2] for f in flows) / n
            out["loss_o2_lpm"] = round(mean_produced - change_lpm - mean_metered, 3)
        return out
