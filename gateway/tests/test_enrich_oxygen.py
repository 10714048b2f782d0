"""Oxygen formulas against the DOMAIN.md section 2/3 test vectors, and the enrichment stage."""

from __future__ import annotations

import math

import pytest

from gateway import oxygen
from gateway.alarm_store import AlarmStore
from gateway.config import parse_config
from gateway.enrich import Enricher, room_o2_demand_lpm
from gateway.oxygen import EqAltDefinition
from gateway.readings import FieldValue, Reading

# site, altitude, PB (ISA), eq. alt at 23/25/27 % (West), ambient at 25 %, NFPA limit
VECTORS = [
    ("lhasa", 3650, 64.50, (2989, 2386, 1817), 2259, 29.4),
    ("shigatse", 3840, 62.94, (3184, 2585, 2020), 2455, 29.8),
    ("nagqu", 4500, 57.73, (3861, 3277, 2726), 3138, 31.1),
]


@pytest.mark.parametrize(("site", "alt", "pb", "west", "ambient25", "nfpa"), VECTORS)
def test_domain_vectors(
    site: str, alt: float, pb: float, west: tuple[int, ...], ambient25: int, nfpa: float
) -> None:
    isa = oxygen.isa_pressure_kpa(alt)
    assert isa == pytest.approx(pb, abs=0.005)
    assert oxygen.isa_altitude_m(isa) == pytest.approx(alt, abs=1e-6)
    for o2, expected in zip((23, 25, 27), west, strict=True):
        # The table was computed from the ISA pressure; it rounds to the metre.
        assert oxygen.equivalent_altitude_m(o2, isa) == pytest.approx(expected, abs=1.0)
    assert oxygen.equivalent_altitude_m(25, isa, EqAltDefinition.AMBIENT) == pytest.approx(
        ambient25, abs=1.0
    )
    assert oxygen.nfpa_burn_limit_pct(pb) == pytest.approx(nfpa, abs=0.05)


def test_partial_pressures_and_inverse() -> None:
    assert oxygen.ppo2_kpa(24.3, 64.9) == pytest.approx(15.7707)
    assert oxygen.pio2_kpa(20.95, 101.325) == pytest.approx(19.914, abs=1e-3)
    # Outdoor air anywhere has its own altitude as equivalent altitude (both definitions).
    for alt in (0.0, 3650.0, 5000.0):
        pb = oxygen.isa_pressure_kpa(alt)
        for d in EqAltDefinition:
            assert oxygen.equivalent_altitude_m(20.95, pb, d) == pytest.approx(alt, abs=1e-6)
    # The target-O2 formula inverts the West definition.
    pb = 64.5
    need = oxygen.o2_for_equivalent_altitude_pct(2500.0, pb)
    assert oxygen.equivalent_altitude_m(need, pb) == pytest.approx(2500.0, abs=1e-6)
    # Rule of thumb: +1 % O2 is about -300 m.
    step = oxygen.equivalent_altitude_m(24, pb) - oxygen.equivalent_altitude_m(25, pb)
    assert 250 < step < 350
    # West gives higher values than the ambient definition (70-200 m, DOMAIN.md 2).
    diff = oxygen.equivalent_altitude_m(25, pb) - oxygen.equivalent_altitude_m(
        25, pb, EqAltDefinition.AMBIENT
    )
    assert 70 < diff < 200
    with pytest.raises(ValueError):
        oxygen.isa_altitude_m(0.0)


def test_room_limits_lhasa() -> None:
    pb = oxygen.isa_pressure_kpa(3650)
    assert oxygen.room_high_alarm_pct(pb) == pytest.approx(27.9, abs=0.05)
    assert oxygen.room_high_warn_pct(pb) == pytest.approx(26.4, abs=0.05)
    # At Nagqu the limit minus 3 is above the 27 % cap.
    assert oxygen.room_high_warn_pct(oxygen.isa_pressure_kpa(4500)) == 27.0


class Clock:
    def __init__(self, t_ms: int = 1_700_000_000_000):
        self.t_ms = t_ms

    def __call__(self) -> int:
        return self.t_ms


def config(definition: str = "west", **enrich: float) -> dict[str, object]:
    return {
        "site": [{"id": "lhasa", "altitude_m": 3650}, {"id": "nagqu", "altitude_m": 4500}],
        "device": [
            {"id": "room-1", "site": "lhasa", "kind": "room", "transport": "mqtt",
             "ventilation_m3h": 7.5},
            {"id": "room-2", "site": "lhasa", "kind": "room", "transport": "mqtt"},
            {"id": "conc-1", "site": "lhasa", "kind": "concentrator", "transport": "mqtt",
             "interval_s": 10},
            {"id": "psa-1", "site": "nagqu", "kind": "plant", "transport": "mqtt"},
            {"id": "line-1", "site": "nagqu", "kind": "supply", "transport": "mqtt"},
        ],
        "enrich": {"eq_alt_definition": definition, "chain_interval_s": 60, **enrich},
    }  # fmt: skip


def room(device: str, ts: int, **kw: float) -> Reading:
    fields: dict[str, FieldValue] = dict(kw)
    return Reading("room", {"site": "lhasa", "device": device, "room": device}, fields, ts)


def conc(device: str, ts: int, site: str = "lhasa", **kw: float | bool) -> Reading:
    fields: dict[str, FieldValue] = dict(kw)
    return Reading("concentrator", {"site": site, "device": device, "source": "sensor"}, fields, ts)


def test_room_enrichment_from_board_barometer_and_isa_fallback() -> None:
    clock = Clock()
    enr = Enricher(parse_config(config()), clock_ms=clock)
    t = clock.t_ms
    a, b, c = enr([
        room("room-1", t, o2_pct=25.0, baro_kpa=65.2),
        room("room-2", t, o2_pct=25.0),
        room("room-1", t + 1, o2_pct=24.0, baro_kpa=65.0, ppo2_kpa=15.5, eq_alt_m=2700.0),
    ])  # fmt: skip
    assert a.fields["baro_source"] == "sensor"
    assert a.fields["ppo2_kpa"] == pytest.approx(16.3)
    assert a.fields["eq_alt_m"] == pytest.approx(oxygen.equivalent_altitude_m(25, 65.2), abs=0.1)
    assert b.fields["baro_source"] == "isa"
    assert b.fields["eq_alt_m"] == pytest.approx(2386, abs=1.0)  # DOMAIN.md: Lhasa at 25 %
    assert c.fields["ppo2_kpa"] == 15.5 and c.fields["eq_alt_m"] == 2700.0  # the board's own
    # The input is not mutated (readings are shared with the caller).
    assert "eq_alt_m" not in room("room-1", t, o2_pct=25.0).fields


def test_ambient_definition_setting() -> None:
    enr = Enricher(parse_config(config("ambient")), clock_ms=Clock())
    (r,) = enr([room("room-2", 1, o2_pct=25.0)])
    assert r.fields["eq_alt_m"] == pytest.approx(2259, abs=1.0)  # DOMAIN.md: ambient, Lhasa


def test_produced_oxygen_is_integrated_once_and_not_across_gaps(tmp_path) -> None:
    clock = Clock()
    store = AlarmStore(tmp_path / "alarms.sqlite")
    enr = Enricher(parse_config(config(max_gap_s=120)), store=store, clock_ms=clock)
    t0 = clock.t_ms
    out = enr([conc("conc-1", t0 + i * 60_000, flow_lpm=5.0, purity_pct=90.0) for i in range(11)])
    assert out[0].fields["o2_lpm"] == pytest.approx(4.5)
    assert out[-1].fields["o2_produced_l"] == pytest.approx(45.0)  # 4.5 L/min x 10 min
    # A replayed (older or duplicate) reading is annotated but not counted again.
    (dup,) = enr([conc("conc-1", t0 + 5 * 60_000, flow_lpm=5.0, purity_pct=90.0)])
    assert "o2_produced_l" not in dup.fields
    # After a 10-minute gap nothing is integrated across it; a stopped unit adds nothing.
    (after,) = enr([conc("conc-1", t0 + 20 * 60_000, flow_lpm=5.0, purity_pct=90.0)])
    assert after.fields["o2_produced_l"] == pytest.approx(45.0)
    (stopped,) = enr([conc("conc-1", t0 + 21 * 60_000, flow_lpm=0.4, purity_pct=21, state=False)])
    assert stopped.fields["o2_lpm"] == 0.0
    assert stopped.fields["o2_produced_l"] == pytest.approx(45.0 + 4.5 / 2)
    # Totals survive a restart.
    enr.close()
    again = Enricher(parse_config(config(max_gap_s=120)), store=store, clock_ms=clock)
    (nxt,) = again([conc("conc-1", t0 + 22 * 60_000, flow_lpm=2.0, purity_pct=95.0)])
    assert nxt.fields["o2_produced_l"] == pytest.approx(45.0 + 4.5 / 2 + 1.9 / 2)


def test_chain_balance_points() -> None:
    clock = Clock()
    enr = Enricher(parse_config(config()), clock_ms=clock)
    t = clock.t_ms
    assert enr([conc("conc-1", t, flow_lpm=8.0, purity_pct=93.0)])[0].measurement == "concentrator"
    enr([room("room-1", t, o2_pct=24.7, baro_kpa=65.0), room("room-2", t, o2_pct=25.3)])
    clock.t_ms += 60_000
    points = [r for r in enr([]) if r.measurement == "chain"]
    by_site = {p.tags["site"]: p.fields for p in points}
    assert set(by_site) == {"lhasa", "nagqu"}
    lhasa = by_site["lhasa"]
    assert lhasa["producers"] == 1 and lhasa["producers_reporting"] == 1
    assert lhasa["produced_o2_lpm"] == pytest.approx(8.0 * 0.93)
    assert lhasa["rooms_reporting"] == 2 and lhasa["rooms_estimated"] == 1
    demand = room_o2_demand_lpm(7.5, 24.7, 93.0)
    assert lhasa["delivered_o2_lpm"] == pytest.approx(demand, abs=1e-3)
    assert lhasa["balance_o2_lpm"] == pytest.approx(8.0 * 0.93 - demand, abs=1e-3)
    assert lhasa["rooms_o2_max_pct"] == 25.3
    assert by_site["nagqu"]["producers_reporting"] == 0
    # No points before the next interval; the delivered total integrates between points.
    clock.t_ms += 30_000
    assert enr([]) == []
    enr([room("room-1", clock.t_ms, o2_pct=24.7, baro_kpa=65.0)])
    clock.t_ms += 30_000
    (lh,) = [p for p in enr([]) if p.tags["site"] == "lhasa"]
    assert lh.fields["delivered_o2_l"] == pytest.approx(demand, abs=1e-2)
    assert lh.fields["producers_reporting"] == 0  # silent for 2 min: no longer counted


def test_room_demand_matches_the_room_physics() -> None:
    """The demand estimate inverts the simulators' room balance (without occupants)."""
    from simulators.physics.atmosphere import Weather
    from simulators.physics.room import FixedSupply, RoomModel, RoomParams

    params = RoomParams(occupants=0)
    model = RoomModel(params, Weather(3650), FixedSupply(flow_lpm=6.0, purity_pct=93.0))
    vent_m3h = params.ach_per_h * params.volume_m3
    demand = room_o2_demand_lpm(vent_m3h, model.steady_o2_pct(), 93.0)
    assert demand == pytest.approx(6.0 * 0.93, rel=1e-6)
    assert room_o2_demand_lpm(vent_m3h, 20.0, 93.0) == 0.0
    assert not math.isnan(room_o2_demand_lpm(vent_m3h, 93.0, 93.0))
