"""Validation judges each field of each reading (unit: the decoder, enrichment and alarm engine
in process, no I/O). Golden cases: each bad field alone, arrays with one bad item, extreme but
real O2 in Lhasa with the board's own derived values, and board clocks that are wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway import oxygen
from gateway.alarms import AlarmEngine
from gateway.config import GatewayConfig, parse_config
from gateway.enrich import Enricher
from gateway.readings import invalid_fields
from gateway.state_store import StateStore
from gateway.telemetry import (
    FUTURE_TOLERANCE_MS,
    MAX_PAST_MS,
    Reject,
    RejectReason,
    TelemetryDecoder,
    decode_status,
)

NOW_MS = 1_795_000_000_000
LHASA_M = 3650
TOPIC = "o2/lhasa/room-1/telemetry"
HOUR_MS = 3_600_000


@pytest.fixture
def config() -> GatewayConfig:
    return parse_config(
        {
            "site": [{"id": "lhasa", "altitude_m": LHASA_M}],
            "device": [
                {"id": "room-1", "site": "lhasa", "kind": "room", "transport": "mqtt"},
                {"id": "conc-1", "site": "lhasa", "kind": "concentrator", "transport": "mqtt"},
            ],
        }
    )


def board_room(o2_pct: float, seq: int = 5, ts: int = NOW_MS - 1000, **extra: Any) -> dict:
    """A room reading as the firmware sends it: ppo2 and eq_alt computed on the board."""
    baro = 64.9
    return {
        "v": 1, "boot": 2, "seq": seq, "ts": ts, "o2_pct": o2_pct, "baro_kpa": baro,
        "temp_c": 19.5, "rh_pct": 30.0, "ppo2_kpa": round(o2_pct * baro / 100, 3),
        "eq_alt_m": round(oxygen.equivalent_altitude_m(o2_pct, baro), 1), **extra,
    }  # fmt: skip


def enc(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# Each bad field alone: (field, value sent, reason, raw kept). The good o2_pct must survive.
BAD_FIELDS = [
    ("rh_pct", 150.0, "out_of_range", 150.0),
    ("rh_pct", -0.5, "out_of_range", -0.5),
    ("temp_c", -100, "out_of_range", -100.0),
    ("baro_kpa", 649.0, "out_of_range", 649.0),  # hPa sent as kPa
    ("baro_kpa", 101.3, "out_of_range", 101.3),  # sea-level default: implausible in Lhasa
    pytest.param("co2_ppm", 10**400, "out_of_range", None, id="huge-int-not-kept"),
    ("temp_c", "19.5", "bad_type", None),
    ("temp_c", None, "bad_type", None),
    ("temp_c", True, "bad_type", None),
    ("temp_c", [19.5], "bad_type", None),
    ("temp_c", {"v": 19.5}, "bad_type", None),
    ("quality", 1.5, "bad_type", 1.5),
    ("co3_ppm", 1.0, "unknown_field", 1.0),
    ("o2_pc", 21.0, "unknown_field", 21.0),
]


@pytest.mark.parametrize(("name", "value", "reason", "raw"), BAD_FIELDS)
def test_one_bad_field_is_flagged_and_the_rest_is_stored(
    config: GatewayConfig, name: str, value: Any, reason: str, raw: float | None
) -> None:
    doc = board_room(24.5, **{name: value})
    (r,) = TelemetryDecoder(config).decode(TOPIC, enc(doc), NOW_MS)
    assert invalid_fields(r.fields) == [(name, reason)]
    assert name not in r.fields
    assert r.fields.get(f"{name}_raw") == raw
    assert r.fields["o2_pct"] == 24.5  # never silenced by another field
    assert r.ts_ms == NOW_MS - 1000


@pytest.mark.parametrize(
    ("literal", "name"), [(b"NaN", "o2_pct"), (b"Infinity", "temp_c"), (b"-Infinity", "rh_pct")]
)
def test_non_finite_values_are_flagged(config: GatewayConfig, literal: bytes, name: str) -> None:
    payload = b'{"v":1,"boot":1,"seq":1,"ts":%d,"baro_kpa":65.0,"%s":%s}' % (
        NOW_MS,
        name.encode(),
        literal,
    )
    (r,) = TelemetryDecoder(config).decode(TOPIC, payload, NOW_MS)
    assert invalid_fields(r.fields) == [(name, "not_finite")]
    assert f"{name}_raw" not in r.fields and r.fields["baro_kpa"] == 65.0


def test_purity_above_100_leaves_the_flow_of_the_concentrator(config: GatewayConfig) -> None:
    payload = enc({"v": 1, "boot": 1, "seq": 1, "ts": NOW_MS, "purity_pct": 100.4, "flow_lpm": 5})
    (r,) = TelemetryDecoder(config).decode("o2/lhasa/conc-1/telemetry", payload, NOW_MS)
    assert r.fields["invalid"] == "purity_pct:out_of_range"
    assert r.fields["purity_pct_raw"] == 100.4 and r.fields["flow_lpm"] == 5.0


def test_several_bad_fields_are_all_listed(config: GatewayConfig) -> None:
    doc = board_room(24.5, rh_pct=150, temp_c="x", invalid="mine", o2_pct_raw=3)
    (r,) = TelemetryDecoder(config).decode(TOPIC, enc(doc), NOW_MS)
    assert sorted(invalid_fields(r.fields)) == [
        ("invalid", "unknown_field"),
        ("o2_pct_raw", "unknown_field"),
        ("rh_pct", "out_of_range"),
        ("temp_c", "bad_type"),
    ]
    # A board's field named like the gateway's own never takes the gateway's place.
    assert r.fields["o2_pct"] == 24.5 and "invalid_raw" not in r.fields
    assert r.fields["o2_pct_raw_raw"] == 3.0 and r.fields["rh_pct_raw"] == 150.0


def test_a_flood_of_unknown_fields_is_bounded(config: GatewayConfig) -> None:
    doc = board_room(24.5, **{f"junk_{n}": n for n in range(100)}, **{"a,b:c": 1})
    (r,) = TelemetryDecoder(config).decode(TOPIC, enc(doc), NOW_MS)
    flags = invalid_fields(r.fields)
    assert flags[0] == ("_69_more", "unknown_field") and len(flags) == 33
    assert sum(name.endswith("_raw") for name in r.fields) == 8  # MAX_UNKNOWN_KEPT
    assert r.fields["o2_pct"] == 24.5


def test_an_unsafe_unknown_name_is_listed_sanitised_and_not_kept(config: GatewayConfig) -> None:
    (r,) = TelemetryDecoder(config).decode(TOPIC, enc(board_room(24.5, **{"O2,x:y": 3})), NOW_MS)
    assert invalid_fields(r.fields) == [("o2_x_y", "unknown_field")]
    assert not any(name.endswith("_raw") for name in r.fields)


def test_any_possible_o2_reaches_the_readings(config: GatewayConfig) -> None:
    decoder = TelemetryDecoder(config)
    for seq, o2 in enumerate((0.0, 5.0, 40.0, 100.0)):
        (r,) = decoder.decode(TOPIC, enc(board_room(o2, seq=seq)), NOW_MS)
        assert r.fields["o2_pct"] == o2 and "invalid" not in r.fields


def test_extreme_o2_in_lhasa_with_board_derived_values_is_stored_with_numbers(
    config: GatewayConfig,
) -> None:
    """40 % and 5 % in Lhasa: the board's eq_alt_m (-1278 m, 11,800 m) was outside the old
    schema's -1000..9000 m and rejected the whole reading, so no alarm could be raised."""
    high, low = board_room(40.0, seq=1), board_room(5.0, seq=2)
    assert high["eq_alt_m"] < -1000 and low["eq_alt_m"] > 9000
    decoded = TelemetryDecoder(config).decode(TOPIC, enc([high, low]), NOW_MS)
    enriched = Enricher(config, clock_ms=lambda: NOW_MS)(decoded)
    by_o2 = {r.fields["o2_pct"]: r.fields for r in enriched}
    for o2 in (40.0, 5.0):
        fields = by_o2[o2]
        assert "invalid" not in fields
        assert fields["baro_source"] == "sensor"
        assert fields["ppo2_kpa"] == pytest.approx(o2 * 64.9 / 100, abs=1e-4)
        expected = oxygen.equivalent_altitude_m(o2, 64.9)
        assert fields["eq_alt_m"] == pytest.approx(expected, abs=0.1)
    assert float(by_o2[40.0]["eq_alt_m"]) < -1000 and float(by_o2[5.0]["eq_alt_m"]) > 11_000


def test_array_with_one_bad_item_stores_the_good_ones(config: GatewayConfig) -> None:
    no_boot = board_room(24.0, seq=2)
    del no_boot["boot"]
    items = [
        board_room(24.0, seq=1),
        no_boot,
        board_room(24.2, seq=3, rh_pct=150.0),  # one bad field: stored, flagged
        "garbage",
        board_room(24.4, seq=5, seq_extra=1) | {"seq": -4},
    ]
    decoded = TelemetryDecoder(config).decode_message(TOPIC, enc(items), NOW_MS)
    assert [r.fields["seq"] for r in decoded.readings] == [1, 3]
    assert decoded.readings[1].fields["invalid"] == "rh_pct:out_of_range"
    assert [(b.index, b.reason) for b in decoded.rejects] == [
        (1, RejectReason.MISSING_FIELD),
        (3, RejectReason.BAD_SHAPE),
        (4, RejectReason.OUT_OF_RANGE),
    ]
    first = decoded.rejects[0]
    assert "lhasa/room-1 item 1 of 5" in first.detail and "'boot'" in first.detail
    assert json.loads(first.payload) == no_boot  # the item alone, replayable after a fix
    # All or nothing for callers that can only refuse whole messages (dead-letter replay).
    with pytest.raises(Reject) as err:
        TelemetryDecoder(config).decode(TOPIC, enc(items), NOW_MS)
    assert err.value.reason is RejectReason.MISSING_FIELD


def test_a_single_object_without_identity_is_still_rejected(config: GatewayConfig) -> None:
    doc = board_room(24.0)
    del doc["seq"]
    with pytest.raises(Reject) as err:
        TelemetryDecoder(config).decode_message(TOPIC, enc(doc), NOW_MS)
    assert err.value.reason is RejectReason.MISSING_FIELD and "room-1" in str(err.value)


# -- time -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "skew_s"),
    [
        (NOW_MS + 23 * HOUR_MS, 23 * 3600.0),  # a board clock 23 h ahead
        (NOW_MS + 365 * 24 * HOUR_MS, 365 * 24 * 3600.0),  # a year ahead
        (NOW_MS + FUTURE_TOLERANCE_MS + 1, 60.001),
        (978_307_200_000, (978_307_200_000 - NOW_MS) / 1000),  # 2001: RTC never set
        (NOW_MS // 1000, (NOW_MS // 1000 - NOW_MS) / 1000),  # seconds instead of ms
    ],
)
def test_implausible_stamps_are_stored_at_arrival_and_flagged(
    config: GatewayConfig, ts: int, skew_s: float
) -> None:
    (r,) = TelemetryDecoder(config).decode(TOPIC, enc(board_room(24.0, ts=ts)), NOW_MS)
    assert r.ts_ms == NOW_MS
    assert r.fields["ts_board_ms"] == ts
    assert r.fields["clock_skew_s"] == pytest.approx(skew_s, abs=1e-3)
    assert r.fields["o2_pct"] == 24.0 and "invalid" not in r.fields


@pytest.mark.parametrize(
    "ts", [NOW_MS + FUTURE_TOLERANCE_MS, NOW_MS - MAX_PAST_MS, NOW_MS - 9 * HOUR_MS]
)
def test_plausible_stamps_are_kept(config: GatewayConfig, ts: int) -> None:
    (r,) = TelemetryDecoder(config).decode(TOPIC, enc(board_room(24.0, ts=ts)), NOW_MS)
    assert r.ts_ms == ts and "ts_board_ms" not in r.fields and "clock_skew_s" not in r.fields


@pytest.mark.parametrize(
    ("ts", "reason", "raw"),
    [("2026-01-01T00:00:00Z", "bad_type", None), (1.7e12, "bad_type", 1.7e12),
     (-5, "out_of_range", -5.0), (True, "bad_type", None)],
)  # fmt: skip
def test_a_broken_ts_is_flagged_and_the_reading_stored_at_arrival(
    config: GatewayConfig, ts: Any, reason: str, raw: float | None
) -> None:
    (r,) = TelemetryDecoder(config).decode(TOPIC, enc(board_room(24.0, ts=ts)), NOW_MS)
    assert r.ts_ms == NOW_MS and invalid_fields(r.fields) == [("ts", reason)]
    assert r.fields.get("ts_raw") == raw and r.fields["o2_pct"] == 24.0


def test_readings_stamped_at_arrival_stay_distinct_points(config: GatewayConfig) -> None:
    decoder = TelemetryDecoder(config)
    ahead = NOW_MS + 23 * HOUR_MS
    flush = [board_room(24.0, seq=s, ts=ahead + s * 10_000) for s in range(3)]
    out = decoder.decode(TOPIC, enc(flush), NOW_MS)
    (unset,) = decoder.decode(TOPIC, enc(board_room(24.0, seq=9, ts=0)), NOW_MS)
    assert [r.ts_ms for r in out] + [unset.ts_ms] == [NOW_MS, NOW_MS + 1, NOW_MS + 2, NOW_MS + 3]
    assert unset.fields["clock_unset"] is True


def test_a_reading_23_h_ahead_no_longer_blinds_the_alarm_engine(
    config: GatewayConfig, tmp_path: Path
) -> None:
    """A room whose first reading is stamped 23 h ahead, then 29.5 % (above Lhasa's 27.9 %
    room-o2-high limit) for 40 s of board and gateway time: the alarm is raised. Before, the
    23-h stamp was the newest judged and every later reading was skipped as older."""
    now = [NOW_MS]
    decoder = TelemetryDecoder(config)
    engine = AlarmEngine(config, StateStore(tmp_path / "alarms.sqlite"), clock_ms=lambda: now[0])
    enricher = Enricher(config, clock_ms=lambda: now[0])

    def receive(doc: dict) -> list:
        return engine(enricher(decoder.decode(TOPIC, enc(doc), now[0])))

    receive(board_room(24.0, seq=1, ts=now[0] + 23 * HOUR_MS))
    raised = []
    for seq in range(2, 12):
        now[0] += 5000
        out = receive(board_room(29.5, seq=seq, ts=now[0] - 200))
        raised += [r.tags["rule"] for r in out if r.measurement == "alarm"
                   and r.tags["device"] == "room-1" and r.fields["state"] == "raise"]  # fmt: skip
    assert raised == ["room-o2-high"]


# -- status ---------------------------------------------------------------------------------

STATUS_TOPIC = "o2/lhasa/room-1/status"


def test_status_clock_skew_and_a_status_stamped_ahead(config: GatewayConfig) -> None:
    ahead = NOW_MS + 23 * HOUR_MS
    status = {"state": "online", "fw": "0.3.0", "uptime_s": 60, "ts": ahead}
    _, point = decode_status(config, STATUS_TOPIC, enc(status), NOW_MS)
    assert point is not None and point.ts_ms == NOW_MS
    assert point.fields["ts_board_ms"] == ahead and point.fields["clock_skew_s"] == 82_800.0
    # A set clock a little behind (transit): stamped as sent, its lead recorded (negative).
    _, point = decode_status(config, STATUS_TOPIC, enc(status | {"ts": NOW_MS - 400}), NOW_MS)
    assert point is not None and point.ts_ms == NOW_MS - 400
    assert point.fields["clock_skew_s"] == -0.4 and "ts_board_ms" not in point.fields
    # Never set (0): no skew to tell, the receive time.
    _, point = decode_status(config, STATUS_TOPIC, enc(status | {"ts": 0}), NOW_MS)
    assert point is not None and point.ts_ms == NOW_MS and "clock_skew_s" not in point.fields
