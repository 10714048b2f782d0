"""Drains the outbox into InfluxDB, in order, in batches; nothing leaves before it is accepted."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.influx import (
    InfluxMisconfigured,
    InfluxRejected,
    InfluxTooLarge,
    InfluxUnavailable,
    LineWriter,
)
from gateway.outbox import Outbox
from gateway.ratelog import RateLimitedLog
from o2base.procs import name_os_thread

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 300.0


@dataclass
class WriterStats:
    written: int = 0
    batches: int = 0
    rejected: int = 0
    failures: int = 0
    last_latency_s: float = 0.0
    last_error: str = ""
    # InfluxDB refuses the gateway itself (credentials, missing database, redirect): points wait.
    misconfigured: bool = False
    by_status: dict[int, int] = field(default_factory=dict)


class OutboxDrainer:
    """Task body: ``await drainer.run(stop)``. Call :meth:`wake` (from any thread) after adding
    to the outbox so a batch goes out without waiting for the flush interval.

    The drain loop runs in a thread of its own for the task's lifetime: reading the outbox,
    writing to InfluxDB and deleting what was accepted are blocking calls, and handing each one
    to the event loop's executor cost three thread hand-overs and as many loop wake-ups per
    batch (at light load, more CPU than the writes themselves)."""

    thread_name = "influx-writer"  # the drain thread's name, in Python and in the kernel

    def __init__(
        self,
        outbox: Outbox,
        writer: LineWriter,
        batch_size: int,
        flush_interval_s: float,
        max_backoff_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.outbox = outbox
        self.writer = writer
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_backoff_s = max_backoff_s
        self.clock = clock
        self.stats = WriterStats()
        # A stream of points InfluxDB refuses must not become a stream of log lines.
        self.reject_log = RateLimitedLog(log, "points InfluxDB rejected", level=logging.ERROR)
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Called (the writer's thread) with the last outbox row id InfluxDB now holds (every
        # row up to it is gone): a gateway group acknowledges MQTT messages only then
        # (gateway.ha.AckGate).
        self.on_drained: list[Callable[[int], None]] = []

    def wake(self) -> None:
        self._wake.set()

    def _wait(self, timeout_s: float) -> None:
        self._wake.wait(timeout_s)
        self._wake.clear()

    def _pause(self, delay_s: float) -> None:
        """Wait before the next attempt; returns early when stopping."""
        self._stop.wait(delay_s)

    async def run(self, stop: asyncio.Event) -> None:
        self._stop.clear()
        thread = threading.Thread(target=self._run_thread, name=self.thread_name, daemon=True)
        thread.start()
        try:
            await stop.wait()
        finally:
            self._stop.set()
            self._wake.set()
            # What is being written finishes (bounded by the writer's timeout); the rest stays
            # in the outbox for the next run.
            await asyncio.to_thread(thread.join)

    def _run_thread(self) -> None:
        name_os_thread(self.thread_name)
        try:
            self._drain(self._stop)
        except Exception:  # a bug must not pass silently; the points stay in the outbox
            log.exception("InfluxDB writer stopped")
        finally:
            self.reject_log.flush(force=True)

    def _drain(self, stop: threading.Event) -> None:
        backoff = 0.25
        while not stop.is_set():
            self.reject_log.flush()  # summaries of rejects held back, once their interval is over
            batch = self.outbox.peek_batch(self.batch_size)
            if not batch:
                self._wait(self.flush_interval_s)
                continue
            try:
                for start in range(0, len(batch.lines), self.batch_size):
                    self._deliver(batch.lines[start : start + self.batch_size])
                # Every point of these rows is now in InfluxDB or in the dead letters.
                self.outbox.remove_through(batch.ids[-1])
                for drained in self.on_drained:
                    drained(batch.ids[-1])
                backoff = 0.25
                if self.stats.misconfigured:
                    log.warning("InfluxDB accepts the gateway's writes again")
                    self.stats.misconfigured = False
            except InfluxMisconfigured as exc:
                self.stats.failures += 1
                self.stats.last_error = str(exc)
                self.stats.misconfigured = True
                log.error(
                    "InfluxDB refuses the gateway (%s): %d points wait in the outbox, none is "
                    "dead-lettered; fix the config, retrying in %.0f s",
                    exc,
                    len(batch),
                    self.max_backoff_s,
                )
                self._pause(self.max_backoff_s)
            except InfluxUnavailable as exc:
                self.stats.failures += 1
                self.stats.last_error = str(exc)
                delay = exc.retry_after_s if exc.retry_after_s is not None else backoff
                delay = min(delay, MAX_RETRY_AFTER_S)  # a silly Retry-After is capped
                log.warning(
                    "InfluxDB unavailable (%s); %d points wait, retry in %.2f s",
                    exc,
                    len(batch),
                    delay,
                )
                backoff = min(backoff * 2, self.max_backoff_s)
                self._pause(delay)

    def _deliver(self, lines: list[str]) -> None:
        """Write points; on a content reject bisect so only the bad points are dead-lettered,
        on 413 (too large) split in halves. Raises :class:`InfluxUnavailable` to retry later
        (points already written are written again then: idempotent)."""
        started = self.clock()
        try:
            self.writer.write(lines)
        except (InfluxRejected, InfluxTooLarge) as exc:
            status = exc.status
            self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
            if len(lines) == 1:
                self.reject_log.log(
                    f"http_{status}", "InfluxDB rejected a point (%s): %s", exc, lines[0][:200]
                )
                self.outbox.add_dead_letter(
                    "influx", "", f"http_{status}", str(exc), lines[0].encode()
                )
                self.stats.rejected += 1
                return
            half = len(lines) // 2
            self._deliver(lines[:half])
            self._deliver(lines[half:])
            return
        self.stats.last_latency_s = self.clock() - started
        self.stats.written += len(lines)
        self.stats.batches += 1
