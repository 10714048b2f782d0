"""Drains the outbox into InfluxDB, in order, in batches; nothing leaves before it is accepted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.influx import (
    InfluxMisconfigured,
    InfluxRejected,
    InfluxTooLarge,
    InfluxUnavailable,
)
from gateway.outbox import Outbox
from gateway.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 300.0


class LineWriter(Protocol):
    def write(self, lines: list[str]) -> None: ...


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
    """Async task body: ``await drainer.run(stop)``. Call :meth:`wake` (from any thread) after
    adding to the outbox so a batch goes out without waiting for the flush interval."""

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
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Called with the last outbox row id InfluxDB now holds (every row up to it is gone):
        # a gateway group acknowledges MQTT messages only then (gateway.ha.AckGate).
        self.on_drained: list[Callable[[int], None]] = []

    def wake(self) -> None:
        loop = self._loop
        if loop is None:
            return
        # A closed loop (shutdown) is fine: the outbox keeps the points for the next run.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake.set)

    async def _wait(self, stop: asyncio.Event, timeout_s: float) -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        self._wake.clear()

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await self._drain(stop)
        finally:
            self.reject_log.flush(force=True)

    async def _drain(self, stop: asyncio.Event) -> None:
        backoff = 0.25
        while not stop.is_set():
            self.reject_log.flush()  # summaries of rejects held back, once their interval is over
            batch = await asyncio.to_thread(self.outbox.peek_batch, self.batch_size)
            if not batch:
                await self._wait(stop, self.flush_interval_s)
                continue
            try:
                for start in range(0, len(batch.lines), self.batch_size):
                    await self._deliver(batch.lines[start : start + self.batch_size])
                # Every point of these rows is now in InfluxDB or in the dead letters.
                await asyncio.to_thread(self.outbox.remove_through, batch.ids[-1])
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
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.max_backoff_s)
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
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)

    async def _deliver(self, lines: list[str]) -> None:
        """Write points; on a content reject bisect so only the bad points are dead-lettered,
        on 413 (too large) split in halves. Raises :class:`InfluxUnavailable` to retry later
        (points already written are written again then: idempotent)."""
        started = self.clock()
        try:
            await asyncio.to_thread(self.writer.write, lines)
        except (InfluxRejected, InfluxTooLarge) as exc:
            status = exc.status
            self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
            if len(lines) == 1:
                self.reject_log.log(
                    f"http_{status}", "InfluxDB rejected a point (%s): %s", exc, lines[0][:200]
                )
                await asyncio.to_thread(
                    self.outbox.add_dead_letter,
                    "influx",
                    "",
                    f"http_{status}",
                    str(exc),
                    lines[0].encode(),
                )
                self.stats.rejected += 1
                return
            half = len(lines) // 2
            await self._deliver(lines[:half])
            await self._deliver(lines[half:])
            return
        self.stats.last_latency_s = self.clock() - started
        self.stats.written += len(lines)
        self.stats.batches += 1
