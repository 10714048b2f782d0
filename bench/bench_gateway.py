"""Gateway benchmark: one command, one table.

    .venv/bin/python bench/bench_gateway.py [--readings 200000] [--quick]

Starts a private Mosquitto and InfluxDB, then measures in the same run:

- **broker ceiling**: ``mosquitto_sub -q 1`` (C) draining the load the publishers send;
- **gateway**: ``o2chain gateway run`` (durable outbox on, fsync'd group commits) draining the
  same load into InfluxDB: sustained readings/s with zero loss (InfluxDB holds exactly the
  number published), gateway CPU (share of one core) and peak RSS;
- **latency** at a paced 5,000 readings/s (``o2chain sim fleet``, 20 boards): board timestamp ->
  queryable in InfluxDB, p50/p99, from probe readings sent every 20 ms among the load;
- **naive baseline**: one HTTP ``/write`` per MQTT message (auto-ack subscriber);
- **Modbus TCP**: reads/s over 100 simulated devices (one simulator process, 100 ports);
- **Modbus RTU**: share of the line's theoretical frame rate used at 9600 and 19200 baud, on a
  pty pair with a slave that holds each answer for its time on the wire;
- **in process** (no broker, CPU time of this process): the pipeline stages (enrichment,
  alarms, self-observation) per reading, fed one message at a time and one commit batch at a
  time, and the whole commit path (decode, duplicates, stages, line protocol, fsync'd outbox
  commit) per reading. ``--stages-only`` runs just these.

The load is ``mosquitto_pub -l`` (one per board, < 65,535 lines each: past that its QoS 1
message ids wrap). Every phase is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
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

REPO = Path(__file__).resolve().parent.parent

SITE = "bench"
DB = "o2bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def board(n: int) -> str:
    return f"room-{n:03d}"


# -- process metrics ---------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


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


def payload_files(tmp: Path, boards: int, per_board: int, first_ts_ms: int) -> list[Path]:
    files = []
    for b in range(boards):
        path = tmp / f"load-{b}.txt"
        with path.open("w") as f:
            for seq in range(per_board):
                f.write(
                    json.dumps(
                        {
                            "v": 1,
                            "boot": 1,
                            "seq": seq,
                            "ts": first_ts_ms + seq,  # unique per board: one point per reading
                            "o2_pct": round(21.0 + (seq % 40) / 10, 1),
                            "baro_kpa": 64.5,
                            "temp_c": 18.0 + b % 5,
                            "rh_pct": 30.0,
                        },
                        separators=(",", ":"),
                    )
                    + "\n"
                )
        files.append(path)
    return files


def publish_files(broker: Mosquitto, files: list[Path]) -> list[subprocess.Popen[bytes]]:
    procs = []
    for b, path in enumerate(files):
        with path.open("rb") as f:
            procs.append(
                subprocess.Popen(
                    [
                        "mosquitto_pub",
                        "-h",
                        broker.host,
                        "-p",
                        str(broker.port),
                        "-q",
                        "1",
                        "-t",
                        f"o2/{SITE}/{board(b)}/telemetry",
                        "-l",
                        "-i",
                        f"bench-pub-{b}-{time.monotonic_ns()}",
                    ],
                    stdin=f,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    return procs


def wait_procs(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# -- phases -------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    rate: str
    detail: str


def broker_ceiling(broker: Mosquitto, files: list[Path], total: int, timeout_s: float) -> float:
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-q",
            "1",
            "-t",
            f"o2/{SITE}/+/telemetry",
            "-C",
            str(total),
            "-i",
            "bench-ceiling",
        ],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # mosquitto_sub prints nothing when subscribed; give it its SUBACK
    started = time.monotonic()
    pubs = publish_files(broker, files)
    try:
        sub.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        sub.kill()
        sub.wait()
    elapsed = time.monotonic() - started
    wait_procs(pubs, 10)
    return total / elapsed if sub.returncode == 0 else 0.0


def gateway_config(
    tmp: Path,
    services: Services,
    boards: int,
    name: str,
    naming: str = "room-{n:03d}",
    mqtt_extra: dict[str, Any] | None = None,
) -> Path:
    cfg = {
        "gateway": {
            "id": f"gw-{name}",
            "state_dir": str(tmp / f"state-{name}"),
            "http_listen": "127.0.0.1:0",
        },
        "mqtt": {"url": services.mosquitto.url, **(mqtt_extra or {})},
        "influx": {"url": services.influxdb.url, "database": DB, "batch_size": 10000},
        "site": [{"id": SITE, "altitude_m": 3650}],
        "device": [
            {"id": naming.format(n=n), "site": SITE, "kind": "room", "transport": "mqtt"}
            for n in range(boards)
        ]
        + [{"id": "room-probe", "site": SITE, "kind": "room", "transport": "mqtt"}],
    }
    path = tmp / f"gw-{name}.toml"
    path.write_bytes(tomli_w.dumps(cfg).encode())
    return path


def drop_db(influx: InfluxDB) -> None:
    influx.query(f'DROP DATABASE "{DB}"')
    influx.create_database(DB)


def gateway_throughput(
    tmp: Path, services: Services, files: list[Path], total: int, timeout_s: float
) -> dict[str, float]:
    drop_db(services.influxdb)
    cfg = gateway_config(tmp, services, len(files), "throughput")
    with ChildProcess(
        o2chain_argv("gateway", "run", "-c", str(cfg), "--log-level", "WARNING"),
        tmp / "gw-throughput.log",
    ) as gw:
        # WARNING level hides the "subscribed" line: wait for the session to exist instead.
        deadline = time.monotonic() + 20
        pid = gw.pid or 0
        while time.monotonic() < deadline and not _has_established(pid):
            time.sleep(0.05)
        time.sleep(0.5)  # the SUBSCRIBE follows the CONNACK
        others = {"mosquitto": services.mosquitto.pid or 0, "influxd": services.influxdb.pid or 0}
        others0 = {k: cpu_s(v) for k, v in others.items()}
        load0 = os.getloadavg()[0]
        cpu0 = cpu_s(pid)
        started = time.monotonic()
        pubs = publish_files(services.mosquitto, files)
        peak_rss = 0.0
        count = 0
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            peak_rss = max(peak_rss, rss_mb(pid))
            count = count_points(services.influxdb)
            if count >= total:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        cpu = cpu_s(pid) - cpu0
        other_pct = {k: 100 * (cpu_s(v) - others0[k]) / elapsed for k, v in others.items()}
        wait_procs(pubs, 5)
        time.sleep(1.0)
        final = count_points(services.influxdb)
        peak_rss = max(peak_rss, rss_mb(pid, "VmHWM"))
    return {
        "rate": final / elapsed,
        "count": final,
        "lost": total - final,
        "cpu_pct": 100 * cpu / elapsed,
        "rss_mb": peak_rss,
        "elapsed_s": elapsed,
        "broker_cpu_pct": other_pct["mosquitto"],
        "influxd_cpu_pct": other_pct["influxd"],
        "load_before": load0,
    }


def _has_established(pid: int) -> bool:
    try:
        out = subprocess.run(
            ["ss", "-tnp", "state", "established"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return True
    return f"pid={pid}," in out


def latency(
    tmp: Path,
    services: Services,
    rate: float,
    seconds: float,
    boards: int,
    name: str = "latency",
    mqtt_extra: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Probe readings every 20 ms among a paced fleet; p50/p99 of ts -> first seen queryable,
    and the gateway's CPU time per reading (/proc)."""
    drop_db(services.influxdb)
    # o2chain sim fleet numbers its boards room-0001, room-0002, ...
    cfg = gateway_config(
        tmp, services, boards + 1, name, naming="room-{n:04d}", mqtt_extra=mqtt_extra
    )
    fleet_argv = o2chain_argv(
        "sim",
        "fleet",
        "--mqtt",
        services.mosquitto.url,
        "--site",
        SITE,
        "--boards",
        str(boards),
        "--readings",
        str(int(rate * seconds / boards)),
        "--interval-s",
        str(boards / rate),
        "--seed",
        "1",
    )
    with ChildProcess(o2chain_argv("gateway", "run", "-c", str(cfg)), tmp / f"gw-{name}.log") as gw:
        gw.wait_for_log("MQTT subscribed", timeout_s=20)
        pid = gw.pid or 0
        probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-probe")
        probe.connect(services.mosquitto.host, services.mosquitto.port)
        probe.loop_start()
        sent: dict[int, int] = {}
        seen: dict[int, float] = {}
        stop = threading.Event()

        def poll() -> None:
            session = requests.Session()
            while not stop.is_set():
                try:
                    r = session.get(
                        f"{services.influxdb.url}/query",
                        params={
                            "db": DB,
                            "epoch": "ms",
                            "q": "SELECT seq FROM room WHERE device = 'room-probe' "
                            "AND time > now() - 10s",
                        },
                        timeout=5,
                    )
                    now = time.time()
                    for result in r.json().get("results", []):
                        for series in result.get("series", []):
                            for _t, seq in series["values"]:
                                seen.setdefault(int(seq), now)
                except (requests.RequestException, ValueError):
                    pass
                stop.wait(0.01)

        poller = threading.Thread(target=poll, daemon=True)
        with ChildProcess(fleet_argv, tmp / f"fleet-{name}.log") as fleet:
            poller.start()
            cpu0, t0 = cpu_s(pid), time.monotonic()
            seq = 0
            while fleet.running and time.monotonic() - t0 < seconds + 30:
                ts = int(time.time() * 1000)
                body = {"v": 1, "boot": 1, "seq": seq, "ts": ts, "o2_pct": 21.0}
                probe.publish("o2/bench/room-probe/telemetry", json.dumps(body), qos=1)
                sent[seq] = ts
                seq += 1
                time.sleep(0.02)  # pacing probes, not synchronisation
            cpu = cpu_s(pid) - cpu0
            elapsed = time.monotonic() - t0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(seen) < len(sent):
                time.sleep(0.05)
            stop.set()
            poller.join(5)
            summary = json.loads(fleet.log_text().strip().splitlines()[-1])
        probe.disconnect()
        probe.loop_stop()
    lat = sorted((seen[s] - sent[s] / 1000) for s in sent if s in seen)
    if not lat:
        return {"p50": float("nan"), "p99": float("nan"), "rate": 0.0, "probes": 0}
    return {
        "p50": statistics.median(lat),
        "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "probes": len(lat),
        "lost_probes": len(sent) - len(lat),
        "rate": summary["readings_sent"] / summary["elapsed_s"],
        "cpu_pct": 100 * cpu / elapsed,
        "cpu_ms_per_reading": 1000 * cpu / max(1, summary["readings_sent"] + len(sent)),
    }


def naive_baseline(services: Services, files: list[Path], seconds: float) -> float:
    """One HTTP write per message: what a simple MQTT-to-InfluxDB bridge does."""
    from gateway.config import parse_config
    from gateway.lineproto import LineEncoder
    from gateway.telemetry import TelemetryDecoder

    drop_db(services.influxdb)
    config = parse_config(
        {
            "site": [{"id": SITE, "altitude_m": 3650}],
            "device": [
                {"id": board(n), "site": SITE, "kind": "room", "transport": "mqtt"}
                for n in range(len(files))
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

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-naive")
    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(services.mosquitto.host, services.mosquitto.port)
    sub.loop_start()
    sub.subscribe(f"o2/{SITE}/+/telemetry", qos=1)
    subscribed.wait(5)
    pubs = publish_files(services.mosquitto, files[:2])
    time.sleep(1.0)  # warm-up
    w0, t0 = written, time.monotonic()
    time.sleep(seconds)  # a fixed measuring window
    rate = (written - w0) / (time.monotonic() - t0)
    done.set()
    sub.disconnect()
    sub.loop_stop()
    for p in pubs:
        p.kill()
        p.wait()
    return rate


# -- Modbus -------------------------------------------------------------------------------------


def modbus_tcp(tmp: Path, devices: int, seconds: float) -> dict[str, float]:
    farm = ChildProcess(
        [sys.executable, str(REPO / "bench" / "modbus_farm.py"), "--devices", str(devices)],
        tmp / "modbus-farm.log",
    ).start()
    try:
        match = farm.wait_for_log(r"ports (\[[0-9, ]+\])", timeout_s=60)
        ports = json.loads(match.group(1))
        return asyncio.run(_poll_farm(ports, seconds))
    finally:
        farm.stop()


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
    on a real line at this baud rate (a pty carries bytes instantly)."""
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
            wire_s = (len(req) + len(answer)) * char_s + 2 * gap_s
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
                {"id": board(n), "site": SITE, "kind": "room", "transport": "mqtt"}
                for n in range(boards)
            ],
        }
    )
    return Gateway(config)  # the service's own wiring: Enricher, AlarmEngine, Observer


def _messages(boards: int, per_board: int, first_ts_ms: int) -> list[tuple[str, bytes]]:
    """The throughput load's messages, boards interleaved as they arrive."""
    out = []
    for seq in range(per_board):
        for b in range(boards):
            body = {
                "v": 1, "boot": 1, "seq": seq, "ts": first_ts_ms + seq,
                "o2_pct": round(21.0 + (seq % 40) / 10, 1), "baro_kpa": 64.5,
                "temp_c": 18.0 + b % 5, "rh_pct": 30.0,
            }  # fmt: skip
            out.append((f"o2/{SITE}/{board(b)}/telemetry", json.dumps(body).encode()))
    return out


def stage_costs(tmp: Path, readings: int, boards: int = 8) -> dict[str, float]:
    """CPU us per reading: the pipeline stages per message and per commit batch, and the
    commit path (MqttIngest's committer without a broker: acknowledgements are skipped)."""
    from gateway.mqtt_ingest import MAX_MESSAGES_PER_COMMIT, PIPELINE_CHUNK, _Queued

    now_ms = int(time.time() * 1000)
    messages = _messages(boards, readings // boards, now_ms - 60_000)
    gw = _stage_rig(tmp / "stages", boards)
    decoded = [r for topic, body in messages for r in gw.mqtt.decoder.decode(topic, body, now_ms)]
    # As the service does after start-up (gateway/app.py): what exists now is left out of the
    # collector's full passes, so this process's earlier phases do not weigh on the figures.
    gc.collect()
    gc.freeze()

    def cpu_us(chunks: list[list[Any]], fn: Any) -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.process_time()
            for chunk in chunks:
                fn(chunk)
            best = min(best, time.process_time() - t0)
        return best / len(decoded) * 1e6

    per_message = cpu_us([[r] for r in decoded], gw.pipeline.process)
    step = PIPELINE_CHUNK  # what the committer hands the pipeline at once
    runs = [decoded[i : i + step] for i in range(0, len(decoded), step)]
    per_run = cpu_us(runs, gw.pipeline.process)
    gw.outbox.close()
    gw = _stage_rig(tmp / "commit", boards)  # fresh state: no reading is a duplicate
    ingest = gw.mqtt
    ingest._ack = lambda batch: None  # no broker here
    queued = [_Queued(0, n % 65535 + 1, 1, t, b) for n, (t, b) in enumerate(messages)]
    t0 = time.process_time()
    step = MAX_MESSAGES_PER_COMMIT
    for i in range(0, len(queued), step):
        ingest._commit_batch(queued[i : i + step])
    commit = (time.process_time() - t0) / len(queued) * 1e6
    gw.outbox.close()
    gc.unfreeze()
    return {"per_message": per_message, "per_run": per_run, "commit": commit}


def stage_rows(tmp: Path, args: argparse.Namespace) -> list[Row]:
    from gateway.mqtt_ingest import PIPELINE_CHUNK

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
            f"batches of 5,000 (= {1e6 / costs['commit']:,.0f} readings/s of one core); CPU time",
        ),
    ]


# -- main ---------------------------------------------------------------------------------------


def mqtt_rows(tmp: Path, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    per_board = min(60_000, args.readings // args.boards)
    total = per_board * args.boards
    files = payload_files(tmp, args.boards, per_board, int(time.time() * 1000) - 3_600_000)
    with Services(tmp / "services") as services:
        services.influxdb.create_database(DB)
        ceiling = broker_ceiling(services.mosquitto, files, total, timeout_s=120)
        rows.append(Row("broker ceiling (mosquitto_sub -q 1)", f"{ceiling:,.0f} msg/s", ""))
        gw = gateway_throughput(tmp, services, files, total, timeout_s=180)
        share = 100 * gw["rate"] / ceiling if ceiling else float("nan")
        rows.append(
            Row(
                "gateway MQTT->outbox->InfluxDB",
                f"{gw['rate']:,.0f} readings/s",
                f"{total:,} published, {gw['count']:,} in InfluxDB (lost {gw['lost']}); "
                f"{share:.0f} % of ceiling; CPU {gw['cpu_pct']:.0f} % of a core; "
                f"peak RSS {gw['rss_mb']:.0f} MB; meanwhile mosquitto "
                f"{gw['broker_cpu_pct']:.0f} %, influxd {gw['influxd_cpu_pct']:.0f} % "
                f"(2 cores, load average before {gw['load_before']:.1f})",
            )
        )
        lat = latency(tmp, services, args.latency_rate, args.latency_s, boards=20)
        rows.append(
            Row(
                f"latency at {args.latency_rate:,.0f} readings/s",
                f"p50 {lat['p50'] * 1000:.0f} ms, p99 {lat['p99'] * 1000:.0f} ms",
                f"board ts -> queryable, {lat['probes']} probes "
                f"({lat.get('lost_probes', 0)} unseen); load held {lat['rate']:,.0f}/s; "
                f"gateway CPU {lat.get('cpu_pct', 0):.0f} %",
            )
        )
        # Light load, what a facility has: CPU per reading with group commit (the default
        # commit_linger_ms) against committing every few messages at once, in the same run.
        light = latency(tmp, services, 500.0, args.light_s, boards=20, name="light")
        eager = latency(
            tmp, services, 500.0, args.light_s, boards=20, name="light-eager",
            mqtt_extra={"commit_linger_ms": 0},
        )  # fmt: skip
        rows.append(
            Row(
                "gateway CPU at 500 readings/s",
                f"{light['cpu_ms_per_reading']:.3f} ms/reading",
                f"default group commit; committing at once (commit_linger_ms 0): "
                f"{eager['cpu_ms_per_reading']:.3f} ms/reading "
                f"({eager['cpu_ms_per_reading'] / light['cpu_ms_per_reading']:.1f}x); "
                f"p99 board ts -> queryable {light['p99'] * 1000:.0f} ms "
                f"(at once: {eager['p99'] * 1000:.0f} ms)",
            )
        )
        naive = naive_baseline(services, files, seconds=5.0)
        rows.append(Row("naive baseline (1 HTTP write/msg)", f"{naive:,.0f} readings/s", ""))
    return rows


def modbus_rows(tmp: Path, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    try:
        tcp = modbus_tcp(tmp, 100, seconds=5.0 if args.quick else 10.0)
    except Exception as exc:  # a failed phase is a row, not a missing table
        rows.append(Row("Modbus TCP, 100 simulated devices", "failed", repr(exc)))
    else:
        rows.append(
            Row(
                "Modbus TCP, 100 simulated devices",
                f"{tcp['polls_s']:,.0f} polls/s",
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
    ap.add_argument("--readings", type=int, default=200_000, help="throughput load (total)")
    ap.add_argument("--boards", type=int, default=8, help="publishers for the throughput load")
    ap.add_argument("--latency-rate", type=float, default=5000.0)
    ap.add_argument("--latency-s", type=float, default=10.0)
    ap.add_argument("--light-s", type=float, default=20.0, help="each light-load run (500/s)")
    ap.add_argument("--quick", action="store_true", help="small loads, for a smoke run")
    ap.add_argument("--skip-modbus", action="store_true")
    ap.add_argument("--only-modbus", action="store_true")
    ap.add_argument("--stages-only", action="store_true", help="only the in-process rows")
    args = ap.parse_args()
    if args.quick:
        args.readings, args.latency_s, args.light_s = 40_000, 4.0, 8.0
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="o2bench-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.only_modbus and not args.stages_only:
            rows += mqtt_rows(tmp, args)
        if not args.skip_modbus and not args.stages_only:
            rows += modbus_rows(tmp, args)
        if not args.only_modbus:
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
