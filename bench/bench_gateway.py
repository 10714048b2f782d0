"""Gateway benchmark: one command, one table.

    .venv/bin/python bench/bench_gateway.py [--quick] [--skip-modbus] [--stages-only]

Starts a private Mosquitto and InfluxDB and runs the gateway with its default configuration on
the fleet's default payloads (``o2chain sim fleet``'s room boards). Every MQTT figure is put
against the C subscriber, ``mosquitto_sub -q 1``, measured in the same run:

- **backlog drain**: 100,000 readings (20 boards) queued for three persistent sessions at once
  while their clients are away, then drained by each alone: mosquitto_sub, the gateway (from
  its connection until InfluxDB holds them all; exactly once = as many points and as many
  distinct (device, seq) as published), and the **Python baseline**, a naive bridge (paho
  auto-ack, one HTTP write per message, no outbox) over a 5 s window;
- **CPU at light load**: 500 readings/s paced (20 boards x 25/s) with probe readings every
  20 ms: gateway CPU per reading from /proc, p50/p99 board ``ts`` -> queryable in InfluxDB, the
  C subscriber's CPU per reading on the same load, and the gateway committing at once
  (``commit_linger_ms = 0``) for comparison;
- **paced sustained rate**: stepped paced loads (1k, 2k, 4k, ... readings/s); a step is held
  when every reading is in InfluxDB (the C subscriber: received) within 2 s of the load's end;
  the C subscriber's steps run first, alone, then the gateway's, alone;
- **overload**: twice the best sustained rate on a broker that drops beyond 20,000 queued
  messages a client, taken by the C subscriber alone, then by the gateway alone in windows
  alternating with windows at the best step's rate: the gateway's delivered rate against the
  best sustained one (a verdict only when the steps ended at the gateway's own limit and the
  load generator made the rate), its CPU per reading at both, every process's CPU, and the
  broker's drops as the gateway's /metrics and /api/status show them;
- **Modbus TCP**: polls/s over 100 simulated devices (one simulator process, 100 ports), the
  gateway's pollers against raw pymodbus doing the same reads on the same farm;
- **Modbus RTU**: share of the line's theoretical frame rate used at 9600 and 19200 baud, on a
  pty pair with a slave that holds each answer for its time on the wire;
- **in process** (no broker, CPU time of this process): the pipeline stages (enrichment,
  alarms, self-observation) per reading, and the whole commit path (decode, duplicates, stages,
  line protocol, fsync'd outbox commit) per reading.

The light load is ``mosquitto_pub -l`` processes (one a board) fed in 10 ms ticks; the steps
and the overload are :class:`RawLoad`, this process publishing for every board over one QoS 1
connection (20 ``mosquitto_pub`` and their feeder took most of a core at 16,000/s). Every
phase is bounded in count and time. The machine is 2 cores shared with other jobs: compare
figures of one run, repeat, quote medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import requests
import tomli_w

from o2base.procs import ChildProcess, o2chain_argv
from o2base.services import InfluxDB, Mosquitto, Services
from o2core import mqtt_codec

REPO = Path(__file__).resolve().parent.parent

SITE = "bench"
DB = "o2bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- process metrics ---------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def runqueue_s(pid: int) -> float:
    """Seconds the process's threads were runnable but waiting for a CPU (schedstat): on a
    shared machine, time a rate lost to other jobs rather than to the code."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def count_points(influx: InfluxDB, where: str = "") -> int:
    try:
        rows = influx.query_points(f"SELECT count(o2_pct) FROM room {where}", db=DB)
    except Exception:
        return 0
    return int(rows[0]["count"]) if rows else 0


# -- load ---------------------------------------------------------------------------------------


def board_id(n: int) -> str:
    """Board ``n`` (from 1) as ``o2chain sim fleet`` names them."""
    return f"room-{n:04d}"


def room_values(boards: int, per_board: int = 200, seed: int = 1) -> list[list[dict[str, float]]]:
    """The fleet's default payload values (``o2chain sim fleet``: hotel rooms on a PSA
    pipeline, half of them with a CO2 sensor), ``per_board`` successive measurements a board,
    cycled by the loads below."""
    from simulators.fleet import default_room_source
    from simulators.physics.atmosphere import Weather

    weather = Weather(3650.0, seed=seed)
    out = []
    for b in range(boards):
        source = default_room_source(b + 1, seed, weather)
        out.append([source.measure(0.04 if i else 0.0) for i in range(per_board)])
    return out


def reading_json(values: dict[str, float], boot: int, seq: int, ts_ms: int) -> str:
    body = {"v": 1, "boot": boot, "seq": seq, "ts": ts_ms, **values}
    return json.dumps(body, separators=(",", ":"))


def mosquitto_pub(broker: Mosquitto, board: int, stdin: Any) -> subprocess.Popen[bytes]:
    """A board: ``mosquitto_pub -l -q 1`` publishing each line of ``stdin`` (< 65,535 lines:
    past that its QoS 1 message ids wrap)."""
    return subprocess.Popen(
        ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
         "-t", f"o2/{SITE}/{board_id(board)}/telemetry", "-l",
         "-i", f"bench-pub-{board}-{time.monotonic_ns()}"],
        stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def backlog_files(tmp: Path, values: list[list[dict[str, float]]], per_board: int) -> list[Path]:
    """One file of readings per board, board times one ms apart ending an hour ago."""
    first_ts = int(time.time() * 1000) - 3_600_000 - per_board
    files = []
    for b, vals in enumerate(values, start=1):
        path = tmp / f"backlog-{b}.txt"
        with path.open("w") as f:
            for seq in range(per_board):
                f.write(reading_json(vals[seq % len(vals)], 1, seq, first_ts + seq) + "\n")
        files.append(path)
    return files


def wait_procs(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class PacedLoad:
    """``boards`` mosquitto_pub processes fed ``rate`` readings/s in total, in 10 ms ticks,
    boards in turn; each reading's ``ts`` is the wall clock when it is handed over. C does the
    MQTT side, so the load costs this process a few us per reading (``o2chain sim fleet`` is a
    Python client per board and tops out far lower on this machine)."""

    def __init__(
        self,
        broker: Mosquitto,
        values: list[list[dict[str, float]]],
        rate: float,
        seconds: float,
        boot: int,
    ):
        self.broker, self.values, self.rate, self.seconds, self.boot = (
            broker, values, rate, seconds, boot,
        )  # fmt: skip
        self.sent = 0
        self.first_ts_ms = 0
        self.last_ts_ms = 0
        self.elapsed_s = 0.0
        self.done_s = 0.0  # from the start until every publisher had exited

    def run(self) -> PacedLoad:
        boards = len(self.values)
        procs = [mosquitto_pub(self.broker, b + 1, subprocess.PIPE) for b in range(boards)]
        seqs = [0] * boards
        last_ts = [0] * boards
        total = int(self.rate * self.seconds)
        t0 = time.monotonic()
        self.first_ts_ms = int(time.time() * 1000)
        board = 0
        try:
            while self.sent < total:
                due = min(total, int(self.rate * (time.monotonic() - t0)) + 1)
                lines: list[list[str]] = [[] for _ in range(boards)]
                now_ms = int(time.time() * 1000)
                while self.sent < due:
                    ts = max(now_ms, last_ts[board] + 1)
                    vals = self.values[board]
                    seq = seqs[board]
                    lines[board].append(reading_json(vals[seq % len(vals)], self.boot, seq, ts))
                    seqs[board], last_ts[board] = seq + 1, ts
                    self.last_ts_ms = max(self.last_ts_ms, ts)
                    self.sent += 1
                    board = (board + 1) % boards
                for proc, chunk in zip(procs, lines, strict=True):
                    if chunk and proc.stdin is not None:
                        proc.stdin.write(("\n".join(chunk) + "\n").encode())
                        proc.stdin.flush()
                time.sleep(0.01)  # pacing the load, not synchronisation
        finally:
            self.elapsed_s = time.monotonic() - t0
            for proc in procs:
                if proc.stdin is not None:
                    proc.stdin.close()
            wait_procs(procs, 60)
            self.done_s = time.monotonic() - t0
        return self

    @property
    def achieved(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s else 0.0


@functools.cache
def _publish_qos1_header(remaining: int) -> bytes:
    """A QoS 1 PUBLISH's fixed header for a packet of ``remaining`` bytes after it (the
    payloads' lengths repeat, so each is encoded once)."""
    buf = bytearray(1 + mqtt_codec.varint_size(remaining))
    buf[0] = mqtt_codec.PUBLISH | 0x02
    mqtt_codec.write_varint(buf, 1, remaining)
    return bytes(buf)


class RawLoad(PacedLoad):
    """The same paced readings as :class:`PacedLoad`, published for every board by this one
    process over one MQTT 3.1.1 connection at QoS 1: each tick's PUBLISH packets are built here
    and written in one ``sendall``, PUBACKs are counted as they come (a PUBACK is 4 bytes), up
    to ``max_inflight`` unacknowledged. It costs a few us a reading and no process a board, so
    it can offer rates 20 ``mosquitto_pub`` processes cannot on two cores (see "Benchmark").
    ``achieved`` is the rate handed to the socket; ``acked`` says whether the broker took them."""

    max_inflight = 20_000
    acked = 0
    cpu_s = 0.0  # this thread's CPU while publishing

    def _connect(self) -> Any:
        import socket

        sock = socket.create_connection((self.broker.host, self.broker.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cid = f"bench-raw-{time.monotonic_ns()}".encode()
        sock.sendall(mqtt_codec.connect(cid, keepalive_s=60))
        if sock.recv(4) != b"\x20\x02\x00\x00":
            raise RuntimeError("raw publisher: the broker refused the connection")
        return sock

    def _read_acks(self, sock: Any, wait_s: float) -> None:
        import select

        pending = b""
        while True:
            ready, _, _ = select.select([sock], [], [], wait_s)
            if not ready:
                return
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError("raw publisher: the broker closed the connection")
            pending += data
            self.acked += len(pending) // 4
            pending = pending[len(pending) // 4 * 4 :]
            wait_s = 0.0

    def run(self) -> RawLoad:
        boards = len(self.values)
        topics = [f"o2/{SITE}/{board_id(b + 1)}/telemetry".encode() for b in range(boards)]
        heads = [len(t).to_bytes(2, "big") + t for t in topics]
        # reading_json's bytes, with the values' part rendered once: "...,"ts":T,<rest>
        rests = [
            [b"," + json.dumps(v, separators=(",", ":")).encode()[1:] for v in vals]
            for vals in self.values
        ]
        prefix = b'{"v":1,"boot":%d,"seq":' % self.boot
        seqs = [0] * boards
        last_ts = [0] * boards
        total = int(self.rate * self.seconds)
        sock = self._connect()
        cpu0 = time.thread_time()
        t0 = time.monotonic()
        self.first_ts_ms = int(time.time() * 1000)
        board, pid = 0, 0
        try:
            while self.sent < total:
                due = min(total, int(self.rate * (time.monotonic() - t0)) + 1)
                due = min(due, self.acked + self.max_inflight)
                now_ms = int(time.time() * 1000)
                out = []
                while self.sent < due:
                    ts = max(now_ms, last_ts[board] + 1)
                    rest = rests[board]
                    seq = seqs[board]
                    payload = prefix + b'%d,"ts":%d' % (seq, ts) + rest[seq % len(rest)]
                    pid = pid % 65535 + 1
                    head = heads[board]
                    out.append(_publish_qos1_header(len(head) + 2 + len(payload)) + head
                               + pid.to_bytes(2, "big") + payload)  # fmt: skip
                    seqs[board], last_ts[board] = seq + 1, ts
                    self.last_ts_ms = max(self.last_ts_ms, ts)
                    self.sent += 1
                    board = (board + 1) % boards
                if out:
                    sock.sendall(b"".join(out))
                self._read_acks(sock, 0.0)
                time.sleep(0.01)  # pacing the load, not synchronisation
            self.elapsed_s = time.monotonic() - t0
            deadline = time.monotonic() + 60
            while self.acked < self.sent and time.monotonic() < deadline:
                self._read_acks(sock, 0.1)
        finally:
            self.cpu_s = time.thread_time() - cpu0
            self.elapsed_s = self.elapsed_s or time.monotonic() - t0
            sock.sendall(b"\xe0\x00")  # DISCONNECT
            sock.close()
            self.done_s = time.monotonic() - t0
        return self

    @property
    def achieved(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s else 0.0


class CSubscriber:
    """``mosquitto_sub -q 1``, the C ceiling: what it received, and its CPU."""

    def __init__(self, broker: Mosquitto, tmp: Path, name: str, clean: bool = True):
        self.out = tmp / f"sub-{name}.txt"
        self.argv = ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
                     "-t", f"o2/{SITE}/+/telemetry", "-i", f"bench-sub-{name}"]  # fmt: skip
        if not clean:
            self.argv.append("-c")  # a persistent session: the broker queues while it is away
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, count: int | None = None) -> CSubscriber:
        argv = self.argv + (["-C", str(count)] if count else [])
        self._file = self.out.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._file, stderr=subprocess.DEVNULL)
        return self

    def wait_exit(self, timeout_s: float) -> float:
        """Wait for it to exit (``-C``); its CPU seconds (0.0 if it had to be stopped)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                return usage.ru_utime + usage.ru_stime
            time.sleep(0.005)  # polling a child that prints nothing on the way
        return 0.0

    def received(self) -> int:
        with self.out.open("rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))

    def cpu_s(self) -> float:
        return cpu_s(self.proc.pid) if self.proc is not None else 0.0

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            self.proc.wait(10)
        self._file.close()


# -- phases -------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    rate: str
    detail: str


def gateway_config(
    tmp: Path, broker: Mosquitto, influx: InfluxDB, boards: int, name: str,
    mqtt_extra: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """The default configuration: only where to connect, where to keep state, the devices."""
    cfg = {
        "gateway": {
            "id": f"gw-{name}",
            "state_dir": str(tmp / f"state-{name}"),
            "http_listen": "127.0.0.1:0",
        },
        "mqtt": {"url": broker.url, **(mqtt_extra or {})},
        "influx": {"url": influx.url, "database": DB},
        "site": [{"id": SITE, "altitude_m": 3650}],
        "device": [
            {"id": board_id(n), "site": SITE, "kind": "room", "transport": "mqtt"}
            for n in range(1, boards + 1)
        ]
        + [{"id": "room-probe", "site": SITE, "kind": "room", "transport": "mqtt"}],
    }
    path = tmp / f"gw-{name}.toml"
    path.write_bytes(tomli_w.dumps(cfg).encode())
    return path


def start_gateway(cfg: Path, log: Path, level: str = "INFO") -> ChildProcess:
    gw = ChildProcess(o2chain_argv("gateway", "run", "-c", str(cfg), "--log-level", level), log)
    gw.start()
    gw.wait_for_log("MQTT subscribed", timeout_s=30)
    return gw


def http_url(gw: ChildProcess) -> str:
    return gw.wait_for_log(r"HTTP listening on (http://\S+)", timeout_s=10).group(1)


def drop_db(influx: InfluxDB) -> None:
    influx.query(f'DROP DATABASE "{DB}"')
    influx.create_database(DB)


def count_window(influx: InfluxDB, first_ms: int, last_ms: int) -> int:
    """Readings of the boards (not the probes) with board times in [first_ms, last_ms]."""
    return count_points(
        influx,
        f"WHERE time >= {first_ms}ms AND time <= {last_ms}ms AND device != 'room-probe'",
    )


def distinct_readings(influx: InfluxDB) -> int:
    """Distinct (device, seq) in InfluxDB: a reading stored twice (other time) counts once."""
    rows = influx.query_points('SELECT count(distinct("seq")) FROM room GROUP BY device', db=DB)
    return sum(int(r["count"]) for r in rows)


def backlog(tmp: Path, services: Services, boards: int, per_board: int) -> dict[str, float]:
    """The same backlog queued at once for three persistent sessions (mosquitto_sub, the
    gateway, the naive Python bridge), then drained by each alone."""
    broker, influx = services.mosquitto, services.influxdb
    total = boards * per_board
    drop_db(influx)
    values = room_values(boards)
    files = backlog_files(tmp, values, per_board)
    csub = CSubscriber(broker, tmp, "backlog", clean=False)
    subprocess.run([*csub.argv, "-W", "1"], capture_output=True, timeout=10)  # the session
    cfg = gateway_config(tmp, broker, influx, boards, "backlog")
    gw = start_gateway(cfg, tmp / "gw-backlog.log")
    gw.stop()
    naive_session = naive_bridge_session(broker)
    bare = BareDrain(services, total)
    pubs = []
    for b, path in enumerate(files, start=1):
        with path.open("rb") as f:
            pubs.append(mosquitto_pub(broker, b, f))
    wait_procs(pubs, 300)
    # The C subscriber drains its queue.
    t0 = time.monotonic()
    csub.start(count=total)
    assert csub.proc is not None
    c_cpu = csub.wait_exit(timeout_s=300)
    c_elapsed = time.monotonic() - t0
    csub.stop()
    c_got = csub.received()
    # The gateway drains its queue into InfluxDB.
    with ChildProcess(
        o2chain_argv("gateway", "run", "-c", str(cfg)), tmp / "gw-backlog-2.log"
    ) as gw:
        pid = gw.pid or 0
        gw.wait_for_log("MQTT connected", timeout_s=30)
        t0, cpu0, wait0 = time.monotonic(), cpu_s(pid), runqueue_s(pid)
        peak_rss, count = 0.0, 0
        while time.monotonic() - t0 < 600:
            peak_rss = max(peak_rss, rss_mb(pid))
            count = count_points(influx)
            if count >= total:
                break
            time.sleep(0.1)
        gw_elapsed = time.monotonic() - t0
        gw_cpu, gw_wait = cpu_s(pid) - cpu0, runqueue_s(pid) - wait0
        peak_rss = max(peak_rss, rss_mb(pid, "VmHWM"))
        time.sleep(1.0)  # anything more (a duplicate) would land now
        final = count_points(influx)
        distinct = distinct_readings(influx)
    naive = naive_bridge_drain(services, naive_session, boards, seconds=5.0)
    bare_rate, bare_cpu_us, bare_count = bare.drain(timeout_s=300)
    return {
        "total": total,
        "c_rate": c_got / c_elapsed,
        "c_got": c_got,
        "gw_rate": final / gw_elapsed if final >= total else 0.0,
        "gw_count": final,
        "gw_distinct": distinct,
        "gw_cpu_pct": 100 * gw_cpu / gw_elapsed,
        "gw_cpu_us": 1e6 * gw_cpu / total,
        "gw_wait_pct": 100 * gw_wait / gw_elapsed,
        "c_cpu_us": 1e6 * c_cpu / max(1, c_got),
        "gw_rss_mb": peak_rss,
        "naive_rate": naive,
        "bare_rate": bare_rate,
        "bare_cpu_us": bare_cpu_us,
        "bare_count": bare_count,
    }


class BareDrain:
    """The floor for a Python drain: the gateway's own MQTT client (``FastClient``, QoS 1
    runs handed over at once, acknowledgements in one write) with nothing but what at-least-once
    delivery into InfluxDB needs: ``orjson.loads`` and one f-string line per reading, a writer
    thread posting 5,000 lines at a time while the next 5,000 are made, acknowledgements after
    InfluxDB accepted them. No outbox, validation, duplicate check, enrichment or alarms, into
    a database of its own. Its persistent session is made at construction, so the backlog
    queues for it with the others'."""

    BATCH = 5000

    def __init__(self, services: Services, total: int):
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.services, self.total, self.db = services, total, DB + "_bare"
        services.influxdb.create_database(self.db)
        self.props = Properties(PacketTypes.CONNECT)
        self.props.SessionExpiryInterval = 3600
        self.props.ReceiveMaximum = 2 * self.BATCH
        client = self._client()
        subscribed = threading.Event()
        client.on_subscribe = lambda *a: subscribed.set()
        self._connect(client)
        client.subscribe(f"o2/{SITE}/+/telemetry", qos=1)
        if not subscribed.wait(5):
            raise RuntimeError("bare drain: no SUBACK within 5 s")
        client.disconnect()
        client.loop_stop()

    def _client(self) -> Any:
        from gateway.mqtt_fast import FastClient

        client = FastClient(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id="bench-bare",
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.max_inflight_messages_set(1000)
        return client

    def _connect(self, client: Any) -> None:
        broker = self.services.mosquitto
        client.connect(broker.host, broker.port, clean_start=False, properties=self.props)
        client.loop_start()

    def drain(self, timeout_s: float) -> tuple[float, float, int]:
        """Readings/s from the connection until InfluxDB accepted the whole backlog, this
        process's CPU us per reading, and the points InfluxDB then holds."""
        import queue

        import orjson

        arrived: list[tuple[int, bytes, bytes, bool]] = []
        cond = threading.Condition()
        to_write: queue.Queue[tuple[list[int], bytes] | None] = queue.Queue(maxsize=2)
        acked = 0
        done = threading.Event()
        client = self._client()

        def on_batch(batch: list[tuple[int, bytes, bytes, bool]]) -> None:
            with cond:
                arrived.extend(batch)
                cond.notify()

        client.on_message_batch = on_batch
        client.on_message = lambda c, u, m: on_batch([(m.mid, m._topic, m.payload, m.dup)])

        def make_lines() -> None:
            made = 0
            while made < self.total and not done.is_set():
                with cond:
                    cond.wait_for(lambda: arrived or done.is_set(), timeout=1.0)
                    batch = arrived[: self.BATCH]
                    del arrived[: self.BATCH]
                lines = []
                for _mid, topic, payload, _dup in batch:
                    doc = orjson.loads(payload)
                    ts = doc.pop("ts")
                    del doc["v"]
                    fields = ",".join(
                        f"{k}={v}i" if v.__class__ is int else f"{k}={v}" for k, v in doc.items()
                    )
                    device = topic.split(b"/")[2].decode()
                    lines.append(f"room,device={device},site={SITE} {fields} {ts}")
                if lines:
                    to_write.put(([m[0] for m in batch], "\n".join(lines).encode()))
                made += len(lines)
            to_write.put(None)

        def write() -> None:
            nonlocal acked
            session = requests.Session()
            url = f"{self.services.influxdb.url}/write"
            while (item := to_write.get()) is not None:
                mids, body = item
                response = session.post(
                    url, params={"db": self.db, "precision": "ms"}, data=body, timeout=30
                )
                if response.status_code != 204:
                    raise RuntimeError(f"bare drain: InfluxDB answered {response.status_code}")
                client.ack_many(mids)
                acked += len(mids)
            done.set()

        threads = [threading.Thread(target=f, daemon=True) for f in (make_lines, write)]
        t0, cpu0 = time.monotonic(), time.process_time()
        self._connect(client)
        for t in threads:
            t.start()
        done.wait(timeout_s)
        elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
        done.set()
        client.disconnect()
        client.loop_stop()
        rows = self.services.influxdb.query_points("SELECT count(o2_pct) FROM room", db=self.db)
        count = int(rows[0]["count"]) if rows else 0
        rate = acked / elapsed if acked >= self.total else 0.0
        return rate, 1e6 * cpu / max(1, acked), count


def naive_bridge_session(broker: Mosquitto) -> str:
    """Create the naive bridge's persistent session (MQTT 3.1.1, clean session off)."""
    client_id = "bench-naive"
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    sub.subscribe(f"o2/{SITE}/+/telemetry", qos=1)
    subscribed.wait(5)
    sub.disconnect()
    sub.loop_stop()
    return client_id


def naive_bridge_drain(services: Services, client_id: str, boards: int, seconds: float) -> float:
    """What a simple Python MQTT-to-InfluxDB bridge does: paho with auto-ack, one HTTP write
    per message. Readings/s over a fixed window of its backlog."""
    from gateway.config import parse_config
    from gateway.lineproto import LineEncoder
    from gateway.telemetry import TelemetryDecoder

    config = parse_config(
        {
            "site": [{"id": SITE, "altitude_m": 3650}],
            "device": [
                {"id": board_id(n), "site": SITE, "kind": "room", "transport": "mqtt"}
                for n in range(1, boards + 1)
            ],
        }
    )
    decoder, encoder = TelemetryDecoder(config), LineEncoder()
    session = requests.Session()
    written = 0
    done = threading.Event()

    def on_message(client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal written
        if done.is_set():
            return
        for r in decoder.decode(msg.topic, bytes(msg.payload), int(time.time() * 1000)):
            session.post(
                f"{services.influxdb.url}/write",
                params={"db": DB, "precision": "ms"},
                data=encoder.encode(r),
                timeout=10,
            )
            written += 1

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    sub.on_message = on_message
    sub.connect(services.mosquitto.host, services.mosquitto.port)
    sub.loop_start()
    time.sleep(1.0)  # warm-up
    w0, t0 = written, time.monotonic()
    time.sleep(seconds)  # a fixed measuring window
    rate = (written - w0) / (time.monotonic() - t0)
    done.set()
    sub.disconnect()
    sub.loop_stop()
    return rate


class Probes:
    """Probe readings every 20 ms on their own board; ``ts`` -> first seen by a query
    polling InfluxDB every 10 ms."""

    def __init__(self, services: Services):
        self.services = services
        self.sent: dict[int, int] = {}
        self.seen: dict[int, float] = {}
        self.stop_event = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-probe")

    def __enter__(self) -> Probes:
        broker = self.services.mosquitto
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.poller = threading.Thread(target=self._poll, daemon=True)
        self.poller.start()
        self.sender = threading.Thread(target=self._send, daemon=True)
        self.sender.start()
        return self

    def _send(self) -> None:
        seq = 0
        boot = int(time.time())
        while not self.stop_event.is_set():
            ts = int(time.time() * 1000)
            body = {"v": 1, "boot": boot, "seq": seq, "ts": ts, "o2_pct": 21.0}
            self.client.publish(f"o2/{SITE}/room-probe/telemetry", json.dumps(body), qos=1)
            self.sent[seq] = ts
            seq += 1
            self.stop_event.wait(0.02)  # pacing probes, not synchronisation

    def _poll(self) -> None:
        session = requests.Session()
        while not self.stop_event.is_set() or len(self.seen) < len(self.sent):
            try:
                r = session.get(
                    f"{self.services.influxdb.url}/query",
                    params={"db": DB, "epoch": "ms",
                            "q": "SELECT seq FROM room WHERE device = 'room-probe' "
                                 "AND time > now() - 10s"},
                    timeout=5,
                )  # fmt: skip
                now = time.time()
                for result in r.json().get("results", []):
                    for series in result.get("series", []):
                        for _t, seq in series["values"]:
                            self.seen.setdefault(int(seq), now)
            except (requests.RequestException, ValueError):
                pass
            if self.stop_event.is_set() and time.monotonic() > self._deadline:
                return
            time.sleep(0.01)  # the poll interval

    def __exit__(self, *exc: object) -> None:
        self._deadline = time.monotonic() + 10
        self.stop_event.set()
        self.sender.join(5)
        self.poller.join(15)
        self.client.disconnect()
        self.client.loop_stop()

    def summary(self) -> dict[str, float]:
        sent = dict(self.sent)
        lat = sorted(self.seen[s] - sent[s] / 1000 for s in sent if s in self.seen)
        if not lat:
            return {"p50": float("nan"), "p99": float("nan"), "probes": 0, "unseen": len(sent)}
        return {
            "p50": statistics.median(lat),
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "probes": len(lat),
            "unseen": len(sent) - len(lat),
        }


def light_load(
    tmp: Path, services: Services, seconds: float, name: str, mqtt_extra: dict[str, Any] | None
) -> dict[str, float]:
    """500 readings/s (20 boards x 25/s) with probes: gateway CPU per reading (/proc), p99
    board ts -> queryable, and the C subscriber's CPU per reading on the same load."""
    broker, influx = services.mosquitto, services.influxdb
    boards, rate = 20, 500.0
    drop_db(influx)
    cfg = gateway_config(tmp, broker, influx, boards, name, mqtt_extra)
    values = room_values(boards)
    gw = start_gateway(cfg, tmp / f"gw-{name}.log")
    csub = CSubscriber(broker, tmp, name).start()
    try:
        pid = gw.pid or 0
        time.sleep(1.0)  # the C subscriber's SUBACK (it prints nothing when subscribed)
        with Probes(services) as probes:
            PacedLoad(broker, values, rate, 2.0, boot=1).run()  # warm-up
            cpu0, c0, t0 = cpu_s(pid), csub.cpu_s(), time.monotonic()
            load = PacedLoad(broker, values, rate, seconds, boot=2).run()
            elapsed = time.monotonic() - t0
            cpu, c_cpu = cpu_s(pid) - cpu0, csub.cpu_s() - c0
        readings = load.sent + elapsed / 0.02  # and the probes
        lat = probes.summary()
        landed = count_window(influx, load.first_ts_ms, load.last_ts_ms)
    finally:
        csub.stop()
        gw.stop()
    return {
        **lat,
        "rate": load.achieved,
        "cpu_ms": 1000 * cpu / readings,
        "cpu_pct": 100 * cpu / elapsed,
        "c_cpu_ms": 1000 * c_cpu / readings,
        "lost": load.sent - landed,
    }


class CpuWindow:
    """CPU (% of a core) and time runnable but waiting for a CPU (% of the window, summed over
    threads) of named processes over one window, from /proc; ``load`` is the load generator's
    own thread CPU, given at the end."""

    def __init__(self, pids: dict[str, int]):
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.t0 = time.monotonic()
        self.cpu0 = {name: cpu_s(pid) for name, pid in self.pids.items()}
        self.wait0 = {name: runqueue_s(pid) for name, pid in self.pids.items()}
        self.load0 = os.getloadavg()[0]

    def stop(self) -> dict[str, float]:
        dt = time.monotonic() - self.t0
        out = {"window_s": dt, "loadavg": max(self.load0, os.getloadavg()[0])}
        for name, pid in self.pids.items():
            out[f"{name}_cpu_pct"] = 100 * (cpu_s(pid) - self.cpu0[name]) / dt
            out[f"{name}_wait_pct"] = 100 * (runqueue_s(pid) - self.wait0[name]) / dt
        return out


def c_steps(
    broker: Mosquitto, tmp: Path, values: list[list[dict[str, float]]], rates: list[float],
    seconds: float,
) -> list[dict[str, float]]:  # fmt: skip
    """The C subscriber alone on the stepped load: held = received everything within 2 s of
    the load's end. Stops at the first step it does not hold."""
    steps = []
    for n, rate in enumerate(rates):
        csub = CSubscriber(broker, tmp, f"cstep-{n}").start()
        time.sleep(0.5)  # its SUBACK
        load = RawLoad(broker, values, rate, seconds, boot=50 + n).run()
        ended = time.monotonic()
        got = csub.received()
        while got < load.sent and time.monotonic() - ended < 2.0:
            time.sleep(0.1)
            got = csub.received()
        csub.stop()
        gen_ok = load.achieved >= 0.95 * rate and load.acked >= load.sent
        held = float(gen_ok and got >= load.sent)
        steps.append({"target": rate, "achieved": load.achieved, "held": held,
                      "gen_ok": float(gen_ok)})  # fmt: skip
        if not steps[-1]["held"]:
            break
    return steps


def paced_steps(
    tmp: Path, services: Services, rates: list[float], seconds: float
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Stepped paced load (20 boards, :class:`RawLoad`), the C subscriber's steps first, then
    the gateway's, each alone on the machine (the gateway connects after the C subscriber's
    steps): at each rate, did everything land within 2 s of the load's end (gateway: in
    InfluxDB; C subscriber: received)? Each stops at the first rate it does not hold, or the
    load generator cannot make."""
    broker, influx = services.mosquitto, services.influxdb
    boards = 20
    drop_db(influx)
    values = room_values(boards)
    c_st = c_steps(broker, tmp, values, rates, seconds)
    cfg = gateway_config(tmp, broker, influx, boards, "steps")
    steps = []
    gw = start_gateway(cfg, tmp / "gw-steps.log")
    try:
        pid = gw.pid or 0
        for n, rate in enumerate(rates):
            time.sleep(0.5)
            window = CpuWindow({"gw": pid, "broker": broker.pid or 0, "influxd": influx.pid or 0})
            load = RawLoad(broker, values, rate, seconds, boot=100 + n).run()
            ended = time.monotonic()
            landed = 0
            while time.monotonic() - ended < 2.0:
                landed = count_window(influx, load.first_ts_ms, load.last_ts_ms)
                if landed >= load.sent:
                    break
                time.sleep(0.1)
            lag_ok = landed >= load.sent
            # Over the same window as the CPU: the load and the 2 s.
            cpu = window.stop()
            # Whatever was late lands before the next step (its own time window anyway).
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                final = count_window(influx, load.first_ts_ms, load.last_ts_ms)
                if final >= load.sent:
                    break
                time.sleep(0.2)
            gen_ok = load.achieved >= 0.95 * rate and load.acked >= load.sent
            steps.append({
                "target": rate, "achieved": load.achieved, "sent": load.sent,
                "gw_held": float(lag_ok and gen_ok), "gen_ok": float(gen_ok),
                "gw_lost": max(0, load.sent - final),
                "gw_us": 1e6 * cpu["gw_cpu_pct"] / 100 * cpu["window_s"] / max(landed, 1),
                "load_cpu_pct": 100 * load.cpu_s / cpu["window_s"], **cpu,
            })  # fmt: skip
            if not steps[-1]["gw_held"]:
                break
    finally:
        gw.stop()
    return steps, c_st


def _overload_window(
    broker: Mosquitto, values: list[list[dict[str, float]]], rate: float, seconds: float,
    boot: int, received: Any, pids: dict[str, int],
) -> dict[str, float]:  # fmt: skip
    """One paced load at ``rate``; what ``received(load)`` grew by per second from 3 s into
    the load (queues full by then) to its end, and the processes' CPU over that window."""
    load = RawLoad(broker, values, rate, seconds, boot=boot)
    runner = threading.Thread(target=load.run)
    runner.start()
    time.sleep(min(3.0, seconds / 4))  # the consumer falls behind; queues fill
    n0, window = received(load), CpuWindow(pids)
    runner.join(seconds + 120)
    n1, cpu = received(load), window.stop()
    return {"offered": load.achieved, "target": rate, "rate": (n1 - n0) / cpu["window_s"],
            "load_cpu_pct": 100 * load.cpu_s / max(load.elapsed_s, 1e-9),
            "gen_ok": float(load.achieved >= 0.95 * rate), "sent": load.sent, **cpu}  # fmt: skip


def _drained(influx: InfluxDB, timeout_s: float = 60.0) -> None:
    """Until the InfluxDB count has not grown for 1.5 s (the gateway's backlog is in)."""
    deadline, last, since = time.monotonic() + timeout_s, -1, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < 1.5:
        n = count_points(influx)
        if n != last:
            last, since = n, time.monotonic()
        time.sleep(0.25)


def overload(
    tmp: Path, services: Services, rate: float, base_rate: float, seconds: float,
    queue_limit: int, rounds: int = 2,
) -> dict[str, Any]:  # fmt: skip
    """A paced load at ``rate`` (2x the best sustained) on a broker that drops beyond
    ``queue_limit`` queued messages a client, taken by the C subscriber alone and then (on the
    same broker, after it left) by the gateway alone: their rates, every process's CPU, and
    what the broker's drops look like in the gateway's /metrics and /api/status. The gateway's
    windows at ``rate`` alternate with windows at ``base_rate`` (the best step again, the same
    gateway, backlog drained in between), ``rounds`` of each: what the machine let it deliver
    at the baseline in the same minutes."""
    influx = services.influxdb
    boards = 20
    drop_db(influx)
    values = room_values(boards)
    with Mosquitto(tmp / "limited", max_queued_messages=queue_limit, sys_interval_s=1) as broker:
        csub = CSubscriber(broker, tmp, "overload").start()
        try:
            time.sleep(0.5)  # its SUBACK
            c_ov = _overload_window(
                broker, values, rate, seconds, 6, lambda _: csub.received(),
                {"csub": csub.proc.pid if csub.proc else 0, "broker": broker.pid or 0},
            )  # fmt: skip
        finally:
            csub.stop()
        cfg = gateway_config(tmp, broker, influx, boards, "overload")
        gw = start_gateway(cfg, tmp / "gw-overload.log")
        try:
            base = http_url(gw)
            time.sleep(0.5)
            pids = {"gw": gw.pid or 0, "broker": broker.pid or 0, "influxd": influx.pid or 0}
            base_w: list[dict[str, float]] = []
            over_w: list[dict[str, float]] = []
            for r in range(rounds):
                for target, out in ((base_rate, base_w), (rate, over_w)):
                    out.append(_overload_window(
                        broker, values, target, seconds, 10 + len(base_w) + 2 * r,
                        lambda ld: count_points(influx, f"WHERE time >= {ld.first_ts_ms}ms"),
                        pids,
                    ))  # fmt: skip
                    _drained(influx)
            time.sleep(2.5)  # the broker publishes $SYS every second
            metrics = requests.get(f"{base}/metrics", timeout=10).text
            status = requests.get(f"{base}/api/status", timeout=10).json()
            peak_rss = rss_mb(gw.pid or 0, "VmHWM")
        finally:
            gw.stop()
    dropped_metric = next(
        (float(line.split()[1]) for line in metrics.splitlines()
         if line.startswith("o2chain_broker_dropped_messages_total ")),
        float("nan"),
    )  # fmt: skip
    for w in base_w + over_w:
        w["gw_us"] = 1e4 * w["gw_cpu_pct"] / max(w["rate"], 1e-9)
    gw_ov = sorted(over_w, key=lambda w: w["rate"])[(len(over_w) - 1) // 2]  # lower median
    return {"gw": gw_ov, "over": over_w, "base": base_w, "c": c_ov,
            "dropped_metric": dropped_metric, "peak_rss_mb": peak_rss,
            "dropped_status": status["gateway"].get("broker_dropped")}  # fmt: skip


# -- Modbus -------------------------------------------------------------------------------------


def modbus_tcp(
    tmp: Path, devices: int, seconds: float, rounds: int = 3
) -> tuple[dict[str, float], dict[str, float], list[float]]:
    """The gateway's pollers and raw pymodbus (the same reads, nothing else) against the same
    simulator farm, in alternating rounds (the machine's load drifts): the round with the
    median ratio, and every round's ratio."""
    farm = ChildProcess(
        [sys.executable, str(REPO / "bench" / "modbus_farm.py"), "--devices", str(devices)],
        tmp / "modbus-farm.log",
    ).start()
    try:
        match = farm.wait_for_log(r"ports (\[[0-9, ]+\])", timeout_s=60)
        ports = json.loads(match.group(1))
        pairs = []
        for _ in range(rounds):
            gateway = asyncio.run(_poll_farm(ports, seconds))
            raw = asyncio.run(_raw_pymodbus(ports, seconds))
            pairs.append((gateway["polls_s"] / raw["polls_s"], gateway, raw))
        pairs.sort(key=lambda p: p[0])
        _, gateway, raw = pairs[len(pairs) // 2]
        return gateway, raw, [p[0] for p in pairs]
    finally:
        farm.stop()


async def _raw_pymodbus(ports: list[int], seconds: float) -> dict[str, float]:
    """What the same reads cost with pymodbus alone: one AsyncModbusTcpClient a device, the
    profile's read blocks back to back, no decoding, no pipeline."""
    from pymodbus.client import AsyncModbusTcpClient

    from o2base.registers import Table, load_profile

    blocks = load_profile("medical-concentrator").plan_reads()  # as DevicePoller plans them
    polls = 0
    stop = asyncio.Event()

    async def device(port: int) -> None:
        nonlocal polls
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2.0, retries=0)
        await client.connect()
        read = {
            Table.HOLDING: client.read_holding_registers,
            Table.INPUT: client.read_input_registers,
            Table.COIL: client.read_coils,
            Table.DISCRETE: client.read_discrete_inputs,
        }
        try:
            while not stop.is_set():
                for block in blocks:
                    await read[block.table](block.start, count=block.count, device_id=1)
                polls += 1
        finally:
            client.close()

    tasks = [asyncio.create_task(device(p)) for p in ports]
    await asyncio.sleep(2.0)  # connect and warm up
    p0, t0, cpu0 = polls, time.monotonic(), cpu_s(os.getpid())
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    done, cpu = polls - p0, cpu_s(os.getpid()) - cpu0
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"polls_s": done / elapsed, "cpu_pct": 100 * cpu / elapsed}


async def _poll_farm(ports: list[int], seconds: float) -> dict[str, float]:
    from gateway.config import Device
    from gateway.modbus import DevicePoller, tcp_client_factory
    from o2base.registers import load_profile

    profile = load_profile("medical-concentrator")
    readings = 0

    def emit(_: Any) -> None:
        nonlocal readings
        readings += 1

    pollers = [
        DevicePoller(
            Device(
                id=f"conc-{n}",
                site=SITE,
                kind="concentrator",  # type: ignore[arg-type]
                transport="modbus",  # type: ignore[arg-type]
                url=f"tcp://127.0.0.1:{port}",
                profile="medical-concentrator",
                interval_s=0.01,  # as fast as each device answers
                timeout_s=2.0,
            ),
            profile,
            tcp_client_factory,
            emit,
        )
        for n, port in enumerate(ports)
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(p.run(stop)) for p in pollers]
    await asyncio.sleep(2.0)  # connect and warm up
    r0, requests0, t0 = readings, sum(p.health.requests for p in pollers), time.monotonic()
    cpu0 = cpu_s(os.getpid())
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    reqs = sum(p.health.requests for p in pollers) - requests0
    done = readings - r0
    cpu = cpu_s(os.getpid()) - cpu0
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "polls_s": done / elapsed,
        "requests_s": reqs / elapsed,
        "online": sum(p.health.online for p in pollers),
        "cpu_pct": 100 * cpu / elapsed,
    }


def crc16(frame: bytes) -> bytes:
    """Modbus RTU CRC (poly 0xA001, init 0xFFFF), low byte first."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


def line_slave(port: str, char_s: float, gap_s: float, stop: threading.Event) -> None:
    """An RTU slave on ``port`` that holds every answer for the time request and answer take
    on a real line at this baud rate (a pty carries bytes instantly), and the silence (t3.5)
    between them; the silence after the answer is the master's to keep."""
    import serial

    with serial.serial_for_url(port, timeout=0.2) as tty:
        while not stop.is_set():
            req = tty.read(8)  # FC 1/3 requests are 8 bytes
            if len(req) < 8:
                continue
            unit, fc, count = req[0], req[1], int.from_bytes(req[4:6], "big")
            if fc == 3 or fc == 4:
                body = bytes([unit, fc, 2 * count]) + bytes(2 * count)
            else:
                body = bytes([unit, fc, (count + 7) // 8]) + bytes((count + 7) // 8)
            answer = body + crc16(body)
            wire_s = (len(req) + len(answer)) * char_s + gap_s
            time.sleep(wire_s)  # emulating the wire: the bytes' own time on the line
            tty.write(answer)


async def _saturate_bus(pollers: list[Any], seconds: float) -> float:
    """Run one RTU bus flat out; requests per second over ``seconds`` after a warm-up."""
    from gateway.modbus import modbus_runners

    halt = asyncio.Event()
    tasks = [asyncio.create_task(run(halt)) for _, run in modbus_runners(pollers)]
    await asyncio.sleep(1.0)  # warm-up
    r0, t0 = sum(p.health.requests for p in pollers), time.monotonic()
    await asyncio.sleep(seconds)  # the measuring window
    rate = (sum(p.health.requests for p in pollers) - r0) / (time.monotonic() - t0)
    halt.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return rate


def rtu_line_share(tmp: Path, baud: int, seconds: float) -> dict[str, float]:
    from gateway.config import Device
    from gateway.modbus import DevicePoller, SerialLine
    from o2base.registers import load_profile

    a, b = tmp / f"rtu-{baud}-a", tmp / f"rtu-{baud}-b"
    with ChildProcess(
        ["socat", "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        tmp / f"socat-{baud}.log",
    ) as socat:
        socat.wait_for_log("starting data transfer loop", timeout_s=10)
        line = SerialLine.from_url(f"rtu://{b}?baudrate={baud}")
        stop = threading.Event()
        slave = threading.Thread(
            target=line_slave, args=(str(a), line.char_s, line.frame_gap_s, stop), daemon=True
        )
        slave.start()
        profile = load_profile("medical-concentrator")
        pollers = [
            DevicePoller(
                Device.model_validate(
                    {
                        "id": f"conc-{u}",
                        "site": SITE,
                        "kind": "concentrator",
                        "transport": "modbus",
                        "url": f"rtu://{b}?baudrate={baud}",
                        "unit": u,
                        "profile": "medical-concentrator",
                        "interval_s": 0.01,  # as often as the line allows
                        "timeout_s": 1.0,
                    }
                ),
                profile,
                lambda d: None,  # type: ignore[arg-type, return-value]  # the bus has the client
                lambda r: None,
            )
            for u in range(1, 5)
        ]
        tx_s = asyncio.run(_saturate_bus(pollers, seconds))
        stop.set()
        slave.join(5)
    # Per poll: FC3 of 8 registers (8-byte request, 21-byte answer) and FC1 of 1 coil (8 + 6),
    # each followed by t3.5 of silence after the request and after the answer.
    wire_s = (29 + 14) * line.char_s + 4 * line.frame_gap_s
    theory_s = 2 / wire_s
    return {
        "baud": baud,
        "tx_s": tx_s,
        "theory_s": theory_s,
        "share_pct": 100 * tx_s / theory_s,
        "frame_bytes": (29 + 14) / 2,
    }


def modbus_rtu(tmp: Path, seconds: float) -> list[dict[str, float]]:
    return [rtu_line_share(tmp, baud, seconds) for baud in (9600, 19200)]


# -- in process ---------------------------------------------------------------------------------


def _stage_rig(tmp: Path, boards: int) -> Any:
    from gateway.app import Gateway
    from gateway.config import parse_config

    config = parse_config(
        {
            "gateway": {"id": "gw-stages", "state_dir": str(tmp), "http_listen": "127.0.0.1:0"},
            "mqtt": {"url": "mqtt://127.0.0.1:9"},  # never connected
            "influx": {"url": "http://127.0.0.1:9", "database": DB},  # never written
            "site": [{"id": SITE, "altitude_m": 3650}],
            "device": [
                {"id": board_id(n), "site": SITE, "kind": "room", "transport": "mqtt"}
                for n in range(1, boards + 1)
            ],
        }
    )
    return Gateway(config)  # the service's own wiring: Enricher, AlarmEngine, Observer


def _messages(boards: int, per_board: int, first_ts_ms: int) -> list[tuple[str, bytes]]:
    """The default payloads (``room_values``), boards interleaved as they arrive."""
    values = room_values(boards)
    out = []
    for seq in range(per_board):
        for b, vals in enumerate(values, start=1):
            body = reading_json(vals[seq % len(vals)], 1, seq, first_ts_ms + seq)
            out.append((f"o2/{SITE}/{board_id(b)}/telemetry", body.encode()))
    return out


def stage_costs(tmp: Path, readings: int, boards: int = 8) -> dict[str, float]:
    """CPU us per reading: the pipeline stages per message and per commit batch, and the
    commit path (MqttIngest's committer without a broker: acknowledgements are skipped)."""
    from gateway.mqtt_ingest import MAX_MESSAGES_PER_COMMIT, PIPELINE_CHUNK, _Queued

    now_ms = int(time.time() * 1000)
    messages = _messages(boards, readings // boards, now_ms - 60_000)
    rigs = iter(range(1_000_000))

    def rig() -> Any:
        """A fresh gateway each round: a round on the state another left would judge and
        observe every reading as a replay (older than the last one seen), the cheap path."""
        return _stage_rig(tmp / f"stages-{next(rigs)}", boards)

    gw = rig()
    decoded = [r for topic, body in messages for r in gw.mqtt.decoder.decode(topic, body, now_ms)]
    gw.outbox.close()
    # As the service does after start-up (gateway/app.py): what exists now is left out of the
    # collector's full passes, so this process's earlier phases do not weigh on the figures.
    gc.collect()
    gc.freeze()

    def cpu_us(chunks: list[list[Any]]) -> float:
        best = float("inf")
        for _ in range(3):
            gw = rig()
            fn = gw.pipeline.process
            t0 = time.process_time()
            for chunk in chunks:
                fn(chunk)
            best = min(best, time.process_time() - t0)
            gw.outbox.close()
        return best / len(decoded) * 1e6

    per_message = cpu_us([[r] for r in decoded])
    step = PIPELINE_CHUNK  # what the committer hands the pipeline at once
    runs = [decoded[i : i + step] for i in range(0, len(decoded), step)]
    per_run = cpu_us(runs)
    queued = [_Queued(0, n % 65535 + 1, 1, t, b) for n, (t, b) in enumerate(messages)]
    commit = float("inf")
    for _ in range(3):  # fresh state each round: no reading is a duplicate
        gw = rig()
        ingest = gw.mqtt
        try:
            ingest._ack = lambda batch: None  # no broker here
        except AttributeError:  # compiled (bench_compiled.py): no message is of this connection
            ingest._connection = -1
        t0 = time.process_time()
        step = MAX_MESSAGES_PER_COMMIT
        for i in range(0, len(queued), step):
            ingest._commit_batch(queued[i : i + step])
        commit = min(commit, (time.process_time() - t0) / len(queued) * 1e6)
        gw.outbox.close()
    gc.unfreeze()
    return {"per_message": per_message, "per_run": per_run, "commit": commit}


def tick_cost(tmp: Path, devices: int) -> float:
    """CPU ms of one alarm tick (offline, stale, delays and shelves, once a second under the
    engine's lock) over ``devices`` room boards that have each sent one reading."""
    gw = _stage_rig(tmp / f"tick-{devices}", devices)
    now_ms = int(time.time() * 1000)
    gw.pipeline.process(
        [
            r
            for topic, body in _messages(devices, 1, now_ms - 1000)
            for r in gw.mqtt.decoder.decode(topic, body, now_ms)
        ]
    )
    engine = gw.alarms
    engine._tick(now_ms)  # the first one makes every alarm state
    rounds = 10
    t0 = time.process_time()
    for i in range(1, rounds + 1):
        engine._tick(now_ms + 1000 * i)
    gw.outbox.close()
    return (time.process_time() - t0) / rounds * 1000


def stage_rows(tmp: Path, args: argparse.Namespace) -> list[Row]:
    from gateway.mqtt_ingest import PIPELINE_CHUNK

    ticks = {n: tick_cost(tmp, n) for n in (1_000, 10_000)}
    costs = stage_costs(tmp, 20_000 if args.quick else 60_000)
    return [
        Row(
            "pipeline stages, in process",
            f"{costs['per_run']:.1f} us/reading",
            f"enrichment + alarms + observer, {PIPELINE_CHUNK} messages per call as the "
            f"committer does ({costs['per_message']:.1f} us/reading one message per call)",
        ),
        Row(
            "commit path, in process",
            f"{costs['commit']:.1f} us/reading",
            "decode + duplicates + stages + line protocol + fsync'd outbox commit, "
            f"batches of 5,000 (= {1e6 / costs['commit']:,.0f} readings/s of one core); CPU time, "
            "best of 3 rounds on fresh state",
        ),
        Row(
            "alarm tick, 10,000 devices",
            f"{ticks[10_000]:.1f} ms CPU",
            f"once a second under the engine's lock: {ticks[10_000] / 10:.1f} % of a core "
            f"({ticks[1_000]:.1f} ms at 1,000 devices); offline and stale per device, pending "
            "delays and shelves; mean of 10 ticks",
        ),
    ]


# -- main ---------------------------------------------------------------------------------------


def mqtt_rows(tmp: Path, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    boards = 20
    per_board = args.backlog // boards
    with Services(tmp / "services") as services:
        services.influxdb.create_database(DB)
        phases = set(args.phases.split(","))
        if "backlog" in phases:
            rows += backlog_rows(tmp, services, boards, per_board)
        if "light" in phases:
            rows += light_rows(tmp, services, args)
        best: dict[str, float] = {}
        if "steps" in phases:
            step_rows, best = steps_rows(tmp, services, args)
            rows += step_rows
        if "overload" in phases and (best.get("achieved") or args.overload_rate):
            rows += overload_rows(tmp, services, args, best)
    return rows


def backlog_rows(tmp: Path, services: Services, boards: int, per_board: int) -> list[Row]:
    rows = []
    bl = backlog(tmp, services, boards, per_board)
    once = bl["gw_count"] == bl["gw_distinct"] == bl["total"]
    rows.append(Row(
        f"backlog drain, {bl['total']:,} readings",
        f"{bl['gw_rate']:,.0f} readings/s",
        f"{bl['gw_rate'] / bl['c_rate']:.2f}x mosquitto_sub -q 1 ({bl['c_rate']:,.0f} msg/s, "
        f"{bl['c_got']:,} received) on the same backlog; "
        f"{'exactly once' if once else 'NOT exactly once'}: {bl['gw_count']:,} points, "
        f"{bl['gw_distinct']:,} distinct (device, seq) in InfluxDB; gateway CPU "
        f"{bl['gw_cpu_pct']:.0f} % of a core ({bl['gw_cpu_us']:.0f} us/reading; mosquitto_sub "
        f"{bl['c_cpu_us']:.1f} us/message: at one core each "
        f"{bl['c_cpu_us'] / bl['gw_cpu_us']:.2f}x), runnable but waiting for a CPU "
        f"{bl['gw_wait_pct']:.0f} % of the time; "
        f"peak RSS {bl['gw_rss_mb']:.0f} MB",
    ))  # fmt: skip
    rows.append(Row(
        "Python baseline (naive bridge)",
        f"{bl['naive_rate']:,.0f} readings/s",
        f"{bl['naive_rate'] / bl['c_rate']:.3f}x mosquitto_sub; paho auto-ack, one HTTP "
        "write per message, no outbox (the same backlog, 5 s window)",
    ))  # fmt: skip
    rows.append(Row(
        "Python floor (bare drain)",
        f"{bl['bare_rate']:,.0f} readings/s",
        f"{bl['bare_rate'] / bl['c_rate']:.2f}x mosquitto_sub; {bl['bare_cpu_us']:.1f} us/reading "
        f"of CPU, {bl['bare_count']:,} points in InfluxDB; the gateway's client, orjson, an "
        "f-string line, 5,000-line writes, acknowledged after InfluxDB; no outbox, validation, "
        "duplicate check, enrichment or alarms (the same backlog); the gateway drains at "
        f"{bl['gw_rate'] / bl['bare_rate'] if bl['bare_rate'] else 0:.2f}x of it",
    ))  # fmt: skip
    return rows


def light_rows(tmp: Path, services: Services, args: argparse.Namespace) -> list[Row]:
    rows = []
    light = light_load(tmp, services, args.light_s, "light", None)
    eager = light_load(tmp, services, args.light_s, "eager", {"commit_linger_ms": 0})
    rows.append(Row(
        "gateway CPU at 500 readings/s",
        f"{light['cpu_ms']:.3f} ms/reading",
        f"20 boards x 25/s paced; p99 board ts -> queryable {light['p99'] * 1000:.0f} ms "
        f"(p50 {light['p50'] * 1000:.0f}, {light['probes']:.0f} probes, "
        f"{light['unseen']:.0f} unseen, {light['lost']:.0f} lost); mosquitto_sub on the "
        f"same load {light['c_cpu_ms']:.4f} ms/reading "
        f"({light['cpu_ms'] / max(light['c_cpu_ms'], 1e-6):.0f}x); committing at once "
        f"(commit_linger_ms 0): {eager['cpu_ms']:.3f} ms/reading, p99 "
        f"{eager['p99'] * 1000:.0f} ms",
    ))  # fmt: skip
    return rows


def steps_rows(
    tmp: Path, services: Services, args: argparse.Namespace
) -> tuple[list[Row], dict[str, float]]:
    rows = []
    rates = [1000.0, 2000.0, 4000.0, 6000.0, 8000.0, 10000.0, 12000.0, 14000.0, 16000.0,
             20000.0, 24000.0, 32000.0]  # fmt: skip
    steps, c_st = paced_steps(tmp, services, rates[: 3 if args.quick else None], args.step_s)
    held = [st for st in steps if st["gw_held"]]
    best = dict(max(held, key=lambda st: st["achieved"], default={"achieved": 0.0}))
    # 2x the best step is overload only if the steps ended at the gateway's own limit.
    best["limit_found"] = float(steps[-1]["gen_ok"] and not steps[-1]["gw_held"])
    c_best = max((st["achieved"] for st in c_st if st["held"]), default=0.0)
    last, c_last = steps[-1], c_st[-1]

    def why(st: dict[str, float], who: str) -> str:
        if not st["gen_ok"]:
            return f"the load generator's limit ({st['achieved']:,.0f}/s of {st['target']:,.0f})"
        if not st.get("gw_held", st.get("held")):
            return f"{who} fell behind at {st['target']:,.0f}/s"
        return "the last step tried"

    stepped = ", ".join(f"{st['target'] / 1000:g}k" for st in steps)
    rows.append(Row(
        "paced sustained, zero loss",
        f"{best['achieved']:,.0f} readings/s",
        f"stepped {stepped} (one load process, QoS 1); held = every reading in InfluxDB "
        f"within 2 s of the load's end; stopped at {why(last, 'the gateway')}. mosquitto_sub "
        f"alone on the same steps held up to {c_best:,.0f}/s "
        f"({best['achieved'] / c_best if c_best else 0:.2f}x), stopped at "
        f"{why(c_last, 'mosquitto_sub')}. At the best step the gateway used "
        f"{best.get('gw_cpu_pct', 0):.0f} % of a core ({best.get('gw_us', 0):.0f} us/reading), "
        f"waited for one {best.get('gw_wait_pct', 0):.0f} %; broker "
        f"{best.get('broker_cpu_pct', 0):.0f} %, influxd {best.get('influxd_cpu_pct', 0):.0f} %,"
        f" load {best.get('load_cpu_pct', 0):.0f} %; at {last['target']:,.0f}/s: gateway "
        f"{last['gw_cpu_pct']:.0f} % ({last['gw_us']:.0f} us/reading), waited "
        f"{last['gw_wait_pct']:.0f} %, broker {last['broker_cpu_pct']:.0f} %, influxd "
        f"{last['influxd_cpu_pct']:.0f} %, load {last['load_cpu_pct']:.0f} %; load average "
        f"{max(st['loadavg'] for st in steps):.1f}; readings not in InfluxDB a minute after "
        f"their step: {sum(st['gw_lost'] for st in steps):.0f}",
    ))  # fmt: skip
    return rows, best


def overload_rows(
    tmp: Path, services: Services, args: argparse.Namespace, best: dict[str, float]
) -> list[Row]:
    rows = []
    best_rate = best.get("achieved", 0.0)
    rate = args.overload_rate or 2 * best_rate
    rounds_n = 1 if args.quick else 3
    ov = overload(tmp, services, rate, best_rate or rate / 2, args.overload_s, 20_000, rounds_n)
    gw, c = ov["gw"], ov["c"]
    # The same minutes: the 2x windows against the windows at the best step's rate between them.
    base_sum = sum(b["rate"] for b in ov["base"])
    adjacent = sum(o["rate"] for o in ov["over"]) / base_sum if base_sum else 0.0
    base_held = all(b["rate"] >= 0.95 * b["target"] for b in ov["base"])
    rounds = "; ".join(
        f"{b['rate']:,.0f}/s ({b['gw_cpu_pct']:.0f} % CPU) then {o['rate']:,.0f}/s "
        f"({o['gw_cpu_pct']:.0f} %, {o['gw_us']:.0f} us/reading)"
        for b, o in zip(ov["base"], ov["over"], strict=True)
    )
    share = gw["rate"] / best_rate if best_rate else 0.0
    if not best.get("limit_found") and not args.overload_rate:
        verdict = (
            "NO VERDICT: the steps did not reach the gateway's limit, so 2x the best step "
            "is not twice what it sustains"
        )
    elif not gw["gen_ok"]:
        verdict = (
            f"NO VERDICT: the machine could not offer {rate:,.0f}/s "
            f"(offered {gw['offered']:,.0f}/s, {100 * gw['offered'] / rate:.0f} %)"
        )
    else:
        verdict = f"{'met' if share >= 0.9 else 'NOT met'} (goal >= 90 %)"
        if not base_held:
            verdict += (
                "; but in these minutes the best step's rate itself was not delivered (the "
                "machine gave the gateway less CPU than during the steps): against those "
                f"windows {100 * adjacent:.0f} %"
            )
    rows.append(Row(
        f"overload at 2x ({gw['offered']:,.0f}/s offered)",
        f"{gw['rate']:,.0f} readings/s",
        f"{100 * share:.0f} % of the best sustained ({best_rate:,.0f}/s): {verdict}. "
        f"mosquitto_sub alone at the same load ({c['offered']:,.0f}/s offered): "
        f"{c['rate']:,.0f}/s. Broker max_queued_messages 20,000: dropped "
        f"{ov['dropped_metric']:,.0f} (gateway /metrics o2chain_broker_dropped_messages_total; "
        f"/api/status broker_dropped {ov['dropped_status']}). Over the window: gateway "
        f"{gw['gw_cpu_pct']:.0f} % of a core ({gw['gw_us']:.0f} us/reading, "
        f"{best.get('gw_us', 0):.0f} at the best step), waited for one "
        f"{gw['gw_wait_pct']:.0f} %; broker {gw['broker_cpu_pct']:.0f} %, influxd "
        f"{gw['influxd_cpu_pct']:.0f} %, load {gw['load_cpu_pct']:.0f} % (with mosquitto_sub: "
        f"broker {c['broker_cpu_pct']:.0f} %, mosquitto_sub {c['csub_cpu_pct']:.0f} %); "
        f"load average {gw['loadavg']:.1f}; gateway peak RSS {ov['peak_rss_mb']:.0f} MB. "
        f"Alternating windows, the best step's rate then 2x (the median 2x one above; all "
        f"2x against all baseline ones {100 * adjacent:.0f} %): {rounds}",
    ))  # fmt: skip
    return rows


def modbus_rows(tmp: Path, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    try:
        tcp, raw, ratios = modbus_tcp(tmp, 100, seconds=3.0 if args.quick else 5.0)
    except Exception as exc:  # a failed phase is a row, not a missing table
        rows.append(Row("Modbus TCP, 100 simulated devices", "failed", repr(exc)))
    else:
        rows.append(
            Row(
                "Modbus TCP, 100 simulated devices",
                f"{tcp['polls_s']:,.0f} polls/s",
                f"{tcp['polls_s'] / raw['polls_s']:.2f}x raw pymodbus on the same farm "
                f"({raw['polls_s']:,.0f} polls/s, CPU {raw['cpu_pct']:.0f} %; median of "
                f"alternating rounds {', '.join(f'{r:.2f}' for r in ratios)}); "
                f"{tcp['requests_s']:,.0f} requests/s; {tcp['online']:.0f}/100 online; "
                f"poller CPU {tcp['cpu_pct']:.0f} % of a core (simulators: own process)",
            )
        )
    try:
        rtus = modbus_rtu(tmp, seconds=3.0 if args.quick else 6.0)
    except Exception as exc:
        rows.append(Row("Modbus RTU", "failed", repr(exc)))
        rtus = []
    for rtu in rtus:
        rows.append(
            Row(
                f"Modbus RTU {rtu['baud']:.0f} baud (8N1)",
                f"{rtu['share_pct']:.0f} % of line",
                f"{rtu['tx_s']:.1f} transactions/s of {rtu['theory_s']:.1f} theoretical "
                f"(4 devices, FC3 x8 + FC1 x1 per poll, t3.5 gaps; slave holds answers "
                f"for their wire time)",
            )
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description="gateway benchmark: prints one table")
    ap.add_argument("--backlog", type=int, default=100_000, help="backlog readings (20 boards)")
    ap.add_argument("--light-s", type=float, default=20.0, help="each light-load run (500/s)")
    ap.add_argument("--step-s", type=float, default=8.0, help="each paced step")
    ap.add_argument("--overload-s", type=float, default=20.0, help="each overload window")
    ap.add_argument(
        "--phases", default="backlog,light,steps,overload", help="MQTT phases to run (comma list)"
    )
    ap.add_argument("--overload-rate", type=float, default=0.0, help="instead of 2x the best")
    ap.add_argument("--quick", action="store_true", help="small loads, for a smoke run")
    ap.add_argument("--skip-modbus", action="store_true")
    ap.add_argument("--only-modbus", action="store_true")
    ap.add_argument("--stages-only", action="store_true", help="only the in-process rows")
    ap.add_argument("--skip-stages", action="store_true", help="without the in-process rows")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) and say where")
    args = ap.parse_args()
    if args.quick:
        args.backlog, args.light_s, args.step_s, args.overload_s = 20_000, 8.0, 4.0, 8.0
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            tmp = Path(tempfile.mkdtemp(prefix="o2bench-"))
            print(f"logs in {tmp}", file=sys.stderr)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="o2bench-")))
        if not args.only_modbus and not args.stages_only:
            rows += mqtt_rows(tmp, args)
        if not args.skip_modbus and not args.stages_only:
            rows += modbus_rows(tmp, args)
        if not args.only_modbus and not args.skip_stages:
            rows += stage_rows(tmp, args)
    width = max(len(r.name) for r in rows)
    rate_w = max(len(r.rate) for r in rows)
    print(f"| {'what'.ljust(width)} | {'measured'.ljust(rate_w)} | detail |")
    print(f"|{'-' * (width + 2)}|{'-' * (rate_w + 2)}|---|")
    for r in rows:
        print(f"| {r.name.ljust(width)} | {r.rate.ljust(rate_w)} | {r.detail} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
