"""pytest plugin: private Mosquitto and InfluxDB instances as fixtures.

Enabled for the whole repo by ``pytest_plugins = ["o2chain.testing"]`` in the root conftest.py.

Fixtures:

- ``service_dir``: a fresh directory for one test's service instances.
- ``mosquitto``, ``influxdb``: started before the test, stopped after it (function scope); the
  test may restart(), kill(), freeze() them at will.
- ``mosquitto_session``, ``influxdb_session``: one instance for the whole run, for tests that
  only need a service to exist. Do not stop or freeze them; use your own database / topic names.

When a test fails, the last lines of the log of every service it used are added to its report
(a section per service, with the log's path), so a broker or database error shows up next to the
assertion.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from o2chain.procs import ChildProcess, o2chain_argv
from o2chain.services import (
    LOG_TAIL_LINES,
    InfluxDB,
    ManagedService,
    Mosquitto,
    ServiceError,
    Services,
)


def wait_for_points(
    influxdb: InfluxDB, db: str, query: str, count: int, timeout_s: float = 20.0
) -> list[dict[str, Any]]:
    """Poll InfluxDB until ``query`` returns at least ``count`` points, then return them.

    Writers in other processes give no event to await except the data itself; the poll is
    bounded by ``timeout_s`` and fails with what it last saw.
    """
    deadline = time.monotonic() + timeout_s
    points: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            points = influxdb.query_points(query, db=db)
        except ServiceError:  # database not created yet
            points = []
        if len(points) >= count:
            return points
        time.sleep(0.1)
    raise AssertionError(f"expected {count} points for {query!r}, got {len(points)}: {points}")


@dataclass(frozen=True)
class DemoRun:
    """What one bounded ``o2chain demo`` run left behind."""

    data_dir: Path
    stdout: str
    summary: dict[str, Any]


DEMO_DURATION_S = 20


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """Run ``o2chain demo --duration 20`` once per session and keep its data.

    At 20x the scenario's first fault (conc-4's Modbus link lost at 120 simulated seconds)
    comes 6 s in, so the run also holds an offline alarm and health data.

    The acceptance run is 30 s; 20 s keeps CI shorter and still spans several poll and board
    intervals. Tests open a new InfluxDB on ``data_dir / "services"`` to read what it stored.
    """
    base = tmp_path_factory.mktemp("demo")
    summary_path = base / "summary.json"
    result = subprocess.run(
        o2chain_argv(
            "demo", "--duration", str(DEMO_DURATION_S), "--data-dir", str(base / "data"),
            "--interval-s", "2", "--speed", "20", "--summary-json", str(summary_path),
        ),
        capture_output=True, text=True, timeout=DEMO_DURATION_S + 90,
    )  # fmt: skip
    if result.returncode != 0 or not summary_path.exists():
        pytest.fail(f"o2chain demo failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return DemoRun(base / "data", result.stdout, json.loads(summary_path.read_text()))


@pytest.fixture
def concentrator_sim(tmp_path: Path) -> Iterator[str]:
    """A medical-concentrator Modbus TCP simulator process; yields its ``tcp://`` URL."""
    with ChildProcess(
        o2chain_argv(
            "sim",
            "concentrator",
            "--profile",
            "medical-concentrator",
            "--listen",
            "tcp://127.0.0.1:0",
            "--seed",
            "3",
        ),
        tmp_path / "sim-concentrator.log",
    ) as sim:
        match = sim.wait_for_log(r'"listening": "(tcp://127\.0\.0\.1:\d+)"')
        yield match.group(1)


@pytest.fixture
def service_dir(tmp_path: Path) -> Path:
    """A fresh directory for service instances (``<tmp_path>/services``).

    No permission games are needed: o2chain's Mosquitto config keeps a root-started broker
    from switching to the ``mosquitto`` user, so a 0700 pytest temp dir is fine.
    """
    path = tmp_path / "services"
    path.mkdir()
    return path


@pytest.fixture
def mosquitto(service_dir: Path) -> Iterator[Mosquitto]:
    """A started private broker (``.url`` = ``mqtt://127.0.0.1:<port>``), stopped afterwards."""
    with Mosquitto(service_dir) as broker:
        yield broker


@pytest.fixture
def influxdb(service_dir: Path) -> Iterator[InfluxDB]:
    """A started private InfluxDB 1.x (``.url`` = ``http://127.0.0.1:<port>``), stopped after."""
    with InfluxDB(service_dir) as database:
        yield database


@pytest.fixture(scope="session")
def mosquitto_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One private broker shared by the whole test session."""
    with Mosquitto(tmp_path_factory.mktemp("mosquitto-session")) as broker:
        yield broker


@pytest.fixture(scope="session")
def influxdb_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB]:
    """One private InfluxDB shared by the whole test session."""
    with InfluxDB(tmp_path_factory.mktemp("influxdb-session")) as database:
        yield database


def _services_used_by(item: pytest.Item) -> list[ManagedService]:
    """Every ManagedService among the item's fixture values (also inside a Services)."""
    found: list[ManagedService] = []
    for value in getattr(item, "funcargs", {}).values():
        candidates = list(value) if isinstance(value, Services) else [value]
        found += [c for c in candidates if isinstance(c, ManagedService) and c not in found]
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of each used service's log to a failed test's report."""
    report = yield
    if report.failed:
        for service in _services_used_by(item):
            title = f"{service.name} log, last {LOG_TAIL_LINES} lines of {service.log_path}"
            report.sections.append((title, service.log_tail()))
    return report
