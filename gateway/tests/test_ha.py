"""A group of gateways (``[mqtt] shared_group``) that survives the loss of any member, through
real Mosquitto, InfluxDB and gateway processes (docs/scaling.md).

Three members, a fleet of simulated boards publishing QoS 1 readings identified by (boot, seq),
and members SIGKILLed for good mid-stream and replaced by fresh members with new ids: InfluxDB
must end up holding every reading exactly once, and an alarm raised before a kill must stay
raised once (one ``raise`` point), not be raised again by the member that took over.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from gateway.tests.conftest import (
    DB,
    count_points,
    fleet_gateway_config,
    wait_for_count,
    wait_until,
)
from o2base.procs import ChildProcess, o2chain_argv
from o2base.services import InfluxDB, Mosquitto
from o2chain.testing import MqttProbe

pytestmark = pytest.mark.integration

GROUP = "site-gws"
# Raised by every board at seq 100, long before the first kill, and never cleared: the
# condition stands through every takeover.
SEQ_RULE = {"id": "seq-high", "field": "seq", "op": ">=", "value": 100, "severity": "warning"}
ACTIVE = re.compile(rf"HA {GROUP}: (gw-[a-z]+) is active \(term (\d+)\)")


@dataclass
class Group:
    """The members of one group, started and stopped by the test."""

    tmp_path: Path
    mosquitto: Mosquitto
    influxdb: InfluxDB
    boards: int
    members: dict[str, ChildProcess] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)

    def start(self, name: str, wait: bool = True) -> ChildProcess:
        cfg = fleet_gateway_config(
            self.tmp_path / f"{name}.toml",
            self.mosquitto,
            self.influxdb,
            self.tmp_path / name,
            self.boards,
            gateway_id=name,
            # keepalive 6 s: heartbeat 2 s, a member unheard for 6 s is gone (the will is faster)
            mqtt={"shared_group": GROUP, "keepalive_s": 6},
            alarm_engine={"builtin": False},
        )
        data = tomllib.loads(cfg.read_text())
        data["alarm"] = [SEQ_RULE]
        cfg.write_bytes(tomli_w.dumps(data).encode())
        gw = ChildProcess(
            o2chain_argv("gateway", "run", "-c", str(cfg)), self.tmp_path / f"{name}.log"
        )
        self.members[name] = gw.start()
        if wait:
            gw.wait_for_log(rf"HA {GROUP}: {name} in sync", timeout_s=30)
        return gw

    def start_all(self, *names: str) -> None:
        """Start members side by side (a Python start takes seconds on a loaded machine)."""
        for name in names:
            self.start(name, wait=False)
        for name in names:
            self.members[name].wait_for_log(rf"HA {GROUP}: {name} in sync", timeout_s=30)

    def terms(self) -> list[tuple[int, str]]:
        """Every term begun so far, (term, member), in order."""
        found = []
        for gw in self.members.values():
            found += [(int(m.group(2)), m.group(1)) for m in ACTIVE.finditer(gw.log_text())]
        return sorted(found)

    def wait_for_term(self, after: int, timeout_s: float = 30) -> tuple[int, str]:
        """The first term newer than ``after``, once its member is subscribed."""
        wait_until(lambda: any(t > after for t, _ in self.terms()), timeout_s, "a new term")
        terms = self.terms()
        # One member per term: two that claimed at once both connecting was seen once.
        assert len({t for t, _ in terms}) == len(terms), terms
        term, name = next((t, n) for t, n in terms if t > after)
        self.members[name].wait_for_log("MQTT subscribed", timeout_s=timeout_s)
        return term, name

    def kill(self, name: str) -> None:
        self.members[name].kill()  # SIGKILL: for good, its state dir is never used again
        self.killed.append(name)

    def stop(self) -> None:
        for gw in self.members.values():
            gw.stop()

    def live(self) -> dict[str, ChildProcess]:
        return {n: gw for n, gw in self.members.items() if n not in self.killed}


@pytest.fixture
def group(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB
) -> Iterator[Callable[..., Group]]:
    made: list[Group] = []

    def make(boards: int) -> Group:
        g = Group(tmp_path, mosquitto, influxdb, boards)
        made.append(g)
        return g

    yield make
    for g in made:
        g.stop()


def fleet_done(pub: ChildProcess, total: int, timeout_s: float) -> dict[str, Any]:
    wait_until(lambda: not pub.running, timeout_s, "the fleet to finish")
    summary: dict[str, Any] = json.loads(pub.log_text().strip().splitlines()[-1])
    assert pub.returncode == 0 and summary["readings_sent"] == total, summary
    assert summary["complete"] and summary["readings_dropped"] == 0, summary
    return summary


def assert_every_reading_once(influxdb: InfluxDB, boards: int, per_board: int) -> None:
    total = boards * per_board
    assert wait_for_count(influxdb, total, 60) == total
    per_device = influxdb.query_points(
        "SELECT count(seq), count(distinct(seq)) AS unique FROM room GROUP BY device", db=DB
    )
    assert len(per_device) == boards
    assert {(int(p["count"]), int(p["unique"])) for p in per_device} == {(per_board, per_board)}
    spread = influxdb.query_points("SELECT min(seq), max(seq) FROM room GROUP BY device", db=DB)
    assert {(p["min"], p["max"]) for p in spread} == {(0, per_board - 1)}


def assert_raised_once(influxdb: InfluxDB, boards: int) -> None:
    """One ``raise`` point per board for the standing condition, and no other event."""
    points = influxdb.query_points(
        "SELECT state, value FROM alarm WHERE rule = 'seq-high' GROUP BY device", db=DB
    )
    by_device: dict[str, list[str]] = {}
    for p in points:
        by_device.setdefault(p["device"], []).append(p["state"])
    assert len(by_device) == boards, sorted(by_device)
    assert set(map(tuple, by_device.values())) == {("raise",)}, by_device


def assert_retained_alarms(mosquitto: Mosquitto, boards: int) -> None:
    """The group's retained alarm topics hold every raised alarm, once each."""
    with MqttProbe(mosquitto.port) as probe:
        assert probe.connect() == 0
        probe.subscribe(f"o2/+/gateway/{GROUP}/alarm/+/+")
        probe.subscribe("test/marker")
        probe.publish("test/marker", b"end")
        probe.wait_for("test/marker")
        retained = [m for m in probe.messages if m[2] and m[0] != "test/marker"]
    assert len(retained) == boards
    assert {json.loads(m[1])["state"] for m in retained} == {"raised"}


def undrained(state_dir: Path, after_id: int = 0) -> int:
    """Points a member has committed and not yet written, in rows after ``after_id`` (read
    from its outbox file, which SQLite's WAL lets another process read while the member
    runs)."""
    try:
        with contextlib.closing(sqlite3.connect(state_dir / "outbox.sqlite")) as db:
            sql = "SELECT TOTAL(points) FROM outbox WHERE id > ?"
            return int(db.execute(sql, (after_id,)).fetchone()[0])
    except sqlite3.Error:  # not created yet
        return 0


def outbox_high_water(state_dir: Path) -> int:
    """The highest row id the member's outbox ever gave out (its AUTOINCREMENT counter)."""
    with contextlib.closing(sqlite3.connect(state_dir / "outbox.sqlite")) as db:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    return 0 if row is None else int(row[0])


def kill_holding_work(g: Group, name: str, influxdb: InfluxDB, points: int) -> int:
    """SIGKILL member ``name`` while its outbox holds at least ``points`` committed points
    InfluxDB has not written, from messages it has therefore not acknowledged; returns how many
    points it died with.

    InfluxDB is frozen first. An answer it sent just before still lets the member delete the
    rows of that batch (counted in the outbox as a whole while the member ran, 1,000 points were
    seen to go between the count and the kill under load). That batch holds only rows committed
    before the freeze; what the member commits after it can only be written once InfluxDB runs
    again. So only rows after the outbox's high-water mark at the freeze count."""
    state_dir = g.tmp_path / name
    influxdb.freeze()
    try:
        frozen_at = outbox_high_water(state_dir)
        wait_until(lambda: undrained(state_dir, frozen_at) >= points, 30, f"work held by {name}")
        g.kill(name)
    finally:
        influxdb.thaw()
    assert undrained(state_dir, frozen_at) >= points  # what it died with
    return undrained(state_dir)


def redelivered_to(gw: ChildProcess) -> int:
    """Messages that reached ``gw`` again (DUP) and were new to it: work the member before it
    had received and not acknowledged."""
    return sum(int(n) for n in re.findall(r"(\d+) redelivered uncommitted", gw.log_text()))


def test_active_killed_for_good_mid_stream_loses_and_doubles_nothing(
    group: Callable[..., Group],
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    sim_fleet: Callable[..., ChildProcess],
) -> None:
    boards, per_board = 20, 1000
    g = group(boards)
    g.start_all("gw-a", "gw-b", "gw-c")
    term, first = g.wait_for_term(0)
    pub = sim_fleet(mosquitto.url, boards, per_board, interval_s=0.005)  # 4,000/s
    wait_until(lambda: count_points(influxdb) >= boards * per_board // 4, 30, "a quarter")
    # InfluxDB stalls, so the active holds committed points it cannot write, and the messages
    # they came from unacknowledged: the kill then certainly catches work in flight.
    killed_at = count_points(influxdb)
    held = kill_holding_work(g, first, influxdb, 1000)
    g.start("gw-d")  # the replacement: a new id, no manual step
    _, second = g.wait_for_term(term)
    assert second != first
    fleet_done(pub, boards * per_board, 60)
    assert killed_at < boards * per_board, "the kill came too late to test anything"
    assert_every_reading_once(influxdb, boards, per_board)
    assert_raised_once(influxdb, boards)
    assert_retained_alarms(mosquitto, boards)
    g.stop()
    for name, gw in g.live().items():
        assert gw.returncode == 0, (name, gw.log_tail())
    successor = g.members[second]
    log = successor.log_text()
    assert f"{boards} active alarms restored" in log, log[-3000:]
    assert "session present: True" in log  # it inherited the group's session
    # The killed member had work in flight: points committed to its outbox and not written
    # (they stay there for good), from messages it had not acknowledged: they came to its
    # successor again.
    assert held >= 1000
    assert redelivered_to(successor) > 0, log[-3000:]
    print(
        f"killed {first} at {killed_at} points in InfluxDB, {held} points in its outbox; "
        f"{redelivered_to(successor)} messages redelivered to {second}"
    )


def test_standby_killed_changes_nothing(
    group: Callable[..., Group],
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    sim_fleet: Callable[..., ChildProcess],
) -> None:
    boards, per_board = 10, 600
    g = group(boards)
    g.start_all("gw-a", "gw-b", "gw-c")
    term, active = g.wait_for_term(0)
    standby = next(n for n in g.members if n != active)
    pub = sim_fleet(mosquitto.url, boards, per_board, interval_s=0.005)
    wait_until(lambda: count_points(influxdb) >= boards * per_board // 4, 30, "a quarter")
    g.kill(standby)
    fleet_done(pub, boards * per_board, 60)
    assert_every_reading_once(influxdb, boards, per_board)
    assert_raised_once(influxdb, boards)
    assert g.terms() == [(term, active)]  # no election: the active kept its session
    g.stop()
    # Its one term ended when the test stopped it, not before.
    assert re.findall(r"is standby again \((.*?)\)", g.members[active].log_text()) == ["stopping"]


def test_active_killed_twice_in_a_row(
    group: Callable[..., Group],
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    sim_fleet: Callable[..., ChildProcess],
) -> None:
    boards, per_board = 10, 1000
    g = group(boards)
    g.start_all("gw-a", "gw-b", "gw-c")
    term, first = g.wait_for_term(0)
    pub = sim_fleet(mosquitto.url, boards, per_board, interval_s=0.01)  # 1,000/s, 10 s
    wait_until(lambda: count_points(influxdb) >= boards * per_board // 5, 30, "a fifth")
    held = [kill_holding_work(g, first, influxdb, 500)]
    first_kill = count_points(influxdb)
    term, second = g.wait_for_term(term)
    # The second kill lands while the successor catches up with what queued in the session.
    wait_until(lambda: count_points(influxdb) > first_kill + 200, 30, "the catch-up")
    held.append(kill_holding_work(g, second, influxdb, 500))
    second_kill = count_points(influxdb)
    fleet_on = pub.running
    g.start("gw-d")  # a replacement joins meanwhile
    term, third = g.wait_for_term(term)
    assert len({first, second, third}) == 3
    fleet_done(pub, boards * per_board, 60)
    assert second_kill < boards * per_board, "the kills came too late to test anything"
    assert_every_reading_once(influxdb, boards, per_board)
    assert_raised_once(influxdb, boards)
    g.stop()
    assert redelivered_to(g.members[third]) > 0
    print(
        f"held {held} points at the kills ({first_kill}, {second_kill} in InfluxDB; fleet "
        f"still publishing at the second: {fleet_on}); {redelivered_to(g.members[third])} "
        f"messages redelivered to {third}"
    )


@pytest.mark.soak
def test_soak_active_killed_again_and_again(
    group: Callable[..., Group],
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    sim_fleet: Callable[..., ChildProcess],
) -> None:
    """20 boards x 5,000 readings; the active is killed six times and each time replaced."""
    boards, per_board = 20, 5000
    g = group(boards)
    names = iter(f"gw-{chr(c)}" for c in range(ord("a"), ord("z") + 1))
    g.start_all(*(next(names) for _ in range(3)))
    term, active = g.wait_for_term(0)
    pub = sim_fleet(mosquitto.url, boards, per_board, interval_s=0.01)  # 2,000/s, 50 s
    for kill in range(6):
        target = boards * per_board * (kill + 1) // 8

        def reached(t: int = target) -> bool:
            return count_points(influxdb) >= t

        wait_until(reached, 60, f"kill {kill + 1}")
        kill_holding_work(g, active, influxdb, 500)
        g.start(next(names))
        term, active = g.wait_for_term(term, timeout_s=60)
    fleet_done(pub, boards * per_board, 120)
    assert_every_reading_once(influxdb, boards, per_board)
    assert_raised_once(influxdb, boards)
    started = time.monotonic()
    g.stop()
    assert time.monotonic() - started < 30
