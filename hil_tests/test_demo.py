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
    for expected in ("MQTT broker     mqtt://127.0.0.1:", "InfluxDB        http://127.0.0.1:",
                     "Modbus tcp://127.0.0.1:", str(demo_run.data_dir)):  # fmt: skip
        assert expected in demo_run.stdout


def test_demo_leaves_data_and_no_process(demo_run: DemoRun) -> None:
    summary = demo_run.summary
    assert summary["counts"]["room"] >= 2 * 3  # two boards, several readings each
    assert summary["counts"]["concentrator"] >= 3 * 3
    assert len(summary["pids"]) >= 2 + 3 + 1 + 2  # services, simulators, gateway, boards
    leftovers = [pid for pid in summary["pids"] if pid_alive(pid)]
    assert leftovers == [], f"processes left behind: {leftovers}"

    # The data stays: a new InfluxDB on the demo's data dir still answers with it.
    with InfluxDB(demo_run.data_dir / "services") as influx:
        points = influx.query_points("SELECT count(o2_pct) FROM room", db="o2chain")
        assert points and points[0]["count"] == summary["counts"]["room"]
