"""Duplicates recognised by (device, boot, seq) (gateway/README.md, "Duplicates and gaps"): at
both edges of the 4,096-seq window, across a restart of the gateway (the tracker's state is
committed with the readings), and a gap of a single reading.

Each test kills a mutant of ``scripts/mutants.py`` that the older tests let live."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig, parse_config
from gateway.dedup import WINDOW, SeqTracker, Verdict
from gateway.mqtt_ingest import MqttIngest, _Queued
from gateway.outbox import Outbox

NOW_MS = 1_795_000_000_000
DEVICE = "lhasa/room-0"


def test_the_oldest_seq_in_the_window_is_still_a_duplicate() -> None:
    t = SeqTracker()
    assert t.check(DEVICE, 1, 0).verdict is Verdict.NEW
    assert t.check(DEVICE, 1, WINDOW - 1).verdict is Verdict.NEW  # seq 0 is now the oldest bit
    assert t.check(DEVICE, 1, 0).verdict is Verdict.DUPLICATE
    # After a restart too: the saved window holds all WINDOW bits.
    again = SeqTracker.from_rows(t.take_dirty())
    assert again.check(DEVICE, 1, 0).verdict is Verdict.DUPLICATE


def test_a_seq_just_past_the_window_is_unverified_and_leaves_the_window_alone() -> None:
    t = SeqTracker()
    t.check(DEVICE, 1, 0)
    t.check(DEVICE, 1, WINDOW)  # seq 0 is WINDOW behind: outside
    assert t.check(DEVICE, 1, 0).verdict is Verdict.UNVERIFIED
    assert t.check(DEVICE, 1, 0).verdict is Verdict.UNVERIFIED  # never "late", never a bit
    assert t.boots[DEVICE][1].window.bit_length() <= WINDOW
    assert t.counters[DEVICE].unverified == 2 and t.counters[DEVICE].late == 0
    assert t.check(DEVICE, 1, 1).verdict is Verdict.LATE  # the oldest inside: checkable


def test_a_gap_of_one_reading_is_a_gap() -> None:
    t = SeqTracker()
    t.check(DEVICE, 1, 0)
    check = t.check(DEVICE, 1, 2)
    assert (check.gap_from, check.gap_to, check.gap) == (1, 1, 1)
    assert (t.counters[DEVICE].gaps, t.counters[DEVICE].missing) == (1, 1)
    assert t.check(DEVICE, 1, 1).verdict is Verdict.LATE
    assert t.counters[DEVICE].missing == 0


def config() -> GatewayConfig:
    return parse_config({
        "site": [{"id": "lhasa", "altitude_m": 3650}],
        "device": [{"id": "room-0", "site": "lhasa", "kind": "room", "transport": "mqtt"}],
    })  # fmt: skip


def message(mid: int, seq: int, dup: bool = False) -> _Queued:
    body = {"v": 1, "boot": 1, "seq": seq, "ts": NOW_MS - 1000 + seq, "o2_pct": 24.0}
    return _Queued(0, mid, 1, "o2/lhasa/room-0/telemetry", json.dumps(body).encode(), dup)


def gateway(path: Path) -> MqttIngest:
    """An ingest on the outbox file at ``path``, as a (re)started gateway builds it."""
    ingest = MqttIngest(config(), Outbox(path), wall_clock_ms=lambda: NOW_MS)
    client: Any = ingest.client
    client.ack_many = lambda mids: None
    client.ack = lambda mid, qos: 0
    return ingest


def stored_seqs(outbox: Outbox) -> list[int]:
    return sorted(
        int(part[4:-1])
        for line in outbox.peek_batch(100_000).lines
        for part in line.split(" ")[1].split(",")
        if part.startswith("seq=")
    )


def test_a_late_reading_is_not_stored_twice_after_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.sqlite"
    first = gateway(path)
    with caplog.at_level(logging.WARNING, logger="gateway.mqtt_ingest"):
        first._commit_batch([message(1, 0), message(2, 2)])  # seq 1 missing: a gap of one
    assert first.stats.gaps == 1
    assert "lhasa/room-0 boot 1: 1 reading(s) missing (seq 1..1)" in caplog.text
    first._commit_batch([message(3, 1)])  # the board's spool fills it: late, committed
    assert stored_seqs(first.outbox) == [0, 1, 2]
    first.outbox.close()  # killed before the acknowledgement reached the broker
    second = gateway(path)
    second._commit_batch([message(1, 0, True), message(2, 2, True), message(3, 1, True)])
    assert second.stats.duplicates == 3 and second.stats.redelivered_uncommitted == 0
    assert stored_seqs(second.outbox) == [0, 1, 2]
