"""Malformed-message corpus through the real broker (acceptance), and dead-letter replay
after a config fix."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.outbox import DEADLETTER_PAYLOAD_MAX
from gateway.tests.conftest import (
    DB,
    SITE,
    count_points,
    deadletters,
    gateway_config,
    publish_all,
    wait_until,
)
from o2base.procs import ChildProcess, o2chain_argv
from o2base.services import InfluxDB, Mosquitto

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000)
GOOD_TOPIC = f"o2/{SITE}/room-000/telemetry"


def body(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": 1, "boot": 1, "seq": 999_000, "ts": NOW_MS - 60_000}
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not ...}


def enc(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# (what, topic, payload, expected reason): each a way a board, a bug or an attacker gets it wrong
# so badly that the message (or, in an array, the item) cannot be a reading at all.
CORPUS: list[tuple[str, str, bytes, str]] = [
    ("empty payload", GOOD_TOPIC, b"", "not_json"),
    ("binary garbage", GOOD_TOPIC, b"\xff\xfe\x00\x01", "not_json"),
    ("truncated JSON", GOOD_TOPIC, b'{"v": 1, "boot": 1, "se', "not_json"),
    ("lowercase nan literal", GOOD_TOPIC, b"nan", "not_json"),
    ("latin-1 text", GOOD_TOPIC, "{'o2': 21,5 %}".encode("latin-1"), "not_json"),
    ("empty array", GOOD_TOPIC, b"[]", "bad_shape"),
    ("bare number", GOOD_TOPIC, b"42", "bad_shape"),
    ("bare string", GOOD_TOPIC, b'"o2 24.1"', "bad_shape"),
    ("null", GOOD_TOPIC, b"null", "bad_shape"),
    ("replay batch too long", GOOD_TOPIC, enc([body(seq=i) for i in range(501)]), "bad_shape"),
    ("no version", GOOD_TOPIC, enc(body(v=...)), "missing_field"),
    ("version 2", GOOD_TOPIC, enc(body(v=2)), "bad_version"),
    ("version as string", GOOD_TOPIC, enc(body(v="1")), "bad_type"),
    ("no boot", GOOD_TOPIC, enc(body(boot=...)), "missing_field"),
    ("no seq", GOOD_TOPIC, enc(body(seq=...)), "missing_field"),
    ("negative boot", GOOD_TOPIC, enc(body(boot=-1)), "out_of_range"),
    ("fractional seq", GOOD_TOPIC, enc(body(seq=1.5)), "bad_type"),
    ("boolean seq", GOOD_TOPIC, enc(body(seq=True)), "bad_type"),
    ("oversize", GOOD_TOPIC, b'{"pad":"' + b"x" * 70_000 + b'"}', "oversize"),
    # Only the bad item is a dead letter (its JSON alone); the good one is stored.
    ("one item without boot in a batch", GOOD_TOPIC,
     enc([body(seq=999_100), body(seq=999_101, boot=...)]), "missing_field"),
    ("unknown device", f"o2/{SITE}/room-999/telemetry", enc(body()), "unknown_device"),
    ("unknown site", "o2/nowhere/room-000/telemetry", enc(body()), "unknown_device"),
]  # fmt: skip
ITEM_PAYLOAD = {"one item without boot in a batch": enc(body(seq=999_101, boot=...))}

# Readings with one bad field or a wrong clock: stored, and flagged (docs/contracts.md).
# (what, payload, field that carries the flag, its value); seq 999_001 + index.
FLAGGED: list[tuple[str, bytes, str, Any]] = [
    ("NaN value", b'{"v":1,"boot":1,"seq":%d,"o2_pct":NaN}', "invalid", "o2_pct:not_finite"),
    ("Infinity value", b'{"v":1,"boot":1,"seq":%d,"temp_c":Infinity}', "invalid",
     "temp_c:not_finite"),
    ("-Infinity value", b'{"v":1,"boot":1,"seq":%d,"rh_pct":-Infinity}', "invalid",
     "rh_pct:not_finite"),
    ("o2 as text", enc(body(o2_pct="high")), "invalid", "o2_pct:bad_type"),
    ("o2 as boolean", enc(body(o2_pct=True)), "invalid", "o2_pct:bad_type"),
    ("o2 null", enc(body(o2_pct=None)), "invalid", "o2_pct:bad_type"),
    ("o2 as list", enc(body(o2_pct=[21.0])), "invalid", "o2_pct:bad_type"),
    ("o2 as object", enc(body(o2_pct={"value": 21.0})), "invalid", "o2_pct:bad_type"),
    ("o2 above 100 %", enc(body(o2_pct=101.0)), "o2_pct_raw", 101.0),
    ("barometer in hPa", enc(body(baro_kpa=649.0)), "baro_kpa_raw", 649.0),
    ("barometer 5 kPa", enc(body(baro_kpa=5.0)), "baro_kpa_raw", 5.0),
    ("temperature -100", enc(body(temp_c=-100.0)), "temp_c_raw", -100.0),
    ("unknown field", enc(body(co3_ppm=1.0)), "co3_ppm_raw", 1.0),
    ("field name typo", enc(body(o2_pc=21.0)), "invalid", "o2_pc:unknown_field"),
    ("ts a year ahead", enc(body(ts=NOW_MS + 365 * 86_400_000)), "ts_board_ms",
     NOW_MS + 365 * 86_400_000),
    ("ts in 2001", enc(body(ts=978_307_200_000)), "ts_board_ms", 978_307_200_000),
    ("ts in seconds", enc(body(ts=NOW_MS // 1000)), "ts_board_ms", NOW_MS // 1000),
    ("ts as text", enc(body(ts="2026-01-01T00:00:00Z")), "invalid", "ts:bad_type"),
]  # fmt: skip


def flagged_payload(n: int, payload: bytes) -> bytes:
    """The flagged case's payload with its own seq and ts: distinct readings and points."""
    seq = 999_001 + n
    if b"%d" in payload:
        return payload % seq
    payload = payload.replace(b'"ts": %d' % (NOW_MS - 60_000), b'"ts": %d' % (NOW_MS - 50_000 + n))
    return payload.replace(b'"seq": 999000', b'"seq": %d' % seq)


def valid(seq: int) -> bytes:
    return enc({"v": 1, "boot": 1, "seq": seq, "ts": NOW_MS - 30_000 + seq, "o2_pct": 24.0})


def test_malformed_corpus_lands_in_dead_letters_and_replay_after_fix(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB
) -> None:
    whats = {what for what, *_ in CORPUS} | {what for what, *_ in FLAGGED}
    assert len(whats) == len(CORPUS) + len(FLAGGED) >= 40
    state = tmp_path / "state"
    cfg = gateway_config(tmp_path / "gw.toml", mosquitto, influxdb, state, boards=1)
    messages: list[tuple[str, bytes]] = []
    for n, (_, topic, payload, _reason) in enumerate(CORPUS):
        messages += [(GOOD_TOPIC, valid(2 * n)), (topic, payload), (GOOD_TOPIC, valid(2 * n + 1))]
    messages += [(GOOD_TOPIC, flagged_payload(n, f[1])) for n, f in enumerate(FLAGGED)]
    flagged_where = "WHERE seq > 999000 AND seq < 999100"
    with ChildProcess(o2chain_argv("gateway", "run", "-c", str(cfg)), tmp_path / "gw.log") as gw:
        gw.wait_for_log("MQTT subscribed", timeout_s=30)
        publish_all(mosquitto, messages, "corpus-board")
        wait_until(lambda: count_points(influxdb) >= 2 * len(CORPUS), 30, "the valid readings")
        wait_until(
            lambda: count_points(influxdb, "seq", flagged_where) >= len(FLAGGED),
            30,
            "the flagged readings",
        )
        letters = deadletters(cfg, "list", "--limit", "1000")
        assert gw.running, gw.log_tail()
        gw.stop()
        assert gw.returncode == 0, gw.log_tail()
    assert count_points(influxdb) == 2 * len(CORPUS)  # every valid one, none of the bad
    assert len(letters) == len(CORPUS)
    for (what, topic, payload, reason), letter in zip(CORPUS, letters, strict=True):
        assert (letter["reason"], letter["topic"]) == (reason, topic), what
        expected = ITEM_PAYLOAD.get(what, payload)
        # Kept up to 4 KiB (the oversize one and the long array are cut), with the whole
        # payload's length and hash.
        kept = expected[:DEADLETTER_PAYLOAD_MAX]
        assert letter["payload"] == kept.decode("utf-8", "backslashreplace"), what
        assert letter["payload_len"] == len(expected), what
        assert letter["payload_sha256"] == hashlib.sha256(expected).hexdigest(), what
        assert letter["truncated"] is (len(expected) > DEADLETTER_PAYLOAD_MAX), what
    item = next(dl for dl in letters if dl["payload"] == ITEM_PAYLOAD[CORPUS[19][0]].decode())
    assert "item 1 of 2" in item["detail"] and "'boot'" in item["detail"]
    assert count_points(influxdb, "seq", "WHERE seq = 999100") == 1  # the array's good item
    for n, (what, _, name, value) in enumerate(FLAGGED):
        (point,) = influxdb.query_points(f"SELECT * FROM room WHERE seq = {999_001 + n}", db=DB)
        assert point[name] == value, (what, point)

    # The operator adds the missing board and replays: that one leaves, the rest stay.
    fixed = gateway_config(
        tmp_path / "gw2.toml", mosquitto, influxdb, state, boards=1, extra_boards=("room-999",)
    )
    out = subprocess.run(
        o2chain_argv("gateway", "deadletters", "-c", str(fixed), "replay", "--limit", "1000"),
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(out.stdout)
    assert summary["replayed"] == 1 and summary["still_rejected"] == len(CORPUS) - 1
    left = deadletters(fixed, "list", "--limit", "1000")
    assert "unknown_device" in {dl["reason"] for dl in left}  # the unknown *site* stays
    assert len(left) == len(CORPUS) - 1
    with ChildProcess(o2chain_argv("gateway", "run", "-c", str(fixed)), tmp_path / "gw.log") as gw:
        gw.wait_for_log("MQTT subscribed", timeout_s=30)
        wait_until(
            lambda: count_points(influxdb, "seq", "WHERE device = 'room-999'") == 1,
            30,
            "the replayed reading",
        )
        gw.stop()
    rows = influxdb.query_points("SELECT * FROM room WHERE device = 'room-999'", db=DB)
    assert rows[0]["seq"] == 999_000
