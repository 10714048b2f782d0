"""Persistent state of the alarm engine and enrichment: SQLite (WAL), in the outbox's file.

In the gateway the store shares the outbox's connection (:meth:`StateStore.sharing`), so an
alarm's lifecycle change is written by :meth:`StateStore.writer` inside the very transaction
that commits its ``alarm`` point: after a crash both are there or neither is. What survives a
restart (alarm practice asks for "a log that survives restarts", docs/domain.md, Limits and
alarms):

- ``alarm_state``: one row per (site, device, rule) with its lifecycle (active, acknowledged,
  shelved until ...), written on every change;
- ``alarm_log``: the event log (raise, ack, clear, shelve, unshelve), bounded to the newest
  ``log_keep`` rows; InfluxDB holds the full history (measurement ``alarm``);
- the notifications an event owes (:meth:`writer` runs the ``also_write`` hooks, see
  gateway/notify/queue.py), so a raise and its queued notifications commit together;
- ``kv``: JSON blobs of slow-changing learned state (O2 totals, purity baselines), saved
  periodically, so a crash loses at most one save interval of integration.

Thread-safe: the pipeline (MQTT thread, asyncio pollers) and the HTTP handlers use it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class StoredEvent(Protocol):
    """What the store needs of an alarm event (:class:`gateway.alarms.AlarmEvent`)."""

    @property
    def key(self) -> str: ...
    @property
    def ts_ms(self) -> int: ...
    @property
    def persisted(self) -> dict[str, Any] | None: ...
    def to_json(self) -> dict[str, Any]: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS alarm_state (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alarm_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms INTEGER NOT NULL,
    event TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class StateStore:
    """``StateStore(path)`` with a file of its own (``":memory:"`` for tests), or
    ``StateStore.sharing(outbox.db, outbox.lock)`` in the outbox's file."""

    def __init__(self, path: Path | str, log_keep: int = 10_000):
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        self._setup(db, threading.Lock(), log_keep, owns=True)

    @classmethod
    def sharing(
        cls, db: sqlite3.Connection, lock: threading.Lock, log_keep: int = 10_000
    ) -> StateStore:
        """A store in another component's SQLite file, using its connection and lock."""
        store = cls.__new__(cls)
        store._setup(db, lock, log_keep, owns=False)
        return store

    def _setup(
        self, db: sqlite3.Connection, lock: threading.Lock, log_keep: int, owns: bool
    ) -> None:
        self.log_keep = log_keep
        self._db = db
        self._lock = lock
        self._owns = owns
        with lock:
            db.executescript(_SCHEMA)
        self._log_writes = 0
        # More writes that belong in the alarm event's transaction (the notification queue:
        # gateway/notify/queue.py), called as ``fn(db, events)`` after the store's own.
        self.also_write: list[Callable[[sqlite3.Connection, Sequence[Any]], None]] = []

    def import_legacy(self, path: Path) -> bool:
        """Take over the state of a release that kept it in its own file (``alarms.sqlite``),
        once: copied when this store is still empty, then the old file is renamed
        ``*.imported``. Returns True when something was imported."""
        if not path.exists():
            return False
        with self._lock:
            if self._db.execute("SELECT COUNT(*) FROM alarm_state").fetchone()[0]:
                return False
            self._db.execute("ATTACH DATABASE ? AS legacy", (str(path),))
            try:
                self._db.execute("BEGIN")
                for table in ("alarm_state", "kv"):
                    self._db.execute(f"INSERT OR REPLACE INTO {table} SELECT * FROM legacy.{table}")
                self._db.execute(
                    "INSERT INTO alarm_log (ts_ms, event) "
                    "SELECT ts_ms, event FROM legacy.alarm_log ORDER BY id"
                )
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._db.execute("DETACH DATABASE legacy")
        for suffix in ("", "-wal", "-shm"):
            old = path.with_name(path.name + suffix)
            if old.exists():
                old.rename(old.with_name(old.name + ".imported"))
        log.info("alarm state imported from %s", path)
        return True

    def writer(self, events: Sequence[StoredEvent]) -> Callable[[sqlite3.Connection], None]:
        """What to run inside the outbox's transaction for ``events``: each alarm's new state
        (or its removal) and its log entry. The caller holds the lock (the outbox does)."""

        def write(db: sqlite3.Connection) -> None:
            for event in events:
                if event.persisted is None:
                    db.execute("DELETE FROM alarm_state WHERE key = ?", (event.key,))
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO alarm_state (key, state) VALUES (?, ?)",
                        (event.key, json.dumps(event.persisted, sort_keys=True)),
                    )
                db.execute(
                    "INSERT INTO alarm_log (ts_ms, event) VALUES (?, ?)",
                    (event.ts_ms, json.dumps(event.to_json())),
                )
            for extra in self.also_write:
                extra(db, events)
            self._log_writes += len(events)
            if self._log_writes >= 100:
                self._log_writes = 0
                db.execute(
                    "DELETE FROM alarm_log WHERE id <= (SELECT MAX(id) FROM alarm_log) - ?",
                    (self.log_keep,),
                )

        return write

    def write(self, events: Sequence[StoredEvent]) -> None:
        """:meth:`writer` in a transaction of its own (a store without an outbox: tests)."""
        if not events:
            return
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self.writer(events)(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def load_states(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT key, state FROM alarm_state").fetchall()
        return {str(k): json.loads(v) for k, v in rows}

    def save_state(self, key: str, state: dict[str, Any] | None) -> None:
        """Store (or with ``None`` forget) one alarm's lifecycle state."""
        with self._lock:
            if state is None:
                self._db.execute("DELETE FROM alarm_state WHERE key = ?", (key,))
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO alarm_state (key, state) VALUES (?, ?)",
                    (key, json.dumps(state, sort_keys=True)),
                )

    def recent_log(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` events, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event FROM alarm_log ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def get_kv(self, key: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_kv(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, json.dumps(value))
            )

    def close(self) -> None:
        if self._owns:
            with self._lock:
                self._db.close()
