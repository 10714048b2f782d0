"""Central forwarding against two real InfluxDB 1.x servers, one local and one "central": the
central one goes down mid-run and the gateway is SIGKILLed while it is down. The local InfluxDB
gets every reading while the central one is away (the local drain is never held up), and once the
central one is back it holds every reading exactly once; rows leave the outbox when both readers
passed them."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.tests.conftest import (
    CENTRAL_DB,
    DB,
    central_count,
    count_points,
    fleet_gateway_config,
    fleet_summary_of,
    start_gateway,
    wait_for_count,
    wait_until,
)
from o2base.procs import ChildProcess
from o2base.services import InfluxDB, Mosquitto

pytestmark = pytest.mark.integration

BOARDS = 10
PER_BOARD = 300
TOTAL = BOARDS * PER_BOARD


def room_rows_held(state_dir: Path) -> int:
    with sqlite3.connect(state_dir / "outbox.sqlite") as db:
        (n,) = db.execute("SELECT COUNT(*) FROM outbox WHERE line LIKE '%room,%'").fetchone()
    return int(n)


def assert_each_reading_once(db: InfluxDB, name: str) -> None:
    per_board = db.query_points(
        "SELECT count(seq), count(distinct(seq)) AS unique FROM room GROUP BY device", db=name
    )
    assert len(per_board) == BOARDS
    assert {(int(p["count"]), int(p["unique"])) for p in per_board} == {(PER_BOARD, PER_BOARD)}


def test_central_outage_and_gateway_kill_lose_and_double_nothing(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    central: InfluxDB,
    sim_fleet: Callable[..., ChildProcess],
) -> None:
    state = tmp_path / "state"
    cfg = fleet_gateway_config(
        tmp_path / "gw.toml",
        mosquitto,
        influxdb,
        state,
        BOARDS,
        central={
            "url": central.url,
            "database": CENTRAL_DB,
            "flush_interval_s": 0.2,
            "max_backoff_s": 1.0,
            "timeout_s": 2.0,
        },
    )
    gw = start_gateway(cfg, tmp_path / "gw.log")
    try:
        pub = sim_fleet(mosquitto.url, BOARDS, PER_BOARD, interval_s=0.02)  # 500/s for 6 s
        wait_until(lambda: central_count(central) >= TOTAL // 10, 30, "a tenth at the centre")
        central.stop()
        down_at = count_points(influxdb)
        summary = fleet_summary_of(pub, TOTAL, 60)
        assert summary["complete"] and summary["readings_dropped"] == 0, summary
        # The whole run reaches the local InfluxDB while the central one is away.
        assert wait_for_count(influxdb, TOTAL, 30) == TOTAL
        assert down_at < TOTAL, "the central outage came too late to test anything"
        assert room_rows_held(state) > 0, "rows the forwarder still needs were deleted"
        gw.kill()  # the cursors must survive a crash while the forwarder lags
        gw = start_gateway(cfg, tmp_path / "gw.log")
        central.start()
        wait_until(lambda: central_count(central) >= TOTAL, 60, "the central catch-up")
        time.sleep(1.0)  # a batch still in flight would now show as an extra point
        assert central_count(central) == TOTAL
        wait_until(lambda: room_rows_held(state) == 0, 30, "rows leaving the outbox")
    finally:
        gw.stop()
    assert gw.returncode == 0, gw.log_tail()
    assert_each_reading_once(influxdb, DB)
    assert_each_reading_once(central, CENTRAL_DB)
    assert "InfluxDB unavailable" in gw.log_text()
