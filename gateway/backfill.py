"""Central backfill: the points the forwarder's cursor skipped at the outbox bound, read back
from the local InfluxDB and written to the central one once the forwarder has caught up.

A release (``[central] at_bound = "release"``, :meth:`gateway.outbox.Outbox._release`) records
what the cursor skipped as a gap: the span of the skipped points' own times and their count
(table ``outbox_gap``). The local InfluxDB has those points (a release never passes the local
drain). When nothing waits behind the forwarder's cursor, :meth:`Backfill.step` takes the oldest
gap and redoes one window of its span: for each forwarded measurement an InfluxQL
``SELECT * ... GROUP BY *`` over HTTP against ``[influx]``, streamed in chunks and abandoned
when it would hold more than ``max_points`` (the window is halved and asked again, so a step's
memory and time stay bounded), lines rebuilt with the types of ``SHOW FIELD KEYS`` (InfluxDB's
JSON writes a whole float as an integer) through the gateway's own encoder, and written with the
forwarder's writer. The progress (every point up to a time) is stored after each window the
central database accepted, and the record is deleted only after the last one: a gateway killed
mid-backfill resumes at the stored progress, redoing at most one window.

The span covers every point of the forwarded measurements in it, not only the skipped ones:
points the central database already has are written again with the same measurement, tags and
time, which overwrites them with themselves (point identity). Only InfluxDB 1.x's ``/query``
(``[influx] api = "v1"``) is read.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import requests

from gateway.config import InfluxSection, redact_url
from gateway.influx import InfluxUnavailable, InfluxWriteError, raise_for_status
from gateway.lineproto import LineEncoder
from gateway.outbox import Gap, Outbox
from gateway.readings import FieldValue, Reading

log = logging.getLogger(__name__)

FIRST_WINDOW_MS = 60_000  # the first window of a gap; then doubled while windows come back small
MAX_WINDOW_MS = 86_400_000  # a day: a sparse span is crossed in few steps
CHUNK_ROWS = 1000  # rows per chunk of InfluxDB's streamed answer


class LocalUnavailable(InfluxUnavailable):
    """The local InfluxDB did not answer a backfill's query (down, refusing, an error in the
    answer): the backfill retries later, with back-off; the central database is not at fault."""


class BackfillSchemaError(Exception):
    """A field whose type the local InfluxDB's schema does not give (or one line protocol
    cannot write back: ``unsigned``)."""


def _ident(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


_CASTS: dict[str, Callable[[Any], FieldValue]] = {
    "float": float,  # a whole float comes as a JSON integer: the schema says it is a float
    "integer": int,
    "boolean": bool,
    "string": str,
}


def rebuild(
    measurement: str,
    tags: dict[str, str],
    columns: list[str],
    row: list[Any],
    types: dict[str, str],
) -> Reading:
    """The point a row of ``SELECT * ... GROUP BY *`` (``epoch=ms``) stands for, its fields
    typed as the measurement's schema (``SHOW FIELD KEYS``) says."""
    fields: dict[str, FieldValue] = {}
    ts_ms = None
    for name, value in zip(columns, row, strict=True):
        if name == "time":
            ts_ms = int(value)
            continue
        if value is None:  # a field this point does not have
            continue
        cast = _CASTS.get(types.get(name, ""))
        if cast is None:
            raise BackfillSchemaError(
                f"{measurement}.{name}: field type {types.get(name, 'unknown')!r}, expected "
                "float, integer, boolean or string"
            )
        fields[name] = cast(value)
    if ts_ms is None:
        raise BackfillSchemaError(f"{measurement}: the answer has no time column")
    # GROUP BY * gives every tag key of the measurement; "" where a series has no such tag.
    return Reading(measurement, {k: v for k, v in tags.items() if v}, fields, ts_ms)


class LocalReader:
    """InfluxQL over HTTP against the local InfluxDB (``[influx]``, api v1)."""

    def __init__(self, cfg: InfluxSection):
        self.cfg = cfg
        self._session = requests.Session()
        token = cfg.token()
        if token is not None:
            self._session.headers["Authorization"] = f"Token {token.get_secret_value()}"

    def _get(self, q: str, *, chunked: bool = False) -> requests.Response:
        params = {"db": self.cfg.database, "q": q, "epoch": "ms"}
        if chunked:
            params |= {"chunked": "true", "chunk_size": str(CHUNK_ROWS)}
        try:
            r = self._session.get(
                f"{self.cfg.url}/query",
                params=params,
                timeout=self.cfg.timeout_s,
                allow_redirects=False,
                stream=chunked,
            )
        except requests.RequestException as exc:
            self._session.close()
            raise LocalUnavailable(
                f"local InfluxDB {redact_url(self.cfg.url)}: {exc.__class__.__name__}: {exc}"
            ) from exc
        if r.status_code >= 300:
            try:
                raise_for_status(r.status_code, r.text, r.headers.get("Retry-After"))
            except InfluxWriteError as exc:
                retry = exc.retry_after_s if isinstance(exc, InfluxUnavailable) else None
                raise LocalUnavailable(
                    f"local InfluxDB {redact_url(self.cfg.url)}: {exc}", retry
                ) from exc
        return r

    @staticmethod
    def _series(answer: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for result in answer.get("results", []):
            if "error" in result:
                raise LocalUnavailable(f"local InfluxDB: {result['error']}")
            out += result.get("series", [])
        if "error" in answer:
            raise LocalUnavailable(f"local InfluxDB: {answer['error']}")
        return out

    def _rows(self, q: str) -> list[list[Any]]:
        return [row for s in self._series(self._get(q).json()) for row in s.get("values", [])]

    def measurements(self) -> list[str]:
        return [str(row[0]) for row in self._rows("SHOW MEASUREMENTS")]

    def field_types(self, measurement: str) -> dict[str, str]:
        """Field name -> ``float`` | ``integer`` | ``boolean`` | ``string`` (| ``unsigned``)."""
        types: dict[str, str] = {}
        for name, kind in self._rows(f"SHOW FIELD KEYS FROM {_ident(measurement)}"):
            types.setdefault(str(name), str(kind))  # a key typed twice (two shards): the first
        return types

    def points(
        self, measurement: str, start_ms: int, stop_ms: int, limit: int | None
    ) -> list[Reading] | None:
        """The points of ``measurement`` with ``start_ms <= time <= stop_ms``; None as soon as
        there are more than ``limit`` (the rest of the answer is not read)."""
        types = self.field_types(measurement)
        if not types:
            return []  # no such measurement (yet) in the local database
        q = (
            f"SELECT * FROM {_ident(measurement)} WHERE time >= {start_ms}ms "
            f"AND time <= {stop_ms}ms GROUP BY *"
        )
        out: list[Reading] = []
        with self._get(q, chunked=True) as r:
            for chunk in self._chunks(r):
                for series in self._series(chunk):
                    tags, columns = series.get("tags") or {}, series["columns"]
                    for row in series.get("values", []):
                        out.append(rebuild(measurement, tags, columns, row, types))
                if limit is not None and len(out) > limit:
                    return None
        return out

    @staticmethod
    def _chunks(r: requests.Response) -> Iterator[dict[str, Any]]:
        try:
            for line in r.iter_lines():
                if line:
                    yield json.loads(line)
        except requests.RequestException as exc:
            raise LocalUnavailable(f"local InfluxDB: {exc}") from exc

    def close(self) -> None:
        self._session.close()


class Backfill:
    """Redoes the outbox's gap records of ``cursor`` from the local InfluxDB, one bounded
    window a :meth:`step` (the forwarder calls it when nothing waits behind its cursor)."""

    def __init__(
        self,
        outbox: Outbox,
        cursor: str,
        reader: LocalReader,
        deliver: Callable[[list[str]], None],
        measurements: list[str],
        max_points: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.outbox = outbox
        self.cursor = cursor
        self.reader = reader
        self.deliver = deliver  # the forwarder's write (rejects bisected, dead-lettered)
        self.measurements = measurements  # empty: every measurement of the local database
        self.max_points = max_points
        self.clock = clock
        self.encoder = LineEncoder()
        self.backfilled = 0  # points written to the central database by backfills
        self._gap_id: int | None = None
        self._gap_points = 0  # points written for the current gap
        self._started = 0.0
        self._window_ms = FIRST_WINDOW_MS

    def pending(self) -> tuple[int, int]:
        """Gap records waiting and the released points they count."""
        return self.outbox.gap_totals(self.cursor)

    def step(self) -> bool:
        """Redo one window of the oldest gap; False when there is none. Raises
        :class:`gateway.influx.InfluxUnavailable` when either database is away (nothing of
        this window is marked done then; :class:`LocalUnavailable` for the local one)."""
        gaps = self.outbox.gaps(self.cursor)
        if not gaps:
            return False
        gap = gaps[0]
        start = gap.first_ms if gap.done_ms is None else gap.done_ms + 1
        if gap.id != self._gap_id:
            self._gap_id, self._gap_points, self._started = gap.id, 0, self.clock()
            self._window_ms = FIRST_WINDOW_MS
            log.info(
                "central backfill starts: %d released points between %s and %s%s",
                gap.points,
                iso_ms(gap.first_ms),
                iso_ms(gap.last_ms),
                "" if gap.done_ms is None else f", resuming after {iso_ms(gap.done_ms)}",
            )
        stop, lines = self._read(gap, start)
        for at in range(0, len(lines), self.max_points):
            self.deliver(lines[at : at + self.max_points])
        self.backfilled += len(lines)
        self._gap_points += len(lines)
        if len(lines) < self.max_points // 4:
            self._window_ms = min(self._window_ms * 2, MAX_WINDOW_MS)
        if stop < gap.last_ms:
            self.outbox.gap_progress(gap, stop)
        elif self.outbox.remove_gap(gap):
            log.info(
                "central backfill done: %d points between %s and %s written in %.1f s "
                "(%d had been released)",
                self._gap_points,
                iso_ms(gap.first_ms),
                iso_ms(gap.last_ms),
                self.clock() - self._started,
                gap.points,
            )
            self._gap_id = None
        # else: a release extended the record meanwhile; the next step starts it again
        return True

    def _read(self, gap: Gap, start: int) -> tuple[int, list[str]]:
        """(end of the window read, its points as lines): the window is halved until it holds
        at most ``max_points`` (a single ms is read whatever it holds)."""
        names = self.measurements or self.reader.measurements()
        while True:
            stop = min(gap.last_ms, start + self._window_ms - 1)
            limit = None if stop == start else self.max_points
            readings: list[Reading] = []
            for name in names:
                got = self.reader.points(
                    name, start, stop, None if limit is None else limit - len(readings)
                )
                if got is None:
                    break
                readings += got
            else:
                return stop, [self.encoder.encode(r) for r in readings]
            self._window_ms = max(1, (stop - start + 1) // 2)
