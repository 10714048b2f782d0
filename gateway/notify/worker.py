"""Delivery workers: one thread per target reads its queue rows and sends them.

Off the ingest's path: the commit that queues a notification only inserts rows (the alarm
event's transaction) and wakes the workers; sending happens here, so a slow or dead target
never delays a commit, and targets never wait for each other.

Per attempt: one structured log line, the counter ``o2chain_notify_attempts_total{target,
result}`` and an InfluxDB point ``notify`` (tags target/rule/device/site/event, fields
result/attempt/latency_ms/id) committed through the outbox in the transaction that records the
outcome. A refused or failed attempt is retried after ``retry_initial_s`` doubling up to
``retry_max_s``; a target failing for longer than ``fail_alarm_after_s`` makes the notifier
tell the other targets (once per failure, and once more when it recovers) and shows in
``/healthz`` warnings.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.config import GatewayConfig, NotifyTarget
from gateway.lineproto import LineEncoder
from gateway.notify.messages import compose
from gateway.notify.queue import Item, NotifyQueue
from gateway.notify.targets import Outcome, Sender, make_sender
from gateway.readings import Reading, wall_ms

log = logging.getLogger(__name__)

IDLE_WAIT_S = 5.0  # a worker looks at its queue at least this often


@dataclass
class TargetStatus:
    failing_since_ms: int | None = None
    attempts_failed: int = 0
    last_error: str = ""
    alerted: bool = False


class TargetWorker:
    """Delivers one target's queue: critical first, at most ``rate_limit_per_min`` attempts
    a minute (the excess waits in the queue), retries with exponential backoff."""

    def __init__(self, notifier: Notifier, target: NotifyTarget, sender: Sender):
        self.notifier = notifier
        self.target = target
        self.sender = sender
        self.queue = notifier.queue
        self.status = TargetStatus(failing_since_ms=self.queue.failing_since_ms(target.id))
        if self.status.failing_since_ms is not None:
            self.status.alerted = self.queue.was_alerted(target.id, self.status.failing_since_ms)
        self.wake = threading.Event()
        self._sent_at: deque[float] = deque()  # monotonic times of attempts in the last minute
        self.encoder = LineEncoder()
        self.thread = threading.Thread(target=self._run, name=f"notify-{target.id}", daemon=True)

    def _rate_wait_s(self) -> float:
        now = time.monotonic()
        while self._sent_at and now - self._sent_at[0] >= 60.0:
            self._sent_at.popleft()
        if len(self._sent_at) < self.target.rate_limit_per_min:
            return 0.0
        return 60.0 - (now - self._sent_at[0])

    def _run(self) -> None:
        stop = self.notifier.stop_event
        while not stop.is_set():
            self.wake.clear()  # before looking: a wake-up during the look is not lost
            try:
                wait_s = self.step()
            except Exception:
                log.exception("notify %s: worker step failed", self.target.id)
                wait_s = IDLE_WAIT_S
            if wait_s > 0:
                self.wake.wait(min(wait_s, IDLE_WAIT_S))

    def step(self) -> float:
        """Send what is due; returns how long to wait before the next look (s)."""
        now = self.notifier.clock_ms()
        self._check_failing(now)
        rate_wait = self._rate_wait_s()
        if rate_wait > 0:
            return rate_wait
        items = self.queue.due(self.target.id, now, 1)
        if not items:
            nxt = self.queue.next_due_ms(self.target.id)
            return IDLE_WAIT_S if nxt is None else max(0.05, (nxt - now) / 1000.0)
        self.deliver(items[0])
        return 0.0

    def deliver(self, item: Item) -> Outcome | None:
        t = self.target
        if item.kind in ("escalate", "repeat") and not self.queue.is_open(
            item.alarm_key, item.raised_ms
        ):
            self.queue.cancel(item)  # acknowledged, shelved or cleared meanwhile
            return None
        if item.kind in ("clear", "ack", "shelve", "unshelve"):
            before = self.queue.earlier_pending_due_ms(item)
            if before is not None:
                self.queue.postpone(item, max(before, self.notifier.clock_ms()) + 1)
                return None
        attempt = item.attempts + 1
        self._sent_at.append(time.monotonic())
        started = time.monotonic()
        try:
            message = compose(item.kind, item.payload, self.notifier.config, t, item.idem)
            outcome = self.sender.send(message, item.recipient, item.idem)
        except Exception as exc:
            # A bug or an odd row must not stop the worker nor block the rows behind it: it
            # becomes a failed attempt with its backoff, counted and logged like any other.
            log.exception("notify %s: cannot send %s", t.id, item.idem)
            outcome = Outcome("error", f"{type(exc).__name__}: {exc}")
        latency_ms = (time.monotonic() - started) * 1000.0
        self.notifier.count(t.id, outcome.result)
        lines = [self._point(item, outcome, attempt, latency_ms)]
        log.log(
            logging.INFO if outcome.ok else logging.WARNING,
            "notify target=%s kind=%s alarm=%s id=%s attempt=%d result=%s latency_ms=%.0f%s",
            t.id, item.kind, item.alarm_key, item.idem, attempt, outcome.result, latency_ms,
            f" detail={outcome.detail}" if outcome.detail else "",
        )  # fmt: skip
        now = self.notifier.clock_ms()
        if outcome.ok:
            self.queue.mark_sent(item, attempt, lines)
            self._recovered(now)
        else:
            backoff_s = min(t.retry_max_s, t.retry_initial_s * 2 ** min(attempt - 1, 30))
            self.queue.mark_failed(
                item, attempt, outcome.detail, now + int(backoff_s * 1000), lines
            )
            st = self.status
            st.attempts_failed += 1
            st.last_error = outcome.detail or outcome.result
            if st.failing_since_ms is None:
                st.failing_since_ms = item.first_fail_ms or now
            self._check_failing(now)
        return outcome

    def _point(self, item: Item, outcome: Outcome, attempt: int, latency_ms: float) -> str:
        alarm = item.payload.get("alarm") or {}
        tags = {"target": self.target.id, "event": item.kind}
        for name in ("site", "device", "rule"):
            if alarm.get(name):
                tags[name] = str(alarm[name])
        if item.kind.startswith("target_"):
            tags["rule"] = item.kind
        fields: dict[str, Any] = {
            "result": outcome.result,
            "attempt": attempt,
            "latency_ms": round(latency_ms, 1),
            "id": item.idem,
        }
        if outcome.detail:
            fields["detail"] = outcome.detail[:300]
        return self.encoder.encode(Reading("notify", tags, fields, self.notifier.clock_ms()))

    def failing_for_s(self, now_ms: int) -> float:
        since = self.status.failing_since_ms
        return 0.0 if since is None else (now_ms - since) / 1000.0

    def _check_failing(self, now_ms: int) -> None:
        st = self.status
        if st.failing_since_ms is None or st.alerted:
            return
        if self.failing_for_s(now_ms) < self.target.fail_alarm_after_s:
            return
        st.alerted = True
        added = self.queue.enqueue_target_message(
            "target_failing",
            self.target.id,
            st.failing_since_ms,
            {"attempts": st.attempts_failed, "error": st.last_error[:300]},
        )
        log.error(
            "notify target=%s failing since %s (%d attempts, last error: %s): told %d others",
            self.target.id, _iso(st.failing_since_ms), st.attempts_failed, st.last_error, added,
        )  # fmt: skip
        self.notifier.wake_all()

    def _recovered(self, now_ms: int) -> None:
        st = self.status
        if st.failing_since_ms is None:
            return
        if st.alerted:
            self.queue.enqueue_target_message(
                "target_recovered", self.target.id, st.failing_since_ms, {}
            )
            log.warning("notify target=%s works again", self.target.id)
            self.notifier.wake_all()
        self.status = TargetStatus()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Notifier:
    """The targets' workers. ``notifier.listener(event)`` (an alarm engine listener, called
    after the event's commit) wakes them; :meth:`start` / :meth:`stop` run them."""

    def __init__(
        self,
        config: GatewayConfig,
        queue: NotifyQueue,
        senders: dict[str, Sender] | None = None,
        clock_ms: Callable[[], int] = wall_ms,
    ):
        self.config = config
        self.queue = queue
        self.clock_ms = clock_ms
        self.stop_event = threading.Event()
        self.attempts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        senders = senders or {}
        self.workers = {
            t.id: TargetWorker(self, t, senders.get(t.id) or make_sender(t))
            for t in config.notify
            if t.enabled
        }

    def listener(self, event: object) -> None:
        self.wake_all()

    def wake_all(self) -> None:
        for worker in self.workers.values():
            worker.wake.set()

    def count(self, target: str, result: str) -> None:
        with self._lock:
            self.attempts[(target, result)] = self.attempts.get((target, result), 0) + 1

    def start(self) -> None:
        for worker in self.workers.values():
            worker.thread.start()
        if self.workers:
            log.info("notify: %d targets: %s", len(self.workers), ", ".join(self.workers))

    def stop(self, timeout_s: float = 15.0) -> None:
        self.stop_event.set()
        self.wake_all()
        deadline = time.monotonic() + timeout_s
        for worker in self.workers.values():
            if worker.thread.is_alive():
                worker.thread.join(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ observation
    def metrics(self) -> dict[str, Any]:
        """For /metrics: attempts by (target, result), per target queue depth, oldest age (s)
        and failing (1/0)."""
        now = self.clock_ms()
        with self._lock:
            attempts = dict(self.attempts)
        for target in self.workers:
            attempts.setdefault((target, "ok"), 0)
        stats = self.queue.stats(now)
        return {
            "attempts": attempts,
            "depth": {t: n for t, (n, _) in stats.items()},
            "oldest_age_s": {
                t: (0.0 if oldest is None else max(0.0, (now - oldest) / 1000.0))
                for t, (_, oldest) in stats.items()
            },
            "failing": {
                t: int(w.status.failing_since_ms is not None) for t, w in self.workers.items()
            },
        }

    def health_warnings(self) -> list[str]:
        now = self.clock_ms()
        out = []
        for tid, worker in self.workers.items():
            st = worker.status
            if st.failing_since_ms is not None and worker.failing_for_s(now) >= (
                worker.target.fail_alarm_after_s
            ):
                out.append(
                    f"notify: target {tid} failing since {_iso(st.failing_since_ms)} "
                    f"({st.attempts_failed} attempts; last error: {st.last_error})"
                )
        return out
