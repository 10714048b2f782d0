"""Central backfill benchmark: the gateway's backfill against a copy by hand, one table.

    .venv/bin/python bench/bench_backfill.py [--points 100000] [--quick] [--rounds 2]

Starts two private InfluxDB 1.x servers (o2base.services.InfluxDB, own temp dirs, free ports,
127.0.0.1): the gateway's local one and a region's central one. Writes ``--points`` stored
``room`` points into the local one (50 boards named as ``o2chain sim fleet`` names them, one
reading every 10 s each, the fleet's default room values plus what the gateway stores with them:
tags ``site``, ``device``, ``room``; float fields, ``seq``/``boot`` integers, ``baro_source``
string), and waits until the local server has written them from its cache to TSM files (its
cold-cache delay set to 1 s instead of 10 min): a released span is hours old, so a gateway
reads it from TSM files (``--in-cache``: from the cache, a span minutes old, where each query
costs the server more). Then, for the default
``[central] batch_size`` and for 2,000, each round:

- **gateway backfill** (gateway/backfill.py): a gap made the way a gateway makes it: the same
  points committed to a real :class:`gateway.outbox.Outbox` with a 1 MB bound, the local drain's
  cursor passing each commit (the local database has the points) and the central forwarder's
  cursor (:class:`gateway.forward.CentralForwarder`, ``at_bound = "release"``) never moving, so
  the outbox's own release skips most of them and records the gap (``outbox_gap``); the
  forwarder then catches up with the rows left (untimed), and its Backfill is stepped, as the
  forwarder steps it when nothing waits behind its cursor, until no gap is left (timed);
- **copy by hand** (the baseline): the simplest correct copy of the same span over HTTP: one
  ``SELECT * FROM room WHERE time >= .. AND time <= .. GROUP BY *`` against the local server,
  streamed (``chunked``, 1,000 rows a chunk as the backfill asks), each row rebuilt as a line
  with the types of ``SHOW FIELD KEYS`` and escaped, written to the central server with one
  ``requests`` session in batches of the same size (``/write?precision=ms``).

Each is timed by wall clock and by this process's CPU (``time.process_time``; both run in this
process, the servers' CPU from /proc is shown apart), per point of the span; the table gives
the backfill's rate over the copy's rate measured in the same round. Every copy is checked
exact: the central database's count over the span, its distinct (series, time), its set of
(tags, time, fields) and its field types must equal the local database's, and every point of the
local database must be in the central one; else the bench prints NOT EXACT and exits 1. Each
central database is dropped after its check. Every loop is bounded in count and time. The
machine is 2 cores shared with other jobs: the load average is printed; compare the figures of
one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from gateway.backfill import CHUNK_ROWS
from gateway.config import CentralSection, InfluxSection
from gateway.forward import CURSOR, CentralForwarder
from gateway.lineproto import LineEncoder
from gateway.outbox import FullPolicy, Outbox
from gateway.readings import Reading
from o2base.services import InfluxDB

if TYPE_CHECKING:  # the checker sees the package; run as a script, its own directory is first
    from bench.bench_gateway import room_values
else:
    from bench_gateway import room_values  # the same payloads as the gateway bench

LOCAL_DB = "o2chain"
SITE = "bench"
BOARDS = 50
INTERVAL_MS = 10_000  # one reading every 10 s a board (the scenarios' default)
COMMIT_POINTS = 1000  # points per outbox commit while the gap is made
OUTBOX_BOUND = 1 << 20  # 1 MB: most of the points are released, a few rows are left live
SMALL_BATCH = 2000
TIMEOUT_S = 600.0  # any one copy, any one check
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_BATCH = int(CentralSection.model_fields["batch_size"].default)


class NotExact(Exception):
    """The central database does not hold exactly the local database's points."""


def cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class LocalInfluxDB(InfluxDB):
    """The local server, its cache written to TSM files after 1 s without writes (influxd's
    default: 10 min) so the points are read back from TSM files, as a released span hours old
    is."""

    def _render_config(self) -> str:
        text = super()._render_config()
        cold = '[data]\n  cache-snapshot-write-cold-duration = "1s"\n'
        if "[data]\n" not in text:
            raise RuntimeError("o2base's influxdb.conf.tmpl has no [data] section any more")
        return text.replace("[data]\n", cold, 1)

    def wait_for_tsm(self, timeout_s: float = 60.0) -> float:
        """Until the written points are in TSM files (the WAL emptied); the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            wal = sum(p.stat().st_size for p in self.data_dir.rglob("*.wal"))
            if wal == 0 and any(self.data_dir.rglob("*.tsm")):
                return time.monotonic() - t0
            time.sleep(0.2)
        raise RuntimeError(f"the local InfluxDB kept its cache for {timeout_s:.0f} s")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- the points ---------------------------------------------------------------------------------


def stored_lines(points: int, first_ms: int) -> list[str]:
    """``points`` stored room points in time order, as the gateway's encoder writes them."""
    per_board = -(-points // BOARDS)
    values = room_values(BOARDS, min(per_board, 200))  # cycled: the shape, not the physics
    encoder = LineEncoder()
    lines = []
    for i in range(points):
        seq, board = divmod(i, BOARDS)
        fields: dict[str, Any] = dict(values[board][seq % len(values[board])])
        fields |= {"eq_alt_m": 3650.0, "baro_source": "sensor", "seq": seq, "boot": 1}
        tags = {"site": SITE, "device": f"room-{board + 1:04d}", "room": f"r{board + 101}"}
        ts = first_ms + seq * INTERVAL_MS + board * (INTERVAL_MS // BOARDS)
        lines.append(encoder.encode(Reading("room", tags, fields, ts)))
    return lines


# -- reading a database back --------------------------------------------------------------------


def stream(url: str, db: str, q: str) -> Iterator[dict[str, Any]]:
    """The series of ``q``'s answer, chunked (``epoch=ms``), each as InfluxDB gives it."""
    params = {"db": db, "q": q, "epoch": "ms", "chunked": "true", "chunk_size": str(CHUNK_ROWS)}
    with requests.get(f"{url}/query", params=params, stream=True, timeout=60) as r:
        r.raise_for_status()
        for raw in r.iter_lines():
            if not raw:
                continue
            chunk = json.loads(raw)
            for result in chunk.get("results", []):
                if "error" in result:
                    raise RuntimeError(f"{db}: {q}: {result['error']}")
                yield from result.get("series", [])
            if "error" in chunk:
                raise RuntimeError(f"{db}: {q}: {chunk['error']}")


def span_where(first_ms: int, last_ms: int) -> str:
    return f"WHERE time >= {first_ms}ms AND time <= {last_ms}ms"


@dataclass
class Contents:
    count: int  # count(o2_pct)
    distinct: int  # distinct (series, time)
    points: frozenset[int]  # hash of each (tags, time, fields)
    types: dict[str, str]


def contents(server: InfluxDB, db: str, where: str) -> Contents:
    rows = server.query_points(f"SELECT count(o2_pct) FROM room {where}", db=db)
    count = int(rows[0]["count"]) if rows else 0
    keys: set[tuple[Any, ...]] = set()
    points: set[int] = set()
    for series in stream(server.url, db, f"SELECT * FROM room {where} GROUP BY *"):
        tags = tuple(sorted((k, v) for k, v in (series.get("tags") or {}).items() if v))
        for row in series.get("values", []):
            values = dict(zip(series["columns"], row, strict=True))
            ts = values.pop("time")
            keys.add((tags, ts))
            points.add(hash((tags, ts, tuple(sorted(values.items())))))
    types = {
        str(k): str(t)
        for s in server.query("SHOW FIELD KEYS FROM room", db=db)["results"][0].get("series", [])
        for k, t in s["values"]
    }
    return Contents(count, len(keys), frozenset(points), types)


def check_exact(
    local: InfluxDB, central: InfluxDB, db: str, first_ms: int, last_ms: int, total: int
) -> str:
    """Raises NotExact unless ``db`` holds exactly the local database's points (the span and
    the whole run); returns what was checked."""
    for name, where in (("span", span_where(first_ms, last_ms)), ("whole run", "")):
        want, got = contents(local, LOCAL_DB, where), contents(central, db, where)
        if (got.count, got.distinct) != (want.count, want.distinct):
            raise NotExact(
                f"{db} {name}: {got.count:,} points, {got.distinct:,} distinct (series, time); "
                f"local: {want.count:,}, {want.distinct:,}"
            )
        if got.points != want.points:
            raise NotExact(
                f"{db} {name}: {len(want.points - got.points):,} local points missing or "
                f"different, {len(got.points - want.points):,} not in the local database"
            )
        if got.types != want.types:
            raise NotExact(f"{db} {name}: field types {got.types}, local {want.types}")
        if name == "whole run" and want.count != total:
            raise NotExact(f"the local database holds {want.count:,} points, {total:,} written")
        if name == "span":
            span = want.count
    return f"{span:,} points of the span and {total:,} of the run identical"


# -- the gap, the backfill and the copy by hand ---------------------------------------------------


@dataclass
class Timed:
    wall_s: float
    cpu_s: float  # this process
    local_cpu_s: float  # the local influxd
    central_cpu_s: float  # the central influxd
    written: int  # points written to the central database
    steps: int  # backfill steps / central writes


def timed(local: InfluxDB, central: InfluxDB, work: Callable[[], tuple[int, int]]) -> Timed:
    lc0, cc0 = cpu_s(local.pid), cpu_s(central.pid)
    cpu0 = time.process_time()
    t0 = time.monotonic()
    written, steps = work()
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    return Timed(wall, cpu, cpu_s(local.pid) - lc0, cpu_s(central.pid) - cc0, written, steps)


@dataclass
class Gap:
    first_ms: int
    last_ms: int
    released: int
    live: int  # points the forwarder sent live after the gap (its catch-up)


def make_gap(
    tmp: Path, lines: list[str], central: InfluxDB, local: InfluxDB, db: str, batch_size: int
) -> tuple[CentralForwarder, Gap]:
    """A forwarder whose cursor the outbox released past most of ``lines`` (one gap record),
    caught up with the rest, ready to backfill."""
    outbox = Outbox(tmp / f"{db}.sqlite", max_bytes=OUTBOX_BOUND, policy=FullPolicy.BLOCK)
    cfg = CentralSection(url=central.url, database=db, batch_size=batch_size)
    forwarder = CentralForwarder(outbox, cfg, local=InfluxSection(url=local.url, database=LOCAL_DB))
    for at in range(0, len(lines), COMMIT_POINTS):
        outbox.commit(lines[at : at + COMMIT_POINTS])
        # The local drain: the local database holds these points already (written before).
        batch = outbox.peek_batch(COMMIT_POINTS)
        outbox.remove_through(batch.ids[-1])
    released = outbox.stats.released.get(CURSOR, 0)
    gaps = outbox.gaps(CURSOR)
    if len(gaps) != 1 or gaps[0].points != released or not 0 < released < len(lines):
        raise RuntimeError(f"expected one gap of the {released:,} released points: {gaps}")
    live = 0
    view = forwarder.outbox  # the outbox through the forwarder's cursor
    for _ in range(len(lines) // batch_size + 10):  # the forwarder catches up (untimed)
        batch = view.peek_batch(batch_size)
        if not batch:
            break
        forwarder._deliver(batch.lines)
        view.remove_through(batch.ids[-1])
        live += len(batch)
    if outbox.lag(CURSOR)[0] != 0 or live + released != len(lines):
        raise RuntimeError(f"the forwarder did not catch up: {live:,} live, {released:,} released")
    return forwarder, Gap(gaps[0].first_ms, gaps[0].last_ms, released, live)


def run_backfill(forwarder: CentralForwarder, max_steps: int) -> tuple[int, int]:
    """Step the forwarder's Backfill until no gap is left: (points written, steps)."""
    backfill = forwarder.backfill
    assert backfill is not None
    deadline = time.monotonic() + TIMEOUT_S
    steps = 0
    while backfill.step():
        steps += 1
        if steps > max_steps or time.monotonic() > deadline:
            raise RuntimeError(f"backfill not done after {steps} steps")
    return backfill.backfilled, steps


def _tag(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_FIELD: dict[str, Callable[[Any], str]] = {
    "float": lambda v: repr(float(v)),
    "integer": lambda v: f"{int(v)}i",
    "boolean": lambda v: "true" if v else "false",
    "string": _string,
}


def copy_by_hand(
    local: InfluxDB, central: InfluxDB, db: str, first_ms: int, last_ms: int, batch_size: int
) -> tuple[int, int]:
    """The baseline: one streamed SELECT of the span, written back as line protocol in batches
    of ``batch_size``: (points written, writes)."""
    deadline = time.monotonic() + TIMEOUT_S
    types = {
        str(k): str(t)
        for s in local.query("SHOW FIELD KEYS FROM room", db=LOCAL_DB)["results"][0]["series"]
        for k, t in s["values"]
    }
    session = requests.Session()
    written = writes = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal written, writes
        r = session.post(
            f"{central.url}/write",
            params={"db": db, "precision": "ms"},
            data="\n".join(batch).encode(),
            timeout=60,
        )
        if r.status_code != 204:
            raise RuntimeError(f"central write answered {r.status_code}: {r.text}")
        written, writes = written + len(batch), writes + 1
        batch.clear()
        if time.monotonic() > deadline:
            raise RuntimeError(f"copy by hand not done after {written:,} points")

    q = f"SELECT * FROM room {span_where(first_ms, last_ms)} GROUP BY *"
    for series in stream(local.url, LOCAL_DB, q):
        tagset = "".join(
            f",{_tag(k)}={_tag(v)}" for k, v in sorted((series.get("tags") or {}).items()) if v
        )
        head = "room" + tagset + " "
        columns = series["columns"]
        for row in series.get("values", []):
            fields = ",".join(
                f"{_tag(name)}={_FIELD[types[name]](value)}"
                for name, value in zip(columns, row, strict=True)
                if name != "time" and value is not None
            )
            batch.append(f"{head}{fields} {row[0]}")
            if len(batch) >= batch_size:
                flush()
    if batch:
        flush()
    session.close()
    return written, writes


# -- the table ------------------------------------------------------------------------------------


@dataclass
class Measured:
    batch_size: int
    gap: Gap
    backfill: Timed
    copy: Timed

    def rate(self, t: Timed) -> float:
        return self.gap.released / t.wall_s  # points of the span a second

    def us(self, t: Timed) -> float:
        return t.cpu_s / self.gap.released * 1e6


def one_round(
    tmp: Path, lines: list[str], local: InfluxDB, central: InfluxDB, rnd: int, batch_size: int
) -> Measured:
    bf_db, copy_db = f"backfill_{batch_size}_{rnd}", f"copy_{batch_size}_{rnd}"
    central.create_database(bf_db)
    central.create_database(copy_db)
    forwarder, gap = make_gap(tmp, lines, central, local, bf_db, batch_size)
    try:
        max_steps = 20 * (len(lines) // batch_size + 1) + 100
        backfill = timed(local, central, lambda: run_backfill(forwarder, max_steps))
    finally:
        forwarder.close()
        forwarder.source.close()
    exact = check_exact(local, central, bf_db, gap.first_ms, gap.last_ms, len(lines))
    # The copy's database gets the live rows too, so the whole run can be compared.
    central.write_lines(copy_db, "\n".join(lines[gap.released :]))
    copy = timed(
        local,
        central,
        lambda: copy_by_hand(local, central, copy_db, gap.first_ms, gap.last_ms, batch_size),
    )
    check_exact(local, central, copy_db, gap.first_ms, gap.last_ms, len(lines))
    for db in (bf_db, copy_db):
        central.query(f'DROP DATABASE "{db}"')
    m = Measured(batch_size, gap, backfill, copy)
    print(
        f"round {rnd} batch_size {batch_size:,}: backfill {backfill.wall_s:.2f} s "
        f"({backfill.steps} steps, CPU {backfill.cpu_s:.2f} s), copy by hand "
        f"{copy.wall_s:.2f} s (CPU {copy.cpu_s:.2f} s); {exact}; load {loadavg()}",
        file=sys.stderr,
    )
    return m


def table(results: list[Measured], points: int, load: list[str], source: str) -> None:
    rows: list[tuple[str, str, str]] = []
    for size in dict.fromkeys(m.batch_size for m in results):
        ms = [m for m in results if m.batch_size == size]
        gap = ms[0].gap
        ratios = [m.rate(m.backfill) / m.rate(m.copy) for m in ms]
        for label, pick in (("gateway backfill", "backfill"), ("copy by hand", "copy")):
            ts = [getattr(m, pick) for m in ms]
            rates = [m.rate(t) for m, t in zip(ms, ts, strict=True)]
            us = [m.us(t) for m, t in zip(ms, ts, strict=True)]
            detail = (
                f"{statistics.median(t.wall_s for t in ts):.2f} s wall, "
                f"this process's CPU {statistics.median(us):.1f} us a point "
                f"({'/'.join(f'{u:.1f}' for u in us)}); "
                f"{'steps' if pick == 'backfill' else 'writes'} "
                f"{'/'.join(str(t.steps) for t in ts)}, points written "
                f"{'/'.join(f'{t.written:,}' for t in ts)}; influxd CPU local "
                f"{statistics.median(t.local_cpu_s for t in ts):.2f} s, central "
                f"{statistics.median(t.central_cpu_s for t in ts):.2f} s"
            )
            rows.append(
                (
                    f"{label}, batch_size {size:,}",
                    f"{statistics.median(rates):,.0f} points/s "
                    f"({'/'.join(f'{r:,.0f}' for r in rates)})",
                    detail,
                )
            )
        rows.append(
            (
                f"backfill / copy by hand, batch_size {size:,}",
                f"{statistics.median(ratios):.2f}x ({'/'.join(f'{r:.2f}' for r in ratios)})",
                f"the span: {gap.released:,} released points of {points:,} "
                f"({gap.live:,} forwarded live after it), {BOARDS} series; exact each time",
            )
        )
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"central backfill, {points:,} room points ({BOARDS} series, 9-10 fields, one every "
        f"{INTERVAL_MS // 1000} s a series) read from the local InfluxDB's {source}; {now}; "
        f"load average {load[0]} at the start, {load[-1]} at the end"
    )
    width = max(len(r[0]) for r in rows)
    rate_w = max(len(r[1]) for r in rows)
    print(f"| {'what'.ljust(width)} | {'rate (each round)'.ljust(rate_w)} | detail |")
    print(f"|{'-' * (width + 2)}|{'-' * (rate_w + 2)}|---|")
    for name, rate, detail in rows:
        print(f"| {name.ljust(width)} | {rate.ljust(rate_w)} | {detail} |")


def main() -> int:
    ap = argparse.ArgumentParser(description="central backfill benchmark: prints one table")
    ap.add_argument("--points", type=int, default=100_000, help="room points in the local DB")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each batch size")
    ap.add_argument("--quick", action="store_true", help="20,000 points, one round")
    ap.add_argument(
        "--in-cache",
        action="store_true",
        help="read the points from the local server's cache (a fresh span), not TSM files",
    )
    args = ap.parse_args()
    if args.quick:
        args.points, args.rounds = 20_000, 1
    if args.points < 20 * COMMIT_POINTS:
        ap.error("--points: at least 20,000 (the outbox bound must release most of them)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    load = [loadavg()]
    first_ms = (int(time.time()) // 3600 - 24) * 3_600_000  # a day ago, on the hour
    lines = stored_lines(args.points, first_ms)
    results: list[Measured] = []
    with (
        tempfile.TemporaryDirectory(prefix="o2bench-backfill-") as tmp_name,
        (InfluxDB if args.in_cache else LocalInfluxDB)(Path(tmp_name) / "local") as local,
        InfluxDB(Path(tmp_name) / "central") as central,
    ):
        tmp = Path(tmp_name)
        local.create_database(LOCAL_DB)
        for at in range(0, len(lines), 5000):
            local.write_lines(LOCAL_DB, "\n".join(lines[at : at + 5000]))
        if isinstance(local, LocalInfluxDB):
            local.wait_for_tsm()
        try:
            for rnd in range(1, args.rounds + 1):
                for size in (DEFAULT_BATCH, SMALL_BATCH):
                    results.append(one_round(tmp, lines, local, central, rnd, size))
        except NotExact as exc:
            print(f"NOT EXACT: {exc}")
            return 1
    load.append(loadavg())
    table(results, args.points, load, "cache" if args.in_cache else "TSM files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
