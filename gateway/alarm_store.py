"""Persistent state of the alarm engine and enrichment: SQLite (WAL) in ``state_dir``.

What survives a restart (DOMAIN.md section 3, "a log that survives restarts"):

- ``alarm_state``: one row per (site, device, rule) with its lifecycle (active, acknowledged,
  shelved until ...), written on every change;
- ``alarm_log``: the event log (raise, ack, clear, shelve, unshelve), bounded to the newest
  ``log_keep`` rows; InfluxDB holds the full history (measurement ``alarm``);
- ``kv``: JSON blobs of slow-changing learned state (O2 totals, purity baselines), saved
  periodically, so a crash loses at most one save interval of integration.

Thread-safe: the pipeline (MQTT thread, asyncio pollers) and the HTTP handlers use it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

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


class AlarmStore:
    """``AlarmStore(path)``; ``":memory:"`` for tests."""

    def __init__(self, path: Path | str, log_keep: int = 10_000):
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.log_keep = log_keep
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._log_writes = 0

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

    def append_log(self, ts_ms: int, event: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO alarm_log (ts_ms, event) VALUES (?, ?)", (ts_ms, json.dumps(event))
            )
            self._log_writes += 1
            if self._log_writes % 100 == 0:
                self._db.execute(
                    "DELETE FROM alarm_log WHERE id <= (SELECT MAX(id) FROM alarm_log) - ?",
                    (self.log_keep,),
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
        with self._lock:
            self._db.close()
