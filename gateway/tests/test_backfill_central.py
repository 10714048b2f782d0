"""Central backfill against real InfluxDB 1.x servers (gateway/backfill.py).

The central database stays away longer than a tiny outbox can hold, so the forwarder's cursor is
released past most of the run; once the central database is back the forwarder catches up and
then backfills the released span from the local InfluxDB: the central database ends with exactly
the local database's points of the forwarded measurement. And lines read back from a real
InfluxDB are the lines that were written (types from the schema, escaping)."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.backfill import LocalReader
from gateway.config import InfluxSection
from gateway.lineproto import LineEncoder
from gateway.tests.conftest import (
    CENTRAL_DB,
    DB,
    central_count,
    count_points,
    fleet_gateway_config,
    fleet_summary_of,
    start_gateway,
    wait_until,
)
from o2base.procs import ChildProcess
from o2base.services import InfluxDB, Mosquitto

pytestmark = pytest.mark.integration

BOARDS = 10
PER_BOARD = 300
TOTAL = BOARDS * PER_BOARD


def metrics(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    found = re.findall(r"^(o2chain_forward_\w+) (\S+)$", text, re.MULTILINE)
    return {name: float(value) for name, value in found}


Point = tuple[tuple[tuple[str, str], ...], int, tuple[tuple[str, Any], ...]]


def points(db: InfluxDB, name: str, measurement: str, until_ms: int | None = None) -> set[Point]:
    """Every point of ``measurement`` (up to ``until_ms``) as (tags, time, fields)."""
    where = "" if until_ms is None else f" WHERE time <= {until_ms}ms"
    out: set[Point] = set()
    answer = db.query(f'SELECT * FROM "{measurement}"{where} GROUP BY *', db=name, epoch="ms")
    for result in answer["results"]:
        for series in result.get("series", []):
            tags = tuple(sorted((k, v) for k, v in series["tags"].items() if v))
            for row in series["values"]:
                values = dict(zip(series["columns"], row, strict=True))
                ts = values.pop("time")
                fields = tuple(sorted((k, v) for k, v in values.items() if v is not None))
                out.add((tags, ts, fields))
    return out


def schema(db: InfluxDB, name: str) -> dict[str, list[tuple[str, str]]]:
    """Field keys and types of every measurement."""
    out: dict[str, list[tuple[str, str]]] = {}
    for series in db.query("SHOW FIELD KEYS", db=name)["results"][0]["series"]:
        out[series["name"]] = sorted((k, t) for k, t in series["values"])
    return out


def test_a_released_span_is_backfilled_once_the_central_database_is_back(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    central: InfluxDB,
    sim_fleet: Callable[..., ChildProcess],
) -> None:
    cfg = fleet_gateway_config(
        tmp_path / "gw.toml",
        mosquitto,
        influxdb,
        tmp_path / "state",
        BOARDS,
        gateway={"outbox_max_mb": 0.1},  # ~500 readings: most of the run is released
        central={
            "url": central.url,
            "database": CENTRAL_DB,  # every measurement forwarded (measurements = [])
            # Small steps: the backfill's windows are halved until one holds at most 500
            # points (the answer streamed and abandoned when it holds more), several steps.
            "batch_size": 500,
            "flush_interval_s": 0.2,
            "max_backoff_s": 1.0,
            "timeout_s": 2.0,
        },
    )
    gw = start_gateway(cfg, tmp_path / "gw.log")
    try:
        url = gw.wait_for_log(r"HTTP listening on (http://127\.0\.0\.1:\d+)").group(1)
        pub = sim_fleet(mosquitto.url, BOARDS, PER_BOARD, interval_s=0.02)  # 500/s for 6 s
        wait_until(lambda: central_count(central) >= 100, 30, "the first points at the centre")
        central.stop()
        summary = fleet_summary_of(pub, TOTAL, 60)
        assert summary["complete"] and summary["readings_dropped"] == 0, summary
        wait_until(lambda: count_points(influxdb) == TOTAL, 30, "every reading in the local DB")
        before = metrics(url)
        released = before["o2chain_forward_released_total"]
        assert released > TOTAL / 2, before
        assert before["o2chain_forward_backfill_pending_spans"] >= 1, before
        assert before["o2chain_forward_backfill_pending_points"] == released, before
        assert central_count(central) < TOTAL
        gw.kill()  # the gap records must survive a crash (the counter of releases does not)
        gw = start_gateway(cfg, tmp_path / "gw2.log")
        url = gw.wait_for_log(r"HTTP listening on (http://127\.0\.0\.1:\d+)").group(1)
        assert metrics(url)["o2chain_forward_backfill_pending_points"] >= released
        # Every point stamped a second before the central database is back was committed
        # before the forwarder can catch up: forwarded live or backfilled by the end.
        cut_ms = int(time.time() * 1000) - 1000
        central.start()
        wait_until(
            lambda: metrics(url)["o2chain_forward_backfill_pending_spans"] == 0,
            60,
            "the backfill to close every gap",
        )
        after = metrics(url)
    finally:
        gw.stop()
    assert gw.returncode == 0, gw.log_tail()
    # Exactly the local database's points: every reading once, the same values and types.
    local = points(influxdb, DB, "room")
    assert len(local) == TOTAL
    assert points(central, CENTRAL_DB, "room") == local
    local_schema = schema(influxdb, DB)
    assert schema(central, CENTRAL_DB) == local_schema
    for measurement in local_schema:  # the gateway's own points too, up to the cut
        assert points(central, CENTRAL_DB, measurement, cut_ms) == points(
            influxdb, DB, measurement, cut_ms
        ), measurement
    released_after = after["o2chain_forward_released_total"]  # by the restarted gateway
    assert after["o2chain_forward_backfilled_total"] >= released + released_after, after
    assert after["o2chain_forward_backfill_pending_points"] == 0, after
    log = gw.log_text()
    assert "central backfill starts" in log
    done = re.search(r"central backfill done: (\d+) points .* written in ([\d.]+) s", log)
    assert done is not None, log[-2000:]
    print(
        f"backfill: {done.group(1)} points in {done.group(2)} s, released "
        f"{released:.0f} + {released_after:.0f}, measurements {sorted(local_schema)}"
    )


def test_lines_read_back_from_influxdb_are_the_lines_written(influxdb: InfluxDB) -> None:
    """Whole floats, integers, booleans, strings and tags that need escaping survive the trip
    through InfluxDB's JSON (types from SHOW FIELD KEYS), byte for byte."""
    written = [
        "room,device=d\\ 1,site=north\\,wing o2_pct=24,seq=7i 1700000000001",
        'room,device=d2,site=s note="a \\"quoted\\", spaced\\\\ note",o2_pct=20.95,ok=true '
        "1700000000002",
        "room,site=s o2_pct=-0.5,ok=false,seq=-12i 1700000000003",
        "room,site=s o2_pct=1e+21 1700000000004",
    ]
    influxdb.create_database("lines")
    influxdb.write_lines("lines", "\n".join(written))
    reader = LocalReader(InfluxSection(url=influxdb.url, database="lines"))
    got = reader.points("room", 1_700_000_000_000, 1_700_000_000_010, None)
    reader.close()
    assert got is not None
    encoder = LineEncoder()
    assert sorted(encoder.encode(r) for r in got) == sorted(written)
    assert reader.points("nothing", 0, 1, None) == []
