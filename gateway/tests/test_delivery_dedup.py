"""Duplicate and gap tracking (pure), the fast line encoder against influxdb-client's, and the
outbox: bound, policies, range deletes and what survives a reopen."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gateway.dedup import BOOTS_KEPT, WINDOW, SeqTracker, Verdict
from gateway.lineproto import LineEncoder
from gateway.outbox import FullPolicy, Outbox, OutboxFullError
from gateway.readings import Reading


def verdicts(tracker: SeqTracker, seqs: list[int], boot: int = 1) -> list[Verdict]:
    return [tracker.check("s/d", boot, s).verdict for s in seqs]


def test_duplicates_are_dropped_and_counted() -> None:
    t = SeqTracker()
    assert verdicts(t, [0, 1, 2, 1, 2, 3, 0]) == [
        Verdict.NEW,
        Verdict.NEW,
        Verdict.NEW,
        Verdict.DUPLICATE,
        Verdict.DUPLICATE,
        Verdict.NEW,
        Verdict.DUPLICATE,
    ]
    assert t.counters["s/d"].duplicates == 3 and t.counters["s/d"].gaps == 0


def test_gaps_are_reported_and_late_fills_counted() -> None:
    t = SeqTracker()
    t.check("s/d", 1, 10)
    check = t.check("s/d", 1, 15)
    assert (check.gap_from, check.gap_to, check.gap) == (11, 14, 4)
    assert t.counters["s/d"].missing == 4
    assert t.check("s/d", 1, 12).verdict is Verdict.LATE  # a spooled reading arriving late
    assert t.check("s/d", 1, 12).verdict is Verdict.DUPLICATE
    assert t.counters["s/d"].missing == 3 and t.counters["s/d"].late == 1


def test_new_boot_starts_over_and_old_boots_stay_checkable() -> None:
    t = SeqTracker()
    verdicts(t, [0, 1, 2], boot=7)
    assert verdicts(t, [0, 1], boot=8) == [Verdict.NEW, Verdict.NEW]
    assert t.check("s/d", 7, 2).verdict is Verdict.DUPLICATE  # previous boot still known
    for boot in range(9, 9 + BOOTS_KEPT):
        t.check("s/d", boot, 0)
    assert len(t.boots["s/d"]) == BOOTS_KEPT  # bounded
    assert t.check("s/d", 7, 2).verdict is Verdict.UNVERIFIED  # forgotten: accepted, counted


def test_window_bounds_memory_and_older_seqs_are_unverified() -> None:
    t = SeqTracker()
    t.check("s/d", 1, 0)
    t.check("s/d", 1, WINDOW * 3)
    assert t.boots["s/d"][1].window.bit_length() <= WINDOW
    assert t.check("s/d", 1, 5).verdict is Verdict.UNVERIFIED
    assert t.check("s/d", 1, WINDOW * 3 - WINDOW + 1).verdict is Verdict.LATE


def test_state_round_trips_through_rows() -> None:
    t = SeqTracker()
    verdicts(t, [0, 1, 2, 5])
    t2 = SeqTracker.from_rows(t.take_dirty())
    assert verdicts(t2, [2, 3, 5, 6]) == [
        Verdict.DUPLICATE,
        Verdict.LATE,
        Verdict.DUPLICATE,
        Verdict.NEW,
    ]
    assert t.take_dirty() == []


READINGS = [
    Reading("room", {"site": "s", "device": "d", "room": "101"}, {"o2_pct": 24.0}, 1),
    Reading(
        "concentrator",
        {"site": "s", "device": "d 1,x=y", "source": "sensor"},
        {"purity_pct": 93.125, "state": True, "run_h": 12, "fw": 'v1 "beta"\\', "nan": math.nan},
        1_795_000_000_123,
    ),
    Reading("m,x y", {"t=a": "v\\"}, {"f v": -0.0, "g": 1e-7, "h": 123456789.0}, 5),
]


@pytest.mark.parametrize("reading", READINGS)
def test_fast_encoder_matches_influxdb_client(reading: Reading) -> None:
    encoder = LineEncoder()
    assert encoder.encode(reading) == reading.to_line()
    assert encoder.encode(reading) == reading.to_line()  # cached path too


def test_outbox_block_policy_refuses_at_the_bound(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=300, policy=FullPolicy.BLOCK)
    box.commit(["m v=1 1"] * 10)
    with pytest.raises(OutboxFullError):
        box.commit(["m v=2 2"] * 30)
    assert box.depth() == 10 and box.stats.full_refusals == 1
    assert not box.wait_for_room(0.01) or box.has_room()
    box.remove_through(box.peek_batch(100).ids[-1])
    assert box.depth() == 0 and box.wait_for_room(0.01)


def test_outbox_drop_oldest_keeps_the_newest(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=200, policy=FullPolicy.DROP_OLDEST)
    for i in range(20):
        box.commit([f"m v={i} {i}"])
    kept = box.peek_batch(100).lines
    assert kept[-1] == "m v=19 19" and box.queued_bytes <= 200
    assert box.stats.dropped_oldest == 20 - len(kept) > 0
    assert [int(line.split()[-1]) for line in kept] == list(range(20 - len(kept), 20))


def test_outbox_commit_is_atomic_with_dead_letters_and_state(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    from gateway.outbox import NewDeadLetter

    box.commit(
        [f"m v={i} {i}" for i in range(2500)],
        [NewDeadLetter("mqtt", "o2/s/d/telemetry", "not_json", "x", b"\xff")],
        [("s/d", 1, 5, b"\x01" * (WINDOW // 8))],
    )
    box.close()
    again = Outbox(path)  # what a SIGKILL leaves: a committed WAL
    assert again.depth() == 2500
    batch = again.peek_batch(1000)
    assert batch.lines[:2] == ["m v=0 0", "m v=1 1"] and len(batch) == 1000
    assert again.seq_rows()[0][:3] == ("s/d", 1, 5)
    assert again.dead_letters()[0].payload == b"\xff"
    again.remove_through(batch.ids[-1])
    assert again.depth() == 1500
    assert again.peek_batch(1).lines[0] == "m v=1000 1000"
