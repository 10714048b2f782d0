"""A region on one machine, for tests and benchmarks (root): a central tier and facilities, each
in its own network namespace, joined by veth "WAN" links (o2base/netns.py) with real faults.

    central namespace   broker (TLS, region accounts and ACL)  10.203.0.1:8885
                        InfluxDB (region database)               10.203.0.1:8086
    facility i          site broker (TLS, `o2chain provision` with the region bridge)
                        local InfluxDB, the gateway (forwarding to the central InfluxDB), the
                        fleet of simulated boards: all on 127.0.0.1 inside the namespace
    WAN link i          facility 10.203.i.1 <-> central 10.203.i.2 (route to 10.203.0.1)

Every address lives inside the namespaces: nothing listens on the machine's own network, and
everything is deleted on exit (also after a failure). Provisioning is the real thing: `o2chain
region provision` for the centre, `o2chain provision` with the facility's bundle for each site.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import tomli_w

from o2base.netns import NetNs, WanLink, unique_name
from o2base.procs import ChildProcess, StartStop, o2chain_argv
from o2base.services import InfluxDB, Mosquitto, ServiceError
from o2chain.provision import provision
from o2chain.region_provision import VIEWER_USER, provision_region
from o2chain.testing import MqttProbe

CENTRAL_ADDR = "10.203.0.1"
CENTRAL_MQTT_PORT = 8885
INFLUX_PORT = 8086
INFLUX_RPC_PORT = 8088
SITE_PORT = 8883
SITE_GATEWAY_PORT = 8884
REGION_DB = "o2region"
LOCAL_DB = "o2chain"


def board_name(n: int) -> str:
    """``o2chain sim fleet``'s device ids (``room-0001`` ...)."""
    return f"room-{n + 1:04d}"


@dataclass
class Facility:
    index: int
    site: str
    boards: int
    dir: Path
    ns: NetNs
    link: WanLink
    broker: Mosquitto
    influx: InfluxDB
    config: Path
    gateway: ChildProcess | None = None
    fleets: list[ChildProcess] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    def start_gateway(self) -> ChildProcess:
        gw = ChildProcess(
            self.ns.argv(o2chain_argv("gateway", "run", "-c", str(self.config))),
            self.dir / "gateway.log",
        )
        self.gateway = gw.start()
        gw.wait_for_log("MQTT subscribed", timeout_s=60)
        return gw

    def start_fleet(self, readings: int, interval_s: float, timeout_s: float) -> ChildProcess:
        argv = o2chain_argv(
            "sim", "fleet", "--mqtt", f"mqtts://127.0.0.1:{SITE_PORT}",
            "--provision", str(self.dir / "provision"), "--site", self.site,
            "--boards", str(self.boards), "--readings", str(readings),
            "--interval-s", str(interval_s), "--seed", str(self.index),
            "--timeout-s", str(timeout_s),
        )  # fmt: skip
        fleet = ChildProcess(self.ns.argv(argv), self.dir / f"fleet-{len(self.fleets)}.log")
        self.fleets.append(fleet.start())
        return fleet

    def local_counts(self) -> dict[str, tuple[int, int]]:
        """Per device: (points, distinct seq) of ``room`` in the local InfluxDB."""
        return _counts(self.influx, LOCAL_DB, self.site)

    def active_alarms(self) -> dict[str, str]:
        """The gateway's active alarms (``site/device/rule`` -> severity), from its state file."""
        path = self.state_dir / "outbox.sqlite"
        if not path.exists():
            return {}
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
            rows = db.execute("SELECT key, state FROM alarm_state").fetchall()
        out = {}
        for key, state in rows:
            doc = json.loads(state)
            if doc.get("active"):
                out[str(key)] = str(doc.get("severity", ""))
        return out


class AlarmWatch:
    """The central broker's alarm list as one subscriber sees it: every retained state and
    every later change applied in order (an empty payload clears)."""

    def __init__(self, probe: MqttProbe):
        self.probe = probe

    def active(self) -> dict[str, str]:
        """``site/device/rule`` -> severity of every active alarm seen so far."""
        state: dict[str, str] = {}
        for topic, payload, _ in list(self.probe.messages):
            _, site, _, _, _, device, rule = topic.split("/")
            key = f"{site}/{device}/{rule}"
            doc = json.loads(payload) if payload else {}
            if doc.get("active"):
                state[key] = str(doc.get("severity", ""))
            else:
                state.pop(key, None)
        return state

    def close(self) -> None:
        self.probe.close()


def _counts(db: InfluxDB, name: str, site: str) -> dict[str, tuple[int, int]]:
    try:
        rows = db.query_points(
            "SELECT count(seq), count(distinct(seq)) AS u FROM room "
            f"WHERE site = '{site}' GROUP BY device",
            db=name,
        )
    except ServiceError:  # no database yet
        return {}
    # A series whose points so far have no seq (or a count InfluxDB has not filled in yet, at
    # the first write) comes back with null aggregates: none counted yet.
    return {str(r["device"]): (int(r["count"] or 0), int(r["u"] or 0)) for r in rows}


class RegionLab(StartStop):
    """``with RegionLab(base_dir, ["lhasa-hotel", "nyingchi-clinic"], boards=20) as lab:``"""

    def __init__(
        self,
        base_dir: Path,
        sites: list[str],
        boards: int,
        *,
        alarm_rules: list[dict[str, Any]] | None = None,
        central_flush_s: float = 0.5,
    ) -> None:
        self.base = base_dir
        self.sites = sites
        self.boards = boards
        self.alarm_rules = alarm_rules or []
        self.central_flush_s = central_flush_s
        self.namespaces: list[NetNs] = []
        self.facilities: list[Facility] = []
        self.central_ns: NetNs | None = None
        self.central_broker: Mosquitto | None = None
        self.central_db: InfluxDB | None = None
        self.region_dir = base_dir / "region"

    # -- set-up --------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _ns(self, prefix: str) -> NetNs:
        ns = NetNs.create(unique_name(prefix))
        self.namespaces.append(ns)
        return ns

    def start(self) -> None:
        central = self.central_ns = self._ns("o2c")
        central.ip("addr", "add", f"{CENTRAL_ADDR}/32", "dev", "lo")
        inventory = self.base / "region.toml"
        doc = {
            "region": {"id": "lab"},
            "broker": {"hosts": [CENTRAL_ADDR], "port": CENTRAL_MQTT_PORT, "bind": CENTRAL_ADDR},
            "database": {"url": f"http://{CENTRAL_ADDR}:{INFLUX_PORT}", "database": REGION_DB},
            "facilities": {site: {} for site in self.sites},
        }
        inventory.parent.mkdir(parents=True, exist_ok=True)
        inventory.write_bytes(tomli_w.dumps(doc).encode())
        provision_region(inventory, self.region_dir)
        self.central_broker = Mosquitto(
            self.base / "central",
            CENTRAL_MQTT_PORT,
            listeners=(self.region_dir / "broker" / "o2region.conf").read_text(),
            host=CENTRAL_ADDR,
            netns=central,
        )
        self.central_db = InfluxDB(
            self.base / "central",
            INFLUX_PORT,
            rpc_port=INFLUX_RPC_PORT,
            host=CENTRAL_ADDR,
            netns=central,
        )
        self.central_broker.start()
        self.central_db.start()
        # The region's admin creates the database (influx/users.iql); facilities only write.
        self.central_db.create_database(REGION_DB)
        for i, site in enumerate(self.sites, start=1):
            self.facilities.append(self._facility(i, site))

    def _facility(self, i: int, site: str) -> Facility:
        assert self.central_ns is not None
        ns = self._ns(f"o2f{i}")
        here, there = f"10.203.{i}.1", f"10.203.{i}.2"
        link = WanLink(ns, self.central_ns, here, there)
        ns.ip("route", "add", f"{CENTRAL_ADDR}/32", "via", there)
        fdir = self.base / site
        fdir.mkdir(parents=True, exist_ok=True)
        inventory = {
            "defaults": {
                "site": site,
                "site_altitude_m": 3650,
                "mqtt": {
                    "host": "127.0.0.1",
                    "port": SITE_PORT,
                    "tls": {"ca_file": "/ca.pem", "server_hostname": "localhost"},
                },
            },
            "devices": {board_name(n): {"kind": "room"} for n in range(self.boards)},
            "broker": {
                "port": SITE_PORT,
                "bind": "127.0.0.1",
                "gateway_port": SITE_GATEWAY_PORT,
                "gateway_bind": "127.0.0.1",
            },
            "gateway": {"id": "gw-1"},
            "region": {"bundle": str(self.region_dir / "facilities" / site)},
        }
        (fdir / "inventory.toml").write_bytes(tomli_w.dumps(inventory).encode())
        provision(fdir / "inventory.toml", fdir / "provision")
        broker = Mosquitto(
            fdir / "services",
            SITE_PORT,
            provision_dir=fdir / "provision",
            gateway_port=SITE_GATEWAY_PORT,
            netns=ns,
        )
        influx = InfluxDB(fdir / "services", INFLUX_PORT, rpc_port=INFLUX_RPC_PORT, netns=ns)
        broker.start()
        influx.start()
        bundle = self.region_dir / "facilities" / site
        central = dict(tomllib.loads((bundle / "central.toml").read_text())["central"])
        central.update(flush_interval_s=self.central_flush_s, max_backoff_s=2.0, timeout_s=3.0)
        gw_dir = fdir / "provision" / "gateway"
        config = {
            "gateway": {
                "id": "gw-1",
                "state_dir": str(fdir / "state"),
                "http_listen": "127.0.0.1:8470",
                "metrics_interval_s": 5.0,
            },
            "mqtt": {
                "url": f"mqtts://127.0.0.1:{SITE_GATEWAY_PORT}",
                "username": "gateway",
                "password_file": str(gw_dir / "mqtt-password"),
                "ca_file": str(gw_dir / "ca.pem"),
            },
            "http": {"users_file": str(gw_dir / "users.toml")},
            "influx": {
                "url": f"http://127.0.0.1:{INFLUX_PORT}",
                "database": LOCAL_DB,
                "flush_interval_s": 0.2,
                "max_backoff_s": 1.0,
            },
            "central": central,
            "site": [{"id": site, "altitude_m": 3650}],
            "device": [
                {"id": board_name(n), "site": site, "kind": "room", "transport": "mqtt"}
                for n in range(self.boards)
            ],
            "alarm": self.alarm_rules,
        }
        path = fdir / "gateway.toml"
        path.write_bytes(tomli_w.dumps(config).encode())
        return Facility(i, site, self.boards, fdir, ns, link, broker, influx, path)

    # -- what the centre holds -----------------------------------------------------------------

    def central_counts(self, site: str) -> dict[str, tuple[int, int]]:
        assert self.central_db is not None
        return _counts(self.central_db, REGION_DB, site)

    def viewer(self) -> MqttProbe:
        """The region view's login at the central broker (connect it with :meth:`at_centre`)."""
        pw = (self.region_dir / "viewer" / "mqtt-password").read_text().strip()
        return MqttProbe(
            CENTRAL_MQTT_PORT,
            username=VIEWER_USER,
            password=pw,
            ca_file=self.region_dir / "viewer" / "ca.pem",
            protocol=4,
            host=CENTRAL_ADDR,
        )

    def watch_alarms(self) -> AlarmWatch:
        """A live subscription to every facility's alarms at the central broker; close it."""
        assert self.central_ns is not None
        probe = self.viewer()
        assert self.central_ns.call(probe.connect) == 0
        assert probe.subscribe("region/+/gateway/+/alarm/+/+") == 1
        return AlarmWatch(probe)

    # -- tear-down -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every process this lab started and delete every namespace, whatever fails."""
        errors: list[BaseException] = []

        def attempt(fn: Any) -> None:
            try:
                fn()
            except BaseException as exc:  # keep tearing down; report the first afterwards
                errors.append(exc)

        for fac in self.facilities:
            for fleet in fac.fleets:
                attempt(fleet.stop)
            if fac.gateway is not None:
                attempt(fac.gateway.stop)
            attempt(fac.broker.stop)
            attempt(fac.influx.stop)
        for service in (self.central_broker, self.central_db):
            if service is not None:
                attempt(service.stop)
        for ns in self.namespaces:
            attempt(ns.delete)
        if errors:
            raise errors[0]

    def logs(self) -> Iterator[tuple[str, str]]:
        for fac in self.facilities:
            if fac.gateway is not None:
                yield f"{fac.site} gateway", fac.gateway.log_tail(30)
