"""Durable outbox and dead-letter store (SQLite, WAL).

A reading is acknowledged to the broker only after :meth:`Outbox.commit` returned, i.e. after the
transaction holding it committed; it leaves the outbox only after InfluxDB accepted its batch
(the delivery guarantee, gateway/README.md). Sources commit in groups (many messages, one
transaction, one fsync), the writer reads in id order and deletes by id range.

A row holds up to :data:`CHUNK_POINTS` points (a JSON array of lines), not one: every SQLite
call releases and retakes the GIL, and with the MQTT thread busy each retake can wait a whole
switch interval, so one row per point made the outbox the bottleneck (measured: 2.3 s of 14 s
per 60,000 readings in ``executemany`` alone).

The outbox is bounded (``max_bytes`` of queued line protocol): at the bound, ``block`` makes
:meth:`commit` refuse (:class:`OutboxFullError`, the caller stops acknowledging so the broker
keeps the messages), ``drop_oldest`` deletes the oldest points to make room and counts them.
Alarm events are exempt both ways: ``keep_lines`` are committed past the bound and their rows
are never the ones ``drop_oldest`` deletes (an alarm nobody can see is the loss that matters).

The same file holds the alarm engine's state (:mod:`gateway.state_store` shares the connection),
so an alarm's lifecycle change commits in the transaction that holds its ``alarm`` point:
``commit(..., also=store.writer(events))``.

Readers keep cursors. The local InfluxDB drain is the cursor ``local``; a second reader (the
central forwarder, :mod:`gateway.forward`) registers its own with :meth:`Outbox.add_cursor` and
reads the same committed rows at its own pace (``peek_batch(limit, cursor=name)``,
``advance(name, last_id)``). A row is deleted only once every cursor has passed it, so the bound
(``max_bytes``) measures what the slowest reader still needs. A cursor registered with
``holds=False`` gives way at the bound: before the outbox refuses or drops anything, rows that
every holding cursor has passed are released, the lagging cursor jumps past them and the points
it skipped are counted (:attr:`OutboxStats.released`) and recorded, in the same transaction, as a
gap (table ``outbox_gap``: the span of the skipped points' times and their count; releases back to
back extend one record) that the forwarder's backfill (:mod:`gateway.backfill`) redoes from the
local InfluxDB and then removes. Without a second cursor nothing is stored for cursors and the
outbox behaves as it always did.

Thread-safe: MQTT ingest commits from its thread, Modbus pollers from the event loop, the writer
drains from worker threads.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    line TEXT NOT NULL,  -- a JSON array of line-protocol points (or one bare line: old rows)
    added_ms INTEGER NOT NULL,
    points INTEGER NOT NULL DEFAULT 1,
    keep INTEGER NOT NULL DEFAULT 0  -- 1: alarm events, never dropped at the bound
);
CREATE TABLE IF NOT EXISTS deadletter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    payload BLOB NOT NULL,  -- the first DEADLETTER_PAYLOAD_MAX bytes
    payload_len INTEGER,  -- the whole payload's length (NULL: a row of an older release)
    payload_sha256 TEXT  -- of the whole payload, to match it with what a board sent
);
CREATE TABLE IF NOT EXISTS outbox_cursor (
    name TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL  -- every row up to this id is done for this reader
) WITHOUT ROWID;
-- What a non-holding cursor skipped at the bound (Outbox._release), for a backfill to redo:
-- the span of the skipped points' own times (ms, as in their lines) and how many they were.
-- Releases back to back (the cursor did not move between them) extend one record.
CREATE TABLE IF NOT EXISTS outbox_gap (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cursor TEXT NOT NULL,
    first_ms INTEGER NOT NULL,  -- the earliest skipped point's time
    last_ms INTEGER NOT NULL,  -- the latest skipped point's time
    points INTEGER NOT NULL,  -- points skipped
    through_id INTEGER NOT NULL,  -- the cursor jumped to this row id
    recorded_ms INTEGER NOT NULL,  -- wall clock of the latest release in this record
    done_ms INTEGER  -- the backfill has redone every point up to this time (NULL: none yet)
);
CREATE TABLE IF NOT EXISTS seqstate (
    device TEXT NOT NULL,
    boot INTEGER NOT NULL,
    max_seq INTEGER NOT NULL,
    window BLOB NOT NULL,
    PRIMARY KEY (device, boot)
) WITHOUT ROWID;
"""


CHUNK_POINTS = 1000  # points per row
LOCAL = "local"  # the cursor of the local InfluxDB drain (gateway/writer.py)

# Dead letters are evidence, not a second store of whatever anybody publishes: a payload is kept
# up to this many bytes (a valid telemetry message is at most 64 KiB, o2base/schema, and a
# reading far less), with its whole length and SHA-256. A cut payload cannot be replayed.
DEADLETTER_PAYLOAD_MAX = 4096
DEADLETTER_TOPIC_MAX = 256  # valid topics are < 100 bytes (ids of 32, docs/contracts.md)
DEADLETTER_DETAIL_MAX = 1024


class FullPolicy(StrEnum):
    BLOCK = "block"  # stop acknowledging: the broker holds the messages until there is room
    DROP_OLDEST = "drop_oldest"  # keep the newest data: delete the oldest points, counted


class OutboxFullError(Exception):
    """The outbox is at its bound (policy ``block``); nothing was committed."""


@dataclass(frozen=True)
class DeadLetter:
    id: int
    received_ms: int
    source: str  # mqtt | modbus | influx
    topic: str
    reason: str
    detail: str
    payload: bytes  # at most DEADLETTER_PAYLOAD_MAX bytes of it
    payload_len: int = -1  # the whole payload's length (-1: as ``payload``)
    payload_sha256: str = ""

    @property
    def truncated(self) -> bool:
        """Only the start of the payload was kept: it cannot be replayed as data."""
        return self.payload_len > len(self.payload)


@dataclass(frozen=True)
class NewDeadLetter:
    source: str
    topic: str
    reason: str
    detail: str
    payload: bytes


@dataclass
class OutboxStats:
    committed: int = 0  # points committed
    commits: int = 0  # transactions
    dropped_oldest: int = 0  # points deleted at the bound (policy drop_oldest)
    full_refusals: int = 0  # commits refused at the bound (policy block)
    dead_letters: int = 0
    dead_letters_dropped: int = 0  # oldest deleted at deadletter_max_count / deadletter_max_mb
    dead_letters_truncated: int = 0  # payloads kept cut at DEADLETTER_PAYLOAD_MAX
    # Points a non-holding cursor skipped at the bound, per cursor (see Outbox.add_cursor).
    released: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Gap:
    """Points a cursor skipped at the bound: their times span ``first_ms`` .. ``last_ms``."""

    id: int
    cursor: str
    first_ms: int
    last_ms: int
    points: int
    done_ms: int | None  # redone up to this time (a backfill's progress), None: not started


@dataclass
class Batch:
    """The oldest rows (``ids`` ascending) and their points, in order."""

    ids: list[int] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.lines)


def _row_lines(text: str) -> list[str]:
    if text.startswith("["):
        lines: list[str] = json.loads(text)
        return lines
    return [text]  # a row written by the one-point-per-row outbox of release 0.1


def _time_span(text: str) -> tuple[int, int] | None:
    """The earliest and latest point time (the last token of each line) of a row's text."""
    lines = _row_lines(text)
    try:
        times = [int(line[line.rfind(" ") + 1 :]) for line in lines]
    except ValueError:  # a line without a time (InfluxDB stamped it): nothing to look up
        times = []
        for line in lines:
            try:
                times.append(int(line[line.rfind(" ") + 1 :]))
            except ValueError:
                continue
    return (min(times), max(times)) if times else None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_DeadLetterRow = tuple[int, str, str, str, str, bytes, int, str]


def _dead_letter_row(now_ms: int, d: NewDeadLetter) -> _DeadLetterRow:
    """The row kept for a rejected message: bounded whatever was published."""
    payload = bytes(d.payload)
    return (
        now_ms,
        d.source,
        _cut(d.topic, DEADLETTER_TOPIC_MAX),
        d.reason,
        _cut(d.detail, DEADLETTER_DETAIL_MAX),
        payload[:DEADLETTER_PAYLOAD_MAX],
        len(payload),
        hashlib.sha256(payload).hexdigest(),
    )


def _rows(lines: Sequence[str]) -> list[tuple[str, int]]:
    return [
        (json.dumps(lines[i : i + CHUNK_POINTS]), len(lines[i : i + CHUNK_POINTS]))
        for i in range(0, len(lines), CHUNK_POINTS)
    ]


# What a dead letter counts against deadletter_max_mb: what it holds that a sender chose.
_DL_SIZE = "LENGTH(payload) + LENGTH(CAST(topic AS BLOB)) + LENGTH(CAST(detail AS BLOB))"


class Outbox:
    """Queue of line-protocol points, dead letters and the duplicate tracker's state, one file."""

    def __init__(
        self,
        path: Path,
        synchronous: str = "NORMAL",
        max_bytes: int = 1 << 30,
        policy: FullPolicy = FullPolicy.BLOCK,
        deadletter_max_count: int = 10_000,
        deadletter_max_bytes: int = 50 << 20,
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.policy = policy
        self.deadletter_max_count = deadletter_max_count
        self.deadletter_max_bytes = deadletter_max_bytes
        self.stats = OutboxStats()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a crash of the process (SIGKILL); FULL also survives
        # power loss of the host, at one fsync per commit - affordable with group commits.
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "points" not in columns:  # an outbox of release 0.1: one point per row
            self._db.execute("ALTER TABLE outbox ADD COLUMN points INTEGER NOT NULL DEFAULT 1")
        if "keep" not in columns:
            self._db.execute("ALTER TABLE outbox ADD COLUMN keep INTEGER NOT NULL DEFAULT 0")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(deadletter)")}
        if "payload_len" not in columns:  # dead letters of a release that kept whole payloads
            self._db.execute("ALTER TABLE deadletter ADD COLUMN payload_len INTEGER")
            self._db.execute("ALTER TABLE deadletter ADD COLUMN payload_sha256 TEXT")
        # Cursor positions (LOCAL always; others once registered) and which of them hold rows
        # at the bound. Without a second cursor LOCAL is implicit: rows it passed are deleted.
        self._cursors: dict[str, int] = {}
        self._holds: dict[str, bool] = {LOCAL: True}
        saved = dict(self._db.execute("SELECT name, last_id FROM outbox_cursor").fetchall())
        self._cursors[LOCAL] = int(saved.get(LOCAL, self._first_id() - 1))
        for name, last_id in saved.items():
            if name != LOCAL:
                self._cursors[str(name)] = int(last_id)
                self._holds[str(name)] = True  # until add_cursor says otherwise
        self._recount()
        with self._lock:  # bounds lowered since the last run apply at once
            self._db.execute("BEGIN")
            self._trim_dead_letters()
            self._db.execute("COMMIT")

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for stores that share this file; use it under :attr:`lock`."""
        return self._db

    @property
    def lock(self) -> threading.Lock:
        return self._lock

    def _first_id(self) -> int:
        """The id the oldest row present has, or the next id when the outbox is empty."""
        (oldest,) = self._db.execute("SELECT MIN(id) FROM outbox").fetchone()
        if oldest is not None:
            return int(oldest)
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return 1 if row is None else int(row[0]) + 1

    def _recount(self) -> None:
        queued, points = self._db.execute(
            "SELECT TOTAL(LENGTH(line)), TOTAL(points) FROM outbox"
        ).fetchone()
        self._bytes, self._points = int(queued), int(points)
        count, size = self._db.execute(
            f"SELECT COUNT(*), TOTAL({_DL_SIZE}) FROM deadletter"
        ).fetchone()
        self._dl_count, self._dl_bytes = int(count), int(size)

    # -- sources -------------------------------------------------------------------------------

    @property
    def queued_bytes(self) -> int:
        """Bytes of line protocol waiting (the bound applies to this; the file adds ~20 %)."""
        return self._bytes

    def has_room(self) -> bool:
        return self._bytes < self.max_bytes

    def wait_for_room(self, timeout_s: float) -> bool:
        """Block until below the bound or ``timeout_s``; True if there is room."""
        with self._room:
            return self._room.wait_for(self.has_room, timeout=timeout_s)

    def commit(
        self,
        lines: Sequence[str],
        dead_letters: Sequence[NewDeadLetter] = (),
        seq_rows: Sequence[tuple[str, int, int, bytes]] = (),
        *,
        keep_lines: Sequence[str] = (),
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> int:
        """Commit points, dead letters and tracker state in one transaction; durable on return.

        ``keep_lines`` (alarm events) are committed even past the bound and never dropped for
        room; ``also`` runs inside the transaction (the alarm state that goes with them).
        Raises :class:`OutboxFullError` (policy ``block``) when the outbox is at its bound and
        ``lines`` is not empty, committing nothing; dead letters, state and ``keep_lines``
        alone are always committed, and so is a batch into an empty outbox (a batch bigger than
        the whole bound must not wait forever).
        """
        now = int(time.time() * 1000)
        rows = _rows(lines)
        kept = _rows(keep_lines)
        size = sum(len(text) for text, _ in rows)
        kept_size = sum(len(text) for text, _ in kept)
        with self._lock:
            if lines and self._bytes + size > self.max_bytes and len(self._cursors) > 1:
                self._release(self._bytes + size - self.max_bytes)
            full = self._bytes > 0 and self._bytes + size > self.max_bytes
            if lines and full and self.policy is FullPolicy.BLOCK:
                self.stats.full_refusals += 1
                raise OutboxFullError(
                    f"outbox {self.path} holds {self._bytes} bytes, bound {self.max_bytes}"
                )
            letters_dropped_before, truncated = self.stats.dead_letters_dropped, 0
            self._db.execute("BEGIN")
            points_dropped_before = self.stats.dropped_oldest
            try:
                if lines and self._bytes + size > self.max_bytes:
                    self._drop_oldest(self._bytes + size - self.max_bytes)
                self._db.executemany(
                    "INSERT INTO outbox (line, added_ms, points, keep) VALUES (?, ?, ?, ?)",
                    [(text, now, n, 1) for text, n in kept]
                    + [(text, now, n, 0) for text, n in rows],
                )
                if also is not None:
                    also(self._db)
                if dead_letters:
                    dl_rows = [_dead_letter_row(now, d) for d in dead_letters]
                    self._db.executemany(
                        "INSERT INTO deadletter (received_ms, source, topic, reason, detail, "
                        "payload, payload_len, payload_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        dl_rows,
                    )
                    self._dl_count += len(dl_rows)
                    self._dl_bytes += sum(
                        len(r[5]) + len(r[2].encode()) + len(r[4].encode()) for r in dl_rows
                    )
                    truncated = sum(r[6] > len(r[5]) for r in dl_rows)
                    self._trim_dead_letters()
                if seq_rows:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO seqstate (device, boot, max_seq, window) "
                        "VALUES (?, ?, ?, ?)",
                        seq_rows,
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._recount()
                # The dropped rows are back: a commit retried through a full disk must not
                # report a loss on every try (o2chain_outbox_dropped_total).
                self.stats.dead_letters_dropped = letters_dropped_before
                self.stats.dropped_oldest = points_dropped_before
                raise
            self.stats.dead_letters_truncated += truncated
            self._bytes += size + kept_size
            self._points += len(lines) + len(keep_lines)
            self.stats.committed += len(lines) + len(keep_lines)
            self.stats.commits += 1
            self.stats.dead_letters += len(dead_letters)
        return len(lines)

    def _drop_oldest(self, need_bytes: int) -> None:
        """Delete the oldest points holding at least ``need_bytes`` (inside a transaction)."""
        freed = dropped = 0
        last_id = None
        cur = self._db.execute(
            "SELECT id, LENGTH(line), points FROM outbox WHERE keep = 0 ORDER BY id"
        )
        for row_id, size, points in cur:
            freed += int(size)
            dropped += int(points)
            last_id = int(row_id)
            if freed >= need_bytes:
                break
        cur.close()
        if last_id is not None:
            self._db.execute("DELETE FROM outbox WHERE id <= ? AND keep = 0", (last_id,))
            self._bytes -= freed
            self._points -= dropped
            self.stats.dropped_oldest += dropped

    def _trim_dead_letters(self) -> None:
        """Delete the oldest dead letters beyond the count and byte bounds (in a transaction)."""
        over_count = self._dl_count - self.deadletter_max_count
        over_bytes = self._dl_bytes - self.deadletter_max_bytes
        if over_count <= 0 and over_bytes <= 0:
            return
        freed = dropped = 0
        last_id = None
        cur = self._db.execute(f"SELECT id, {_DL_SIZE} FROM deadletter ORDER BY id")
        for row_id, size in cur:
            freed += int(size)
            dropped += 1
            last_id = int(row_id)
            if dropped >= over_count and freed >= over_bytes:
                break
        cur.close()
        if last_id is not None:
            self._db.execute("DELETE FROM deadletter WHERE id <= ?", (last_id,))
            self._dl_count -= dropped
            self._dl_bytes -= freed
            self.stats.dead_letters_dropped += dropped

    @property
    def dead_letter_bytes(self) -> int:
        """What the dead letters hold (payloads as kept, topics, details): the bound's measure."""
        return self._dl_bytes

    def add(self, lines: Iterable[str]) -> int:
        """Commit points (one transaction); durable on return. See :meth:`commit`."""
        return self.commit(list(lines))

    def add_dead_letter(
        self, source: str, topic: str, reason: str, detail: str, payload: bytes
    ) -> None:
        """Keep a rejected message with why it was rejected; durable when this returns."""
        self.commit([], [NewDeadLetter(source, topic, reason, detail, payload)])

    def seq_rows(self) -> list[tuple[str, int, int, bytes]]:
        """Saved duplicate-tracker state (see :mod:`gateway.dedup`)."""
        with self._lock:
            cur = self._db.execute("SELECT device, boot, max_seq, window FROM seqstate")
            return [(str(d), int(b), int(m), bytes(w)) for d, b, m, w in cur.fetchall()]

    # -- writer --------------------------------------------------------------------------------

    def peek_batch(self, limit: int, cursor: str = LOCAL) -> Batch:
        """The oldest rows after ``cursor`` holding about ``limit`` points (at least one row),
        in order."""
        batch = Batch()
        texts = []
        with self._lock:
            cur = self._db.execute(
                "SELECT id, line, points FROM outbox WHERE id > ? ORDER BY id",
                (self._cursors[cursor],),
            )
            taken = 0
            for row_id, text, points in cur:
                if taken and taken + points > limit:
                    break
                batch.ids.append(row_id)
                texts.append(text)
                taken += points
            cur.close()
        for text in texts:  # parsed outside the lock: sources keep committing meanwhile
            batch.lines.extend(_row_lines(text))
        return batch

    def peek(self, limit: int) -> list[tuple[int, str]]:
        """The oldest points as (row id, line), in the order they were added."""
        batch = self.peek_batch(limit)
        with self._lock:
            out = []
            for row_id in batch.ids:
                (text,) = self._db.execute(
                    "SELECT line FROM outbox WHERE id = ?", (row_id,)
                ).fetchone()
                out += [(row_id, line) for line in _row_lines(text)]
        return out[:limit]

    def remove_through(self, last_id: int) -> None:
        """The local drain is done with every row up to ``last_id`` (InfluxDB accepted them, in
        order): they go once no other cursor needs them."""
        self.advance(LOCAL, last_id)

    def advance(self, cursor: str, last_id: int) -> None:
        """Move ``cursor`` past every row up to ``last_id`` and delete the rows that every
        cursor has now passed (one transaction)."""
        with self._room:
            self._cursors[cursor] = max(self._cursors[cursor], last_id)
            floor = min(self._cursors.values())
            if len(self._cursors) == 1:
                self._delete_through(floor)
            else:
                self._db.execute("BEGIN")
                try:
                    self._db.execute(
                        "INSERT OR REPLACE INTO outbox_cursor (name, last_id) VALUES (?, ?)",
                        (cursor, self._cursors[cursor]),
                    )
                    self._delete_through(floor)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    self._recount()
                    raise
            self._room.notify_all()

    def _delete_through(self, last_id: int) -> None:
        size, points = self._db.execute(
            "SELECT TOTAL(LENGTH(line)), TOTAL(points) FROM outbox WHERE id <= ?", (last_id,)
        ).fetchone()
        if points:
            self._db.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))
            self._bytes = max(0, self._bytes - int(size))
            self._points = max(0, self._points - int(points))

    # -- more readers --------------------------------------------------------------------------

    def add_cursor(self, name: str, *, holds: bool = False) -> None:
        """Register a reader besides the local drain (kept across restarts in this file).

        A new cursor starts at the oldest row present: what is not yet in the local InfluxDB
        is not elsewhere either. ``holds=False``: at the bound this reader gives way (rows the
        holding cursors passed are released, the skipped points counted in
        ``stats.released[name]``); ``holds=True``: it counts like the local drain, so the
        outbox's full policy applies when it lags.
        """
        if name == LOCAL:
            raise ValueError(f"cursor name {LOCAL!r} is the local drain's")
        with self._lock:
            self._holds[name] = holds
            if name in self._cursors:
                return
            self._cursors[name] = self._first_id() - 1
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO outbox_cursor (name, last_id) VALUES (?, ?)",
                list(self._cursors.items()),
            )
            self._db.execute("COMMIT")

    def keep_cursors(self, names: Iterable[str]) -> list[str]:
        """Forget every reader but the local drain and ``names`` (a forwarder taken out of the
        config must not hold rows forever); returns the names forgotten."""
        wanted = set(names) | {LOCAL}
        with self._room:
            gone = [n for n in self._cursors if n not in wanted]
            if not gone:
                return []
            for name in gone:
                del self._cursors[name]
                self._holds.pop(name, None)
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM outbox_cursor WHERE name = ?", [(n,) for n in gone])
            self._db.executemany("DELETE FROM outbox_gap WHERE cursor = ?", [(n,) for n in gone])
            if len(self._cursors) == 1:
                self._db.execute("DELETE FROM outbox_cursor")
            self._delete_through(min(self._cursors.values()))
            self._db.execute("COMMIT")
            self._room.notify_all()
            return gone

    def cursors(self) -> dict[str, int]:
        """Every cursor's position (the last row id it is done with)."""
        with self._lock:
            return dict(self._cursors)

    def lag(self, cursor: str) -> tuple[int, float]:
        """Points waiting for ``cursor`` and the age in s of the oldest of them."""
        with self._lock:
            return self._lag(cursor)

    def _lag(self, cursor: str) -> tuple[int, float]:
        after = self._cursors[cursor]
        (points,) = self._db.execute(
            "SELECT TOTAL(points) FROM outbox WHERE id > ?", (after,)
        ).fetchone()
        row = self._db.execute(
            "SELECT added_ms FROM outbox WHERE id > ? ORDER BY id LIMIT 1", (after,)
        ).fetchone()
        age = 0.0 if row is None else max(0.0, time.time() - row[0] / 1000)
        return int(points), age

    def _release(self, need_bytes: int) -> None:
        """Make room for ``need_bytes`` by deleting the oldest rows every holding cursor has
        passed; the cursors that still needed them jump past, counted, and what each skipped
        (the span of the points' times, how many) is recorded in ``outbox_gap`` in the same
        transaction (under the lock)."""
        floor = min(v for k, v in self._cursors.items() if self._holds.get(k, True))
        freed = 0
        last_id = None
        # One pass over the released rows: their size for the bound, their points and the
        # span of their times for the gap records (each row read once; release is rare).
        spans: list[tuple[int, int, tuple[int, int] | None]] = []  # (id, points, span)
        cur = self._db.execute(
            "SELECT id, line, points FROM outbox WHERE id <= ? ORDER BY id", (floor,)
        )
        for row_id, text, points in cur:
            freed += len(text)
            last_id = int(row_id)
            spans.append((last_id, int(points), _time_span(text)))
            if freed >= need_bytes:
                break
        cur.close()
        if last_id is None:
            return
        now = int(time.time() * 1000)
        released, cursors = dict(self.stats.released), dict(self._cursors)
        self._db.execute("BEGIN")
        try:
            for name, at in list(self._cursors.items()):
                if at >= last_id:
                    continue
                skipped = [(n, span) for row_id, n, span in spans if row_id > at]
                count = sum(n for n, _ in skipped)
                times = [span for _, span in skipped if span is not None]
                if times:
                    self._record_gap(
                        name,
                        at,
                        last_id,
                        min(t[0] for t in times),
                        max(t[1] for t in times),
                        count,
                        now,
                    )
                self.stats.released[name] = self.stats.released.get(name, 0) + count
                self._cursors[name] = last_id
                self._db.execute(
                    "INSERT OR REPLACE INTO outbox_cursor (name, last_id) VALUES (?, ?)",
                    (name, last_id),
                )
            self._delete_through(last_id)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            self.stats.released, self._cursors = released, cursors  # as the file says
            self._recount()
            raise

    def _record_gap(
        self,
        cursor: str,
        at: int,
        through_id: int,
        first_ms: int,
        last_ms: int,
        points: int,
        now: int,
    ) -> None:
        """One release's gap record, or the previous one extended when the cursor has not moved
        since that release (inside the transaction). An extended record's progress starts
        again: its span may now begin earlier."""
        row = self._db.execute(
            "SELECT id FROM outbox_gap WHERE cursor = ? AND through_id = ? ORDER BY id DESC "
            "LIMIT 1",
            (cursor, at),
        ).fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO outbox_gap (cursor, first_ms, last_ms, points, through_id, "
                "recorded_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (cursor, first_ms, last_ms, points, through_id, now),
            )
        else:
            self._db.execute(
                "UPDATE outbox_gap SET first_ms = MIN(first_ms, ?), last_ms = MAX(last_ms, ?), "
                "points = points + ?, through_id = ?, recorded_ms = ?, done_ms = NULL "
                "WHERE id = ?",
                (first_ms, last_ms, points, through_id, now, row[0]),
            )

    # -- gaps: what a cursor skipped, for a backfill -------------------------------------------

    def gaps(self, cursor: str) -> list[Gap]:
        """The gap records of ``cursor``, oldest first."""
        with self._lock:
            cur = self._db.execute(
                "SELECT id, cursor, first_ms, last_ms, points, done_ms FROM outbox_gap "
                "WHERE cursor = ? ORDER BY id",
                (cursor,),
            )
            return [Gap(*row) for row in cur.fetchall()]

    def gap_totals(self, cursor: str) -> tuple[int, int]:
        """Gap records of ``cursor`` waiting for a backfill and the points they count."""
        with self._lock:
            n, points = self._db.execute(
                "SELECT COUNT(*), TOTAL(points) FROM outbox_gap WHERE cursor = ?", (cursor,)
            ).fetchone()
        return int(n), int(points)

    def gap_progress(self, gap: Gap, done_ms: int) -> bool:
        """Every point of ``gap`` up to ``done_ms`` is redone; False (nothing stored) when a
        release extended the record meanwhile (its progress starts again)."""
        return self._gap_update(
            "UPDATE outbox_gap SET done_ms = ? WHERE id = ? AND points = ?",
            (done_ms, gap.id, gap.points),
        )

    def remove_gap(self, gap: Gap) -> bool:
        """``gap`` is closed (every point of it redone); False, and the record stays, when a
        release extended it meanwhile."""
        return self._gap_update(
            "DELETE FROM outbox_gap WHERE id = ? AND points = ?", (gap.id, gap.points)
        )

    def _gap_update(self, sql: str, args: tuple[int, ...]) -> bool:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                changed = self._db.execute(sql, args).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return changed > 0

    def remove(self, ids: list[int]) -> None:
        """Drop the given rows (their points were written or dead-lettered)."""
        with self._room:
            self._db.execute("BEGIN")
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                size, points = self._db.execute(
                    f"SELECT TOTAL(LENGTH(line)), TOTAL(points) FROM outbox WHERE id IN ({marks})",
                    chunk,
                ).fetchone()
                self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
                self._bytes = max(0, self._bytes - int(size))
                self._points = max(0, self._points - int(points))
            self._db.execute("COMMIT")
            self._room.notify_all()

    def depth(self) -> int:
        """Points waiting for the local drain."""
        if len(self._cursors) == 1:
            return self._points
        return self.lag(LOCAL)[0]

    def oldest_age_s(self) -> float:
        """Age in s of the oldest point waiting for the local drain (another reader's lag is
        its own health, not the local one's)."""
        with self._lock:
            row = self._db.execute(
                "SELECT added_ms FROM outbox WHERE id > ? ORDER BY id LIMIT 1",
                (self._cursors[LOCAL],),
            ).fetchone()
        return 0.0 if row is None else max(0.0, time.time() - row[0] / 1000)

    # -- dead letters --------------------------------------------------------------------------

    def dead_letters(self, limit: int = 1000, after_id: int = 0) -> list[DeadLetter]:
        with self._lock:
            cur = self._db.execute(
                "SELECT id, received_ms, source, topic, reason, detail, payload, "
                "COALESCE(payload_len, LENGTH(payload)), COALESCE(payload_sha256, '') "
                "FROM deadletter WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
            return [DeadLetter(*row) for row in cur.fetchall()]

    def dead_letter_counts(self) -> dict[str, int]:
        with self._lock:
            cur = self._db.execute("SELECT reason, COUNT(*) FROM deadletter GROUP BY reason")
            return {str(r): int(n) for r, n in cur.fetchall()}

    def replace_dead_letter(
        self,
        dead_letter_id: int,
        lines: Sequence[str],
        seq_rows: Sequence[tuple[str, int, int, bytes]] = (),
    ) -> None:
        """Replay: commit ``lines`` and delete dead letter ``dead_letter_id``, atomically."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                now = int(time.time() * 1000)
                self._db.executemany(
                    "INSERT INTO outbox (line, added_ms, points) VALUES (?, ?, ?)",
                    [(text, now, n) for text, n in _rows(lines)],
                )
                if seq_rows:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO seqstate (device, boot, max_seq, window) "
                        "VALUES (?, ?, ?, ?)",
                        seq_rows,
                    )
                self._db.execute("DELETE FROM deadletter WHERE id = ?", (dead_letter_id,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._recount()

    def close(self) -> None:
        with self._lock:
            self._db.close()
