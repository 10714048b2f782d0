"""The gateway's oxygen formulas (o2core's, through gateway.oxygen) against o2core/vectors.json,
and the enrichment stage."""

from __future__ import annotations

import json
import math
from importlib.resources import files
from typing import Any

import pytest

from gateway import oxygen
from gateway.config import parse_config
from gateway.enrich import Enricher, room_o2_demand_lpm
from gateway.oxygen import EqAltDefinition
from gateway.readings import FieldValue, Reading
from gateway.state_store import StateStore
from gateway.tests.fakes import Clock

VECTORS: dict[str, Any] = json.loads(files("o2core").joinpath("vectors.json").read_text())


def cases(section: str) -> list[dict[str, Any]]:
    return list(VECTORS[section]["cases"])


@pytest.mark.parametrize("case", cases("isa_pressure"), ids=str)
def test_isa_pressure_vectors(case: dict[str, Any]) -> None:
    tol = VECTORS["isa_pressure"]
    assert oxygen.isa_pressure_kpa(case["alt_m"]) == pytest.approx(case["kpa"], abs=tol["tol_kpa"])
    assert oxygen.isa_altitude_m(case["kpa"]) == pytest.approx(case["alt_m"], abs=tol["tol_m"])


@pytest.mark.parametrize("case", cases("equivalent_altitude"), ids=str)
def test_equivalent_altitude_vectors(case: dict[str, Any]) -> None:
    definition = EqAltDefinition(case["definition"])
    got = oxygen.equivalent_altitude_m(case["o2_pct"], case["baro_kpa"], definition)
    assert got == pytest.approx(case["eq_alt_m"], abs=VECTORS["equivalent_altitude"]["tol_m"])


@pytest.mark.parametrize("case", cases("fire_limits"), ids=str)
def test_fire_limit_vectors(case: dict[str, Any]) -> None:
    tol, pb = VECTORS["fire_limits"]["tol_pct"], case["baro_kpa"]
    assert oxygen.nfpa_burn_limit_pct(pb) == pytest.approx(case["nfpa_pct"], abs=tol)
    assert oxygen.room_high_alarm_pct(pb) == pytest.approx(case["high_alarm_pct"], abs=tol)
    assert oxygen.room_high_warn_pct(pb) == pytest.approx(case["high_warn_pct"], abs=tol)


def test_partial_pressure_and_baro_band_vectors() -> None:
    tol = VECTORS["partial_pressure"]["tol_kpa"]
    for c in cases("partial_pressure"):
        assert oxygen.ppo2_kpa(c["o2_pct"], c["baro_kpa"]) == pytest.approx(c["ppo2_kpa"], abs=tol)
        assert oxygen.pio2_kpa(c["o2_pct"], c["baro_kpa"]) == pytest.approx(c["pio2_kpa"], abs=tol)
    tol = VECTORS["o2_for_equivalent_altitude"]["tol_pct"]
    for c in cases("o2_for_equivalent_altitude"):
        need = oxygen.o2_for_equivalent_altitude_pct(c["target_alt_m"], c["baro_kpa"])
        assert need == pytest.approx(c["o2_pct"], abs=tol)
    tol = VECTORS["baro_band"]["tol_kpa"]
    for c in cases("baro_band"):
        band = oxygen.baro_band_kpa(c["alt_m"])
        assert band == pytest.approx((c["low_kpa"], c["high_kpa"]), abs=tol)


def test_inverses_and_rule_of_thumb() -> None:
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
    # West gives higher values than the ambient definition (70-200 m, docs/domain.md).
    diff = oxygen.equivalent_altitude_m(25, pb) - oxygen.equivalent_altitude_m(
        25, pb, EqAltDefinition.AMBIENT
    )
    assert 70 < diff < 200
    with pytest.raises(ValueError):
        oxygen.isa_altitude_m(0.0)


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
    assert b.fields["eq_alt_m"] == pytest.approx(2386, abs=1.0)  # docs/domain.md: Lhasa at 25 %
    # A board's own derived values are replaced by the gateway's (docs/contracts.md).
    assert c.fields["ppo2_kpa"] == pytest.approx(15.6)
    assert c.fields["eq_alt_m"] == pytest.approx(oxygen.equivalent_altitude_m(24, 65.0), abs=0.1)
    # The input is not mutated (readings are shared with the caller).
    assert "eq_alt_m" not in room("room-1", t, o2_pct=25.0).fields


def test_ambient_definition_setting() -> None:
    enr = Enricher(parse_config(config("ambient")), clock_ms=Clock())
    (r, none) = enr([room("room-2", 1, o2_pct=25.0), room("room-2", 2, o2_pct=0.0, eq_alt_m=1.0)])
    assert r.fields["eq_alt_m"] == pytest.approx(2259, abs=1.0)  # docs/domain.md: ambient, Lhasa
    isa = oxygen.isa_pressure_kpa(3650)
    assert r.fields["eq_alt_m"] == pytest.approx(
        oxygen.equivalent_altitude_m(25.0, isa, EqAltDefinition.AMBIENT), abs=0.05
    )
    # No oxygen: no ambient equivalent altitude (infinite), and not the board's either.
    assert "eq_alt_m" not in none.fields and none.fields["ppo2_kpa"] == 0.0


def test_produced_oxygen_is_integrated_once_and_not_across_gaps(tmp_path) -> None:
    clock = Clock()
    store = StateStore(tmp_path / "alarms.sqlite")
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


def test_derived_values_never_fail_and_a_barometer_implausible_for_the_site_is_not_used() -> None:
    enr = Enricher(parse_config(config()), clock_ms=Clock())
    low, high = oxygen.baro_band_kpa(3650)
    assert (low, high) == pytest.approx((58.05, 70.95), abs=0.01)  # ISA 64.50 +/- 10 %
    a, b, c, d = enr([
        room("room-2", 1, o2_pct=40.0, ppo2_kpa=26.0, eq_alt_m=-1300.0),
        room("room-2", 2, o2_pct=5.0, baro_kpa=101.3),  # sea-level default on the plateau
        room("room-2", 3, o2_pct=0.0, baro_kpa=64.0),
        room("room-2", 4, baro_kpa=64.0, ppo2_kpa=15.0, eq_alt_m=2500.0),  # no O2 value
    ])  # fmt: skip
    isa = oxygen.isa_pressure_kpa(3650)
    assert a.fields["eq_alt_m"] == pytest.approx(oxygen.equivalent_altitude_m(40, isa), abs=0.1)
    assert float(a.fields["eq_alt_m"]) < -1000
    assert a.fields["ppo2_kpa"] == pytest.approx(0.4 * isa, 1e-4)
    assert b.fields["baro_source"] == "isa" and float(b.fields["eq_alt_m"]) > 11_000
    assert c.fields["ppo2_kpa"] == 0.0 and float(c.fields["eq_alt_m"]) > 15_000
    assert "ppo2_kpa" not in d.fields and "eq_alt_m" not in d.fields


@pytest.mark.parametrize("definition", ["west", "ambient"])
def test_kept_derived_values_equal_fresh_ones(definition: str) -> None:
    """The (o2, baro) -> (ppo2, eq_alt) cache answers as the formulas, repeats included, and
    keeps the sign of a -0.0 (equal to 0.0 as a key) and the missing ambient eq_alt of 0 %."""
    enr = Enricher(parse_config(config(definition)), clock_ms=Clock())
    isa = oxygen.isa_pressure_kpa(3650)
    o2s = [25.39, 21.0, 0.0, -0.0, 25.39, 0.0, 40.0, -0.0, 21.0]
    baros = [64.1, 65.2, 64.1, 64.1, 64.1, 64.1, 101.3, 64.1, 65.2]
    out = enr(
        [
            room("room-1", n, o2_pct=o2, baro_kpa=b)
            for n, (o2, b) in enumerate(zip(o2s, baros, strict=True))
        ]
    )
    for r, o2, b in zip(out, o2s, baros, strict=True):
        baro = b if b < 70 else isa  # 101.3 kPa is not plausible in Lhasa: ISA
        ppo2 = round(oxygen.ppo2_kpa(o2, baro), 4)
        assert r.fields["ppo2_kpa"] == ppo2 and repr(r.fields["ppo2_kpa"]) == repr(ppo2)
        try:
            eq_alt = round(oxygen.equivalent_altitude_m(o2, baro, EqAltDefinition(definition)), 1)
        except ValueError:
            assert "eq_alt_m" not in r.fields
        else:
            assert repr(r.fields["eq_alt_m"]) == repr(eq_alt)
    assert len(enr._derived) == 3  # the distinct pairs, zeros left out


def lhasa_plant_config(tmp_path, flow_basis: str | None = None) -> dict[str, object]:
    nominal = f'flow_basis = "{flow_basis}"\nflow_normal_temp_c = 20.0\n' if flow_basis else ""
    profile = tmp_path / "plant-nm3.toml"
    profile.write_text(
        '[profile]\nname = "plant-nm3"\nkind = "plant"\n\n[nominal]\n' + nominal
        + '\n[[register]]\nname = "flow_lpm"\ntable = "input"\naddress = 0\n'
        'type = "float32"\n'
    )  # fmt: skip
    return {
        "site": [{"id": "lhasa", "altitude_m": 3650}],
        "device": [
            {"id": "psa-1", "site": "lhasa", "kind": "plant", "transport": "mqtt"},
            {"id": "psa-2", "site": "lhasa", "kind": "plant", "transport": "mqtt",
             "profile": str(profile)},
            {"id": "line-1", "site": "lhasa", "kind": "supply", "transport": "mqtt"},
            {"id": "room-1", "site": "lhasa", "kind": "room", "transport": "mqtt"},
        ],
        "enrich": {"chain_interval_s": 60},
    }  # fmt: skip


def test_normal_flow_is_converted_to_the_site_conditions_lhasa_vector(tmp_path) -> None:
    """15 Nm3/h (0 degC, 101.325 kPa) in Lhasa at ISA 64.50 kPa and 20 degC is 421.5 L/min:
    x101.325/64.504 (1.571) for the pressure and x293.15/273.15 (1.073) for the temperature.
    Before, it was added to L/min as 250 L/min: 1.69 times too little oxygen produced."""
    clock = Clock()
    enr = Enricher(parse_config(lhasa_plant_config(tmp_path)), clock_ms=clock)
    (plant,) = enr([conc("psa-1", clock.t_ms, site="lhasa", flow_nm3h=15.0, purity_pct=93.0)])
    assert plant.fields["o2_lpm"] == pytest.approx(421.47 * 0.93, abs=0.01)
    # Measured site conditions take over from ISA and 20 degC: the room board's barometer and
    # temperature (65.2 kPa, 18 degC) give 250 x 101.325/65.2 x 291.15/273.15 = 414.1 L/min.
    enr([room("room-1", clock.t_ms, o2_pct=25.0, baro_kpa=65.2, temp_c=18.0)])
    clock.t_ms += 10_000
    (plant,) = enr([conc("psa-1", clock.t_ms, site="lhasa", flow_nm3h=15.0, purity_pct=93.0)])
    assert plant.fields["o2_lpm"] == pytest.approx(414.12 * 0.93, abs=0.01)
    # A supply line metered in Nm3/h lands in the balance in the same units.
    supply = Reading("supply", {"site": "lhasa", "device": "line-1", "point": "main"},
                     {"flow_nm3h": 15.0}, clock.t_ms)  # fmt: skip
    enr([supply])
    clock.t_ms += 60_000
    fresh_room = room("room-1", clock.t_ms, o2_pct=25.0, baro_kpa=65.2, temp_c=18.0)
    (chain,) = [p for p in enr([fresh_room]) if p.measurement == "chain"]
    assert chain.fields["supplied_lpm"] == pytest.approx(414.12, abs=0.01)
    assert chain.fields["site_baro_kpa"] == 65.2 and chain.fields["site_temp_c"] == 18.0
    assert chain.fields["produced_o2_lpm"] == pytest.approx(414.12 * 0.93, abs=0.01)


def test_profile_says_its_flow_lpm_is_normal_litres(tmp_path) -> None:
    clock = Clock()
    enr = Enricher(parse_config(lhasa_plant_config(tmp_path, "normal")), clock_ms=clock)
    actual, normal = enr([
        conc("psa-1", clock.t_ms, site="lhasa", flow_lpm=250.0, purity_pct=93.0),
        conc("psa-2", clock.t_ms, site="lhasa", flow_lpm=250.0, purity_pct=93.0),
    ])  # fmt: skip
    assert actual.fields["o2_lpm"] == pytest.approx(250.0 * 0.93)  # default: actual litres
    # 20 degC normal conditions (the profile's): x101.325/64.504 only.
    assert normal.fields["o2_lpm"] == pytest.approx(250 * 101.325 / 64.5044 * 0.93, abs=0.05)
    with pytest.raises(ValueError, match="flow_basis = 'weird'"):
        Enricher(parse_config(lhasa_plant_config(tmp_path, "weird")), clock_ms=clock)
