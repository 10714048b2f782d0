"""Shared fixtures of the gateway's delivery tests: a gateway config writer, a fleet publisher
process and exact point counts in InfluxDB."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest
import tomli_w

from o2base import procs
from o2base.procs import ChildProcess, o2chain_argv
from o2base.services import InfluxDB, Mosquitto, ServiceError

if TYPE_CHECKING:
    from gateway.tests.notify_helpers import Receiver

SITE = "fleet-site"
DB = "o2delivery"
CENTRAL_DB = "o2region"  # the central database of the forwarding tests


def board_id(n: int) -> str:
    """Device ids of boards published by a test's own client."""
    return f"room-{n:03d}"


def sim_board_id(n: int) -> str:
    """Device ids of ``o2chain sim fleet`` (``room-0001`` ...)."""
    return f"room-{n + 1:04d}"


def gateway_config(
    path: Path,
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    state_dir: Path,
    boards: int,
    gateway_id: str = "gw-delivery",
    extra_boards: tuple[str, ...] = (),
    board_name: Callable[[int], str] = board_id,
    **sections: dict[str, Any],
) -> Path:
    """Write a gateway TOML for ``boards`` room boards of :data:`SITE`; extra keys per section."""
    config: dict[str, Any] = {
        "gateway": {
            "id": gateway_id,
            "state_dir": str(state_dir),
            "http_listen": "127.0.0.1:0",  # a free port: tests run side by side
        },
        "mqtt": {"url": mosquitto.url},
        "influx": {
            "url": influxdb.url,
            "database": DB,
            "flush_interval_s": 0.2,
            "max_backoff_s": 1.0,
        },
        "site": [{"id": SITE, "altitude_m": 3650}],
        "device": [
            {"id": board_name(n), "site": SITE, "kind": "room", "transport": "mqtt"}
            for n in range(boards)
        ]
        + [{"id": b, "site": SITE, "kind": "room", "transport": "mqtt"} for b in extra_boards],
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path.write_bytes(tomli_w.dumps(config).encode())
    return path


def fleet_gateway_config(
    path: Path,
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    state_dir: Path,
    boards: int,
    **options: Any,
) -> Path:
    """:func:`gateway_config` for the boards of ``o2chain sim fleet`` (:func:`sim_board_id`)."""
    return gateway_config(
        path, mosquitto, influxdb, state_dir, boards, board_name=sim_board_id, **options
    )


def count_points(influxdb: InfluxDB, field: str = "o2_pct", where: str = "") -> int:
    """Distinct points of ``room`` in :data:`DB` (series + time identify a point)."""
    try:
        rows = influxdb.query_points(f"SELECT count({field}) FROM room {where}", db=DB)
    except ServiceError:
        return 0
    return int(rows[0]["count"]) if rows else 0


def wait_for_count(
    influxdb: InfluxDB, expected: int, timeout_s: float, settle_s: float = 1.0
) -> int:
    """Poll until the count reaches ``expected`` (or the deadline) and stays for ``settle_s``;
    returns the last count (the caller asserts). Writers are other processes: no event exists."""
    deadline = time.monotonic() + timeout_s
    count = count_points(influxdb)
    while time.monotonic() < deadline and count < expected:
        time.sleep(0.25)
        count = count_points(influxdb)
    if count >= expected:
        time.sleep(settle_s)  # anything still in flight would now show up as extra points
        count = count_points(influxdb)
    return count


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    """:func:`o2base.procs.wait_until` failing the test (``AssertionError``) when time runs out:
    for a condition another process or thread makes true (no event to await there)."""
    procs.wait_until(predicate, timeout_s, what, error=AssertionError)


def publish_all(
    mosquitto: Mosquitto, messages: Iterable[tuple[str, bytes | str]], client_id: str
) -> None:
    """Publish ``(topic, payload)`` pairs at QoS 1 as one board client, in order, each
    acknowledged by the broker before the next."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def deadletters(cfg: Path, *args: str) -> list[dict[str, Any]]:
    """``o2chain gateway deadletters -c CFG ARGS...``: the dead letters it prints, one a line."""
    out = subprocess.run(
        o2chain_argv("gateway", "deadletters", "-c", str(cfg), *args),
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


def all_threads_stopped(pid: int) -> bool:
    """Every thread of ``pid`` stopped (SIGSTOP stops the whole process, but a thread in a
    system call, an SQLite write or a socket read say, finishes that call first)."""
    try:
        stats = [(task / "stat").read_text() for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:  # a thread ended meanwhile: look again
        return False
    # The state follows the parenthesised command name, which may itself hold spaces.
    return all(stat.rpartition(")")[2].split()[0] in ("T", "t") for stat in stats)


@dataclass(frozen=True)
class TcpSocket:
    """One IPv4 TCP socket as /proc/net/tcp shows it (loopback: the ports say enough)."""

    local_port: int
    remote_port: int
    tx_queue: int  # bytes sent and not yet acknowledged by the peer
    rx_queue: int  # bytes received and not yet read by the owner
    inode: str


def tcp_sockets(pid: int | None = None) -> list[TcpSocket]:
    """Every IPv4 TCP socket of the machine, or only those ``pid`` holds open."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        tx, rx = fields[4].split(":")
        found.append(
            TcpSocket(
                int(fields[1].split(":")[1], 16),
                int(fields[2].split(":")[1], 16),
                int(tx, 16),
                int(rx, 16),
                fields[9],
            )
        )
    if pid is None:
        return found
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return [s for s in found if s.inode in inodes]


def sim_fleet_argv(mqtt_url: str, boards: int, readings: int, interval_s: float) -> list[str]:
    """``o2chain sim fleet``: real board clients (store and forward, replay arrays, will)."""
    return o2chain_argv(
        "sim",
        "fleet",
        "--mqtt",
        mqtt_url,
        "--site",
        SITE,
        "--boards",
        str(boards),
        "--readings",
        str(readings),
        "--interval-s",
        str(interval_s),
        "--seed",
        "7",
        "--timeout-s",
        "240",
    )


def start_gateway(cfg: Path, log: Path) -> ChildProcess:
    """``o2chain gateway run -c CFG``, started and subscribed to its boards."""
    gw = ChildProcess(o2chain_argv("gateway", "run", "-c", str(cfg)), log).start()
    gw.wait_for_log("MQTT subscribed", timeout_s=30)
    return gw


def fleet_summary_of(proc: ChildProcess, total: int, timeout_s: float) -> dict[str, Any]:
    """Wait for a fleet (:func:`sim_fleet`) to finish; its summary, every reading sent."""
    wait_until(lambda: not proc.running, timeout_s, "the fleet to finish")
    summary: dict[str, Any] = json.loads(proc.log_text().strip().splitlines()[-1])
    assert proc.returncode == 0 and summary["readings_sent"] == total, summary
    return summary


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    """The notification receivers a test started (gateway/tests/notify_helpers.py), closed
    after it."""
    started: list[Receiver] = []
    yield started
    for r in started:
        r.close()


@pytest.fixture
def sim_fleet(tmp_path: Path) -> Iterator[Callable[..., ChildProcess]]:
    """``sim_fleet(mqtt_url, boards, readings, interval_s)`` starts ``o2chain sim fleet``."""
    started: list[ChildProcess] = []

    def start(mqtt_url: str, boards: int, readings: int, interval_s: float) -> ChildProcess:
        proc = ChildProcess(
            sim_fleet_argv(mqtt_url, boards, readings, interval_s),
            tmp_path / f"sim-fleet-{len(started)}.log",
        ).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def central(tmp_path: Path) -> Iterator[InfluxDB]:
    """A second InfluxDB server: a region's central database."""
    with InfluxDB(tmp_path / "central") as database:
        yield database


def central_count(central: InfluxDB) -> int:
    """Room readings in the central database (0 before the forwarder created it)."""
    try:
        rows = central.query_points("SELECT count(o2_pct) FROM room", db=CENTRAL_DB)
    except ServiceError:  # no database yet: the forwarder creates it with its first write
        return 0
    return int(rows[0]["count"]) if rows else 0
