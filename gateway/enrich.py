"""Enrichment stage: derived oxygen values, produced-oxygen totals and the chain balance.

- ``room`` readings with ``o2_pct`` get ``ppo2_kpa`` and ``eq_alt_m`` (West definition by
  default, ``[enrich] eq_alt_definition``) computed by the gateway, whatever the board sent:
  from the board's ``baro_kpa`` when it is plausible for the site's altitude (ISA pressure
  +/- 10 %, :func:`gateway.oxygen.baro_band_kpa`), else from the site's ISA pressure; field
  ``baro_source`` says which (``"sensor"`` / ``"isa"``). Extreme values (40 % or 5 % O2 in
  Lhasa) are stored as the numbers they are, never flagged: they are facts about the room.
- ``concentrator`` readings of producing devices (kind concentrator or plant) with flow and
  purity get ``o2_lpm`` (oxygen in the product, flow x purity, litres per minute at the site's
  conditions) and ``o2_produced_l`` (the device's cumulative oxygen, trapezoidal integration
  over the readings' timestamps, not across gaps longer than ``[enrich] max_gap_s``).
- Every ``[enrich] chain_interval_s`` one ``chain`` point per site (tag ``site``): produced,
  stored, delivered and used oxygen with the losses and the days of oxygen left (the supply's
  part in gateway/supply_chain.py); see gateway/README.md "Enrichment" for the fields and units.

``[enrich] speed`` (1 in production; demos set the simulators' time compression) multiplies the
time between readings in totals and rates, so they count simulated litres and minutes.

Flows in the balance are volumes at the site's conditions: the barometric pressure the site's
room boards measure (their mean; the ISA pressure of ``altitude_m`` without one) and the rooms'
mean temperature (20 degC without one). A flow given at normal conditions (``flow_nm3h``, or
``flow_lpm`` of a profile with ``[nominal] flow_basis = "normal"``) is converted to them: in
Lhasa one normal litre is about 1.69 litres.

Totals survive restarts (saved to the state file every minute and at shutdown; a crash
loses at most that minute of integration, never counts a reading twice).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway import oxygen
from gateway.config import Device, DeviceKind, GatewayConfig
from gateway.readings import FieldValue, Reading, number, wall_ms
from gateway.state_store import StateStore
from gateway.supply_chain import SupplyChain
from gateway.supply_forecast import SupplyForecast
from o2base.registers import ProfileError, load_profile

log = logging.getLogger(__name__)

PRODUCERS = frozenset({DeviceKind.CONCENTRATOR, DeviceKind.PLANT})
SAVE_INTERVAL_MS = 60_000
DEFAULT_PRODUCT_PURITY_PCT = 93.0  # "Oxygen 93" (docs/domain.md "Limits and alarms")
M3H_TO_LPM = 1000.0 / 60.0
DEFAULT_SITE_TEMP_C = 20.0  # indoor air, when no room board of the site reports a temperature
SITE_CONDITIONS_MS = 10_000  # how often a site's mean pressure and temperature are recomputed
DERIVED_ROOM_FIELDS = ("ppo2_kpa", "eq_alt_m")
MAX_DERIVED_CACHED = 100_000  # (o2, baro) pairs with their derived values; then start again


@dataclass(frozen=True)
class FlowBasis:
    """How a device's ``flow_lpm`` is meant: ``actual`` (volume at the conditions where it is
    used, the default) or ``normal`` (volume at ``normal_kpa``/``normal_temp_c``). ``flow_nm3h``
    is always normal. From the profile's ``[nominal]`` table: ``flow_basis``,
    ``flow_normal_temp_c``, ``flow_normal_kpa``."""

    lpm_is_normal: bool = False
    normal_kpa: float = oxygen.NORMAL_KPA
    normal_temp_c: float = oxygen.NORMAL_TEMP_C

    @classmethod
    def of(cls, dev: Device) -> FlowBasis:
        if not dev.profile:
            return cls()
        try:
            nominal = load_profile(dev.profile).nominal
        except (ProfileError, OSError):
            return cls()  # the config check reports unknown profiles; no conversion data here
        basis = nominal.get("flow_basis", "actual")
        if basis not in ("actual", "normal"):
            raise ValueError(
                f"profile {dev.profile!r}: [nominal] flow_basis = {basis!r}, "
                "expected 'actual' or 'normal'"
            )
        return cls(
            lpm_is_normal=basis == "normal",
            normal_kpa=float(nominal.get("flow_normal_kpa", oxygen.NORMAL_KPA)),
            normal_temp_c=float(nominal.get("flow_normal_temp_c", oxygen.NORMAL_TEMP_C)),
        )


@dataclass
class _Producer:
    last_ts_ms: int | None = None
    o2_lpm: float = 0.0
    purity_pct: float | None = None
    total_l: float = 0.0
    seen_ms: int | None = None  # gateway clock


@dataclass
class _Room:
    o2_pct: float
    eq_alt_m: float | None
    seen_ms: int
    baro_kpa: float | None = None  # the board's, when plausible for the site
    temp_c: float | None = None


def room_o2_demand_lpm(
    ventilation_m3h: float, room_o2_pct: float, product_purity_pct: float
) -> float:
    """Oxygen (L/min, in product gas) a ventilated room needs to stay at ``room_o2_pct``.

    Steady-state balance of a well-mixed room with outdoor air ``Qv`` at 20.95 % and product
    ``Qp`` at purity ``xp``: ``Qp = Qv (xr - xa) / (xp - xr)``; the oxygen in it is ``Qp xp``.
    Occupants' consumption is left out, so this is a lower bound. 0 for an unenriched room.
    """
    xa, xr, xp = oxygen.AIR_O2_PCT, room_o2_pct, product_purity_pct
    if xr <= xa or xp <= xr:
        return 0.0
    qv_lpm = ventilation_m3h * M3H_TO_LPM
    return qv_lpm * (xr - xa) / (xp - xr) * xp / 100.0


class Enricher:
    """``Enricher(config, store, clock_ms)``: a pipeline stage. Thread-safe."""

    def __init__(
        self,
        config: GatewayConfig,
        store: StateStore | None = None,
        clock_ms: Callable[[], int] = wall_ms,
        forecast: SupplyForecast | None = None,
    ):
        self.config = config
        self.speed = config.enrich.speed
        self.store = store
        self.clock_ms = clock_ms
        self.definition = oxygen.EqAltDefinition(config.enrich.eq_alt_definition)
        self.max_gap_ms = int(config.enrich.max_gap_s * 1000)
        self.chain_interval_ms = int(config.enrich.chain_interval_s * 1000)
        self._isa_kpa = {s.id: oxygen.isa_pressure_kpa(s.altitude_m) for s in config.site}
        self._baro_band = {s.id: oxygen.baro_band_kpa(s.altitude_m) for s in config.site}
        self._devices = {(d.site, d.id): d for d in config.device}
        self._flow_basis = {
            (d.site, d.id): FlowBasis.of(d)
            for d in config.device
            if d.kind in PRODUCERS or d.kind is DeviceKind.SUPPLY
        }
        # Per site: (pressure kPa, temperature degC, when computed) for flow conversions.
        self._site_conditions: dict[str, tuple[float, float, int]] = {}
        self._producers: dict[tuple[str, str], _Producer] = {}
        self._rooms: dict[tuple[str, str], _Room] = {}
        self._supply_lpm: dict[tuple[str, str], tuple[float, int]] = {}
        self._delivered_l: dict[str, float] = {}
        self._last_chain_ms: dict[str, int] = {}
        self.last_chain: dict[str, dict[str, FieldValue]] = {}
        # The supply's part of the balance (stores, metered delivery, loss, days left); the
        # forecast stage's trends give the days left.
        self.supply = SupplyChain(config, forecast, self._fresh)
        # (o2_pct, baro_kpa) -> (ppo2_kpa, eq_alt_m) as stored (:meth:`_derive`), bounded.
        self._derived: dict[tuple[float, float], tuple[float, float | None]] = {}
        self._lock = threading.Lock()
        now = clock_ms()
        self._next_chain_ms = now + self.chain_interval_ms
        self._next_save_ms = now + SAVE_INTERVAL_MS
        self._restore()

    # ----------------------------------------------------------------- persistence
    def _restore(self) -> None:
        if self.store is None:
            return
        saved = self.store.get_kv("enrich:producers") or {}
        for key, p in saved.items():
            site, _, dev = key.partition("/")
            if (site, dev) in self._devices:
                self._producers[(site, dev)] = _Producer(
                    last_ts_ms=p.get("last_ts_ms"),
                    o2_lpm=float(p.get("o2_lpm", 0.0)),
                    total_l=float(p.get("total_l", 0.0)),
                )
        self._delivered_l = {
            str(k): float(v) for k, v in (self.store.get_kv("enrich:delivered") or {}).items()
        }

    def save(self) -> None:
        if self.store is None:
            return
        with self._lock:
            producers = {
                f"{s}/{d}": {"last_ts_ms": p.last_ts_ms, "o2_lpm": p.o2_lpm, "total_l": p.total_l}
                for (s, d), p in self._producers.items()
            }
            delivered = dict(self._delivered_l)
        self.store.put_kv("enrich:producers", producers)
        self.store.put_kv("enrich:delivered", delivered)

    def close(self) -> None:
        self.save()

    # ----------------------------------------------------------------- the stage
    def __call__(self, readings: list[Reading]) -> list[Reading]:
        now = self.clock_ms()
        with self._lock:
            enrich = self._enrich
            out = [enrich(r, now) for r in readings]
            if now >= self._next_chain_ms:
                self._next_chain_ms = now + self.chain_interval_ms
                out += self._chain_points(now)
        if now >= self._next_save_ms:
            self._next_save_ms = now + SAVE_INTERVAL_MS
            self.save()
        return out

    def _enrich(self, r: Reading, now: int) -> Reading:
        key = (r.tags.get("site", ""), r.tags.get("device", ""))
        dev = self._devices.get(key)
        if dev is None:
            return r
        if r.measurement == "room":
            return self._enrich_room(dev, key, r, now)
        if r.measurement == "concentrator" and dev.kind in PRODUCERS:
            return self._enrich_producer(dev, r, now)
        if r.measurement == "supply":
            flow = self._flow_lpm(dev, r.fields, now)
            if flow is not None:
                self._supply_lpm[key] = (flow, now)
            self.supply.observe(dev, r.fields, r.ts_ms, now)
        return r

    def site_conditions(self, site: str, now: int) -> tuple[float, float]:
        """(pressure kPa, temperature degC) of ``site`` for flow conversions: the means of its
        fresh room boards' plausible barometers and temperatures, else ISA and 20 degC."""
        cached = self._site_conditions.get(site)
        if cached is not None and now - cached[2] < SITE_CONDITIONS_MS:
            return cached[0], cached[1]
        baros, temps = [], []
        for (s, dev_id), room in self._rooms.items():
            if s != site or not self._fresh(self._devices[(s, dev_id)], room.seen_ms, now):
                continue
            if room.baro_kpa is not None:
                baros.append(room.baro_kpa)
            if room.temp_c is not None:
                temps.append(room.temp_c)
        kpa = sum(baros) / len(baros) if baros else self._isa_kpa[site]
        temp_c = sum(temps) / len(temps) if temps else DEFAULT_SITE_TEMP_C
        self._site_conditions[site] = (kpa, temp_c, now)
        return kpa, temp_c

    def _flow_lpm(self, dev: Device, fields: dict[str, FieldValue], now: int) -> float | None:
        """The device's flow in L/min at the site's conditions (``flow_lpm``, ``flow_m3h`` or
        ``flow_nm3h``, converted by the device's :class:`FlowBasis`); None without one."""
        basis = self._flow_basis.get((dev.site, dev.id)) or FlowBasis()
        flow = number(fields, "flow_lpm")
        normal = basis.lpm_is_normal
        if flow is None:
            if (m3h := number(fields, "flow_m3h")) is not None:
                # Supply meters state their basis like flow_lpm ([nominal] flow_basis).
                flow = m3h * M3H_TO_LPM
            elif (nm3h := number(fields, "flow_nm3h")) is not None:
                flow, normal = nm3h * M3H_TO_LPM, True
            else:
                return None
        if not normal:
            return flow
        kpa, temp_c = self.site_conditions(dev.site, now)
        return oxygen.actual_flow_from_normal(
            flow, kpa, temp_c, basis.normal_kpa, basis.normal_temp_c
        )

    def _enrich_room(self, dev: Device, key: tuple[str, str], r: Reading, now: int) -> Reading:
        fields = r.fields
        o2 = fields.get("o2_pct")
        if o2.__class__ is not float:  # the decoder's floats skip _num's type checks
            o2 = number(fields, "o2_pct")
            if o2 is None:
                if "ppo2_kpa" not in fields and "eq_alt_m" not in fields:
                    return r
                # No oxygen value to derive from: a board's derived values go too.
                fields = {k: v for k, v in fields.items() if k not in DERIVED_ROOM_FIELDS}
                return Reading(r.measurement, r.tags, fields, r.ts_ms, r.meta)
        baro = fields.get("baro_kpa")
        if baro is not None and baro.__class__ is not float:
            baro = number(fields, "baro_kpa")
        fields = dict(fields)
        low, high = self._baro_band[dev.site]
        if baro is not None and low <= baro <= high:
            fields["baro_source"] = "sensor"
            sensor_kpa: float | None = baro
        else:
            baro = self._isa_kpa[dev.site]
            fields["baro_source"] = "isa"
            sensor_kpa = None
        # Always the gateway's own, from the pressure chosen above (docs/contracts.md).
        derived = self._derived.get((o2, baro))
        if derived is None:
            derived = self._derive(o2, baro)
        fields["ppo2_kpa"], eq_alt = derived
        if eq_alt is not None:
            fields["eq_alt_m"] = eq_alt
        else:  # no oxygen at all (ambient definition): no equivalent altitude
            fields.pop("eq_alt_m", None)
        temp = fields.get("temp_c")
        if temp is not None and temp.__class__ is not float:
            temp = number(fields, "temp_c")
        room = self._rooms.get(key)
        if room is None:
            self._rooms[key] = _Room(o2, eq_alt, now, sensor_kpa, temp)
        else:  # updated in place: one object per room, not one per reading
            room.o2_pct, room.eq_alt_m, room.seen_ms = o2, eq_alt, now
            room.baro_kpa, room.temp_c = sensor_kpa, temp
        return Reading(r.measurement, r.tags, fields, r.ts_ms, r.meta)

    def _derive(self, o2: float, baro: float) -> tuple[float, float | None]:
        """``(ppo2_kpa, eq_alt_m)`` of a room at ``o2`` % and ``baro`` kPa, rounded as stored
        (eq_alt_m None when there is none), kept for the next reading with the same pair: a
        room's sensors repeat their values (two decimals), the formulas' calls cost more than
        the lookup."""
        ppo2 = round(oxygen.ppo2_kpa(o2, baro), 4)
        eq_alt: float | None = None
        with contextlib.suppress(ValueError):  # no oxygen at all (ambient definition)
            eq_alt = round(oxygen.equivalent_altitude_m(o2, baro, self.definition), 1)
        if o2:  # 0.0 and -0.0 are one key, yet give 0.0 and -0.0: not kept
            if len(self._derived) >= MAX_DERIVED_CACHED:
                self._derived.clear()
            self._derived[(o2, baro)] = (ppo2, eq_alt)
        return ppo2, eq_alt

    def _enrich_producer(self, dev: Device, r: Reading, now: int) -> Reading:
        flow = self._flow_lpm(dev, r.fields, now)
        purity = number(r.fields, "purity_pct")
        if flow is None or purity is None:
            return r
        if r.fields.get("state") is False:
            flow = 0.0  # a stopped unit produces nothing, whatever its flow sensor idles at
        o2_lpm = oxygen.o2_flow_lpm(max(0.0, flow), purity)
        fields = dict(r.fields)
        fields["o2_lpm"] = round(o2_lpm, 4)
        p = self._producers.setdefault((dev.site, dev.id), _Producer())
        p.seen_ms = now
        if p.last_ts_ms is not None and r.ts_ms <= p.last_ts_ms:
            return Reading(
                r.measurement, r.tags, fields, r.ts_ms, r.meta
            )  # replayed or duplicate: counted once
        if p.last_ts_ms is not None and r.ts_ms - p.last_ts_ms <= self.max_gap_ms:
            minutes = (r.ts_ms - p.last_ts_ms) / 60_000.0 * self.speed
            p.total_l += (p.o2_lpm + o2_lpm) / 2.0 * minutes
        p.last_ts_ms, p.o2_lpm, p.purity_pct = r.ts_ms, o2_lpm, purity
        fields["o2_produced_l"] = round(p.total_l, 3)
        return Reading(r.measurement, r.tags, fields, r.ts_ms, r.meta)

    # ----------------------------------------------------------------- chain balance
    def _fresh(self, dev: Device, seen_ms: int | None, now: int) -> bool:
        limit_ms = max(3 * dev.interval_s * 1000, self.chain_interval_ms)
        return seen_ms is not None and now - seen_ms <= limit_ms

    def _chain_points(self, now: int) -> list[Reading]:
        points = []
        for site in self.config.site:
            fields = self._chain_fields(site.id, now)
            self.last_chain[site.id] = fields
            points.append(Reading("chain", {"site": site.id}, fields, now))
        return points

    def _chain_fields(self, site: str, now: int) -> dict[str, FieldValue]:
        devices = [d for d in self.config.device if d.site == site]
        producers = [d for d in devices if d.kind in PRODUCERS]
        produced_lpm = produced_l = 0.0
        purities: list[float] = []
        reporting = 0
        for d in producers:
            p = self._producers.get((site, d.id))
            if p is None:
                continue
            produced_l += p.total_l
            if self._fresh(d, p.seen_ms, now):
                reporting += 1
                produced_lpm += p.o2_lpm
                if p.purity_pct is not None and p.o2_lpm > 0:
                    purities.append(p.purity_pct)
        product_purity = sum(purities) / len(purities) if purities else DEFAULT_PRODUCT_PURITY_PCT
        rooms = [
            (d, self._rooms[(site, d.id)])
            for d in devices
            if d.kind is DeviceKind.ROOM
            and (site, d.id) in self._rooms
            and self._fresh(d, self._rooms[(site, d.id)].seen_ms, now)
        ]
        delivered_lpm = 0.0
        estimated = 0
        for d, room in rooms:
            if d.ventilation_m3h is not None:
                estimated += 1
                delivered_lpm += room_o2_demand_lpm(d.ventilation_m3h, room.o2_pct, product_purity)
        last = self._last_chain_ms.get(site)
        if last is not None and now - last <= max(self.max_gap_ms, 2 * self.chain_interval_ms):
            prev = self.last_chain.get(site, {}).get("delivered_o2_lpm", 0.0)
            prev_lpm = float(prev) if isinstance(prev, int | float) else 0.0
            minutes = (now - last) / 60_000.0 * self.speed
            self._delivered_l[site] = (
                self._delivered_l.get(site, 0.0) + (prev_lpm + delivered_lpm) / 2 * minutes
            )
        self._last_chain_ms[site] = now
        fields: dict[str, FieldValue] = {
            "producers": len(producers),
            "producers_reporting": reporting,
            "produced_o2_lpm": round(produced_lpm, 4),
            "produced_o2_l": round(produced_l, 3),
            "rooms": sum(1 for d in devices if d.kind is DeviceKind.ROOM),
            "rooms_reporting": len(rooms),
            "rooms_estimated": estimated,
            "delivered_o2_lpm": round(delivered_lpm, 4),
            "delivered_o2_l": round(self._delivered_l.get(site, 0.0), 3),
            "balance_o2_lpm": round(produced_lpm - delivered_lpm, 4),
        }
        if estimated:
            fields["used_o2_lpm"] = fields["delivered_o2_lpm"]  # the four-stage chain's name
        if produced_lpm > 0 and estimated:
            fields["delivered_share"] = round(delivered_lpm / produced_lpm, 4)
        if rooms:
            o2s = [room.o2_pct for _, room in rooms]
            fields["rooms_o2_mean_pct"] = round(sum(o2s) / len(o2s), 3)
            fields["rooms_o2_max_pct"] = max(o2s)
            alts = [room.eq_alt_m for _, room in rooms if room.eq_alt_m is not None]
            if alts:
                fields["rooms_eq_alt_mean_m"] = round(sum(alts) / len(alts), 1)
        supplies = [
            flow
            for (s, dev_id), (flow, seen) in self._supply_lpm.items()
            if s == site and self._fresh(self._devices[(s, dev_id)], seen, now)
        ]
        if supplies:
            fields["supplied_lpm"] = round(sum(supplies), 4)
        kpa, temp_c = self.site_conditions(site, now)
        fields.update(
            self.supply.fields(
                site,
                now,
                producers=dict(self._producers),
                supply_lpm=self._supply_lpm,
                product_purity=product_purity,
                to_site=oxygen.actual_flow_from_normal(1.0, kpa, temp_c),
            )
        )
        fields["site_baro_kpa"] = round(kpa, 3)
        fields["site_temp_c"] = round(temp_c, 2)
        return fields

    def status(self) -> dict[str, Any]:
        """Latest chain fields per site (``/api/status``)."""
        with self._lock:
            return {site: dict(f) for site, f in self.last_chain.items()}
