"""Gap records (gateway/outbox.py, table ``outbox_gap``): when a lagging non-holding cursor is
released past rows at the bound, what it skipped (the span of the points' own times and their
count) is recorded in the release's transaction, for the forwarder's backfill to redo. Real
SQLite files; no InfluxDB."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gateway.outbox import LOCAL, FullPolicy, Outbox

BASE_MS = 1_700_000_000_000


def lines(start: int, stop: int) -> list[str]:
    return [f"room,site=s,device=d seq={i}i {BASE_MS + i}" for i in range(start, stop)]


def drain(outbox: Outbox, cursor: str) -> list[str]:
    got: list[str] = []
    while batch := outbox.peek_batch(10, cursor=cursor):
        got += batch.lines
        outbox.advance(cursor, batch.ids[-1])
    return got


def lagging_outbox(path: Path) -> Outbox:
    outbox = Outbox(path, max_bytes=10_000, policy=FullPolicy.BLOCK)
    outbox.add_cursor("central", holds=False)
    return outbox


def test_a_release_records_the_span_and_count_of_what_was_skipped(tmp_path: Path) -> None:
    outbox = lagging_outbox(tmp_path / "o.sqlite")
    for i in range(10):  # ~5 KB a commit: the central cursor's backlog passes the bound
        outbox.commit(lines(i * 100, i * 100 + 100))
        drain(outbox, LOCAL)
    released = outbox.stats.released["central"]
    assert 0 < released < 1000
    # Releases back to back (the cursor never moved between them): one record, every skipped
    # point in it; the skipped points are the oldest, so their times are exactly these.
    (gap,) = outbox.gaps("central")
    assert (gap.first_ms, gap.last_ms, gap.points, gap.done_ms) == (
        BASE_MS,
        BASE_MS + released - 1,
        released,
        None,
    )
    assert outbox.gap_totals("central") == (1, released)
    assert drain(outbox, "central") == lines(released, 1000)


def test_the_span_is_of_the_points_times_not_their_order(tmp_path: Path) -> None:
    """A board's spool arrives late: a row's lines are not in time order."""
    outbox = lagging_outbox(tmp_path / "o.sqlite")
    spooled = lines(0, 100)[::-1]  # newest first
    outbox.commit(spooled)
    outbox.commit(lines(-500, -400))  # older than the row before
    drain(outbox, LOCAL)
    for i in range(1, 3):  # enough for both rows above to be released, not the new ones
        outbox.commit(lines(i * 1000, i * 1000 + 100))
        drain(outbox, LOCAL)
    (gap,) = outbox.gaps("central")
    assert gap.points == outbox.stats.released["central"] == 200
    assert (gap.first_ms, gap.last_ms) == (BASE_MS - 500, BASE_MS + 99)


def test_a_cursor_that_moved_between_releases_gets_a_new_record(tmp_path: Path) -> None:
    outbox = lagging_outbox(tmp_path / "o.sqlite")
    for i in range(4):
        outbox.commit(lines(i * 100, i * 100 + 100))
        drain(outbox, LOCAL)
    first = outbox.stats.released["central"]
    assert first > 0
    drain(outbox, "central")  # the central tier was back a while
    for i in range(4, 8):
        outbox.commit(lines(i * 100, i * 100 + 100))
        drain(outbox, LOCAL)
    second = outbox.stats.released["central"] - first
    assert second > 0
    old, new = outbox.gaps("central")
    assert (old.first_ms, old.last_ms, old.points) == (BASE_MS, BASE_MS + first - 1, first)
    assert (new.first_ms, new.last_ms, new.points) == (
        BASE_MS + 400,
        BASE_MS + 400 + second - 1,
        second,
    )


def test_gap_records_survive_a_restart_and_close_only_as_recorded(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    outbox = lagging_outbox(path)
    for i in range(4):
        outbox.commit(lines(i * 100, i * 100 + 100))
        drain(outbox, LOCAL)
    outbox.close()
    outbox = lagging_outbox(path)
    (gap,) = outbox.gaps("central")
    assert outbox.gap_progress(gap, BASE_MS + 10)
    (progressed,) = outbox.gaps("central")
    assert progressed.done_ms == BASE_MS + 10
    # Another release extends the record while a backfill works on it: its progress starts
    # again and the backfill's view of it (fewer points) can neither progress nor close it.
    outbox.commit(lines(400, 500))
    drain(outbox, LOCAL)
    (extended,) = outbox.gaps("central")
    assert extended.points > gap.points and extended.done_ms is None
    assert not outbox.gap_progress(gap, BASE_MS + 20)
    assert not outbox.remove_gap(gap)
    assert outbox.remove_gap(extended)
    assert outbox.gaps("central") == [] and outbox.gap_totals("central") == (0, 0)


def test_a_cursor_taken_out_of_the_config_takes_its_gaps_along(tmp_path: Path) -> None:
    outbox = lagging_outbox(tmp_path / "o.sqlite")
    for i in range(4):
        outbox.commit(lines(i * 100, i * 100 + 100))
        drain(outbox, LOCAL)
    assert outbox.gaps("central")
    outbox.keep_cursors([])
    assert outbox.gaps("central") == []


def test_an_outbox_of_an_older_release_gets_the_gap_table(tmp_path: Path) -> None:
    """An outbox file from before gap records (cursors, no ``outbox_gap``) opens, keeps its
    rows and cursors, and records the gaps of its next releases."""
    path = tmp_path / "o.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL,
                added_ms INTEGER NOT NULL, points INTEGER NOT NULL DEFAULT 1,
                keep INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE deadletter (id INTEGER PRIMARY KEY AUTOINCREMENT,
                received_ms INTEGER NOT NULL, source TEXT NOT NULL, topic TEXT NOT NULL,
                reason TEXT NOT NULL, detail TEXT NOT NULL, payload BLOB NOT NULL,
                payload_len INTEGER, payload_sha256 TEXT);
            CREATE TABLE outbox_cursor (name TEXT PRIMARY KEY, last_id INTEGER NOT NULL)
                WITHOUT ROWID;
            """
        )
        rows = [(json.dumps(lines(i * 100, i * 100 + 100)), 0, 100) for i in range(3)]
        db.executemany("INSERT INTO outbox (line, added_ms, points) VALUES (?, ?, ?)", rows)
        # The local drain passed every row, the central cursor none.
        db.executemany(
            "INSERT INTO outbox_cursor (name, last_id) VALUES (?, ?)", [(LOCAL, 3), ("central", 0)]
        )
    outbox = lagging_outbox(path)
    assert outbox.gaps("central") == []
    outbox.commit(lines(300, 400))
    outbox.commit(lines(400, 500))
    released = outbox.stats.released["central"]
    assert released >= 100
    (gap,) = outbox.gaps("central")
    assert (gap.first_ms, gap.last_ms, gap.points) == (BASE_MS, BASE_MS + released - 1, released)
    assert drain(outbox, "central") == lines(released, 500)


def test_a_release_that_cannot_record_its_gap_releases_nothing(tmp_path: Path) -> None:
    """The gap record and the cursor's jump are one transaction: no jump without a record."""
    outbox = lagging_outbox(tmp_path / "o.sqlite")
    for i in range(2):
        outbox.commit(lines(i * 100, i * 100 + 100))
        drain(outbox, LOCAL)
    before = outbox.cursors()
    with outbox.lock:
        outbox.db.execute("ALTER TABLE outbox_gap RENAME TO outbox_gap_away")
    with pytest.raises(sqlite3.OperationalError, match="outbox_gap"):
        outbox.commit(lines(200, 300))
    assert outbox.cursors() == before and "central" not in outbox.stats.released
    with outbox.lock:
        outbox.db.execute("ALTER TABLE outbox_gap_away RENAME TO outbox_gap")
    outbox.commit(lines(200, 300))
    (gap,) = outbox.gaps("central")
    assert gap.points == outbox.stats.released["central"] == 100
    assert drain(outbox, "central") == lines(100, 300)
