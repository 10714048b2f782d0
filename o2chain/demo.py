"""`o2chain demo`: the whole simulated facility — services, equipment, boards and the gateway.

The bundled ``lhasa-hotel`` scenario (a PSA plant, four concentrators and 24 enriched rooms at
3650 m, with timed faults) runs against a private Mosquitto and InfluxDB; the gateway polls its
Modbus equipment and takes its boards' MQTT, and one more room carries the real firmware on the
MicroPython interpreter. Everything runs on 127.0.0.1 in one data directory that is kept
afterwards. Ctrl-C (or ``--duration``) stops every process the demo started.

The site is provisioned as a real one would be (``o2chain provision``, docs/security.md) into
``{data-dir}/provision/`` from an inventory of the scenario's boards: the broker takes only TLS
with a password per account and an ACL per account, no anonymous client; every simulated board,
the firmware board and the gateway log in with their own credentials.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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

DATABASE = "o2chain"
# One more room, with the real firmware on the MicroPython interpreter beside the scenario's
# simulated boards. Its ZE03 module reads 0-25 % (docs/domain.md, Sensor wire protocols): the
# value stays inside.
FIRMWARE_ROOM = ("room-401", "401", 24.6)
GATEWAY_ID = "gw-demo"


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run the whole simulated facility until Ctrl-C")
    demo.add_argument(
        "--duration", type=float, default=None, metavar="SECONDS",
        help="stop by itself after this many seconds (for scripts)",
    )  # fmt: skip
    demo.add_argument(
        "--data-dir", type=Path, default=None,
        help="where services keep their data and logs (default: a new dir under /tmp)",
    )  # fmt: skip
    demo.add_argument(
        "--scenario", default="lhasa-hotel", help="scenario name or .toml (default lhasa-hotel)"
    )
    demo.add_argument(
        "--speed", type=float, default=10.0,
        help="simulated seconds per second (default 10: the scenario's first fault, a lost "
        "Modbus link at 120 s, shows after 12 s)",
    )  # fmt: skip
    demo.add_argument(
        "--interval-s", type=float, default=5.0, help="the firmware board's reading interval"
    )
    demo.add_argument(
        "--summary-json", type=Path, default=None,
        help="write what ran and what reached InfluxDB to this file at the end",
    )  # fmt: skip
    demo.set_defaults(handler=_run)


@dataclass
class DemoState:
    children: list[ChildProcess] = field(default_factory=list)
    boards: list[Any] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)


def _inventory(scenario: Any, services: Services, path: Path, interval_s: float) -> Path:
    """The site's board inventory (firmware/inventory.example.toml format) from the scenario's
    boards and the firmware room, for ``o2chain provision``."""
    broker = services.mosquitto
    site_id, altitude_m = scenario.site[0].id, float(scenario.site[0].altitude_m)
    devices: dict[str, dict[str, Any]] = {}
    for room in scenario.room:
        devices[room.board or room.id] = {"site": room.site, "kind": "room"}
    for conc in scenario.concentrator:
        if conc.transport == "mqtt":
            devices[conc.id] = {
                "site": conc.site,
                "kind": "concentrator",
                "sensors": {"o2": {"type": "gasboard"}, "env": {"type": "none"}},
            }
    devices[FIRMWARE_ROOM[0]] = {
        "kind": "room",
        "sensors": {
            "o2": {"type": "ze03", "uart": 1, "tx": 17, "rx": 16},
            "env": {"type": "bme280", "i2c": 0, "sda": 21, "scl": 22, "addr": 118},
        },
    }
    doc = {
        "defaults": {
            "site": site_id,
            "site_altitude_m": altitude_m,
            "interval_s": interval_s,
            # The certificate names localhost and 127.0.0.1; the firmware checks the name.
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "tls": {"ca_file": "/ca.pem", "server_hostname": "localhost"},
            },
        },
        "devices": devices,
        "broker": {
            "port": broker.port,
            "bind": broker.host,
            "gateway_port": broker.gateway_port,
            "gateway_bind": broker.host,
        },
        "gateway": {"id": GATEWAY_ID},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tomli_w.dumps(doc).encode())
    return path


def _gateway_config(
    services: Services, data_dir: Path, sites: list[dict[str, Any]], devices: list[dict[str, Any]]
) -> Path:
    from gateway.config import GatewayConfig

    for dev in devices:
        if dev["transport"] == "modbus":
            dev["interval_s"] = 2.0
    provisioned = data_dir / "provision" / "gateway"
    mqtt: dict[str, Any] = {"url": services.mosquitto.gateway_url}
    if services.mosquitto.secure:
        mqtt |= {
            "username": "gateway",
            "password_file": str(provisioned / "mqtt-password"),
            "ca_file": str(provisioned / "ca.pem"),
        }
    config = {
        "gateway": {
            "id": GATEWAY_ID,
            "state_dir": str(data_dir / "gateway"),
            "http_listen": "127.0.0.1:0",
            "metrics_interval_s": 5.0,  # livelier than a plant's default, for watching
        },
        "enrich": {"chain_interval_s": 5.0},
        "mqtt": mqtt,
        "influx": {"url": services.influxdb.url, "database": DATABASE, "flush_interval_s": 0.5},
        "site": sites,
        "device": devices,
    }
    if "http" in GatewayConfig.model_fields:  # the web login's users, where the gateway has them
        config["http"] = {"users_file": str(provisioned / "users.toml")}
    path = data_dir / "gateway.toml"
    path.write_bytes(tomli_w.dumps(config).encode())
    return path


def _web_logins(provision_dir: Path) -> list[tuple[str, str]]:
    """(user, password) of the operator web page written by provisioning."""
    path = provision_dir / "operator" / "initial-passwords.txt"
    logins: list[tuple[str, str]] = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) == 2 and not line.startswith("#"):
                logins.append((fields[0], fields[1]))
    return logins


def _latest(services: Services) -> list[str]:
    """A few lines on the state of the facility, straight from InfluxDB."""
    lines = []
    with contextlib.suppress(Exception):
        rooms = services.influxdb.query_points(
            "SELECT last(o2_pct) AS o2 FROM room WHERE time > now() - 1m GROUP BY device",
            db=DATABASE,
        )
        if rooms:
            o2s = [float(p["o2"]) for p in rooms]
            lines.append(
                f"  rooms        {len(rooms)} reporting, O2 {min(o2s):.1f}-{max(o2s):.1f} % "
                f"(target band 24-26 %)"
            )
        for p in services.influxdb.query_points(
            "SELECT last(purity_pct) AS purity, last(flow_lpm) AS flow FROM concentrator "
            "WHERE time > now() - 1m GROUP BY device",
            db=DATABASE,
        ):
            lines.append(
                f"  {p['device']:<12} purity {p['purity']:5.1f} %   flow {p['flow']:6.1f} L/min"
            )
        alarms = services.influxdb.query_points(
            "SELECT last(state) AS state FROM alarm GROUP BY device, rule", db=DATABASE
        )
        active = [f"{a['device']}:{a['rule']}" for a in alarms if a["state"] != "clear"]
        if active:
            lines.append(f"  alarms       {', '.join(sorted(active))}")
    return lines


def _counts(services: Services) -> dict[str, int]:
    counts: dict[str, int] = {}
    for measurement, fld in (
        ("room", "o2_pct"),
        ("concentrator", "purity_pct"),
        ("alarm", "state"),
        ("device_health", "online"),
        ("chain", "produced_o2_lpm"),
        ("gateway", "outbox_depth"),
    ):
        with contextlib.suppress(Exception):
            pts = services.influxdb.query_points(
                f'SELECT count("{fld}") FROM "{measurement}"', db=DATABASE
            )
            counts[measurement] = int(pts[0]["count"]) if pts else 0
    return counts


def _run(args: argparse.Namespace) -> int:
    from simulators.scenario import gateway_devices, load_scenario

    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="o2chain-demo-"))).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    scenario = load_scenario(args.scenario)
    sites: list[dict[str, Any]] = [{"id": s.id, "altitude_m": s.altitude_m} for s in scenario.site]
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    state = DemoState()
    provision_dir = data_dir / "provision"
    services = Services(data_dir / "services", provision_dir=provision_dir)
    summary: dict[str, Any] = {"data_dir": str(data_dir), "provision_dir": str(provision_dir)}
    started = time.monotonic()
    try:
        from o2chain.provision import provision

        # A re-run on the same data dir keeps every secret and updates the ports.
        inventory = _inventory(
            scenario, services, provision_dir / "inventory.toml", args.interval_s
        )
        provision(inventory, provision_dir)
        services.start()
        state.pids += [p for p in (services.mosquitto.pid, services.influxdb.pid) if p]
        # `sim run` takes mqtt:// only; the boards' TLS and accounts come from the provisioned
        # configs named by O2CHAIN_PROVISION_DIR (simulators/fleet.py).
        sim = ChildProcess(
            o2chain_argv(
                "sim", "run", args.scenario, "--mqtt",
                f"mqtt://{services.mosquitto.host}:{services.mosquitto.port}",
                "--speed", str(args.speed),
            ),
            data_dir / "logs" / "scenario.log",
            env={**os.environ, "O2CHAIN_PROVISION_DIR": str(provision_dir)},
        ).start()  # fmt: skip
        state.children.append(sim)
        ready = json.loads(sim.wait_for_log(r'(\{"ready": ?true.*\})\n', timeout_s=60).group(1))
        devices = gateway_devices(ready["modbus"], ready["boards"])
        site_id = scenario.site[0].id
        devices.append(
            {"id": FIRMWARE_ROOM[0], "site": site_id, "kind": "room", "transport": "mqtt",
             "room": FIRMWARE_ROOM[1]}
        )  # fmt: skip
        gw_config = _gateway_config(services, data_dir, sites, devices)
        gateway = ChildProcess(
            o2chain_argv("gateway", "run", "-c", str(gw_config)), data_dir / "logs" / "gateway.log"
        ).start()
        state.children.append(gateway)
        page = gateway.wait_for_log(r"HTTP listening on (http://127\.0\.0\.1:\d+)").group(1)
        gateway.wait_for_log("MQTT subscribed")

        from o2chain.firmware_runner import BoardRunner

        board_files = provision_dir / "boards" / FIRMWARE_ROOM[0]
        board = BoardRunner(
            json.loads((board_files / "config.json").read_text()),
            data_dir / "boards" / FIRMWARE_ROOM[0],
            o2_pct=FIRMWARE_ROOM[2],
            files={"ca.pem": (board_files / "ca.pem").read_bytes()},
        )
        board.start()
        state.boards.append(board)
        state.pids += [c.pid for c in state.children if c.pid] + [
            b.pid for b in state.boards if b.pid
        ]

        print(f"o2chain demo: scenario {scenario.scenario.name!r} at {args.speed:g}x", flush=True)
        print(f"  live page       {page}/")
        print(f"  data dir        {data_dir}")
        print(
            f"  MQTT broker     {services.mosquitto.url} (TLS, a password and an ACL per "
            f"account, no anonymous); gateway listener {services.mosquitto.gateway_url}"
        )
        print(f"  provisioning    {provision_dir} (CA, accounts, board configs; docs/security.md)")
        for user, password in _web_logins(provision_dir):
            print(f"  web login       {user} / {password}")
        print(f"  web logins in   {provision_dir / 'operator' / 'initial-passwords.txt'}")
        print(f"  InfluxDB        {services.influxdb.url}  (database {DATABASE!r})")
        print(f"  gateway         config {gw_config}, log {gateway.log_path}")
        for dev, ep in sorted(ready["modbus"].items()):
            print(f"  {dev:<15} Modbus {ep['url']} unit {ep['unit']} ({ep['profile']})")
        print(f"  room boards     {len(ready['boards'])} simulated boards over MQTT")
        print(f"  {FIRMWARE_ROOM[0]:<15} MicroPython firmware, board dir {board.board_dir}")
        print("  timeline        " + "; ".join(
            f"t={e.at_s:g}s {e.target or ''} {e.action}".replace("  ", " ")
            for e in sorted(scenario.event, key=lambda e: e.at_s)
        ) + " (simulated seconds)")  # fmt: skip
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
                print(f"[{time.strftime('%H:%M:%S')}] from InfluxDB:")
                print("\n".join(_latest(services)) or "  (no readings yet)", flush=True)
                next_report += 10.0
            stop.wait(0.2)
        summary["counts"] = _counts(services)
        print(f"o2chain demo: stopping; InfluxDB holds {summary['counts']}", flush=True)
        return 0
    finally:
        for b in state.boards:
            b.stop()
        for child in reversed(state.children):
            child.stop()
        services.stop()
        summary["pids"] = state.pids
        summary["elapsed_s"] = round(time.monotonic() - started, 1)
        if args.summary_json:
            args.summary_json.write_text(json.dumps(summary, indent=2))
        print(f"o2chain demo: stopped; data kept in {data_dir}", flush=True)
