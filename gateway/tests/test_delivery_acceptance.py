"""Delivery acceptance: a 20,000-reading fleet run (``o2chain sim fleet``: 20 real board
clients with store and forward) through real Mosquitto and InfluxDB while the gateway is
SIGKILLed, InfluxDB is down, or the broker restarts - and InfluxDB ends up holding exactly 20,000
distinct readings, 1,000 per board, seq 0..999. Through the kills, alarm events, chain balance
and self-metric points are under the same guarantee: each alarm transition stored once, with its
state, and announced only after that."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from gateway.tests.conftest import (
    DB,
    SITE,
    all_threads_stopped,
    count_points,
    fleet_gateway_config,
    fleet_summary_of,
    sim_board_id,
    start_gateway,
    tcp_sockets,
    wait_for_count,
    wait_until,
)
from o2base.procs import ChildProcess
from o2base.services import InfluxDB, Mosquitto

pytestmark = pytest.mark.integration

BOARDS = 20
PER_BOARD = 1000
TOTAL = BOARDS * PER_BOARD


def fleet_summary(proc: ChildProcess, timeout_s: float) -> dict[str, Any]:
    summary = fleet_summary_of(proc, TOTAL, timeout_s)
    assert summary["complete"] and summary["readings_dropped"] == 0, summary
    return summary


def config(tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB) -> Path:
    return fleet_gateway_config(
        tmp_path / "gw.toml", mosquitto, influxdb, tmp_path / "state", BOARDS
    )


def assert_every_reading_once(influxdb: InfluxDB, timeout_s: float = 60) -> None:
    count = wait_for_count(influxdb, TOTAL, timeout_s)
    assert count == TOTAL
    per_board = influxdb.query_points(
        "SELECT count(seq), count(distinct(seq)) AS unique FROM room GROUP BY device", db=DB
    )
    assert len(per_board) == BOARDS
    assert {(int(p["count"]), int(p["unique"])) for p in per_board} == {(PER_BOARD, PER_BOARD)}
    spread = influxdb.query_points("SELECT min(seq), max(seq) FROM room GROUP BY device", db=DB)
    assert {(p["min"], p["max"]) for p in spread} == {(0, PER_BOARD - 1)}


# Rules on the boards' own sequence numbers: their transitions are known in advance whatever
# the run's timing, so the test knows exactly which alarm events must exist. "seq-early" raises
# at seq 0 and clears at seq 250, "seq-late" raises at seq 600: three events per board, the
# first kill lands near seq 250.
SEQ_RULES = [
    {"id": "seq-early", "field": "seq", "op": "<", "value": 250, "severity": "warning"},
    {"id": "seq-late", "field": "seq", "op": ">=", "value": 600, "severity": "warning"},
]


def with_seq_rules(cfg: Path) -> Path:
    data = tomllib.loads(cfg.read_text())
    data["alarm"] = SEQ_RULES
    data["enrich"] = {"chain_interval_s": 1.0}
    data["gateway"]["metrics_interval_s"] = 1.0
    cfg.write_bytes(tomli_w.dumps(data).encode())
    return cfg


def assert_alarm_events_once(influxdb: InfluxDB, state_dir: Path) -> None:
    """Each board's three transitions stored exactly once, in order, and the alarm log the
    gateway committed with them holds the same events (state and point in one transaction)."""
    points = influxdb.query_points(
        "SELECT state, value FROM alarm WHERE rule =~ /^seq-/ GROUP BY device, rule", db=DB
    )
    seen: dict[tuple[str, str], list[str]] = {}
    for p in sorted(points, key=lambda p: p["time"]):
        seen.setdefault((p["device"], p["rule"]), []).append(p["state"])
    assert len(seen) == 2 * BOARDS, sorted(seen)
    for (device, rule), states in seen.items():
        expected = ["raise", "clear"] if rule == "seq-early" else ["raise"]
        assert states == expected, (device, rule, states)
    with sqlite3.connect(state_dir / "outbox.sqlite") as db:
        logged = [json.loads(e) for (e,) in db.execute("SELECT event FROM alarm_log")]
        active = {k for (k,) in db.execute("SELECT key FROM alarm_state")}
    seq_log = [e for e in logged if e["rule"].startswith("seq-")]
    assert len(seq_log) == 3 * BOARDS
    assert active >= {f"{SITE}/{sim_board_id(n)}/seq-late" for n in range(BOARDS)}


def unread_bytes(pid: int, local_port: int, broker_port: int) -> int:
    """Bytes waiting in the receive queue of ``pid``'s TCP connection from ``local_port`` to
    the broker: what the broker sent and the process has not read."""
    for sock in tcp_sockets(pid):
        if sock.local_port == local_port and sock.remote_port == broker_port:
            return sock.rx_queue
    raise AssertionError(f"no connection from port {local_port} to {broker_port} in {pid}")


def seq_progress(state_dir: Path) -> int:
    """The sum over devices and boots of the highest ``seq`` the gateway has stored (its
    duplicate tracker, committed with the readings; SQLite's WAL lets another process read)."""
    with contextlib.closing(sqlite3.connect(state_dir / "outbox.sqlite")) as db:
        return int(db.execute("SELECT TOTAL(max_seq) FROM seqstate").fetchone()[0])


# More than the broker's control packets and $SYS messages add up to: at least one telemetry
# PUBLISH (about 200 bytes each) is among the unread bytes.
UNREAD_MIN = 512


def kill_with_messages_unread(gw: ChildProcess, mosquitto: Mosquitto) -> int:
    """SIGKILL the gateway while the broker has sent it messages it has not read: stopped
    (SIGSTOP, every thread), the kernel's receive queue of its ingest connection is looked at,
    and it is killed as it stands once that holds at least :data:`UNREAD_MIN` bytes (otherwise
    it runs on and is looked at again). Messages it has not read it has neither committed nor
    acknowledged: the broker must send them again. Returns the unread bytes."""
    pid = gw.pid
    assert pid is not None
    # The ingest connection's port, as the broker logged it (the alarm publisher's client id
    # has a suffix).
    connects = re.findall(
        r"New client connected from 127\.0\.0\.1:(\d+) as o2chain-gw-delivery \(",
        mosquitto.log_path.read_text(),
    )
    port = int(connects[-1])
    deadline = time.monotonic() + 30
    while True:
        gw.freeze()
        wait_until(lambda: all_threads_stopped(pid), 5, "the gateway stopped")
        unread = unread_bytes(pid, port, mosquitto.port)
        if unread >= UNREAD_MIN:
            gw.kill()
            return unread
        gw.thaw()
        assert time.monotonic() < deadline, "no messages in flight to the gateway for 30 s"
        wait_until(lambda: unread_bytes(pid, port, mosquitto.port) >= UNREAD_MIN, 30, "unread")


def test_gateway_sigkill_mid_run_loses_and_doubles_nothing(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    sim_fleet: Callable[..., ChildProcess],
) -> None:
    cfg = with_seq_rules(config(tmp_path, mosquitto, influxdb))
    gw = start_gateway(cfg, tmp_path / "gw.log")
    try:
        # 1,000/s for 20 s: the fleet outlasts both kills and restarts (a gateway start takes
        # seconds on a loaded machine; at 4,000/s the fleet was once done before the second
        # run started, which then had a short backlog to read and nothing in flight to kill).
        pub = sim_fleet(mosquitto.url, BOARDS, PER_BOARD, interval_s=0.02)
        wait_until(lambda: count_points(influxdb) >= TOTAL // 4, 30, "a quarter of the run")
        gw.kill()  # SIGKILL: no goodbye, whatever was in flight is in flight
        killed_ms = int(time.time() * 1000)
        stored = seq_progress(tmp_path / "state")
        # While it is down the fleet publishes into the gateway's session at the broker...
        time.sleep(1.5)  # a fault's duration, not a synchronisation
        gw = start_gateway(cfg, tmp_path / "gw.log")
        # ... so it restarts into a backlog arriving as fast as it can take it: the second
        # kill lands in that burst, provably with work in flight (a kill after the burst, when
        # everything had been stored and acknowledged, once caught nothing). The broker first
        # sends again what the killed run had not acknowledged, some of it stored already
        # (duplicates, whichever run gets them); once this run has stored a reading the first
        # had not, every later message is new.
        wait_until(lambda: seq_progress(tmp_path / "state") > stored, 30, "new readings stored")
        unread = kill_with_messages_unread(gw, mosquitto)
        assert count_points(influxdb) < TOTAL, "the kills came too late to test anything"
        gw = start_gateway(cfg, tmp_path / "gw.log")
        fleet_summary(pub, 60)
        assert_every_reading_once(influxdb)
        wait_until(
            lambda: len(influxdb.query_points("SELECT state FROM alarm", db=DB)) >= 3 * BOARDS,
            30,
            "the alarm events",
        )
    finally:
        gw.stop()
    assert gw.returncode == 0, gw.log_tail()
    assert_alarm_events_once(influxdb, tmp_path / "state")
    # The second kill caught work in flight: messages the broker had sent and the gateway had
    # not even read, so neither committed nor acknowledged; the broker sent them again to the
    # last run, which found them new.
    recovered = [int(n) for n in re.findall(r"(\d+) redelivered uncommitted", gw.log_text())]
    assert recovered and sum(recovered) > 0, gw.log_tail()
    print(f"second kill: {unread} bytes unread from the broker; {sum(recovered)} redelivered")
    # Chain balance and self-metric points (one a second) flowed before and after the kills,
    # each stored once (their identity is site or gateway + time: a replay would overwrite).
    for measurement in ("chain", "gateway"):
        rows = influxdb.query_points(f"SELECT * FROM {measurement}", db=DB)
        times = [r["time"] for r in rows]
        assert len(times) >= 3 and len(set(times)) == len(times), measurement
        assert min(times) < killed_ms < max(times), measurement


def _influx_outage(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    sim_fleet: Callable[..., ChildProcess],
    outage_s: float,
) -> None:
    cfg = config(tmp_path, mosquitto, influxdb)
    interval_s = (outage_s + 6) / PER_BOARD  # the run spans the outage, seconds either side
    rate = BOARDS / interval_s
    gw = start_gateway(cfg, tmp_path / "gw.log")
    try:
        pub = sim_fleet(mosquitto.url, BOARDS, PER_BOARD, interval_s=interval_s)
        wait_until(lambda: count_points(influxdb) >= rate * 2, 30, "two seconds of data")
        influxdb.stop()
        stopped_at = time.monotonic()
        wait_until(lambda: time.monotonic() - stopped_at >= outage_s, outage_s + 5, "outage")
        influxdb.start()
        fleet_summary(pub, outage_s + 60)
        assert_every_reading_once(influxdb)
        assert "InfluxDB unavailable" in gw.log_text()
    finally:
        gw.stop()
    assert gw.returncode == 0, gw.log_tail()


def test_influxdb_down_mid_run_short(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    sim_fleet: Callable[..., ChildProcess],
) -> None:
    _influx_outage(tmp_path, mosquitto, influxdb, sim_fleet, outage_s=6)


@pytest.mark.soak
def test_influxdb_down_60s_mid_run(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    sim_fleet: Callable[..., ChildProcess],
) -> None:
    _influx_outage(tmp_path, mosquitto, influxdb, sim_fleet, outage_s=60)


def test_broker_restart_mid_run(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    sim_fleet: Callable[..., ChildProcess],
) -> None:
    cfg = config(tmp_path, mosquitto, influxdb)
    gw = start_gateway(cfg, tmp_path / "gw.log")
    try:
        pub = sim_fleet(mosquitto.url, BOARDS, PER_BOARD, interval_s=0.006)  # ~3,300/s
        wait_until(lambda: count_points(influxdb) >= TOTAL // 4, 30, "a quarter of the run")
        mosquitto.restart()  # SIGTERM: Mosquitto saves sessions and queued QoS 1 messages
        restarted_at = count_points(influxdb)
        summary = fleet_summary(pub, 90)
        assert restarted_at < TOTAL, "the restart came too late to test anything"
        assert summary["reconnects"] >= BOARDS, summary  # the boards saw the restart too
        assert_every_reading_once(influxdb)
        log = gw.log_text()
        assert log.count("MQTT subscribed") >= 2, "the gateway did not resubscribe"
        assert "session present: True" in log
    finally:
        gw.stop()
    assert gw.returncode == 0, gw.log_tail()


def test_full_outbox_holds_acks_back_so_a_sigkill_then_loses_nothing(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    sim_fleet: Callable[..., ChildProcess],
) -> None:
    """InfluxDB down and the outbox at its bound (policy block): the gateway must stop
    acknowledging, so what it holds in memory is still the broker's when it is killed."""
    boards, per_board = 4, 500
    cfg = fleet_gateway_config(
        tmp_path / "gw.toml",
        mosquitto,
        influxdb,
        tmp_path / "state",
        boards,
        gateway={"outbox_max_mb": 0.05, "outbox_full_policy": "block"},  # ~400 readings
    )
    influxdb.stop()
    gw = start_gateway(cfg, tmp_path / "gw.log")
    try:
        pub = sim_fleet(mosquitto.url, boards, per_board, interval_s=0.002)
        gw.wait_for_log("not acknowledging; the broker holds messages", timeout_s=30)
        fleet_summary_of(pub, boards * per_board, 60)  # the broker took every reading
        gw.kill()
        influxdb.start()
        gw = start_gateway(cfg, tmp_path / "gw.log")
        assert wait_for_count(influxdb, boards * per_board, 60) == boards * per_board
    finally:
        gw.stop()
    assert gw.returncode == 0, gw.log_tail()
