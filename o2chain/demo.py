"""`o2chain demo`: the whole simulated facility — services, equipment, boards and the gateway.

Everything runs on 127.0.0.1 in one data directory that is kept afterwards (its InfluxDB holds
what the demo measured). Ctrl-C (or ``--duration``) stops every process the demo started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from o2chain.procs import ChildProcess, o2chain_argv
from o2chain.services import Services

SITE = "lhasa-hotel"
ALTITUDE_M = 3650.0
DATABASE = "o2chain"

# (device id, profile, flow setpoint L/min, seed): the plant room and the concentrators.
MODBUS_EQUIPMENT = [
    ("psa-1", "psa-plant", 200.0, 11),
    ("conc-1", "medical-concentrator", 3.0, 12),
    ("conc-2", "medical-concentrator", 5.5, 13),  # run above its rating: lower purity
]
# (device id, simulated O2 % in the room): enriched rooms with firmware boards. The ZE03 module
# they carry reads 0-25 % (DOMAIN.md section 4), so the demo keeps them inside its range.
ROOM_BOARDS = [("room-101", 24.8), ("room-102", 24.3)]


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run the whole simulated facility until Ctrl-C")
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop by itself after this many seconds (for scripts)",
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where services keep their data and logs (default: a new dir under /tmp)",
    )
    demo.add_argument("--interval-s", type=float, default=5.0, help="board reading interval")
    demo.add_argument(
        "--summary-json",
        type=Path,
        default=None,
        help="write what ran and what reached InfluxDB to this file at the end",
    )
    demo.set_defaults(handler=_run)


@dataclass
class DemoState:
    data_dir: Path
    children: list[ChildProcess] = field(default_factory=list)
    boards: list[Any] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)


def _gateway_config(services: Services, data_dir: Path, modbus: dict[str, str]) -> Path:
    devices: list[dict[str, Any]] = [
        {"id": dev, "site": SITE, "kind": "room", "transport": "mqtt", "room": dev[5:]}
        for dev, _ in ROOM_BOARDS
    ]
    for dev, profile, _, _ in MODBUS_EQUIPMENT:
        kind = "plant" if profile == "psa-plant" else "concentrator"
        devices.append(
            {
                "id": dev,
                "site": SITE,
                "kind": kind,
                "transport": "modbus",
                "url": modbus[dev],
                "profile": profile,
                "interval_s": 2.0,
            }
        )
    config = {
        "gateway": {"id": "gw-demo", "state_dir": str(data_dir / "gateway")},
        "mqtt": {"url": services.mosquitto.url},
        "influx": {"url": services.influxdb.url, "database": DATABASE, "flush_interval_s": 0.5},
        "site": [{"id": SITE, "altitude_m": ALTITUDE_M, "name": "Hotel in Lhasa"}],
        "device": devices,
    }
    path = data_dir / "gateway.toml"
    path.write_bytes(tomli_w.dumps(config).encode())
    return path


def _board_config(device: str, services: Services, interval_s: float) -> dict[str, Any]:
    return {
        "site": SITE,
        "device": device,
        "kind": "room",
        "site_altitude_m": ALTITUDE_M,
        "interval_s": interval_s,
        "mqtt": {"host": services.mosquitto.host, "port": services.mosquitto.port},
        "sensors": {
            "o2": {"type": "ze03", "uart": 1, "tx": 17, "rx": 16},
            "env": {"type": "bme280", "i2c": 0, "sda": 21, "scl": 22, "addr": 118},
        },
    }


def _latest(services: Services) -> list[str]:
    """One line per device with its last values, straight from InfluxDB."""
    lines = []
    q_room = "SELECT last(o2_pct) AS o2, last(ppo2_kpa) AS ppo2 FROM room GROUP BY device"
    q_conc = (
        "SELECT last(purity_pct) AS purity, last(flow_lpm) AS flow FROM concentrator "
        "GROUP BY device"
    )
    with contextlib.suppress(Exception):
        for p in services.influxdb.query_points(q_room, db=DATABASE):
            lines.append(f"  {p['device']:<10} O2 {p['o2']:5.2f} %   ppO2 {p['ppo2']:5.2f} kPa")
        for p in services.influxdb.query_points(q_conc, db=DATABASE):
            lines.append(
                f"  {p['device']:<10} purity {p['purity']:5.1f} %   flow {p['flow']:6.1f} L/min"
            )
    return lines


def _counts(services: Services) -> dict[str, int]:
    counts: dict[str, int] = {}
    for measurement, fld in (("room", "o2_pct"), ("concentrator", "purity_pct")):
        with contextlib.suppress(Exception):
            pts = services.influxdb.query_points(
                f"SELECT count({fld}) FROM {measurement}", db=DATABASE
            )
            counts[measurement] = int(pts[0]["count"]) if pts else 0
    return counts


def _run(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="o2chain-demo-"))
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    state = DemoState(data_dir)
    services = Services(data_dir / "services")
    summary: dict[str, Any] = {"data_dir": str(data_dir)}
    started = time.monotonic()
    try:
        services.start()
        state.pids += [p for p in (services.mosquitto.pid, services.influxdb.pid) if p]
        modbus: dict[str, str] = {}
        for dev, profile, flow, seed in MODBUS_EQUIPMENT:
            sim = ChildProcess(
                o2chain_argv(
                    "sim",
                    "concentrator",
                    "--profile",
                    profile,
                    "--listen",
                    "tcp://127.0.0.1:0",
                    "--seed",
                    str(seed),
                    "--flow-lpm",
                    str(flow),
                ),
                data_dir / "logs" / f"sim-{dev}.log",
            ).start()
            state.children.append(sim)
            modbus[dev] = sim.wait_for_log(r'"listening": "(tcp://[0-9.]+:\d+)"').group(1)
        gw_config = _gateway_config(services, data_dir, modbus)
        gateway = ChildProcess(
            o2chain_argv("gateway", "run", "-c", str(gw_config)), data_dir / "logs" / "gateway.log"
        ).start()
        state.children.append(gateway)
        gateway.wait_for_log("MQTT subscribed")

        from o2chain.firmware_runner import BoardRunner

        for dev, o2_pct in ROOM_BOARDS:
            board = BoardRunner(
                _board_config(dev, services, args.interval_s),
                data_dir / "boards" / dev,
                o2_pct=o2_pct,
            )
            board.start()
            state.boards.append(board)
        state.pids += [c.pid for c in state.children if c.pid] + [
            b.pid for b in state.boards if b.pid
        ]

        print(f"o2chain demo: site {SITE} ({ALTITUDE_M:.0f} m)", flush=True)
        print(f"  data dir        {data_dir}")
        print(f"  MQTT broker     {services.mosquitto.url}")
        print(f"  InfluxDB        {services.influxdb.url}  (database {DATABASE!r})")
        print(f"  gateway         config {gw_config}, log {gateway.log_path}")
        for dev, profile, _, _ in MODBUS_EQUIPMENT:
            print(f"  {dev:<15} Modbus {modbus[dev]} unit 1 ({profile})")
        for (dev, _), board in zip(ROOM_BOARDS, state.boards, strict=True):
            print(f"  {dev:<15} MicroPython firmware, board dir {board.board_dir}")
        print(
            f"  try: curl -sG {services.influxdb.url}/query --data-urlencode db={DATABASE} "
            "--data-urlencode 'q=SELECT * FROM room ORDER BY time DESC LIMIT 5'"
        )
        print(
            "Ctrl-C stops everything."
            if args.duration is None
            else f"Running for {args.duration:.0f} s.",
            flush=True,
        )
        next_report = time.monotonic() + 10.0
        while not stop.is_set():
            if args.duration is not None and time.monotonic() - started >= args.duration:
                break
            dead = [c.argv[3:5] for c in state.children if not c.running]
            if dead:
                print(f"o2chain demo: a process stopped unexpectedly: {dead}; see {data_dir}/logs")
                return 1
            if time.monotonic() >= next_report:
                print(f"[{time.strftime('%H:%M:%S')}] latest readings:")
                print("\n".join(_latest(services)) or "  (none yet)", flush=True)
                next_report += 10.0
            stop.wait(0.2)
        summary["counts"] = _counts(services)
        print(f"o2chain demo: stopping; InfluxDB holds {summary['counts']}", flush=True)
        return 0
    finally:
        for board in state.boards:
            board.stop()
        for child in reversed(state.children):
            child.stop()
        services.stop()
        summary["pids"] = state.pids
        summary["elapsed_s"] = round(time.monotonic() - started, 1)
        if args.summary_json:
            args.summary_json.write_text(json.dumps(summary, indent=2))
        print(f"o2chain demo: stopped; data kept in {data_dir}", flush=True)
