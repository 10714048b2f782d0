"""`o2chain demo --duration` leaves data in InfluxDB and no process behind (issue 2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from o2chain.services import InfluxDB
from o2chain.testing import DemoRun

pytestmark = pytest.mark.integration


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped by its parent; /proc tells.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_demo_prints_where_everything_runs(demo_run: DemoRun) -> None:
    for expected in ("live page       http://127.0.0.1:", "MQTT broker     mqtt://127.0.0.1:",
                     "InfluxDB        http://127.0.0.1:", "Modbus tcp://127.0.0.1:",
                     "24 simulated boards", "room-401        MicroPython firmware",
                     str(demo_run.data_dir)):  # fmt: skip
        assert expected in demo_run.stdout


def test_demo_leaves_data_and_no_process(demo_run: DemoRun) -> None:
    summary = demo_run.summary
    assert summary["counts"]["room"] >= 25 * 3  # 24 simulated boards + the firmware board
    assert summary["counts"]["concentrator"] >= 5 * 3  # the plant and four concentrators
    assert summary["counts"]["alarm"] >= 1  # conc-4's lost Modbus link
    assert len(summary["pids"]) >= 2 + 1 + 1 + 1  # services, scenario, gateway, firmware
    leftovers = [pid for pid in summary["pids"] if pid_alive(pid)]
    assert leftovers == [], f"processes left behind: {leftovers}"

    # The data stays: a new InfluxDB on the demo's data dir still answers with it.
    with InfluxDB(demo_run.data_dir / "services") as influx:
        points = influx.query_points("SELECT count(o2_pct) FROM room", db="o2chain")
        # At least what was counted before shutdown: the gateway flushes its outbox on the way out.
        assert points and points[0]["count"] >= summary["counts"]["room"]
        # The scenario cut conc-4's Modbus link: the poller reported it offline, the engine
        # raised the alarm, and its neighbours kept being polled.
        raised = influx.query_points(
            "SELECT * FROM alarm WHERE device = 'conc-4' AND rule = 'device-offline' "
            "AND state = 'raise'",
            db="o2chain",
        )
        assert raised, "no device-offline alarm for conc-4"
        health = influx.query_points(
            "SELECT last(online) AS online FROM device_health WHERE device = 'conc-4'",
            db="o2chain",
        )
        assert health and health[0]["online"] is False
        polled = influx.query_points(
            "SELECT count(purity_pct) FROM concentrator WHERE source = 'modbus' "
            "AND device =~ /^conc-[123]$/ GROUP BY device",
            db="o2chain",
        )
        assert len(polled) == 3 and all(p["count"] >= 5 for p in polled), polled
