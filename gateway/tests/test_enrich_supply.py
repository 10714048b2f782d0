"""The chain balance with the supply (gateway/supply_chain.py): stored stock from the profiles'
capacities, its change, delivery where metered, use, loss and days of oxygen left. Pure, fake
time; the same stage against real Modbus simulators and a real InfluxDB is in
test_enrich_supply_stack.py."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from gateway import oxygen
from gateway.config import ConfigError, parse_config
from gateway.enrich import Enricher
from gateway.readings import FieldValue, Reading
from gateway.supply_forecast import StockGauge, SupplyForecast

T0 = 1_700_000_000_000
# Lhasa without room boards: ISA 64.50 kPa and 20 degC; one normal litre is this many there.
TO_SITE = oxygen.actual_flow_from_normal(1.0, oxygen.isa_pressure_kpa(3650), 20.0)
LOX_NL = 5000 * oxygen.LOX_GAS_NL_PER_L  # the lox-tank profile's 5,000 L of liquid
BUFFER_NL = 2.0 * 1000 * (800 - 450) / 101.325  # buffer-tank: 2 m3 from 450 to 800 kPa
BANKS_NL = 2 * 10 * 40 * (15000 - 1000) / 101.325  # cylinder-manifold: 2 x 10 x 40 L


def dev(dev_id: str, kind: str, profile: str | None = None, **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"id": dev_id, "site": "lhasa", "kind": kind, "interval_s": 10, **kw}
    if profile:
        d |= {"transport": "modbus", "url": "tcp://127.0.0.1:5020", "profile": profile}
    else:
        d["transport"] = "mqtt"
    return d


def site_config(*devices: dict[str, Any], **enrich: float) -> Any:
    return parse_config(
        {
            "site": [{"id": "lhasa", "altitude_m": 3650}],
            "device": list(devices),
            "enrich": {"chain_interval_s": 60, "stock_window_s": 1800, **enrich},
            "forecast": {"window_s": 3600, "min_span_s": 600},
        }
    )


HOTEL = (
    dev("psa-1", "plant", "psa-plant"),
    dev("buffer-1", "supply", "buffer-tank", fed_from=["psa-1"]),
    dev("panel-1", "supply", "area-alarm-panel", fed_from=["buffer-1"]),
    dev("lox-1", "supply", "lox-tank"),
    dev("conc-1", "concentrator", "medical-concentrator"),
    dev("room-1", "room", ventilation_m3h=60.0),
)


def reading(measurement: str, device: str, ts: int, **fields: FieldValue) -> Reading:
    tags = {"site": "lhasa", "device": device}
    tags |= {"room": device} if measurement == "room" else {"source": "modbus"}
    return Reading(measurement, tags, dict(fields), ts)


class Site:
    """The enrichment and forecast stages of a gateway, on a fake clock."""

    def __init__(self, config: Any, speed: float = 1.0) -> None:
        self.now = T0
        self.forecast = SupplyForecast(config)
        self.enricher = Enricher(config, clock_ms=lambda: self.now, forecast=self.forecast)
        self.points: list[Reading] = []

    def feed(self, readings: list[Reading]) -> None:
        out = self.forecast(self.enricher(readings))
        self.points += [r for r in out if r.measurement == "chain"]

    @property
    def chain(self) -> list[dict[str, FieldValue]]:
        return [p.fields for p in self.points]


def run_hotel(
    site: Site,
    minutes: int,
    lox_nm3h: float = 20.0,
    lox_metered_nm3h: float = 20.0,
    panel_m3h: float = 40.0,
    plant_lpm: float = 720.0,
    silent: frozenset[str] = frozenset(),
    start_min: int = 0,
) -> None:
    """Readings every 10 s: the plant's 720 NL/min at 92.4 % fill the buffer tank exactly as
    fast as the pipeline draws it (43.2 Nm3/h), the panel meters ``panel_m3h``; the LOX tank
    loses ``lox_nm3h`` of gas while its meter shows ``lox_metered_nm3h``."""
    for step in range(start_min * 6, (start_min + minutes) * 6):
        site.now = T0 + step * 10_000
        t_h = step * 10 / 3600.0
        level = 60.0 - lox_nm3h * 1000 * t_h / LOX_NL * 100
        batch = [
            reading("concentrator", "psa-1", site.now, flow_lpm=plant_lpm, purity_pct=92.4),
            reading("supply", "buffer-1", site.now, level_pct=100.0, flow_m3h=43.2),
            reading("supply", "panel-1", site.now, zone1_kpa=380.0, flow_m3h=panel_m3h),
            reading("supply", "lox-1", site.now, lox_level_pct=level, flow_m3h=lox_metered_nm3h),
            reading("concentrator", "conc-1", site.now, flow_lpm=3.0, purity_pct=90.0),
            reading("room", "room-1", site.now, o2_pct=24.9),
        ]
        site.feed([r for r in batch if r.tags["device"] not in silent])


def test_stock_gauges_read_the_profiles_capacities() -> None:
    config = site_config(
        dev("lox", "supply", "lox-tank"),
        dev("buffer", "supply", "buffer-tank"),
        dev("bank", "supply", "cylinder-manifold"),
        dev("panel", "supply", "area-alarm-panel"),
    )
    gauges = {d.id: StockGauge.of(d) for d in config.device}
    assert gauges["lox"].capacity_nl == pytest.approx(LOX_NL)
    assert round(LOX_NL, -3) == 3_996_000  # 0.80 Nm3 of gas per litre of liquid
    assert gauges["buffer"].capacity_nl == pytest.approx(BUFFER_NL)
    assert gauges["bank"].capacity_nl == pytest.approx(BANKS_NL)
    assert gauges["panel"].stock_field is None  # a panel stores nothing
    assert gauges["lox"].normal_l({"lox_level_pct": 30.0}) == pytest.approx(0.3 * LOX_NL)
    assert gauges["bank"].normal_l({"bank_left_kpa": 1000.0, "bank_right_kpa": 15000.0}) == (
        pytest.approx(BANKS_NL / 2)
    )
    assert gauges["buffer"].normal_l({"level_pct": 50.0}) == pytest.approx(BUFFER_NL / 2)
    assert gauges["buffer"].normal_l({"flow_m3h": 3.0}) is None
    assert gauges["lox"].o2_pct == 99.5 and gauges["buffer"].o2_pct is None


def test_hotel_chain_stored_delivered_used_loss_and_days_left() -> None:
    site = Site(site_config(*HOTEL))
    run_hotel(site, minutes=60, lox_nm3h=21.0, lox_metered_nm3h=20.0, panel_m3h=40.0)
    last = site.chain[-1]
    psa, lox = 0.924, 0.995
    # Stored: the buffer tank full, the LOX tank where its level is, in O2 litres on site.
    t_h = (site.points[-1].ts_ms - T0) / 3600e3
    lox_level = 60.0 - 21.0 * 1000 * t_h / LOX_NL * 100
    stored = (BUFFER_NL * psa + lox_level / 100 * LOX_NL * lox) * TO_SITE
    assert last["stores"] == 2 and last["stores_reporting"] == 2
    assert last["stored_o2_l"] == pytest.approx(stored, rel=1e-4)
    assert last["stored_capacity_o2_l"] == pytest.approx(
        (BUFFER_NL * psa + LOX_NL * lox) * TO_SITE, rel=1e-4
    )
    # Its change: the LOX tank drawn at 21 Nm3/h.
    assert last["stored_change_o2_lpm"] == pytest.approx(-21000 / 60 * lox * TO_SITE, rel=1e-3)
    # Delivered where metered: the panel (not the buffer tank feeding it), the LOX tank's own
    # meter (nothing downstream of it) and the bedside concentrator.
    panel = 40000 / 60 * psa * TO_SITE
    lox_out = 20000 / 60 * lox * TO_SITE
    assert last["meters"] == 2 and last["meters_reporting"] == 2
    assert last["delivered_metered_o2_lpm"] == pytest.approx(panel + lox_out + 3.0 * 0.9, rel=1e-4)
    # Loss: 3.2 Nm3/h of plant gas never reach the panel, 1 Nm3/h of LOX never the meter.
    loss = (3200 / 60 * psa + 1000 / 60 * lox) * TO_SITE
    assert loss == pytest.approx(111.0, abs=0.5)
    assert last["loss_o2_lpm"] == pytest.approx(loss, rel=1e-3)
    # Used: the rooms' estimate, under the chain's name and the old one.
    assert last["used_o2_lpm"] == last["delivered_o2_lpm"] and float(last["used_o2_lpm"]) > 0
    # Days left: both stores' stock over the LOX tank's draw (the buffer tank holds steady).
    assert last["days_left"] == pytest.approx(
        stored / (21000 / 60 * lox * TO_SITE) / 1440, rel=2e-3
    )
    # The existing fields keep their meaning.
    assert last["produced_o2_lpm"] == pytest.approx((720 * psa + 3.0 * 0.9 / TO_SITE) * TO_SITE)
    assert last["supplied_lpm"] == pytest.approx((43.2 + 40.0 + 20.0) * 1000 / 60 * TO_SITE)


def test_no_claim_before_the_trends_have_history() -> None:
    site = Site(site_config(*HOTEL))
    run_hotel(site, minutes=9)
    first = site.chain[0]
    assert "stored_o2_l" in first and "delivered_metered_o2_lpm" in first
    # A third of the 30 min stock window before the change and the loss, 10 min of forecast
    # history before the days left.
    assert not {"stored_change_o2_lpm", "loss_o2_lpm", "days_left"} & set(site.chain[-1])
    run_hotel(site, minutes=3, start_min=9)
    assert {"stored_change_o2_lpm", "loss_o2_lpm", "days_left"} <= set(site.chain[-1])


@pytest.mark.parametrize(
    ("silent", "kept", "gone"),
    [
        # A silent plant: production is not all known, the loss would be a lie.
        ({"psa-1"}, {"stored_o2_l", "delivered_metered_o2_lpm"}, {"loss_o2_lpm"}),
        # A silent meter: delivery is partial.
        ({"panel-1"}, {"stored_o2_l", "stored_change_o2_lpm"}, {"loss_o2_lpm"}),
        # A silent store: no stock, no change, no loss, no days left.
        ({"lox-1"}, {"delivered_metered_o2_lpm"},
         {"stored_o2_l", "stored_change_o2_lpm", "loss_o2_lpm", "days_left"}),
        # A silent bedside concentrator is neither produced nor delivered: the loss stands.
        ({"conc-1"}, {"loss_o2_lpm", "days_left"}, set()),
    ],
)  # fmt: skip
def test_what_is_not_reported_is_left_out_not_zero(
    silent: set[str], kept: set[str], gone: set[str]
) -> None:
    site = Site(site_config(*HOTEL))
    run_hotel(site, minutes=20)
    before = site.chain[-1]
    run_hotel(site, minutes=5, start_min=20, silent=frozenset(silent))
    last = site.chain[-1]
    assert kept <= set(last), set(last)
    assert not gone & set(last), gone & set(last)
    if "conc-1" in silent:
        assert last["loss_o2_lpm"] == pytest.approx(float(before["loss_o2_lpm"]), abs=0.5)
    if "lox-1" in silent:
        assert last["stores_reporting"] == 1
    if "panel-1" in silent:
        assert last["meters_reporting"] == 1


def test_a_refill_restarts_the_stores_trend() -> None:
    site = Site(site_config(dev("lox-1", "supply", "lox-tank")))
    for step in range(0, 20 * 6):
        site.now = T0 + step * 10_000
        level = 30.0 - 0.01 * step + (50.0 if step >= 15 * 6 else 0.0)  # a tanker at 15 min
        site.feed([reading("supply", "lox-1", site.now, lox_level_pct=level, flow_m3h=1.0)])
    by_minute = {n + 1: c for n, c in enumerate(site.chain)}
    assert "stored_change_o2_lpm" in by_minute[14]
    assert "stored_change_o2_lpm" not in by_minute[16]  # the delivery is not a production
    assert "loss_o2_lpm" not in by_minute[16]
    assert float(by_minute[19]["stored_o2_l"]) > float(by_minute[14]["stored_o2_l"])


def test_speed_counts_simulated_time() -> None:
    """A demo at 20x: 3 real minutes of readings are an hour of the tanks' life."""
    fields = []
    for speed in (1.0, 20.0):
        site = Site(site_config(dev("lox-1", "supply", "lox-tank"), speed=speed))
        drop_per_reading = 20.0 * 1000 * 10 / 3600 / LOX_NL * 100 * speed  # 20 Nm3/h simulated
        for step in range(0, 18 * 6 if speed == 20.0 else 60 * 6):
            site.now = T0 + step * 10_000
            level = 50.0 - drop_per_reading * step
            site.feed([reading("supply", "lox-1", site.now, lox_level_pct=level, flow_m3h=20.0)])
        fields.append(site.chain[-1])
    real, demo = fields
    assert demo["stored_change_o2_lpm"] == pytest.approx(real["stored_change_o2_lpm"], rel=1e-3)
    assert demo["loss_o2_lpm"] == pytest.approx(0.0, abs=0.1)


def test_topology_gas_purity_and_concentrators_feeding_a_supply() -> None:
    """A clinic's two concentrators fill a buffer tank: they are pipeline producers, and the
    tank's gas has their purity; a missing capacity leaves the stock out with a warning."""
    config = site_config(
        dev("conc-a", "concentrator", "medical-concentrator"),
        dev("conc-b", "concentrator", "medical-concentrator"),
        dev("tank", "supply", "buffer-tank", fed_from=["conc-a", "conc-b"]),
    )
    site = Site(config)
    for step in range(0, 12 * 6):
        site.now = T0 + step * 10_000
        site.feed([
            reading("concentrator", "conc-a", site.now, flow_lpm=5.0, purity_pct=94.0),
            reading("concentrator", "conc-b", site.now, flow_lpm=5.0, purity_pct=90.0),
            reading("supply", "tank", site.now, level_pct=80.0, flow_m3h=0.54),
        ])  # fmt: skip
    last = site.chain[-1]
    purity = 0.92  # the mean of what feeds the tank
    assert last["stored_o2_l"] == pytest.approx(0.8 * BUFFER_NL * purity * TO_SITE, rel=1e-4)
    metered = 540 / 60 * purity * TO_SITE  # 9 NL/min through the tank's meter
    assert last["delivered_metered_o2_lpm"] == pytest.approx(metered, rel=1e-4)
    produced = 5.0 * 0.94 + 5.0 * 0.90  # medical-concentrator flows are actual L/min
    assert last["loss_o2_lpm"] == pytest.approx(produced - metered, rel=1e-3)


def test_a_profile_without_capacity_is_reported_and_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lox = tmp_path / "lox-nocap.toml"
    text = (resources.files("o2base") / "profiles" / "lox-tank.toml").read_text()
    lox.write_text(
        text.replace('name = "lox-tank"', 'name = "lox-nocap"').replace(
            "capacity_l = 5000.0", "# capacity unknown"
        )
    )
    with caplog.at_level(logging.WARNING):
        site = Site(site_config(dev("lox-1", "supply", str(lox))))
    assert "lox-1: profile" in caplog.text and "capacity_l" in caplog.text
    for step in range(0, 3 * 6):
        site.now = T0 + step * 10_000
        site.feed([reading("supply", "lox-1", site.now, lox_level_pct=40.0, flow_m3h=1.0)])
    last = site.chain[-1]
    assert last["stores"] == 1 and last["stores_reporting"] == 0
    assert "stored_o2_l" not in last and "days_left" not in last


@pytest.mark.parametrize(
    ("device", "error"),
    [
        (
            dev("x", "supply", "buffer-tank", fed_from=["nope"]),
            "'nope' is not a device of its site",
        ),
        (dev("x", "supply", "buffer-tank", fed_from=["room-1"]), "'room-1' is a room"),
        (dev("x", "room", fed_from=["psa-1"]), "only supply devices have one"),
        (dev("x", "supply", "buffer-tank", fed_from=["x"]), "loops back to x"),
    ],
)
def test_fed_from_is_checked(device: dict[str, Any], error: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=error):
        site_config(*HOTEL, device)


def test_a_supply_loop_is_refused() -> None:
    with pytest.raises((ConfigError, ValueError), match="loops back"):
        site_config(
            dev("a", "supply", "buffer-tank", fed_from=["b"]),
            dev("b", "supply", "area-alarm-panel", fed_from=["a"]),
        )
