"""Fleet generator benchmark: boards and readings per second per core, against a real Mosquitto.

    .venv/bin/python bench/bench_fleet.py                    # 10,000 boards at 1 reading / 10 s
    .venv/bin/python bench/bench_fleet.py --boards 2000 --readings 2

Runs the fleet in this process (CPU time from time.process_time, i.e. getrusage of this
process) against a private broker (o2base.services.Mosquitto, CPU from /proc/PID/stat), and
prints a table:

1. *connect only*: N boards connect, publish their birth, say goodbye (readings = 0);
2. *real time*: the same N boards at one reading per ``interval`` for ``readings`` rounds;
   steady-state cost = (2) - (1), spread over the rounds' wall time = fraction of one core;
3. *as fast as possible*: 20 boards x 1000 readings (interval 0) = the per-core ceiling.

Every run is bounded by its own timeout (FleetConfig.timeout_s).

    .venv/bin/python bench/bench_fleet.py --gateway          # a region's fleet into one gateway

``--gateway`` measures the region figure instead: ``--boards`` (10,000) boards at one reading
per ``--interval-s`` (10 s) spread over ``--sites`` (100) sites, published to one broker and
ingested by one gateway process into a private InfluxDB; prints each process's fraction of one
core over the run and delivered/offered (distinct points counted in InfluxDB / readings the
fleet had acknowledged). Everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

from o2base.procs import ChildProcess, o2chain_argv
from o2base.services import InfluxDB, Mosquitto
from simulators.fleet import Fleet, FleetConfig, FleetSummary

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def run(
    broker: Mosquitto, boards: int, interval_s: float, readings: int, site: str
) -> tuple[FleetSummary, float, float, float]:
    config = FleetConfig(
        host=broker.host,
        port=broker.port,
        site=site,
        boards=boards,
        interval_s=interval_s,
        readings=readings,
        timeout_s=120 + readings * interval_s * 2 + boards * 0.01,
    )
    broker_cpu0 = proc_cpu_s(broker.pid)
    cpu0 = time.process_time()
    t0 = time.monotonic()
    summary: FleetSummary = asyncio.run(Fleet(config).run())
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    if not summary.complete or summary.readings_sent != boards * readings:
        sys.exit(f"incomplete run: {summary.to_json()}")
    return summary, wall, cpu, proc_cpu_s(broker.pid) - broker_cpu0


def influx_count(db: InfluxDB, name: str) -> int:
    rows = db.query_points("SELECT count(o2_pct) FROM room", db=name)
    return int(rows[0]["count"]) if rows else 0


def gateway_metrics(gw: ChildProcess) -> dict[str, float]:
    """A few of the gateway's own counters (GET /metrics)."""
    import re

    import requests

    port = gw.wait_for_log(r"HTTP listening on http://127\.0\.0\.1:(\d+)").group(1)
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    wanted = (
        'o2chain_readings_total{source="mqtt"}',
        "o2chain_mqtt_messages_total",
        "o2chain_duplicates_total",
        "o2chain_influx_points_written_total",
        "o2chain_outbox_depth",
        'o2chain_alarm_events_total{event="raise"}',
        'o2chain_alarm_events_total{event="clear"}',
    )
    out = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            out[re.sub(r"^o2chain_", "", name)] = float(value)
    return out


def gateway_run(args: argparse.Namespace) -> None:
    """The region figure: a fleet over many sites into one gateway, counted in InfluxDB."""
    boards, sites = args.boards, args.sites
    config = FleetConfig(
        host="127.0.0.1",
        port=0,
        site="region",
        boards=boards,
        interval_s=args.interval_s,
        readings=args.readings,
        sites=sites,
        timeout_s=300 + args.readings * args.interval_s * 2,
    )
    config.validate()
    with tempfile.TemporaryDirectory(prefix="bench-region-") as tmp:
        base = Path(tmp)
        with Mosquitto(base) as mq, InfluxDB(base) as db:
            config = FleetConfig(**{**config.__dict__, "port": mq.port})
            site_ids = sorted({config.site_id(i) for i in range(boards)})
            gw_cfg = {
                "gateway": {
                    "id": "gw-bench",
                    "state_dir": str(base / "state"),
                    "http_listen": "127.0.0.1:0",
                },
                "mqtt": {"url": mq.url},
                "influx": {"url": db.url, "database": "bench"},
                "site": [{"id": s, "altitude_m": 3650} for s in site_ids],
                "device": [
                    {
                        "id": config.device_id(i),
                        "site": config.site_id(i),
                        "kind": "room",
                        "transport": "mqtt",
                    }
                    for i in range(boards)
                ],
            }
            (base / "gw.toml").write_bytes(tomli_w.dumps(gw_cfg).encode())
            gw = ChildProcess(
                o2chain_argv("gateway", "run", "-c", str(base / "gw.toml")), base / "gw.log"
            ).start()
            try:
                gw.wait_for_log("MQTT subscribed", timeout_s=120)
                gw_cpu0, mq_cpu0, db_cpu0 = (proc_cpu_s(p) for p in (gw.pid, mq.pid, db.pid))
                cpu0, t0 = time.process_time(), time.monotonic()
                summary: FleetSummary = asyncio.run(Fleet(config).run())
                wall = time.monotonic() - t0
                fleet_cpu = time.process_time() - cpu0
                offered = summary.readings_sent
                # The gateway may still be working through the broker's queue: wait while the
                # count grows, give up after 180 s without progress (or 10 min in all).
                delivered, last_progress = influx_count(db, "bench"), time.monotonic()
                give_up = time.monotonic() + 600
                while delivered < offered and time.monotonic() < give_up:
                    time.sleep(1.0)
                    now_count = influx_count(db, "bench")
                    if now_count > delivered:
                        last_progress = time.monotonic()
                    elif time.monotonic() - last_progress > 180:
                        break
                    delivered = now_count
                drained = time.monotonic() - t0
                gw_cpu = proc_cpu_s(gw.pid) - gw_cpu0
                metrics = gateway_metrics(gw)
                mq_cpu = proc_cpu_s(mq.pid) - mq_cpu0
                db_cpu = proc_cpu_s(db.pid) - db_cpu0
            finally:
                gw.stop()
                kept = Path(tempfile.gettempdir()) / "bench-region-gateway.log"
                kept.write_bytes((base / "gw.log").read_bytes())
    measured = boards * args.readings
    print(
        f"region fleet: {boards} boards over {len(site_ids)} sites, one reading / "
        f"{args.interval_s:g} s each ({boards / args.interval_s:.0f} readings/s offered), "
        f"{args.readings} rounds; fleet run {wall:.1f} s, drained at {drained:.1f} s"
    )
    print(f"{'process':<10}{'cpu s':>9}{'fraction of one core':>24}")
    for name, cpu, span in (
        ("fleet", fleet_cpu, wall),
        ("broker", mq_cpu, drained),
        ("gateway", gw_cpu, drained),
        ("influxd", db_cpu, drained),
    ):
        print(f"{name:<10}{cpu:>9.2f}{cpu / span:>24.3f}")
    print(
        f"readings measured {summary.readings_measured}/{measured}, offered (PUBACKed) {offered}, "
        f"dropped by boards {summary.readings_dropped}, delivered (distinct points in InfluxDB) "
        f"{delivered}: delivered/offered = {delivered / offered if offered else 0:.4f}"
    )
    print("gateway counters: " + ", ".join(f"{k} {v:g}" for k, v in metrics.items()))
    if not summary.complete or delivered != offered or offered != measured:
        sys.exit(f"LOSS or incomplete run (gateway log: {kept}): " + summary.to_json())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", type=int, default=10_000)
    parser.add_argument("--interval-s", type=float, default=10.0)
    parser.add_argument("--readings", type=int, default=3)
    parser.add_argument("--fast-boards", type=int, default=20)
    parser.add_argument("--fast-readings", type=int, default=1000)
    parser.add_argument("--gateway", action="store_true", help="the region figure (see above)")
    parser.add_argument("--sites", type=int, default=100, help="with --gateway")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args.boards + 100 > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.boards + 1000), hard))
    if args.gateway:
        gateway_run(args)
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp, Mosquitto(Path(tmp)) as mq:
        s0, w0, c0, b0 = run(mq, args.boards, args.interval_s, 0, "bench-a")
        rows.append(("connect only", args.boards, 0, w0, c0, b0, s0))
        s1, w1, c1, b1 = run(mq, args.boards, args.interval_s, args.readings, "bench-b")
        rows.append(("real time", args.boards, s1.readings_sent, w1, c1, b1, s1))
        s2, w2, c2, b2 = run(mq, args.fast_boards, 0.0, args.fast_readings, "bench-c")
        rows.append(("as fast as possible", args.fast_boards, s2.readings_sent, w2, c2, b2, s2))

    print(f"{'run':<22}{'boards':>8}{'readings':>10}{'wall s':>9}{'fleet cpu s':>13}"
          f"{'broker cpu s':>14}{'readings/s':>12}{'readings/cpu-s':>16}")  # fmt: skip
    for name, boards, sent, wall, cpu, broker_cpu, _ in rows:
        rate = sent / wall if wall else 0.0
        per_cpu = sent / cpu if cpu and sent else 0.0
        print(f"{name:<22}{boards:>8}{sent:>10}{wall:>9.2f}{cpu:>13.2f}{broker_cpu:>14.2f}"
              f"{rate:>12.0f}{per_cpu:>16.0f}")  # fmt: skip
    steady_cpu = max(c1 - c0, 0.0)
    steady_wall = args.readings * args.interval_s
    print()
    print(
        f"steady state, {args.boards} boards at 1 reading / {args.interval_s:g} s: "
        f"{steady_cpu:.2f} CPU s over ~{steady_wall:.0f} s = {steady_cpu / steady_wall:.2f} core "
        f"({args.boards / args.interval_s:.0f} readings/s); "
        f"connect+birth+goodbye {c0 / args.boards * 1e3:.2f} ms CPU per board; "
        f"ceiling {s2.readings_sent / c2:.0f} readings per CPU second"
    )


if __name__ == "__main__":
    main()
