"""Telemetry decoding and the reject reasons (unit: no I/O)."""

from __future__ import annotations

import json

import pytest

from gateway.config import GatewayConfig, parse_config
from gateway.telemetry import Reject, RejectReason, decode_status, decode_telemetry

NOW_MS = 1_795_000_000_000
TOPIC = "o2/lhasa/room-1/telemetry"


@pytest.fixture
def config() -> GatewayConfig:
    return parse_config(
        {
            "site": [{"id": "lhasa", "altitude_m": 3650}],
            "device": [
                {
                    "id": "room-1",
                    "site": "lhasa",
                    "kind": "room",
                    "transport": "mqtt",
                    "room": "104",
                },
                {"id": "conc-1", "site": "lhasa", "kind": "concentrator", "transport": "mqtt"},
                {
                    "id": "plc-1",
                    "site": "lhasa",
                    "kind": "plant",
                    "transport": "modbus",
                    "url": "tcp://127.0.0.1:5020",
                    "profile": "psa-plant",
                },
            ],
        }
    )


def reading(**fields: object) -> bytes:
    doc = {"v": 1, "boot": 2, "seq": 5, "ts": NOW_MS - 1000, **fields}
    return json.dumps(doc).encode()


def test_room_reading_becomes_a_room_point(config: GatewayConfig) -> None:
    (r,) = decode_telemetry(config, TOPIC, reading(o2_pct=25, ppo2_kpa=16.1), NOW_MS)
    assert r.measurement == "room"
    assert r.tags == {"site": "lhasa", "device": "room-1", "room": "104"}
    assert r.fields == {"boot": 2, "seq": 5, "o2_pct": 25.0, "ppo2_kpa": 16.1}
    assert isinstance(r.fields["o2_pct"], float)  # one field, one type in InfluxDB
    assert r.ts_ms == NOW_MS - 1000
    assert r.to_line() == (
        "room,device=room-1,room=104,site=lhasa boot=2i,o2_pct=25,ppo2_kpa=16.1,seq=5i "
        f"{NOW_MS - 1000}"
    )


def test_batch_from_store_and_forward_replay(config: GatewayConfig) -> None:
    items = [
        {"v": 1, "boot": 2, "seq": s, "ts": NOW_MS - 10_000 + s, "purity_pct": 93.0}
        for s in range(3)
    ]
    out = decode_telemetry(config, "o2/lhasa/conc-1/telemetry", json.dumps(items).encode(), NOW_MS)
    assert [r.fields["seq"] for r in out] == [0, 1, 2]
    assert all(r.measurement == "concentrator" and r.tags["source"] == "sensor" for r in out)


def test_unset_clock_gets_receive_time_and_a_mark(config: GatewayConfig) -> None:
    (r,) = decode_telemetry(config, TOPIC, reading(ts=0, o2_pct=24.0), NOW_MS)
    assert r.ts_ms == NOW_MS and r.fields["clock_unset"] is True


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "mentions"),
    [
        ("o2/lhasa/room-1", reading(), RejectReason.BAD_TOPIC, "SITE/DEVICE"),
        ("o2/lhasa/room-9/telemetry", reading(), RejectReason.UNKNOWN_DEVICE, "lhasa/room-9"),
        ("o2/lhasa/plc-1/telemetry", reading(), RejectReason.UNKNOWN_DEVICE, "MQTT device"),
        (TOPIC, b"{not json", RejectReason.NOT_JSON, "room-1"),
        (TOPIC, b"\xff\xfe", RejectReason.NOT_JSON, "room-1"),
        (TOPIC, b"[]", RejectReason.BAD_SHAPE, "1..500"),
        (TOPIC, b'"text"', RejectReason.BAD_SHAPE, "object"),
        (TOPIC, b" " * 70000, RejectReason.OVERSIZE, "65536"),
        (TOPIC, reading(v=2), RejectReason.BAD_VERSION, "v = 2"),
        (TOPIC, json.dumps({"v": 1, "seq": 1}).encode(), RejectReason.MISSING_FIELD, "boot"),
        (TOPIC, reading(seq=1.5), RejectReason.BAD_TYPE, "seq"),
        (TOPIC, reading(boot=True), RejectReason.BAD_TYPE, "boot"),
        (TOPIC, reading(seq=-1), RejectReason.OUT_OF_RANGE, "seq"),
        (TOPIC, reading(v="1"), RejectReason.BAD_TYPE, "v"),
    ],
)
def test_rejects_name_reason_device_and_field(
    config: GatewayConfig, topic: str, payload: bytes, reason: RejectReason, mentions: str
) -> None:
    with pytest.raises(Reject) as err:
        decode_telemetry(config, topic, payload, NOW_MS)
    assert err.value.reason is reason
    assert mentions in str(err.value)


@pytest.mark.parametrize(
    ("payload", "flag"),
    [
        (reading(o2_pct="24", temp_c=20), "o2_pct:bad_type"),
        (reading(o2_pct=None, temp_c=20), "o2_pct:bad_type"),
        (b'{"v":1,"boot":1,"seq":1,"o2_pct":NaN,"temp_c":20}', "o2_pct:not_finite"),
        (reading(o2_pct=120.0, temp_c=20), "o2_pct:out_of_range"),
        (reading(oxygen=24.0, temp_c=20), "oxygen:unknown_field"),
    ],
)
def test_what_was_rejected_per_field_is_now_flagged(
    config: GatewayConfig, payload: bytes, flag: str
) -> None:
    (r,) = decode_telemetry(config, TOPIC, payload, NOW_MS)
    assert r.fields["invalid"] == flag and r.fields["temp_c"] == 20.0


STATUS_TOPIC = "o2/lhasa/room-1/status"


def test_status_health_becomes_a_device_health_point(config: GatewayConfig) -> None:
    payload = json.dumps({
        "state": "online", "fw": "0.3.0", "boot": 4, "uptime_s": 3600, "heap_free_b": 61234,
        "rssi_dbm": -67, "buffered": 12, "dropped": 0, "ts": NOW_MS - 500,
        "alarms": ["o2-high"], "reset_cause": "power",
    }).encode()  # fmt: skip
    state, point = decode_status(config, STATUS_TOPIC, payload, NOW_MS)
    assert state == "online" and point is not None
    assert point.measurement == "device_health"
    assert point.tags == {"site": "lhasa", "device": "room-1"}
    assert point.ts_ms == NOW_MS - 500
    assert point.fields == {
        "online": True, "fw": "0.3.0", "boot": 4.0, "uptime_s": 3600.0,
        "heap_free_b": 61234.0, "rssi_dbm": -67.0, "buffered": 12.0, "dropped": 0.0,
        "clock_skew_s": -0.5,
    }  # fmt: skip


def test_last_will_and_odd_status_keep_the_link_state(config: GatewayConfig) -> None:
    state, point = decode_status(config, STATUS_TOPIC, b'{"state":"offline"}', NOW_MS)
    assert state == "offline" and point is not None
    assert point.fields == {"online": False} and point.ts_ms == NOW_MS
    # Bad counters are left out, not fatal; a clock far off: the receive time, the board's kept.
    odd = b'{"state":"online","rssi_dbm":"weak","heap_free_b":-5,"uptime_s":1e400,"ts":5}'
    state, point = decode_status(config, STATUS_TOPIC, odd, NOW_MS)
    assert state == "online" and point is not None
    assert point.ts_ms == NOW_MS
    assert point.fields == {"online": True, "ts_board_ms": 5, "clock_skew_s": -1_794_999_999.995}
    assert decode_status(config, STATUS_TOPIC, b"\xff", NOW_MS) == ("offline", None)
    # A device the gateway does not know, or a Modbus one: the state only.
    assert decode_status(config, "o2/lhasa/x-9/status", b'{"state":"online"}', NOW_MS) == (
        "online",
        None,
    )
    with pytest.raises(Reject):
        decode_status(config, "o2/lhasa/status", b"{}", NOW_MS)
