"""The durable notification queue: SQLite tables in the outbox's file.

:meth:`NotifyQueue.write` runs inside the transaction that commits an alarm event
(``StateStore.writer``), so a raise and the notifications it owes are committed together or not
at all. Each row is one message to one target (one recipient for ``sms``) with its due time on
the gateway clock (wall time, so it survives restarts): at once, after the escalation delay,
after the end of quiet hours, or after a failed attempt's backoff. Rows stay after delivery
(``state = 'sent'``, pruned to the newest :data:`KEEP_DONE`): a clear looks there for who was
told of the raise, and the idempotency key (``idem``, UNIQUE) makes enqueueing the same
message twice impossible.

Row kinds: ``raise``, ``escalate`` (``unacked_after_s``), ``repeat`` (``repeat_s``, numbered by
``seq``), ``clear``, ``ack``/``shelve``/``unshelve`` (when a target lists them in ``events``),
``target_failing``/``target_recovered`` (about another target; ``alarm_key`` ``notify/{id}``).

``notify_alarm`` holds the open occurrences (raised, not acknowledged, not shelved, not
cleared): an escalation or repeat is sent only while its occurrence is open there, and the next
repeat is queued only in the transaction that marks the previous one sent, if still open.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from gateway.config import NotifyKind, NotifyTarget
from gateway.readings import wall_ms

log = logging.getLogger(__name__)

SEVERITY_RANK = {"info": 0, "warning": 1, "alarm": 2, "critical": 3}
CRITICAL = SEVERITY_RANK["critical"]
KEEP_DONE = 10_000  # delivered / cancelled rows kept (a clear looks up who was told)
ALARM_KINDS = ("raise", "escalate", "repeat")  # the ones that tell of a raise
INFO_EVENTS = ("ack", "shelve", "unshelve")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS notify_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    idem TEXT NOT NULL UNIQUE,          -- idempotency key: Idempotency-Key, JSON id, Message-ID
    target TEXT NOT NULL,
    recipient TEXT NOT NULL DEFAULT '', -- sms: one row per phone number
    kind TEXT NOT NULL,
    alarm_key TEXT NOT NULL,            -- site/device/rule (notify/{target} for target messages)
    raised_ms INTEGER NOT NULL,         -- the occurrence: the alarm's raise time
    seq INTEGER NOT NULL DEFAULT 0,     -- repeat number
    rank INTEGER NOT NULL,              -- severity rank: critical first
    created_ms INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending | sent | cancelled
    attempts INTEGER NOT NULL DEFAULT 0,
    first_fail_ms INTEGER,
    done_ms INTEGER,
    last_error TEXT NOT NULL DEFAULT '',
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notify_queue_due ON notify_queue (target, state, due_ms);
CREATE INDEX IF NOT EXISTS notify_queue_alarm ON notify_queue (alarm_key, raised_ms);
CREATE TABLE IF NOT EXISTS notify_alarm (
    key TEXT PRIMARY KEY,
    raised_ms INTEGER NOT NULL
);
"""


class QueueEvent(Protocol):
    """What the queue needs of an alarm event (:class:`gateway.alarms.AlarmEvent`)."""

    @property
    def key(self) -> str: ...
    @property
    def ts_ms(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def alarm(self) -> dict[str, Any]: ...
    @property
    def by(self) -> str | None: ...


@dataclass(frozen=True)
class Item:
    """One queued message (a row of ``notify_queue``)."""

    id: int
    idem: str
    target: str
    recipient: str
    kind: str
    alarm_key: str
    raised_ms: int
    seq: int
    rank: int
    created_ms: int
    due_ms: int
    attempts: int
    first_fail_ms: int | None
    payload: dict[str, Any]


_ITEM_COLUMNS = (
    "id, idem, target, recipient, kind, alarm_key, raised_ms, seq, rank, created_ms, due_ms, "
    "attempts, first_fail_ms, payload"
)


def _item(row: Sequence[Any]) -> Item:
    (row_id, idem, target, rcpt, kind, key, raised, seq, rank, created, due, attempts, fail,
     payload) = row  # fmt: skip
    return Item(int(row_id), str(idem), str(target), str(rcpt), str(kind), str(key), int(raised),
                int(seq), int(rank), int(created), int(due), int(attempts),
                None if fail is None else int(fail), json.loads(payload))  # fmt: skip


def idempotency_key(*parts: object) -> str:
    """A stable key for one message: the same event, target and kind give the same key after
    a restart, so a receiver can drop a repeat of a delivery whose success we did not record."""
    text = "|".join(str(p) for p in parts)
    return "o2n-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def quiet_until_ms(target: NotifyTarget, t_ms: int) -> int | None:
    """End of the target's quiet hours (ms) when ``t_ms`` falls inside them, else None."""
    if not target.quiet_hours:
        return None
    start_s, end_s = target.quiet_hours.split("-")
    tz = ZoneInfo(target.timezone)
    local = datetime.fromtimestamp(t_ms / 1000, tz)
    sh, sm = (int(x) for x in start_s.split(":"))
    eh, em = (int(x) for x in end_s.split(":"))
    minute = local.hour * 60 + local.minute
    start, end = sh * 60 + sm, eh * 60 + em
    if start == end:
        return None
    inside = start <= minute < end if start < end else (minute >= start or minute < end)
    if not inside:
        return None
    end_day = local.date() if minute < end else local.date() + timedelta(days=1)
    end_local = datetime(end_day.year, end_day.month, end_day.day, eh, em, tzinfo=tz)
    return int(end_local.timestamp() * 1000)


def matches(target: NotifyTarget, alarm: dict[str, Any]) -> bool:
    """Does ``alarm`` (an alarm's public JSON) concern this target?"""
    if not target.enabled:
        return False
    if SEVERITY_RANK.get(str(alarm.get("severity")), 0) < SEVERITY_RANK[target.min_severity]:
        return False
    if target.site is not None and alarm.get("site") != target.site:
        return False
    return target.device is None or fnmatch.fnmatchcase(str(alarm.get("device")), target.device)


def recipients(target: NotifyTarget) -> list[str]:
    return list(target.to) if target.kind is NotifyKind.SMS else [""]


Commit = Callable[[list[str], Callable[[sqlite3.Connection], None]], object]


class NotifyQueue:
    """The queue over a shared SQLite connection (the outbox's ``db`` and ``lock``).

    ``commit(keep_lines, fn)`` runs ``fn(db)`` in one transaction together with InfluxDB
    points (``Outbox.commit(..., keep_lines=, also=)`` in the gateway)."""

    def __init__(
        self,
        db: sqlite3.Connection,
        lock: threading.Lock,
        commit: Commit,
        targets: Sequence[NotifyTarget],
        gateway_id: str = "gw-1",
        clock_ms: Callable[[], int] | None = None,
    ):
        self._db = db
        self._lock = lock
        self._commit = commit
        self.targets = {t.id: t for t in targets}
        self.gateway_id = gateway_id
        self.clock_ms = clock_ms or wall_ms
        self._done_since_prune = 0
        with lock:
            db.executescript(_SCHEMA)
            # Targets removed from (or disabled in) the config since the rows were queued:
            # nobody will deliver them; they would only count as waiting forever.
            live = [t.id for t in targets if t.enabled]
            marks = ",".join("?" * len(live))
            orphans = db.execute(
                f"UPDATE notify_queue SET state = 'cancelled', done_ms = ? "
                f"WHERE state = 'pending' AND target NOT IN ({marks})",
                (self.clock_ms(), *live),
            ).rowcount
        if orphans:
            log.warning("notify: %d queued notifications of removed targets dropped", orphans)

    # ------------------------------------------------------------------ enqueue (alarm commit)
    def write(self, db: sqlite3.Connection, events: Sequence[QueueEvent]) -> None:
        """Queue what ``events`` owe, inside the caller's transaction (the lock is held)."""
        if not self.targets:
            return  # no [[notify]]: the commit path stays as it was
        now = self.clock_ms()
        for event in events:
            alarm = event.alarm
            raised = int(alarm.get("raised_ms") or event.ts_ms)
            if event.state == "raise":
                self._on_raise(db, event, raised, now)
            elif event.state in ("ack", "shelve", "clear"):
                # The occurrence is no longer open: its escalations and repeats are void.
                db.execute("DELETE FROM notify_alarm WHERE key = ?", (event.key,))
                db.execute(
                    "UPDATE notify_queue SET state = 'cancelled', done_ms = ? "
                    "WHERE alarm_key = ? AND state = 'pending' AND kind IN ('escalate', 'repeat')",
                    (now, event.key),
                )
                self._on_followup(db, event, raised, now)
            elif event.state == "unshelve":
                self._on_followup(db, event, raised, now)

    def _payload(self, event: QueueEvent) -> str:
        """The row's payload, JSON encoded once per event (not once per target)."""
        doc = {"event": event.state, "ts_ms": event.ts_ms, "by": event.by, "alarm": event.alarm}
        return json.dumps(doc, sort_keys=True)

    def _insert(
        self,
        db: sqlite3.Connection,
        target: NotifyTarget,
        recipient: str,
        kind: str,
        alarm_key: str,
        raised_ms: int,
        rank: int,
        due_ms: int,
        payload: str,
        now: int,
        seq: int = 0,
    ) -> None:
        if rank < CRITICAL:  # quiet hours never hold back a critical alarm
            due_ms = quiet_until_ms(target, due_ms) or due_ms
        idem = idempotency_key(
            self.gateway_id, target.id, recipient, alarm_key, raised_ms, kind, seq
        )
        db.execute(
            "INSERT OR IGNORE INTO notify_queue (idem, target, recipient, kind, alarm_key, "
            "raised_ms, seq, rank, created_ms, due_ms, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (idem, target.id, recipient, kind, alarm_key, raised_ms, seq, rank, now, due_ms,
             payload),
        )  # fmt: skip

    def _on_raise(self, db: sqlite3.Connection, event: QueueEvent, raised: int, now: int) -> None:
        alarm = event.alarm
        if alarm.get("shelved"):
            return  # shelved: hidden from annunciation, and so from notification
        db.execute(
            "INSERT OR REPLACE INTO notify_alarm (key, raised_ms) VALUES (?, ?)",
            (event.key, raised),
        )
        rank = SEVERITY_RANK.get(str(alarm.get("severity")), 0)
        payload = self._payload(event)
        for target in self.targets.values():
            if "raise" not in target.events or not matches(target, alarm):
                continue
            delay_ms = int(target.unacked_after_s * 1000)
            kind = "escalate" if delay_ms else "raise"
            for rcpt in recipients(target):
                self._insert(db, target, rcpt, kind, event.key, raised, rank, now + delay_ms,
                             payload, now)  # fmt: skip
                if target.repeat_s:
                    due = now + delay_ms + int(target.repeat_s * 1000)
                    self._insert(db, target, rcpt, "repeat", event.key, raised, rank, due,
                                 payload, now, seq=1)  # fmt: skip

    def _on_followup(
        self, db: sqlite3.Connection, event: QueueEvent, raised: int, now: int
    ) -> None:
        """A clear (or, when configured, ack/shelve/unshelve) goes to the targets that were
        told of the raise: delivered, or still being retried. A raise not yet tried (held for
        quiet hours, or queued behind the rate limit) is cancelled with its clear: the problem
        is over before anyone could act on it."""
        rows = db.execute(
            "SELECT id, target, recipient, state, attempts FROM notify_queue "
            "WHERE alarm_key = ? AND raised_ms = ? AND kind IN ('raise', 'escalate', 'repeat')",
            (event.key, raised),
        ).fetchall()
        told: set[tuple[str, str]] = set()
        for row_id, target_id, rcpt, state, attempts in rows:
            if state == "sent" or (state == "pending" and attempts > 0):
                told.add((target_id, rcpt))
            elif state == "pending" and event.state == "clear":
                db.execute(
                    "UPDATE notify_queue SET state = 'cancelled', done_ms = ? WHERE id = ?",
                    (now, row_id),
                )
        rank = SEVERITY_RANK.get(str(event.alarm.get("severity")), 0)
        payload = self._payload(event)
        for target_id, rcpt in sorted(told):
            target = self.targets.get(target_id)
            if target is None or not target.enabled or event.state not in target.events:
                continue
            seq = event.ts_ms if event.state in INFO_EVENTS else 0  # several acks/shelves
            self._insert(db, target, rcpt, event.state, event.key, raised, rank, now, payload,
                         now, seq=seq)  # fmt: skip

    def enqueue_target_message(
        self, kind: str, about: str, since_ms: int, info: dict[str, Any]
    ) -> int:
        """Tell every other enabled target that target ``about`` is failing (or recovered);
        once per failure (the key is the failure's start). Returns how many rows were added."""
        now = self.clock_ms()
        doc = {"event": kind, "ts_ms": now, "target": about, "since_ms": since_ms, **info}
        payload = json.dumps(doc, sort_keys=True)
        added = 0

        def write(db: sqlite3.Connection) -> None:
            nonlocal added
            before = db.total_changes
            for target in self.targets.values():
                if target.id == about or not target.enabled:
                    continue
                for rcpt in recipients(target):
                    self._insert(db, target, rcpt, kind, f"notify/{about}", since_ms,
                                 SEVERITY_RANK["alarm"], now, payload, now)  # fmt: skip
            added = db.total_changes - before

        self._commit([], write)
        return added

    # ------------------------------------------------------------------ delivery side
    def due(self, target_id: str, now_ms: int, limit: int) -> list[Item]:
        """Pending messages of a target that are due, critical first, then oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_ITEM_COLUMNS} FROM notify_queue WHERE target = ? AND state = 'pending' "
                "AND due_ms <= ? ORDER BY rank DESC, due_ms, id LIMIT ?",
                (target_id, now_ms, limit),
            ).fetchall()
        return [_item(r) for r in rows]

    def next_due_ms(self, target_id: str) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(due_ms) FROM notify_queue WHERE target = ? AND state = 'pending'",
                (target_id,),
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def earlier_pending_due_ms(self, item: Item) -> int | None:
        """For a clear (or ack, shelve, unshelve): the due time of a raise, escalation or
        repeat of the same occurrence still waiting for this target and recipient. The
        follow-up must not overtake it: "cleared" before "raised" confuses at 3 a.m."""
        with self._lock:
            row = self._db.execute(
                "SELECT MAX(due_ms) FROM notify_queue WHERE target = ? AND recipient = ? "
                "AND alarm_key = ? AND raised_ms = ? AND state = 'pending' AND id < ? "
                "AND kind IN ('raise', 'escalate', 'repeat')",
                (item.target, item.recipient, item.alarm_key, item.raised_ms, item.id),
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def postpone(self, item: Item, due_ms: int) -> None:
        """Move a message's due time without counting an attempt."""

        def write(db: sqlite3.Connection) -> None:
            db.execute("UPDATE notify_queue SET due_ms = ? WHERE id = ?", (due_ms, item.id))

        self._commit([], write)

    def is_open(self, alarm_key: str, raised_ms: int) -> bool:
        """Still raised, unacknowledged, not shelved, not cleared (that occurrence)."""
        with self._lock:
            row = self._db.execute(
                "SELECT raised_ms FROM notify_alarm WHERE key = ?", (alarm_key,)
            ).fetchone()
        return row is not None and int(row[0]) == raised_ms

    def was_alerted(self, about: str, since_ms: int) -> bool:
        """Were the others already told that ``about`` is failing since ``since_ms``?"""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM notify_queue WHERE kind = 'target_failing' AND alarm_key = ? "
                "AND raised_ms = ? LIMIT 1",
                (f"notify/{about}", since_ms),
            ).fetchone()
        return row is not None

    def failing_since_ms(self, target_id: str) -> int | None:
        """First failure of the oldest message still being retried (survives restarts)."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(first_fail_ms) FROM notify_queue WHERE target = ? "
                "AND state = 'pending' AND attempts > 0",
                (target_id,),
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def mark_sent(self, item: Item, attempt: int, lines: list[str]) -> None:
        """Record a delivery the target accepted (with its ``notify`` points), and queue the
        next repeat when the alarm is still open."""
        now = self.clock_ms()
        target = self.targets.get(item.target)

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE notify_queue SET state = 'sent', attempts = ?, done_ms = ?, "
                "last_error = '' WHERE id = ?",
                (attempt, now, item.id),
            )
            if target is not None and target.repeat_s and item.kind == "repeat":
                # Repeat n+1 only while the occurrence is open: an ack committed while this
                # one was in flight ends the chain here (same lock, same transaction order).
                row = db.execute(
                    "SELECT raised_ms FROM notify_alarm WHERE key = ?", (item.alarm_key,)
                ).fetchone()
                if row is not None and int(row[0]) == item.raised_ms:
                    due = max(item.due_ms, now) + int(target.repeat_s * 1000)
                    self._insert(db, target, item.recipient, "repeat", item.alarm_key,
                                 item.raised_ms, item.rank, due,
                                 json.dumps(item.payload, sort_keys=True), now,
                                 seq=item.seq + 1)  # fmt: skip
            self._prune(db)

        self._commit(lines, write)

    def mark_failed(
        self, item: Item, attempt: int, error: str, retry_ms: int, lines: list[str]
    ) -> None:
        now = self.clock_ms()

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE notify_queue SET attempts = ?, due_ms = ?, last_error = ?, "
                "first_fail_ms = COALESCE(first_fail_ms, ?) WHERE id = ?",
                (attempt, retry_ms, error[:500], now, item.id),
            )

        self._commit(lines, write)

    def cancel(self, item: Item) -> None:
        now = self.clock_ms()

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE notify_queue SET state = 'cancelled', done_ms = ? WHERE id = ?",
                (now, item.id),
            )

        self._commit([], write)

    def _prune(self, db: sqlite3.Connection) -> None:
        self._done_since_prune += 1
        if self._done_since_prune < 100:
            return
        self._done_since_prune = 0
        db.execute(
            "DELETE FROM notify_queue WHERE state != 'pending' AND id IN (SELECT id FROM "
            "notify_queue WHERE state != 'pending' ORDER BY id DESC LIMIT -1 OFFSET ?)",
            (KEEP_DONE,),
        )

    # ------------------------------------------------------------------ observation
    def stats(self, now_ms: int) -> dict[str, tuple[int, int | None]]:
        """Per target: (pending messages, since when the longest-waiting due one has been due:
        its first attempt, or its due time if never tried). Scheduled ones (an escalation or
        repeat not yet due, quiet hours) count as pending but not as waiting."""
        with self._lock:
            rows = self._db.execute(
                "SELECT target, COUNT(*), MIN(CASE WHEN due_ms <= ? OR first_fail_ms IS NOT NULL "
                "THEN COALESCE(first_fail_ms, due_ms) END) FROM notify_queue "
                "WHERE state = 'pending' GROUP BY target",
                (now_ms,),
            ).fetchall()
        out: dict[str, tuple[int, int | None]] = {t: (0, None) for t in self.targets}
        for target, n, oldest in rows:
            out[str(target)] = (int(n), None if oldest is None else int(oldest))
        return out

    def rows(self, target_id: str | None = None) -> list[dict[str, Any]]:
        """Every row (tests, diagnostics)."""
        with self._lock:
            cur = self._db.execute(
                "SELECT id, idem, target, recipient, kind, alarm_key, raised_ms, seq, state, "
                "attempts, due_ms, last_error FROM notify_queue ORDER BY id"
            )
            names = [d[0] for d in cur.description]
            out = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        return [r for r in out if target_id is None or r["target"] == target_id]
