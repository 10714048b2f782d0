"""Durable outbox and dead-letter store (SQLite, WAL).

A reading is acknowledged to the broker only after :meth:`Outbox.add` returned, i.e. after the
transaction committed; it leaves the outbox only after InfluxDB accepted its batch
(ARCHITECTURE.md, delivery guarantee). Thread-safe: the MQTT network thread adds, the writer
task drains.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    line TEXT NOT NULL,
    added_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deadletter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class DeadLetter:
    id: int
    received_ms: int
    source: str  # mqtt | modbus | influx
    topic: str
    reason: str
    detail: str
    payload: bytes


class Outbox:
    """Append-only queue of line-protocol points plus the dead-letter store, in one file."""

    def __init__(self, path: Path, synchronous: str = "NORMAL"):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a process crash (SIGKILL); FULL also survives power
        # loss at the cost of one fsync per commit.
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)

    def add(self, lines: Iterable[str]) -> int:
        """Commit points; returns how many. Durable when this returns."""
        now = int(time.time() * 1000)
        rows = [(line, now) for line in lines]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO outbox (line, added_ms) VALUES (?, ?)", rows)
            self._db.execute("COMMIT")
        return len(rows)

    def peek(self, limit: int) -> list[tuple[int, str]]:
        """The oldest ``limit`` points as (id, line), in the order they were added."""
        with self._lock:
            cur = self._db.execute("SELECT id, line FROM outbox ORDER BY id LIMIT ?", (limit,))
            return [(int(i), str(line)) for i, line in cur.fetchall()]

    def remove(self, ids: list[int]) -> None:
        """Drop delivered points (after InfluxDB accepted them)."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
            self._db.execute("COMMIT")

    def depth(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(n)

    def oldest_age_s(self) -> float:
        with self._lock:
            (oldest,) = self._db.execute("SELECT MIN(added_ms) FROM outbox").fetchone()
        return 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000)

    def add_dead_letter(
        self, source: str, topic: str, reason: str, detail: str, payload: bytes
    ) -> None:
        """Keep a rejected message with why it was rejected; durable when this returns."""
        with self._lock:
            self._db.execute(
                "INSERT INTO deadletter (received_ms, source, topic, reason, detail, payload) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (int(time.time() * 1000), source, topic, reason, detail, payload),
            )

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        with self._lock:
            cur = self._db.execute(
                "SELECT id, received_ms, source, topic, reason, detail, payload "
                "FROM deadletter ORDER BY id LIMIT ?",
                (limit,),
            )
            return [DeadLetter(*row) for row in cur.fetchall()]

    def dead_letter_counts(self) -> dict[str, int]:
        with self._lock:
            cur = self._db.execute("SELECT reason, COUNT(*) FROM deadletter GROUP BY reason")
            return {str(r): int(n) for r, n in cur.fetchall()}

    def close(self) -> None:
        with self._lock:
            self._db.close()
