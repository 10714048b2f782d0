"""The ingest's hot path, in process: a commit batch goes through the pipeline in one call yet a
failing message is still dead-lettered alone and nothing is acknowledged before the commit; the
decoder's JSON shortcut answers as ``json.loads``; the encoder's layout cache; the observer's
deferred last values equal the eager ones."""

from __future__ import annotations

import enum
import json
import math
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig, parse_config
from gateway.lineproto import LineEncoder
from gateway.mqtt_ingest import LINGER_FILL, PIPELINE_CHUNK, MqttIngest, _Queued
from gateway.observe import Observer
from gateway.outbox import Outbox
from gateway.readings import FieldValue, Reading
from gateway.sources import Sources
from gateway.telemetry import Decoded, Reject, RejectReason, TelemetryDecoder, _loads

NOW_MS = 1_795_000_000_000


def config(**mqtt: Any) -> GatewayConfig:
    return parse_config({
        "mqtt": mqtt,
        "site": [{"id": "lhasa", "altitude_m": 3650}],
        "device": [{"id": f"room-{n}", "site": "lhasa", "kind": "room", "transport": "mqtt"}
                   for n in range(3)],
    })  # fmt: skip


def message(mid: int, device: str, seq: int, **extra: Any) -> _Queued:
    body = {"v": 1, "boot": 1, "seq": seq, "ts": NOW_MS - 1000 + seq, "o2_pct": 24.0, **extra}
    return _Queued(0, mid, 1, f"o2/lhasa/{device}/telemetry", json.dumps(body).encode())


class Rig:
    """An ingest on a real outbox, without a broker: batches are handed to it directly."""

    def __init__(self, tmp_path: Path, fail_on: str | None = None, **mqtt: Any):
        self.outbox = Outbox(tmp_path / "outbox.sqlite")
        self.calls: list[int] = []
        self.acked: list[list[int]] = []
        self.fail_on = fail_on
        self.ingest = MqttIngest(
            config(**mqtt), self.outbox, process=self.process, wall_clock_ms=lambda: NOW_MS
        )
        self.ingest._ack = self.ack  # type: ignore[method-assign]

    def process(self, readings: list[Reading]) -> list[Reading]:
        self.calls.append(len(readings))
        if any(r.tags["device"] == self.fail_on for r in readings):
            raise RuntimeError("stage bug")
        return readings

    def ack(self, batch: list[_Queued]) -> None:
        # Acknowledged only once the batch is in the outbox (ack after commit): every telemetry
        # message of the batch is already there, as a point or as a dead letter.
        lines = self.lines()
        letters = {bytes(d.payload) for d in self.outbox.dead_letters()}
        for q in batch:
            try:
                seq = json.loads(q.payload)["seq"]
            except (ValueError, KeyError, TypeError):
                assert q.payload in letters, q
                continue
            device = q.topic.split("/")[2]
            stored = any(f"device={device}," in ln and f"seq={seq}i" in ln for ln in lines)
            assert stored or q.payload in letters, (device, seq)
        self.acked.append([q.mid for q in batch])

    def lines(self) -> list[str]:
        return self.outbox.peek_batch(10_000).lines


def test_a_batch_goes_through_the_pipeline_in_one_call(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    batch = [message(n + 1, f"room-{n % 3}", n // 3) for n in range(30)]
    batch.append(message(31, "room-0", 0))  # a duplicate: dropped before the pipeline
    batch.append(_Queued(0, 32, 1, "o2/lhasa/room-1/telemetry", b"not json"))
    rig.ingest._commit_batch(batch)
    assert rig.calls == [30]
    assert len(rig.lines()) == 30
    assert rig.ingest.stats.duplicates == 1 and rig.ingest.stats.rejects == {"not_json": 1}
    assert [d.reason for d in rig.outbox.dead_letters()] == ["not_json"]
    assert rig.acked == [list(range(1, 33))]  # all of them, in arrival order


def test_a_big_batch_is_one_commit_of_several_pipeline_runs(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    count = 2 * PIPELINE_CHUNK + 7
    rig.ingest._commit_batch([message(n + 1, f"room-{n % 3}", n // 3) for n in range(count)])
    assert rig.calls == [PIPELINE_CHUNK, PIPELINE_CHUNK, 7]
    assert len(rig.lines()) == count and rig.ingest.stats.commits == 1
    assert rig.acked == [list(range(1, count + 1))]


def test_a_failing_message_is_dead_lettered_alone(tmp_path: Path) -> None:
    rig = Rig(tmp_path, fail_on="room-2")
    batch = [message(n + 1, f"room-{n % 3}", n // 3) for n in range(9)]
    rig.ingest._commit_batch(batch)
    # The batch failed, then each message on its own: the three of room-2 fail again.
    assert rig.calls == [9, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert len(rig.lines()) == 6 and not any("room-2" in line for line in rig.lines())
    dead = rig.outbox.dead_letters()
    assert [d.reason for d in dead] == ["pipeline_error"] * 3
    assert {d.topic for d in dead} == {"o2/lhasa/room-2/telemetry"}
    assert rig.ingest.stats.rejects == {"pipeline_error": 3}
    assert rig.acked == [list(range(1, 10))]


def test_a_decoder_crash_is_a_dead_letter_not_a_lost_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig(tmp_path)
    decode = rig.ingest.decoder.decode_message

    def fragile(topic: str, payload: bytes, received_ms: int) -> Decoded:
        if b'"seq": 1,' in payload:
            raise KeyError("decoder bug")
        return decode(topic, payload, received_ms)

    monkeypatch.setattr(rig.ingest.decoder, "decode_message", fragile)
    rig.ingest._commit_batch([message(n + 1, "room-0", n) for n in range(3)])
    assert len(rig.lines()) == 2
    assert [d.reason for d in rig.outbox.dead_letters()] == ["pipeline_error"]
    assert rig.acked == [[1, 2, 3]]


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a": 1}', b' {"a": 1}', b'{"a": 1} \r\n\t', b'{"a": 1} x', b'{"a": 1}{}', b"[1, 2.5]",
        b"{", b"[", b"{}", b"[]", b'{"a": NaN, "b": -Infinity}', b'{"a": 1e400}',
        b"\xef\xbb\xbf" + b'{"a": 1}', '{"a": 1}'.encode("utf-16-le"),
        '{"a": 1}'.encode("utf-32-le"), '{"a": "\u00e9"}'.encode(), b'{"a": "\xed\xa0\x80"}',
        b'{"a": "\xff"}', b'{"a": 1,}', b'{"a": 01}', b'{"a\x00": 1}', b"", b"null", b"7",
    ],
)  # fmt: skip
def test_json_shortcut_answers_as_json_loads(payload: bytes) -> None:
    def outcome(fn: Any) -> Any:
        try:
            return ("ok", repr(fn(payload)))
        except Exception as exc:
            return ("error", type(exc), str(exc))

    assert outcome(_loads) == outcome(json.loads)


def test_decoder_rejects_what_it_rejected_and_a_huge_integer_too() -> None:
    decoder = TelemetryDecoder(config())
    topic = "o2/lhasa/room-0/telemetry"

    def reason(topic: str, payload: bytes) -> RejectReason:
        with pytest.raises(Reject) as err:
            decoder.decode(topic, payload, NOW_MS)
        return err.value.reason

    ok = b'{"v":1,"boot":1,"seq":2,"ts":%d,"o2_pct":24}' % NOW_MS
    (r,) = decoder.decode(topic, ok, NOW_MS)
    assert r.fields == {"boot": 1, "seq": 2, "o2_pct": 24.0} and r.ts_ms == NOW_MS
    assert r.fields["o2_pct"].__class__ is float
    # Topics are resolved once; bad ones are still rejected every time.
    for _ in range(2):
        assert reason("o2/lhasa/room-9/telemetry", ok) is RejectReason.UNKNOWN_DEVICE
        assert reason("o2/lhasa/telemetry", ok) is RejectReason.BAD_TOPIC
    assert reason(topic, ok.replace(b'"v":1', b'"v":2')) is RejectReason.BAD_VERSION
    assert reason(topic, ok.replace(b'"seq":2', b'"seq":true')) is RejectReason.BAD_TYPE
    assert reason(topic, ok.replace(b'"seq":2,', b"")) is RejectReason.MISSING_FIELD
    # A bad field is flagged, not rejected (docs/contracts.md), and the reading stored.
    (r,) = decoder.decode(topic, ok.replace(b"24}", b"NaN}"), NOW_MS)
    assert r.fields["invalid"] == "o2_pct:not_finite"
    (r,) = decoder.decode(topic, ok.replace(b"24}", b"124}"), NOW_MS)
    assert r.fields["invalid"] == "o2_pct:out_of_range" and r.fields["o2_pct_raw"] == 124.0
    # An integer too big for a float used to escape as OverflowError and fail the whole batch.
    (r,) = decoder.decode(topic, ok.replace(b"24}", b"1" + b"0" * 400 + b"}"), NOW_MS)
    assert r.fields["invalid"] == "o2_pct:out_of_range" and "o2_pct_raw" not in r.fields


def _outcome(decoder: TelemetryDecoder, topic: str, payload: bytes) -> Any:
    try:
        decoded = decoder.decode_message(topic, payload, NOW_MS)
    except Reject as rej:
        return ("reject", rej.reason, str(rej))
    readings = [
        (r.measurement, r.tags, list(r.fields.items()), [type(v) for v in r.fields.values()],
         r.ts_ms, r.meta)
        for r in decoded.readings
    ]  # fmt: skip
    rejects = [(i.index, i.reason, i.detail, i.payload) for i in decoded.rejects]
    return ("ok", readings, rejects)


def test_decoder_plans_answer_as_the_field_loop() -> None:
    """The one-go path (a plan per key layout, values checked by class and range with map)
    against the field-by-field loop, on the same random payloads: identical readings (field
    order and value classes too), flags, log lines' causes, rejects and their messages."""
    rng = random.Random(11)
    fast, loop = TelemetryDecoder(config()), TelemetryDecoder(config())
    loop._plan = lambda keys: None  # type: ignore[method-assign]
    good: dict[str, Any] = {"o2_pct": 24.5, "baro_kpa": 64.2, "temp_c": 19.5, "rh_pct": 30.0,
                            "co2_ppm": 900.0, "ppo2_kpa": 15.7, "eq_alt_m": 2300.0,
                            "quality": 0, "purity_pct": 93.0, "flow_lpm": 5.0}  # fmt: skip
    bad: list[Any] = [
        124.0, -1.0, 1e400, -1e400, 0, 7, True, None, "24", [1], {"a": 1}, 1 << 70, 2.5, 30.0, 90.0,
        1e308, -0.0, 4294967296, 1.0,
    ]  # fmt: skip
    ids: dict[str, Any] = {"v": 1, "boot": 3, "seq": 9, "ts": NOW_MS - 5000}
    id_bad: dict[str, list[Any]] = {
        "v": [2, 0, 1.0, True, "1", None],
        "boot": [-1, 1 << 32, 1.5, False, "3", None],
        "seq": [-1, 1 << 32, 2.0, True, None],
        "ts": [0, -5, NOW_MS + 3_600_000, NOW_MS - 500 * 86_400_000, 1.5, "x", None, 1 << 60,
               True, NOW_MS, NOW_MS + 59_000],
    }  # fmt: skip
    same = 0
    for n in range(2500):
        item: dict[str, Any] = {}
        for name in rng.sample(list(ids), rng.choice([4, 4, 4, 3])):
            item[name] = ids[name] if rng.random() < 0.85 else rng.choice(id_bad[name])
        for name in rng.sample(list(good), rng.randint(1, len(good))):
            item[name] = good[name] if rng.random() < 0.8 else rng.choice(bad)
        if rng.random() < 0.05:
            item["mystery"] = 1.0
        keys = list(item)
        if rng.random() < 0.3:
            rng.shuffle(keys)
        body: Any = {k: item[k] for k in keys}
        if rng.random() < 0.1:
            body = [body, dict(body, seq=n)]
        payload = json.dumps(body).encode()
        topic = f"o2/lhasa/room-{n % 3}/telemetry"
        expected = _outcome(loop, topic, payload)
        assert _outcome(fast, topic, payload) == expected, payload
        same += expected[0] == "ok" and not expected[2]
    assert same > 1000
    assert fast.flagged == loop.flagged and fast.restamped == loop.restamped
    assert fast._logged == loop._logged  # the same (device, field, reason) lines were written
    assert any(plan is not None for plan in fast._plans.values())


def test_decoder_plan_names_device_and_field_of_a_bad_value(caplog: Any) -> None:
    """After good readings have made their layout's plan, a bad value in that layout is still
    flagged by name, and the log line names the device and the field."""
    decoder = TelemetryDecoder(config())
    topic = "o2/lhasa/room-1/telemetry"

    def payload(seq: int, o2: Any) -> bytes:
        body = {"v": 1, "boot": 1, "seq": seq, "ts": NOW_MS - 100, "o2_pct": o2, "temp_c": 20.5}
        return json.dumps(body).encode()

    for seq in range(3):
        (r,) = decoder.decode(topic, payload(seq, 24.0), NOW_MS)
        assert "invalid" not in r.fields
    (r,) = decoder.decode(topic, payload(3, 101.5), NOW_MS)
    assert r.fields["invalid"] == "o2_pct:out_of_range" and r.fields["o2_pct_raw"] == 101.5
    assert r.fields["temp_c"] == 20.5
    (r,) = decoder.decode(topic, payload(4, "24"), NOW_MS)
    assert r.fields["invalid"] == "o2_pct:bad_type"
    lines = [rec.getMessage() for rec in caplog.records]
    for cause in ("o2_pct = 101.5 %, expected 0.0..100.0", "o2_pct = '24', expected a number"):
        assert any("lhasa/room-1" in ln and cause in ln for ln in lines), cause
    with pytest.raises(Reject, match=r"lhasa/room-1: seq = -1, expected 0\.\.4294967295"):
        decoder.decode(topic, payload(-1, 24.0), NOW_MS)


class Level(enum.IntEnum):
    HIGH = 3


class Tag(str):
    pass


def test_encoder_layout_cache_matches_influxdb_client() -> None:
    encoder = LineEncoder()
    tags = {"site": "s", "device": "d", "room": "1"}
    other_order = dict(reversed(tags.items()))
    none: Any = None  # a field a source left empty: not written
    readings = [
        Reading("room", tags, {"o2_pct": 24.0, "b": 1, "a": True, "s": 'x "y"'}, 5),
        Reading("room", other_order, {"s": "z", "a": False, "b": 2, "o2_pct": 1.5}, 6),
        Reading("room", tags, {"o2_pct": math.inf, "x": none, "y": 0.1}, 7),
        Reading("room", tags, {"level": Level.HIGH, "tag": Tag("t"), "f": 2e16}, 8),
    ]
    for r in readings * 2:
        assert encoder.encode(r) == r.to_line()
    with pytest.raises(ValueError):
        encoder.encode(Reading("room", tags, {"x": none, "y": math.nan}, 9))
    with pytest.raises(ValueError):
        encoder.encode(Reading("room", tags, {"x": [1]}, 9))  # type: ignore[dict-item]


def test_encoder_templates_match_influxdb_client_on_random_readings() -> None:
    """The template path (``%`` format, one ``sum`` for finiteness, ``.0`` removed by
    ``replace``) against Point on values and names chosen to trip it: whole floats first, last
    and in the middle, -0.0, exponents, strings holding ``.0``, ``%``, quotes and backslashes,
    names with ``%``, ``.0``, spaces, commas and ``=``, and values that are not finite."""
    rng = random.Random(7)
    names = ["a", "b", "o2_pct", "x.0", "p%s", "k ey", "c,d", "e=f", "z", "n10.0"]
    floats = [0.0, -0.0, 1.0, 10.0, 1389.0, 25.39, -3.5, 1e16, 2e-7, 1e308, -1e308, 0.1,
              math.inf, -math.inf, math.nan]  # fmt: skip
    strings = ["sensor", "isa", "", "1.0", "a.0,b", 'q"u', "b\\s", "%s%d", "x.0", "o2:bad,x:y"]
    others: list[Any] = [True, False, None, 7, -12, 1 << 70, Level.HIGH, Tag("t.0")]
    encoder = LineEncoder()
    tags = {"site": "s", "device": "d"}
    checked = 0
    for n in range(3000):
        fields: dict[str, Any] = {}
        for name in rng.sample(names, rng.randint(1, len(names))):
            kind = rng.random()
            pool: list[Any] = floats if kind < 0.6 else strings if kind < 0.8 else others
            fields[name] = rng.choice(pool)
        reading = Reading("room", tags, fields, NOW_MS + n)
        try:
            expected = reading.to_line()
        except ValueError:
            expected = ""  # Point refuses a type; the encoder must too
        if not expected:  # nothing to write (Point gives ""): a point needs a field
            with pytest.raises(ValueError):
                encoder.encode(reading)
            continue
        assert encoder.encode(reading) == expected, fields
        checked += 1
    assert checked > 2000


def test_observer_last_values_equal_the_eager_ones() -> None:
    cfg = config()
    now = [NOW_MS]
    observer = Observer(cfg, Sources(), clock_ms=lambda: now[0])
    rng = random.Random(4)
    expected: dict[str, tuple[Any, int]] = {}
    newest = -1
    names = ["o2_pct", "temp_c", "rh_pct", "baro_kpa"]
    tags = {"site": "lhasa", "device": "room-1", "room": "room-1"}
    for n in range(300):  # calls of 1 to 40 readings, some of them replays, all field mixes
        batch = []
        for k in range(rng.randint(1, 40)):
            ts = NOW_MS + n * 1000 + k - (rng.randint(0, 50_000) if rng.random() < 0.1 else 0)
            fields: dict[str, FieldValue] = {
                name: float(rng.randint(0, 99)) for name in rng.sample(names, rng.randint(1, 4))
            }
            batch.append(Reading("room", tags, fields, ts))
            for name, v in fields.items():  # the eager rule: newer replaces, older only fills
                if ts >= newest or name not in expected or ts >= expected[name][1]:
                    expected[name] = (v, ts)
            newest = max(newest, ts)
        observer(batch)
        assert values(observer) == expected


def values(observer: Observer) -> dict[str, tuple[Any, int]]:
    (site,) = observer.status()["sites"]
    (device,) = [d for d in site["devices"] if d["id"] == "room-1"]
    return {k: (v["value"], v["ts_ms"]) for k, v in device["values"].items()}


def test_failed_acknowledgements_are_counted_and_logged_not_swallowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ingest = MqttIngest(config(), Outbox(tmp_path / "outbox.sqlite"))

    def broken_ack(*args: object) -> None:
        raise AttributeError("'Client' object has no attribute '_packet_queue'")  # a paho change

    client: Any = ingest.client
    client.ack_many = client.ack = broken_ack
    ingest._ack([message(1, "room-1", 1), message(2, "room-1", 2)])
    assert (ingest.stats.acked, ingest.stats.ack_failures) == (0, 2)
    assert "MQTT acknowledgements failed" in caplog.text and "_packet_queue" in caplog.text


def test_light_load_lingers_into_one_commit_and_a_full_queue_goes_at_once(
    tmp_path: Path,
) -> None:
    """Group commit at light load: messages that trickle in share one commit (one fsync, one
    InfluxDB write) instead of one commit each, in arrival order."""
    rig = Rig(tmp_path, commit_linger_ms=1000)
    committer = threading.Thread(target=rig.ingest._commit_loop, daemon=True)
    committer.start()
    cond = rig.ingest._queue_cond

    def enqueue(messages: list[_Queued]) -> None:
        with cond:
            rig.ingest._queue += messages
            cond.notify_all()

    first = [message(n, "room-0", n) for n in range(1, 11)]
    enqueue(first)  # a trickle: the committer waits for more
    rest = [message(n, "room-1", n) for n in range(11, LINGER_FILL + 1)]
    enqueue(rest)  # the queue reaches LINGER_FILL: committed
    started = time.monotonic()
    while not rig.acked and time.monotonic() - started < 30:
        with cond:
            cond.wait(0.05)
    assert rig.acked == [[q.mid for q in first + rest]]  # one commit, in arrival order
    with cond:
        rig.ingest._stopping = True
        cond.notify_all()
    committer.join(10)
    assert not committer.is_alive()
