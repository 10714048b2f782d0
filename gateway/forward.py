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
so the outbox's full policy (``block`` or ``drop_oldest``) applies to ingest.
"""

from __future__ import annotations

import base64
import logging
from typing import cast

from gateway.config import CentralSection, redact_url
from gateway.influx import InfluxV1Writer, LineWriter, make_writer
from gateway.outbox import Batch, Outbox
from gateway.writer import OutboxDrainer

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

    def __init__(self, outbox: Outbox, cfg: CentralSection, writer: LineWriter | None = None):
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

    def close(self) -> None:
        _close(self.line_writer)


def _close(writer: LineWriter) -> None:
    """Close the writer's connections if it has any (the HTTP writers do; a test's twin may not)."""
    close = getattr(writer, "close", None)
    if callable(close):
        close()
