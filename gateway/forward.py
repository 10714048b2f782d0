"""Central forwarding: the region's time-series database fed from this gateway's outbox.

The local InfluxDB drain (gateway/writer.py) and the forwarder read the same committed outbox
rows, each through its own cursor (:meth:`gateway.outbox.Outbox.add_cursor`); a row is deleted
once both have passed it. So a WAN outage or a central database that is down never holds up the
local drain, the live page or the alarms: the forwarder retries with back-off while rows wait
for it, and catches up in order when the link returns. Point identity (measurement, tags, the
reading's time) makes a batch written twice (sent, then the answer lost on the WAN) overwrite
itself instead of duplicating.

When the central tier stays away longer than the outbox can hold (``[gateway] outbox_max_mb``),
``[central] at_bound`` decides: ``release`` (default) lets the forwarder's cursor skip the
oldest points, which the local InfluxDB already has, counted in
``o2chain_forward_released_total``; ``hold`` makes the forwarder hold rows like the local drain,
so the outbox's full policy (``block`` or ``drop_oldest``) applies to ingest. A release records
what was skipped as a gap; with ``[central] backfill`` (default) the forwarder redoes each gap
from the local InfluxDB once nothing waits behind its cursor (:mod:`gateway.backfill`).
"""

from __future__ import annotations

import base64
import logging
from typing import cast

from gateway.backfill import Backfill, BackfillSchemaError, LocalReader, LocalUnavailable
from gateway.config import CentralSection, InfluxSection, redact_url
from gateway.influx import (
    InfluxMisconfigured,
    InfluxUnavailable,
    InfluxV1Writer,
    LineWriter,
    make_writer,
)
from gateway.outbox import Batch, Outbox
from gateway.writer import MAX_RETRY_AFTER_S, OutboxDrainer

log = logging.getLogger(__name__)

CURSOR = "central"  # the forwarder's cursor in the outbox
DEAD_LETTER_SOURCE = "central"  # points the central database refused for their content


class _CursorView:
    """The outbox as the drainer sees it, through the forwarder's cursor."""

    def __init__(self, outbox: Outbox, cursor: str):
        self.outbox = outbox
        self.cursor = cursor

    def peek_batch(self, limit: int) -> Batch:
        return self.outbox.peek_batch(limit, cursor=self.cursor)

    def remove_through(self, last_id: int) -> None:
        self.outbox.advance(self.cursor, last_id)

    def add_dead_letter(
        self, source: str, topic: str, reason: str, detail: str, payload: bytes
    ) -> None:
        # The local InfluxDB took this point; the central one refused it (a field type another
        # facility wrote first, say): kept as evidence, marked as the central tier's.
        self.outbox.add_dead_letter(DEAD_LETTER_SOURCE, topic, reason, detail, payload)


class _Filtered:
    """Only the configured measurements reach the central database."""

    def __init__(self, inner: LineWriter, measurements: list[str]):
        self.inner = inner
        self.prefixes = tuple(f"{m}," for m in measurements) + tuple(f"{m} " for m in measurements)

    def write(self, lines: list[str]) -> None:
        chosen = [line for line in lines if line.startswith(self.prefixes)]
        if chosen:
            self.inner.write(chosen)

    def close(self) -> None:
        _close(self.inner)


def central_writer(cfg: CentralSection) -> LineWriter:
    """The writer for ``[central]``: ``[influx]``'s writers with basic auth and a private CA."""
    writer = make_writer(cfg)
    if isinstance(writer, InfluxV1Writer):
        password = cfg.password()
        if cfg.username is not None and password is not None:
            writer._session.auth = (cfg.username, password.get_secret_value())
            if writer._plain is not None:  # plain http:// goes around the session
                pair = f"{cfg.username}:{password.get_secret_value()}".encode()
                writer._plain.headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
            # A facility's login may only write: the region's admin creates the database
            # (`o2chain region provision` writes influx/users.iql), CREATE DATABASE would be 403.
            writer._database_ready = True
        if cfg.ca_file is not None:
            writer._session.verify = str(cfg.ca_file)
    if cfg.measurements:
        return _Filtered(writer, cfg.measurements)
    return writer


class CentralForwarder(OutboxDrainer):
    """``await forwarder.run(stop)``: the local drain's loop over the forwarder's own cursor."""

    thread_name = "central-forward"

    def __init__(
        self,
        outbox: Outbox,
        cfg: CentralSection,
        writer: LineWriter | None = None,
        local: InfluxSection | None = None,
    ):
        """``local``: the local InfluxDB (``[influx]``) released gaps are read back from
        (None: no backfill, gaps stay recorded)."""
        outbox.add_cursor(CURSOR, holds=cfg.at_bound == "hold")
        self.cfg = cfg
        self.line_writer = writer if writer is not None else central_writer(cfg)
        super().__init__(
            cast(Outbox, _CursorView(outbox, CURSOR)),
            self.line_writer,
            cfg.batch_size,
            cfg.flush_interval_s,
            max_backoff_s=cfg.max_backoff_s,
        )
        self.source = outbox
        self.backfill: Backfill | None = None
        self._backfill_after = 0.0  # monotonic time before which no backfill step is tried
        self._backfill_backoff = 0.25
        if local is not None and cfg.backfill and local.api != "v1":
            log.warning(
                "[central] backfill reads the local InfluxDB with InfluxQL (api v1); [influx] "
                "api = %r: released points stay recorded (o2chain_forward_backfill_pending_*)",
                local.api,
            )
        elif local is not None and cfg.backfill:
            self.backfill = Backfill(
                outbox,
                CURSOR,
                LocalReader(local),
                self._deliver,
                cfg.measurements,
                cfg.batch_size,
                clock=self.clock,
            )
        log.info(
            "forwarding to the central database %s db=%s (%s)",
            redact_url(cfg.url),
            cfg.bucket or cfg.database,
            ", ".join(cfg.measurements) or "every measurement",
        )

    def lag(self) -> tuple[int, float]:
        """Points waiting for the central database and the age in s of the oldest."""
        return self.source.lag(CURSOR)

    @property
    def released(self) -> int:
        """Points the central database will not get: skipped at the outbox bound."""
        return self.source.stats.released.get(CURSOR, 0)

    @property
    def backfilled(self) -> int:
        """Points released earlier and since written to the central database by a backfill."""
        return 0 if self.backfill is None else self.backfill.backfilled

    def backfill_pending(self) -> tuple[int, int]:
        """Gaps recorded and not yet backfilled, and the released points they count."""
        return self.source.gap_totals(CURSOR)

    def _wait(self, timeout_s: float) -> None:
        """Nothing waits behind the cursor: a backfill step if a gap is recorded, else wait."""
        if self.backfill is not None and self.clock() >= self._backfill_after:
            try:
                if self.backfill.step():
                    self._backfill_backoff = 0.25
                    return  # more to do: live rows first, then the next step
            except InfluxUnavailable as exc:
                # Either database away: live forwarding goes on, the backfill waits its turn.
                if not isinstance(exc, LocalUnavailable):  # a failed write to the central DB
                    self.stats.failures += 1
                    self.stats.last_error = str(exc)
                delay = exc.retry_after_s if exc.retry_after_s is not None else 0.0
                delay = min(max(delay, self._backfill_backoff), MAX_RETRY_AFTER_S)
                if isinstance(exc, InfluxMisconfigured):
                    delay = self.max_backoff_s
                log.warning("central backfill paused (%s); retry in %.2f s", exc, delay)
                self._backfill_after = self.clock() + delay
                self._backfill_backoff = min(self._backfill_backoff * 2, self.max_backoff_s)
            except BackfillSchemaError as exc:
                # Retrying cannot help; the gap stays recorded (o2chain_forward_backfill_pending_*).
                log.error("central backfill stopped until the next start: %s", exc)
                self._backfill_after = float("inf")
            except Exception:  # a bug in the backfill must not stop the live forwarding
                log.exception("central backfill failed; retry in %.0f s", self.max_backoff_s)
                self._backfill_after = self.clock() + self.max_backoff_s
        super()._wait(timeout_s)

    def close(self) -> None:
        _close(self.line_writer)
        if self.backfill is not None:
            self.backfill.reader.close()


def _close(writer: LineWriter) -> None:
    """Close the writer's connections if it has any (the HTTP writers do; a test's twin may not)."""
    close = getattr(writer, "close", None)
    if callable(close):
        close()
