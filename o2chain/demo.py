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
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from o2base.procs import ChildProcess, o2chain_argv
from o2base.services import Services

DATABASE = "o2chain"
# One more room, with the real firmware on the MicroPython interpreter beside the scenario's
# simulated boards. Its ZE03 module reads 0-25 % (docs/domain.md, Sensor wire protocols): the
# value stays inside.
FIRMWARE_ROOM = ("room-401", "401", 24.6)
GATEWAY_ID = "gw-demo"


# Fixed ports, so a bookmark of the live page and the provisioned Grafana data source
# (dashboards/provisioning/datasources/o2chain.yaml: InfluxDB on 127.0.0.1:8086) work on every
# run; MQTT over TLS on IANA's secure-mqtt port. A port already taken moves (and is printed).
HTTP_PORT = 8470
MQTT_PORT = 8883
MQTT_GATEWAY_PORT = 8884
INFLUX_PORT = 8086
INFLUX_RPC_PORT = 8088
DEFAULT_SPEED = 20.0
REPORT_EVERY_S = 10.0
# The supply trends in simulated seconds: the stores' change and the loss over 15 minutes, the
# days of oxygen left over the last hour with 5 minutes of history before a first claim.
DEMO_STOCK_WINDOW_S = 900.0
DEMO_FORECAST_WINDOW_S = 3600.0
DEMO_FORECAST_MIN_SPAN_S = 300.0
# The demo acknowledges its first alarm (severity alarm or critical) this long after it rose,
# as the operator, so the story shows an acknowledgement within minutes.
AUTO_ACK_AFTER_S = 15.0
# More events of one kind and rule than this within one poll print as one line.
FLOOD_LINES = 3
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run the whole simulated facility until Ctrl-C")
    demo.add_argument(
        "--duration", type=float, default=None, metavar="SECONDS",
        help="stop by itself after running this many real seconds (for scripts)",
    )  # fmt: skip
    demo.add_argument(
        "--data-dir", type=Path, default=None,
        help="where services keep their data and logs (default: a new dir under /tmp); one "
        "demo at a time per data dir",
    )  # fmt: skip
    demo.add_argument(
        "--scenario", default="lhasa-hotel", help="scenario name or .toml (default lhasa-hotel)"
    )
    demo.add_argument(
        "--speed", type=float, default=DEFAULT_SPEED,
        help=f"simulated seconds per real second (default {DEFAULT_SPEED:g}: within 3 minutes "
        "a lost Modbus link, a warning, a critical room alarm, an acknowledgement, a recovery)",
    )  # fmt: skip
    demo.add_argument(
        "--interval-s", type=float, default=5.0, help="the firmware board's reading interval"
    )
    demo.add_argument(
        "--bind", default="127.0.0.1",
        help="address of the live page (default 127.0.0.1; another address needs the "
        "printed login to read it)",
    )  # fmt: skip
    demo.add_argument(
        "--http-port", type=int, default=HTTP_PORT,
        help=f"port of the live page and API (default {HTTP_PORT}; 0 = any free port)",
    )  # fmt: skip
    demo.add_argument(
        "--mqtt-port", type=int, default=MQTT_PORT,
        help=f"the broker's TLS port for boards and tools (default {MQTT_PORT}; the gateway's "
        "own listener is the next free one from 8884)",
    )  # fmt: skip
    demo.add_argument(
        "--influx-port", type=int, default=INFLUX_PORT,
        help=f"InfluxDB's HTTP port (default {INFLUX_PORT}, what the Grafana provisioning uses)",
    )  # fmt: skip
    demo.add_argument(
        "--no-auto-ack", action="store_true",
        help="do not acknowledge the first alarm as the operator (leave it to you)",
    )  # fmt: skip
    demo.add_argument(
        "--inventory", type=Path, default=None, metavar="FILE",
        help="real boards to add (firmware/inventory.example.toml format): each gets its "
        "account and config.json in {data-dir}/provision/boards/ID/ for `o2chain firmware "
        "flash --provision`, and the gateway takes its readings",
    )  # fmt: skip
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
    restarts: list[threading.Thread] = field(default_factory=list)


def user_boards(inventory: Path) -> dict[str, dict[str, Any]]:
    """The boards of a user's inventory (``--inventory``), each its config as the board would
    run it except the broker (the demo's broker, account and CA replace ``mqtt``). UsageError
    naming the device and key when one is unusable."""
    import tomllib

    from o2base.errors import UsageError
    from o2chain.firmware_cli import merge_tables
    from o2chain.firmware_runner import load_firmware_file

    try:
        doc = tomllib.loads(inventory.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise UsageError(f"--inventory {inventory}: {reason}") from None
    devices = doc.get("devices")
    if not isinstance(devices, dict) or not devices:
        raise UsageError(f"--inventory {inventory}: no [devices.<id>] tables")
    schema = load_firmware_file("config")
    boards: dict[str, dict[str, Any]] = {}
    for device, table in devices.items():
        cfg = merge_tables(doc.get("defaults", {}), table)
        cfg["device"] = device
        cfg["mqtt"] = {"host": "127.0.0.1"}  # the demo's, set when the site is provisioned
        try:
            schema.validate(json.loads(json.dumps(cfg)))
        except schema.ConfigError as exc:
            raise UsageError(f"--inventory {inventory}: device {device}: {exc}") from None
        del cfg["mqtt"]
        boards[device] = cfg
    return boards


def _inventory(
    scenario: Any,
    services: Services,
    path: Path,
    interval_s: float,
    extra: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """The site's board inventory (firmware/inventory.example.toml format) from the scenario's
    boards, the firmware room and ``extra`` (``--inventory``), for ``o2chain provision``."""
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
    for device, cfg in (extra or {}).items():
        devices[device] = {k: v for k, v in cfg.items() if k != "device"}
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
    services: Services,
    data_dir: Path,
    sites: list[dict[str, Any]],
    devices: list[dict[str, Any]],
    http_listen: str = "127.0.0.1:0",
    speed: float = 1.0,
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
            "http_listen": http_listen,
            "metrics_interval_s": 5.0,  # livelier than a plant's default, for watching
        },
        # Totals, trends and days left in the scenario's simulated time; trends over windows
        # a demo of a few minutes fills (a site's defaults are 30 min and 6 h: docs/README).
        "enrich": {"chain_interval_s": 5.0, "speed": speed, "stock_window_s": DEMO_STOCK_WINDOW_S},
        "forecast": {"window_s": DEMO_FORECAST_WINDOW_S, "min_span_s": DEMO_FORECAST_MIN_SPAN_S},
        "mqtt": mqtt,
        "influx": {"url": services.influxdb.url, "database": DATABASE, "flush_interval_s": 0.5},
        "site": sites,
        "device": devices,
    }
    if "http" in GatewayConfig.model_fields:  # the web login's users, where the gateway has them
        http: dict[str, Any] = {"users_file": str(provisioned / "users.toml")}
        config["http"] = http
        host = http_listen.rpartition(":")[0].strip("[]")
        if host not in LOOPBACK:
            # Beyond loopback the gateway checks the Host header (DNS rebinding): the names a
            # browser on the LAN uses for this machine.
            names = {socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1"}
            if host not in ("0.0.0.0", "::"):
                names.add(host)
            http["allowed_hosts"] = sorted(names)
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


def _counts(services: Services) -> dict[str, int]:
    counts: dict[str, int] = {}
    for measurement, fld in (
        ("room", "o2_pct"),
        ("concentrator", "purity_pct"),
        ("alarm", "state"),
        ("device_health", "online"),
        ("supply", "pressure_kpa"),
        ("chain", "produced_o2_lpm"),
        ("gateway", "outbox_depth"),
    ):
        with contextlib.suppress(Exception):
            pts = services.influxdb.query_points(
                f'SELECT count("{fld}") FROM "{measurement}"', db=DATABASE
            )
            counts[measurement] = int(pts[0]["count"]) if pts else 0
    return counts


# -- what the operator sees: alarm events as they happen, a periodic summary --------------------

_EVENT_WORDS = {
    "raise": "RAISED",
    "clear": "CLEARED",
    "ack": "ACKNOWLEDGED",
    "shelve": "SHELVED",
    "unshelve": "UNSHELVED",
}
_SEVERITY_RANK = {"info": 0, "warning": 1, "alarm": 2, "critical": 3}


def _stamp() -> str:
    return time.strftime("%H:%M:%S")


def format_event(event: dict[str, Any]) -> str:
    """One line for one alarm event of the gateway's log (``/api/alarms/log``)."""
    word = _EVENT_WORDS.get(str(event.get("event")), str(event.get("event")).upper())
    by = f" by {event['by']}" if event.get("by") else ""
    message = event.get("message") or ""
    if event.get("event") == "clear":
        message = "back to normal"
    elif event.get("event") == "shelve" and event.get("shelve_reason"):
        message = f"reason: {event['shelve_reason']}"
    return (
        f"[{_stamp()}] alarm {word:<12} {event.get('severity', '?'):<8} "
        f"{event.get('key', '?')}{by}: {message}"
    )


def _event_id(event: dict[str, Any]) -> tuple[Any, ...]:
    return (event.get("ts"), event.get("key"), event.get("event"))


def _alarm_word(alarm: dict[str, Any] | None) -> str:
    if alarm is None:
        return "no alarm yet"
    from o2chain.alarms_cli import alarm_state

    return f"{alarm.get('rule')} {alarm.get('severity')}, {alarm_state(alarm)}"


def _crossed(value: float, threshold: dict[str, Any]) -> bool:
    limit = threshold.get("value")
    if not isinstance(limit, int | float):
        return False
    op = threshold.get("op")
    return (op == ">" and value > limit) or (op == "<" and value < limit)


def format_status(status: dict[str, Any]) -> list[str]:
    """The periodic summary from the gateway's ``/api/status``: rooms out of their band, devices
    offline, each with its alarm's severity and acknowledgement, and the alarm counts."""
    rooms: list[float] = []
    out_of_band: list[str] = []
    offline: list[str] = []
    producers: list[str] = []
    for site in status.get("sites", []):
        for dev in site.get("devices", []):
            alarms = {a.get("rule"): a for a in dev.get("alarms", [])}
            values = dev.get("values", {})
            if dev.get("link") == "offline":
                offline.append(f"{dev['id']} ({_alarm_word(alarms.get('device-offline'))})")
            if dev.get("kind") == "room" and "o2_pct" in values:
                o2 = float(values["o2_pct"]["value"])
                rooms.append(o2)
                crossed = [
                    t for t in dev.get("thresholds", []) if t.get("field") == "o2_pct"
                    and _crossed(o2, t)
                ]  # fmt: skip
                if crossed:
                    worst = max(crossed, key=lambda t: _SEVERITY_RANK.get(t.get("severity"), 0))
                    alarm = alarms.get(worst.get("rule"))
                    what = (
                        _alarm_word(alarm)
                        if alarm
                        else f"{worst.get('rule')} {worst.get('severity')}, not raised yet"
                    )
                    out_of_band.append(f"{dev['id']} {o2:.1f} % ({what})")
            elif dev.get("kind") in ("plant", "concentrator") and "purity_pct" in values:
                purity = float(values["purity_pct"]["value"])
                flow = values.get("flow_lpm", {}).get("value")
                flow_text = f" {float(flow):.1f} L/min" if isinstance(flow, int | float) else ""
                producers.append(f"{dev['id']} {purity:.1f} %{flow_text}")
    lines = [f"[{_stamp()}] from the gateway:"]
    if rooms:
        lines.append(
            f"  rooms        {len(rooms)} reporting, O2 {min(rooms):.1f}-{max(rooms):.1f} % "
            "(target band 24-26 %)"
        )
    else:
        lines.append("  rooms        (no readings yet)")
    if producers:
        lines.append(f"  oxygen       {'; '.join(producers)}")
    for site in status.get("sites", []):
        chain = format_chain(site.get("chain") or {})
        if chain:
            lines.append(f"  O2 chain     {chain}")
    lines.append("  out of band  " + (_few(out_of_band) or "none"))
    lines.append("  offline      " + (_few(offline) or "none"))
    counts = status.get("alarm_counts", {})
    by_severity = counts.get("by_severity", {})
    severities = ", ".join(
        f"{by_severity[s]} {s}" for s in ("critical", "alarm", "warning", "info")
        if by_severity.get(s)
    )  # fmt: skip
    lines.append(
        f"  alarms       {counts.get('active', 0)} active"
        + (f" ({severities})" if severities else "")
        + f", {counts.get('unacked', 0)} unacknowledged, {counts.get('shelved', 0)} shelved"
    )
    return lines


def format_chain(chain: dict[str, Any]) -> str:
    """The site's chain balance in one line: produced, stored, delivered, used, loss, days."""

    def lpm(key: str) -> str | None:
        value = chain.get(key)
        return f"{float(value):.0f} L/min" if isinstance(value, int | float) else None

    stored = chain.get("stored_o2_l")
    days = chain.get("days_left")
    parts = []
    for label, text in (
        ("produced", lpm("produced_o2_lpm")),
        ("stored", f"{float(stored) / 1000:.0f} m3" if isinstance(stored, int | float) else None),
        ("stored change", lpm("stored_change_o2_lpm")),
        ("delivered (metered)", lpm("delivered_metered_o2_lpm")),
        ("used (rooms)", lpm("used_o2_lpm")),
        ("loss", lpm("loss_o2_lpm")),
        ("days of O2 left", f"{float(days):.1f}" if isinstance(days, int | float) else None),
    ):  # fmt: skip
        if text is not None:
            parts.append(f"{label} {text}")
    return ", ".join(parts)


def _few(items: list[str], limit: int = 6) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


class Narrator:
    """Prints the gateway's alarm events as they happen and acknowledges the first serious
    alarm as the provisioned operator (through the API, the way the page does)."""

    def __init__(
        self, page: str, login: tuple[str, str] | None, auto_ack: bool, since_ms: float = 0.0
    ) -> None:
        from o2chain.alarms_cli import AlarmsClient

        # Events before this (a data dir's earlier runs: the gateway keeps its alarm log) are
        # history, not news.
        self.since_ms = since_ms
        self.client = AlarmsClient(page, timeout_s=3.0)
        self.login = login
        self.auto_ack = auto_ack and login is not None
        self.seen: set[tuple[Any, ...]] = set()
        self.ack_due: tuple[float, str] | None = None
        self.acked: list[str] = []
        self.events: dict[str, int] = {}

    def poll(self) -> None:
        from o2base.errors import RunError

        try:
            events = self.client.log(200)
        except RunError:
            return  # the gateway restarts or is busy: the next poll catches up
        fresh = [  # oldest first
            e
            for e in reversed(events)
            if _event_id(e) not in self.seen and float(e.get("ts") or 0) >= self.since_ms
        ]
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for event in fresh:
            self.seen.add(_event_id(event))
            self.events[str(event.get("event"))] = self.events.get(str(event.get("event")), 0) + 1
            kind = (str(event.get("event")), str(event.get("rule")), str(event.get("severity")))
            groups.setdefault(kind, []).append(event)
        for (what, rule, severity), group in groups.items():
            if len(group) > FLOOD_LINES:  # a flood (all boards at a broker restart): one line
                word = _EVENT_WORDS.get(what, what.upper())
                devices = _few([str(e.get("device")) for e in group], limit=8)
                print(
                    f"[{_stamp()}] alarm {word:<12} {severity:<8} {rule} on {len(group)} "
                    f"devices: {devices}",
                    flush=True,
                )
            else:
                for event in group:
                    print(format_event(event), flush=True)
        for event in fresh:
            if (
                self.ack_due
                and event.get("event") == "clear"
                and event.get("key") == self.ack_due[1]
            ):
                self.ack_due = None  # cleared before it was acknowledged: wait for the next one
            serious = _SEVERITY_RANK.get(str(event.get("severity")), 0) >= 2
            if self.auto_ack and event.get("event") == "raise" and serious and not self.ack_due:
                self.ack_due = (time.monotonic() + AUTO_ACK_AFTER_S, str(event.get("key")))
        if self.ack_due and time.monotonic() >= self.ack_due[0] and self.login:
            alarm_key, self.ack_due, self.auto_ack = self.ack_due[1], None, False
            self._ack(alarm_key)

    def _ack(self, key: str) -> None:
        from o2base.errors import RunError

        assert self.login is not None
        user, password = self.login
        print(
            f"[{_stamp()}] o2chain demo: acknowledging {key} as {user!r} through the gateway's "
            f"API, as an operator would on the live page (`o2chain alarms ack {key}`)",
            flush=True,
        )
        try:
            if self.client.user is None:
                self.client.login(user, password)
            self.client.ack(key)
            self.acked.append(key)
        except RunError as exc:  # cleared meanwhile (409): nothing to acknowledge
            print(f"[{_stamp()}] o2chain demo: not acknowledged: {exc}", flush=True)

    def report(self) -> list[str]:
        from o2base.errors import RunError

        try:
            return format_status(self.client.status())
        except RunError as exc:
            return [f"[{_stamp()}] gateway status unavailable: {exc}"]


# -- start-up -------------------------------------------------------------------------------------


def _data_dir(arg: Path | None) -> Path:
    """The demo's data dir, created; UsageError naming the path when it cannot be."""
    from o2base.errors import UsageError

    if arg is None:
        return Path(tempfile.mkdtemp(prefix="o2chain-demo-")).resolve()
    path = arg.expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--data-dir {arg}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--data-dir {arg}: cannot create it: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--data-dir {arg}: not writable by this user")
    return path


class DataDirLock:
    """One demo per data dir: an exclusive ``flock`` on ``{data_dir}/demo.lock`` holding our PID.

    The kernel drops the lock when the process ends, however it ends, so a crashed demo never
    leaves a stale lock behind.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "demo.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        from o2base.errors import RunError, UsageError

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"{self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunError(
                f"{self.path.parent} is in use by another demo (pid {other}); stop it first or "
                "give another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _check_args(args: argparse.Namespace) -> None:
    from o2base.errors import UsageError

    if not args.speed > 0:
        raise UsageError(f"--speed {args.speed:g}: expected simulated seconds per second > 0")
    if args.duration is not None and not args.duration > 0:
        raise UsageError(f"--duration {args.duration:g}: expected seconds > 0")
    if not args.interval_s > 0:
        raise UsageError(f"--interval-s {args.interval_s:g}: expected seconds > 0")
    for name in ("http_port", "mqtt_port", "influx_port"):
        port = getattr(args, name)
        if not 0 <= port <= 65535:
            raise UsageError(f"--{name.replace('_', '-')} {port}: expected 0..65535")
    try:
        socket.getaddrinfo(args.bind, None)
    except OSError:
        raise UsageError(f"--bind {args.bind!r}: not an address of this machine") from None


def _ports(args: argparse.Namespace) -> tuple[dict[str, int], list[str]]:
    """The ports to use (fixed defaults) and a note for each one that had to move."""
    from o2base.services import preferred_port

    wanted = {
        "live page": (args.http_port, args.bind),
        "MQTT broker": (args.mqtt_port, "127.0.0.1"),
        "MQTT gateway listener": (MQTT_GATEWAY_PORT if args.mqtt_port else 0, "127.0.0.1"),
        "InfluxDB": (args.influx_port, "127.0.0.1"),
        "InfluxDB RPC": (INFLUX_RPC_PORT if args.influx_port else 0, "127.0.0.1"),
    }
    chosen: dict[str, int] = {}
    notes = []
    for name, (port, host) in wanted.items():
        got = preferred_port(port, "127.0.0.1" if host in LOOPBACK else host, list(chosen.values()))
        chosen[name] = got
        if port and got != port:
            notes.append(f"port {port} is taken: the {name} runs on {got} instead")
    return chosen, notes


def _timeline(scenario: Any, speed: float) -> str:
    return "; ".join(
        f"t={e.at_s:g}s (+{e.at_s / speed:.0f} s real) {e.target or ''} {e.action}".replace(
            "  ", " "
        )
        for e in sorted(scenario.event, key=lambda e: e.at_s)
    )


def _run(args: argparse.Namespace) -> int:
    from o2base.errors import UsageError
    from o2chain.facility import gateway_devices
    from simulators.scenario import ScenarioError, load_scenario

    _check_args(args)
    try:  # before the data dir is made: a typo leaves nothing behind
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        raise UsageError(f"--scenario: {exc}") from None
    boards = user_boards(args.inventory) if args.inventory is not None else {}
    taken = {r.board or r.id for r in scenario.room} | {c.id for c in scenario.concentrator}
    taken.add(FIRMWARE_ROOM[0])
    clash = sorted(set(boards) & taken)
    if clash:
        raise UsageError(
            f"--inventory {args.inventory}: {', '.join(clash)} already in the demo's scenario: "
            "give the board another id"
        )
    data_dir = _data_dir(args.data_dir)
    lock = DataDirLock(data_dir)
    lock.acquire()
    stop = threading.Event()
    interrupted: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        interrupted.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    def check_stop() -> None:
        if stop.is_set():
            raise KeyboardInterrupt

    sites: list[dict[str, Any]] = [{"id": s.id, "altitude_m": s.altitude_m} for s in scenario.site]
    for cfg in boards.values():  # an inventory board of another site brings its site along
        if all(site["id"] != cfg["site"] for site in sites):
            sites.append({"id": cfg["site"], "altitude_m": cfg["site_altitude_m"]})
    state = DemoState()
    provision_dir = data_dir / "provision"
    ports, port_notes = _ports(args)
    services = Services(
        data_dir / "services",
        provision_dir=provision_dir,
        mqtt_port=ports["MQTT broker"],
        mqtt_gateway_port=ports["MQTT gateway listener"],
        influx_port=ports["InfluxDB"],
        influx_rpc_port=ports["InfluxDB RPC"],
    )
    summary: dict[str, Any] = {"data_dir": str(data_dir), "provision_dir": str(provision_dir)}
    started = time.monotonic()
    running = False
    print(
        f"o2chain demo: starting scenario {scenario.scenario.name!r} in {data_dir} "
        "(Ctrl-C stops it)",
        flush=True,
    )
    try:
        from o2base.procs import LogTail, ProcessError
        from o2chain.provision import provision

        # A re-run on the same data dir keeps every secret and updates the ports.
        inventory = _inventory(
            scenario, services, provision_dir / "inventory.toml", args.interval_s, boards
        )
        fresh = not (provision_dir / "broker").is_dir()
        print(
            "o2chain demo: provisioning the site: CA, broker accounts, board configs"
            + (" (the first run takes a while: a password hash per account)" if fresh else ""),
            flush=True,
        )
        provision(inventory, provision_dir)
        check_stop()
        print("o2chain demo: starting the broker and InfluxDB, then equipment, boards, gateway")
        services.start()
        check_stop()
        state.pids += [p for p in (services.mosquitto.pid, services.influxdb.pid) if p]
        # The boards' TLS and accounts come from the provisioned configs (--provision). The
        # demo owns the broker: `sim run` prints a line at each broker_restart, the demo
        # restarts it (below).
        # This run's lines only: the log is appended to across runs on one data dir.
        scenario_log = LogTail(data_dir / "logs" / "scenario.log", from_end=True)
        sim_started_ms = time.time() * 1000.0
        sim = ChildProcess(
            o2chain_argv(
                "sim", "run", args.scenario, "--mqtt", services.mosquitto.url,
                "--provision", str(provision_dir), "--speed", str(args.speed),
            ),
            data_dir / "logs" / "scenario.log",
        ).start()  # fmt: skip
        state.children.append(sim)
        try:
            ready_line = sim.wait_for_log(r'(\{"ready": ?true.*\})\n', timeout_s=60, cancel=stop)
            ready = json.loads(ready_line.group(1))
            devices = gateway_devices(ready["modbus"], ready["boards"])
            site_id = scenario.site[0].id
            devices.append(
                {"id": FIRMWARE_ROOM[0], "site": site_id, "kind": "room", "transport": "mqtt",
                 "room": FIRMWARE_ROOM[1]}
            )  # fmt: skip
            for device, cfg in boards.items():  # regenerated at every start, with the inventory
                kind = cfg.get("kind", "room")
                dev: dict[str, Any] = {"id": device, "site": cfg["site"], "kind": kind,
                                       "transport": "mqtt"}  # fmt: skip
                if kind == "room":
                    dev["room"] = device
                devices.append(dev)
            host = args.bind if ":" not in args.bind else f"[{args.bind}]"
            gw_config = _gateway_config(
                services, data_dir, sites, devices, f"{host}:{ports['live page']}", args.speed
            )
            gateway = ChildProcess(
                o2chain_argv("gateway", "run", "-c", str(gw_config)),
                data_dir / "logs" / "gateway.log",
            ).start()
            state.children.append(gateway)
            page = gateway.wait_for_log(
                r"HTTP listening on (http://[^\s(]+)", timeout_s=30, cancel=stop
            ).group(1)
            gateway.wait_for_log("MQTT subscribed", timeout_s=30, cancel=stop)
        except ProcessError as exc:
            from o2base.errors import RunError

            failed = next((c for c in state.children if not c.running), state.children[-1])
            raise RunError(
                f"{' '.join(failed.argv[3:5])} did not start: {str(exc).splitlines()[0]} "
                f"(see {failed.log_path})"
            ) from None
        check_stop()
        # A browser on this machine reaches a wildcard listener on loopback.
        page = page.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")

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
        check_stop()
        running = True

        logins = _web_logins(provision_dir)
        operator = next((login for login in logins if login[0] == "operator"), None)
        print(f"o2chain demo: scenario {scenario.scenario.name!r} at {args.speed:g}x", flush=True)
        for note in port_notes:
            print(f"  note            {note}")
        print(f"  live page       {page}/")
        if args.bind not in LOOPBACK:
            lan_port = page.rsplit(":", 1)[1]
            print(f"  on the LAN      http://{socket.getfqdn()}:{lan_port}/ (log in to read)")
        print(f"  data dir        {data_dir}")
        print(
            f"  MQTT broker     {services.mosquitto.url} (TLS, a password and an ACL per "
            f"account, no anonymous); gateway listener {services.mosquitto.gateway_url}"
        )
        print(f"  provisioning    {provision_dir} (CA, accounts, board configs; docs/security.md)")
        for user, password in logins:
            print(f"  web login       {user} / {password}")
        print(f"  web logins in   {provision_dir / 'operator' / 'initial-passwords.txt'}")
        print(f"  InfluxDB        {services.influxdb.url}  (database {DATABASE!r})")
        print(f"  gateway         config {gw_config}, log {gateway.log_path}")
        for dev, ep in sorted(ready["modbus"].items()):
            print(f"  {dev:<15} Modbus {ep['url']} unit {ep['unit']} ({ep['profile']})")
        print(f"  room boards     {len(ready['boards'])} simulated boards over MQTT")
        print(f"  {FIRMWARE_ROOM[0]:<15} MicroPython firmware, board dir {board.board_dir}")
        for device in boards:
            print(
                f"  {device:<15} from {args.inventory}: flash it with `o2chain firmware flash "
                f"--port PORT --device {device} --provision {provision_dir}`, or run it here: "
                f"`o2chain firmware run --config {provision_dir}/boards/{device}/config.json`"
            )
        if boards:
            print(
                f"  note            the broker listens on {services.mosquitto.host} only: a board "
                "on WiFi reaches it through a tunnel or a broker on the LAN (docs/security.md)"
            )
        print(f"  timeline        {_timeline(scenario, args.speed)} (simulated seconds)")
        print(f"  alarms          `o2chain alarms list --url {page}`")
        print(
            "Ctrl-C stops everything."
            if args.duration is None
            else f"Running for {args.duration:.0f} s.",
            flush=True,
        )
        narrator = Narrator(page, operator, auto_ack=not args.no_auto_ack, since_ms=sim_started_ms)
        if args.bind not in LOOPBACK and operator is not None:
            # Beyond loopback nobody reads anonymously (gateway/README.md, "Who may do what").
            narrator.client.login(*operator)
        up_since = time.monotonic()  # --duration counts from here: start-up time varies
        next_report = up_since + REPORT_EVERY_S
        next_poll = time.monotonic()
        while not stop.is_set():
            if args.duration is not None and time.monotonic() - up_since >= args.duration:
                break
            dead = [" ".join(c.argv[3:5]) for c in state.children if not c.running]
            if dead:
                from o2base.errors import RunError

                raise RunError(f"{', '.join(dead)} stopped unexpectedly; see {data_dir / 'logs'}")
            for line in scenario_log.lines():
                if '"broker_restart"' in line:
                    if any(t.is_alive() for t in state.restarts):
                        continue  # one restart at a time: two would start two brokers
                    print(
                        f"[{_stamp()}] timeline: restarting the MQTT broker; boards and the "
                        "gateway reconnect and replay what they buffered",
                        flush=True,
                    )
                    thread = threading.Thread(
                        target=_restart_broker, args=(services, state), name="demo-broker-restart"
                    )
                    thread.start()
                    state.restarts.append(thread)
            if time.monotonic() >= next_poll:
                narrator.poll()
                next_poll = time.monotonic() + 1.0
            if time.monotonic() >= next_report:
                print("\n".join(narrator.report()), flush=True)
                next_report += REPORT_EVERY_S
            stop.wait(0.2)
        narrator.poll()
        print("\n".join(narrator.report()), flush=True)  # where the story stands at the end
        summary["counts"] = _counts(services)
        summary["alarm_events"] = narrator.events
        summary["acknowledged"] = narrator.acked
        print(f"o2chain demo: stopping; InfluxDB holds {summary['counts']}", flush=True)
        return 0
    except KeyboardInterrupt:
        if running:  # Ctrl-C is how a running demo ends
            return 0
        raise  # o2chain.cli prints the one line and exits 130
    finally:
        for thread in state.restarts:  # a restart under way would leave its broker behind
            thread.join(timeout=60)
        for b in state.boards:
            b.stop()
        for child in reversed(state.children):
            child.stop()
        services.stop()
        lock.release()
        summary["pids"] = state.pids
        summary["elapsed_s"] = round(time.monotonic() - started, 1)
        if args.summary_json:
            args.summary_json.write_text(json.dumps(summary, indent=2))
        print(f"o2chain demo: stopped; data kept in {data_dir}", flush=True)


def _restart_broker(services: Services, state: DemoState) -> None:
    try:
        services.mosquitto.restart()
        if services.mosquitto.pid:  # the summary's PIDs: none may outlive the demo
            state.pids.append(services.mosquitto.pid)
    except Exception as exc:  # the demo goes on; the boards keep buffering
        print(f"[{_stamp()}] o2chain demo: broker restart failed: {str(exc).splitlines()[0]}")
    else:
        print(f"[{_stamp()}] timeline: MQTT broker back on {services.mosquitto.url}", flush=True)
