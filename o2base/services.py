"""Private Mosquitto and InfluxDB 1.x instances for the demo and the integration tests.

Each service lives in its own instance directory ``<base_dir>/<name>/`` holding the rendered
config file, the log file (the daemon's stdout and stderr, appended across restarts) and
``data/`` (everything the daemon persists). It listens on 127.0.0.1 only, on a port picked free
when the object is created and kept across restarts, so clients can reconnect to the same URL.

    with Services(base_dir) as services:
        print(services.mosquitto.url, services.influxdb.url)

Readiness is checked by protocol, never by sleeping: an MQTT CONNECT/CONNACK round trip for
Mosquitto, ``GET /ping`` answering 204 for InfluxDB. Every failure raises :class:`ServiceError`,
with the tail of the service's log when the daemon itself is the cause.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import ssl
import string
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import requests

from o2base.netns import NetNs
from o2base.procs import ChildProcess, ProcessError, StartStop
from o2core import mqtt_codec

T = TypeVar("T")

__all__ = [
    "HOST",
    "InfluxDB",
    "ManagedService",
    "Mosquitto",
    "ServiceError",
    "Services",
    "VictoriaMetrics",
    "free_ports",
    "mqtt_connect_packet",
    "mqtt_handshake",
    "port_is_free",
    "preferred_port",
    "quote_identifier",
]

HOST = "127.0.0.1"
INSTALL_HINT = "apt-get install -y mosquitto influxdb (or ./run-tests, which installs them)"
LOG_TAIL_LINES = 40

# Poll intervals while waiting for a state change: start short (a daemon is often ready within
# tens of milliseconds), grow so a slow start does not spin.
_POLL_FIRST_S = 0.01
_POLL_MAX_S = 0.2
# One readiness probe's limit while starting: long enough for a loaded machine, short enough
# that a port squatted by a silent listener does not hide the daemon's exit for long.
_PROBE_TIMEOUT_S = 0.5


class ServiceError(RuntimeError):
    """A private service is missing, failed to start or stop, or answered with an error."""


def free_ports(count: int = 1) -> list[int]:
    """Return ``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago.

    All sockets are held open until every port is chosen, so the ports differ from each other;
    another process may still take one before the caller binds it (no way around that race
    short of passing a listening socket to the daemon, which neither daemon accepts).
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_is_free(port: int, host: str = HOST) -> bool:
    """True if a TCP listener could bind ``host:port`` a moment ago (nobody listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the daemons bind: SO_REUSEADDR, so a port in TIME_WAIT after our last run counts
        # as free, and a port with a live listener does not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def preferred_port(port: int, host: str = HOST, avoid: Sequence[int] = ()) -> int:
    """``port`` if it is free on ``host`` (0: any), else a free one not in ``avoid``.

    The demo runs on fixed, documented ports so bookmarks and provisioned dashboards keep
    working across runs; a port already taken (a system InfluxDB on 8086) moves, it does not
    stop the demo. The caller says so.
    """
    if port and port not in avoid and port_is_free(port, host):
        return port
    return next(p for p in free_ports(len(avoid) + 1) if p not in avoid)


def mqtt_connect_packet(client_id: str, keepalive_s: int = 10) -> bytes:
    """Encode an MQTT 3.1.1 CONNECT packet with a clean session and no credentials
    (``o2core.mqtt_codec``, the boards' codec).

    Raises ValueError if ``client_id`` is longer than 65,535 bytes in UTF-8 or ``keepalive_s``
    is outside 0..65,535 (MQTT 3.1.1 §3.1.2.10, §3.1.3.1).
    """
    if len(client_id.encode()) > 0xFFFF or not 0 <= keepalive_s <= 0xFFFF:
        raise ValueError("client id or keep-alive out of range for MQTT 3.1.1")
    return bytes(mqtt_codec.connect(client_id, keepalive_s))


def mqtt_handshake(
    host: str,
    port: int,
    timeout_s: float = 1.0,
    *,
    ssl_context: ssl.SSLContext | None = None,
    refused_is_answer: bool = False,
) -> bool:
    """Return True if an MQTT broker at ``host:port`` accepts a CONNECT within ``timeout_s``.

    A TCP connect alone is not enough: the kernel completes it for a listening socket even when
    the broker is stopped (SIGSTOP) or still loading its persistence file. With ``ssl_context``
    the probe speaks TLS first; with ``refused_is_answer`` a CONNACK refusing the anonymous
    probe also counts (a broker that refuses anonymous clients is up when it says so).
    Never raises.
    """
    deadline = time.monotonic() + timeout_s
    client_id = f"o2chain-probe-{secrets.token_hex(6)}"
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection((host, port), timeout=timeout_s))
            if ssl_context is not None:
                sock = stack.enter_context(ssl_context.wrap_socket(sock, server_hostname=host))
            sock.sendall(mqtt_connect_packet(client_id))
            connack = b""
            while len(connack) < 4:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(4 - len(connack))
                if not chunk:
                    return False
                connack += chunk
            # CONNACK (§3.2): type 0x20, remaining length 2, session-present flags, return code.
            answered = connack[0] == mqtt_codec.CONNACK and connack[1] == 0x02
            if refused_is_answer:
                return answered
            accepted = answered and mqtt_codec.parse_connack(connack[2:])[1] == 0
            if accepted:
                # So that the broker logs a clean goodbye.
                sock.sendall(mqtt_codec.DISCONNECT_PACKET)
            return accepted
    except OSError:
        return False


def _find_binary(name: str, fallback: Path, package: str) -> Path:
    """Locate ``name`` on PATH, else at ``fallback``; raise ServiceError naming the package."""
    found = shutil.which(name)
    if found:
        return Path(found)
    if fallback.is_file() and os.access(fallback, os.X_OK):
        return fallback
    raise ServiceError(
        f"{name} not found on PATH nor at {fallback}: install the Debian package {package!r}: "
        f"{INSTALL_HINT}"
    )


def _render_template(name: str, **values: object) -> str:
    """Substitute ``values`` into the package template ``o2base/templates/<name>``."""
    text = (resources.files("o2base") / "templates" / name).read_text(encoding="utf-8")
    return string.Template(text).substitute({k: str(v) for k, v in values.items()})


def _toml_string(value: str | Path) -> str:
    """Quote ``value`` as a TOML basic string (JSON string escapes are valid TOML ones)."""
    return json.dumps(str(value), ensure_ascii=False)


def broker_conf(
    files_dir: Path, *, port: int, bind: str, gateway_port: int, gateway_bind: str
) -> str:
    """The Mosquitto listener block using the files of ``files_dir`` (a provisioned
    ``broker/`` directory, where the broker will read them). Empty ``bind`` = every interface."""
    text = (resources.files("o2base") / "templates" / "mosquitto-security.conf.tmpl").read_text()
    return string.Template(text).substitute(
        device_listener=f"listener {port} {bind}".rstrip(),
        gateway_listener=f"listener {gateway_port} {gateway_bind}".rstrip(),
        gateway_bind=gateway_bind or "every interface",
        cert_file=files_dir / "server.pem",
        key_file=files_dir / "server.key",
        devices_password_file=files_dir / "devices.passwd",
        devices_acl_file=files_dir / "devices.acl",
        gateway_password_file=files_dir / "gateway.passwd",
        gateway_acl_file=files_dir / "gateway.acl",
    )


class ManagedService(StartStop, ABC):
    """One daemon process in its own instance directory, on a fixed loopback port.

    Subclasses give the binary, the config file and the readiness probe. Methods are meant to
    be called from one thread at a time per instance.
    """

    name: ClassVar[str]
    binary_name: ClassVar[str]
    binary_fallback: ClassVar[Path]
    debian_package: ClassVar[str]
    url_scheme: ClassVar[str]

    def __init__(
        self,
        base_dir: Path,
        port: int | None = None,
        *,
        host: str = HOST,
        netns: NetNs | None = None,
    ) -> None:
        """Prepare (not start) an instance in ``base_dir/<name>/``.

        ``port`` None picks a free port now; it is kept for the life of the object. ``netns``
        runs the daemon inside that network namespace (o2base/netns.py), listening on ``host``
        (an address of the namespace); probes and client calls then run there too.
        """
        self._instance_dir = Path(base_dir).resolve() / self.name
        self._port = port if port is not None else free_ports(1)[0]
        self._host = host
        self.netns = netns
        self._child: ChildProcess | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, pid={self.pid}, dir={self.instance_dir})"

    # -- where and what ------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1`` (private instances never listen beyond loopback), or the address in
        its network namespace."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port clients connect to; the same across restarts."""
        return self._port

    @property
    def url(self) -> str:
        """``<scheme>://127.0.0.1:<port>``."""
        return f"{self.url_scheme}://{self._host}:{self._port}"

    @property
    def instance_dir(self) -> Path:
        """Directory holding the config file, the log file and ``data/``."""
        return self._instance_dir

    @property
    def config_path(self) -> Path:
        """The config file, rewritten from the template at every start."""
        return self._instance_dir / f"{self.name}.conf"

    @property
    def log_path(self) -> Path:
        """The daemon's stdout and stderr, appended across restarts with a marker line each."""
        return self._instance_dir / f"{self.name}.log"

    @property
    def data_dir(self) -> Path:
        """Everything the daemon persists; kept by restart(), kill() and stop()."""
        return self._instance_dir / "data"

    @property
    def pid(self) -> int | None:
        """Process id of the running daemon, or None when it is not running."""
        return self._child.pid if self._child is not None and self._child.running else None

    @property
    def running(self) -> bool:
        """True while the daemon process exists (ready, starting or frozen)."""
        return self._child is not None and self._child.running

    @property
    def frozen(self) -> bool:
        """True while the daemon is stopped by SIGSTOP (see freeze())."""
        return self._child is not None and self._child.frozen

    @classmethod
    def find_binary(cls) -> Path:
        """The daemon's executable: on PATH, else at ``binary_fallback``.

        Raises ServiceError naming the Debian package and the install command if neither.
        """
        return _find_binary(cls.binary_name, cls.binary_fallback, cls.debian_package)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the daemon and return once it answers its protocol; no-op if already running.

        Raises ServiceError if the binary is missing, or if the daemon exits or is not ready
        within ``timeout_s`` seconds (then it is killed); the message carries the log's last
        lines.
        """
        if self.running:
            return
        binary = self.find_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._render_config(), encoding="utf-8")
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        argv = [str(binary), *self._arguments()]
        self._child = ChildProcess(
            self.netns.argv(argv) if self.netns is not None else argv,
            self.log_path,
            self._environment(),
            cwd=self._instance_dir,
            banner=f"--- o2chain: starting {self.name} on {self.url} at {stamp} ---",
        ).start()
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        child = self._child
        if child is None:
            raise ServiceError(f"{self.name} was not started")
        deadline = time.monotonic() + timeout_s
        interval_s = _POLL_FIRST_S
        while True:
            if not child.running:
                code = child.stop()  # reaped, and out of the registry
                raise ServiceError(
                    f"{self.name} exited with code {code} before it was ready{self._log_excerpt()}"
                )
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                self.kill()
                raise ServiceError(
                    f"{self.name} was not ready on {self.url} within {timeout_s:g} s "
                    f"(killed){self._log_excerpt()}"
                )
            if self.is_ready(timeout_s=min(remaining_s, _PROBE_TIMEOUT_S)):
                return
            # Waiting on the process, not sleeping: returns at once if the daemon dies.
            child.wait(min(interval_s, max(deadline - time.monotonic(), 0.0)))
            interval_s = min(interval_s * 2, _POLL_MAX_S)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the daemon cleanly (SIGTERM), escalating to SIGKILL after ``timeout_s`` seconds.

        No-op if not running. A frozen daemon is thawed so it can handle the SIGTERM.
        """
        if self._child is not None:
            self._child.stop(timeout_s)

    def kill(self) -> None:
        """SIGKILL the daemon and reap it (simulates a crash or power loss); no-op if stopped."""
        if self._child is not None:
            self._child.kill()

    def restart(self, timeout_s: float = 15.0) -> None:
        """stop() then start(timeout_s): same port, same data. Raises ServiceError like start()."""
        self.stop()
        self.start(timeout_s=timeout_s)

    def freeze(self, timeout_s: float = 5.0) -> None:
        """SIGSTOP the daemon and wait until the kernel reports it stopped.

        Its sockets stay open: clients connect at TCP level but get no answer, like a hung
        server. Raises ServiceError if not running or not stopped within ``timeout_s`` seconds.
        """
        try:
            self._running_child().freeze(timeout_s)
        except ProcessError as exc:
            raise ServiceError(f"{self.name}: {exc}") from exc

    def thaw(self, timeout_s: float = 5.0) -> None:
        """SIGCONT a frozen daemon and wait until it runs again.

        Raises ServiceError like freeze().
        """
        try:
            self._running_child().thaw(timeout_s)
        except ProcessError as exc:
            raise ServiceError(f"{self.name}: {exc}") from exc

    def _running_child(self) -> ChildProcess:
        if self._child is None or not self._child.running:
            raise ServiceError(f"{self.name} is not running")
        return self._child

    # -- logs ----------------------------------------------------------------------------------

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the log file ("" if it does not exist yet)."""
        return ChildProcess([], self.log_path).log_tail(lines)

    def _log_excerpt(self) -> str:
        return f"\n--- last {LOG_TAIL_LINES} lines of {self.log_path} ---\n{self.log_tail()}"

    # -- per service ---------------------------------------------------------------------------

    @abstractmethod
    def is_ready(self, timeout_s: float = 1.0) -> bool:
        """True if the daemon answers its protocol within ``timeout_s`` seconds; never raises."""

    @abstractmethod
    def _render_config(self) -> str:
        """The config file's text for this instance."""

    @abstractmethod
    def _arguments(self) -> list[str]:
        """Command-line arguments after the binary."""

    def _environment(self) -> dict[str, str]:
        """Environment of the daemon: the parent's by default."""
        return dict(os.environ)

    def _here(self, fn: Callable[[], T]) -> T:
        """``fn()`` where the daemon's address is reachable: in its namespace, if it has one."""
        return fn() if self.netns is None else self.netns.call(fn)


class Mosquitto(ManagedService):
    """A private Mosquitto 2.x broker: persistence on, no queue limit, loopback only.

    Without ``provision_dir`` it has one plain listener that takes anonymous clients (tests,
    benchmarks). With ``provision_dir`` (the output of ``o2chain provision``) it runs that site's
    security instead: a TLS listener on ``port`` for boards, operator and dashboard, a second
    TLS listener on ``gateway_port`` for the gateway, passwords and ACLs, no anonymous access
    (docs/security.md).
    """

    name = "mosquitto"
    binary_name = "mosquitto"
    binary_fallback = Path("/usr/sbin/mosquitto")
    debian_package = "mosquitto"
    url_scheme = "mqtt"

    def __init__(
        self,
        base_dir: Path,
        port: int | None = None,
        *,
        autosave_interval_s: int = 1,
        provision_dir: Path | None = None,
        gateway_port: int | None = None,
        max_queued_messages: int = 0,
        sys_interval_s: int = 10,
        host: str = HOST,
        netns: NetNs | None = None,
        listeners: str | None = None,
        extra_conf: str = "",
    ) -> None:
        """Prepare a broker in ``base_dir/mosquitto/``.

        ``max_queued_messages`` > 0 makes the broker drop QoS 1 messages queued for a client
        beyond that many (Mosquitto's own default is 1000; 0, no limit, keeps at-least-once
        delivery); ``sys_interval_s`` is how often it publishes its ``$SYS`` counters.

        ``autosave_interval_s`` (>= 1) bounds what a SIGKILL loses of retained messages and
        queued sessions; a clean stop() always saves everything. ``gateway_port`` (with
        ``provision_dir`` only; None picks a free one) is kept across restarts like ``port``.
        ``listeners`` replaces the listener block (e.g. the central broker's, written by
        ``o2chain region provision``); ``extra_conf`` is appended (e.g. a bridge). With a
        provisioned site, ``broker/bridge.conf`` (the region bridge) is appended when present.
        """
        super().__init__(base_dir, port, host=host, netns=netns)
        self._listeners_text = listeners
        self._extra_conf = extra_conf
        if autosave_interval_s < 1:
            raise ValueError(f"autosave_interval_s must be >= 1, got {autosave_interval_s}")
        self._autosave_interval_s = autosave_interval_s
        self._max_queued_messages = max_queued_messages
        self._sys_interval_s = sys_interval_s
        self.provision_dir = Path(provision_dir).resolve() if provision_dir else None
        self._gateway_port: int | None = None
        if self.provision_dir is not None:
            if gateway_port is None:
                gateway_port = next(p for p in free_ports(2) if p != self._port)
            self._gateway_port = gateway_port

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>``, or ``mqtts://`` when secure."""
        scheme = "mqtts" if self.provision_dir is not None else self.url_scheme
        return f"{scheme}://{self._host}:{self._port}"

    @property
    def secure(self) -> bool:
        """True when the broker runs a provisioned site's TLS, passwords and ACLs."""
        return self.provision_dir is not None

    @property
    def gateway_port(self) -> int | None:
        """The gateway's own TLS listener (None without ``provision_dir``)."""
        return self._gateway_port

    @property
    def gateway_url(self) -> str:
        """Where the gateway connects: ``mqtts://127.0.0.1:<gateway_port>`` when secure."""
        if self._gateway_port is None:
            return self.url
        return f"mqtts://{self._host}:{self._gateway_port}"

    @property
    def ca_file(self) -> Path | None:
        """The provisioned site CA that signed the broker's certificate (None if not secure)."""
        return self.provision_dir / "broker" / "ca.pem" if self.provision_dir else None

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context trusting only the site CA (None if not secure)."""
        if self.ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_file))

    def is_ready(self, timeout_s: float = 1.0) -> bool:
        """True if the broker answers an MQTT CONNECT with CONNACK within ``timeout_s``
        (when secure: over TLS, and a CONNACK refusing the anonymous probe counts)."""
        if self.provision_dir is None and self._listeners_text is None:
            return self._here(lambda: mqtt_handshake(self._host, self._port, timeout_s))
        try:
            context = self.ssl_context() or ssl.create_default_context()
        except (OSError, ssl.SSLError):
            return False
        if self.provision_dir is None:  # a listener of somebody else's: TLS is not ours to check
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return self._here(
            lambda: mqtt_handshake(
                self._host, self._port, timeout_s, ssl_context=context, refused_is_answer=True
            )
        )

    def _listeners(self) -> str:
        if self._listeners_text is not None:
            return self._listeners_text + self._extra_conf
        if self.provision_dir is None or self._gateway_port is None:
            return (
                "## Loopback only, on a port picked free at run time; anonymous is fine on "
                "127.0.0.1.\n"
                f"listener {self._port} {self._host}\nallow_anonymous true\n{self._extra_conf}"
            )
        broker_dir = self.provision_dir / "broker"
        if not (broker_dir / "devices.passwd").is_file():
            raise ServiceError(f"{broker_dir}: not a provisioned broker dir (o2chain provision)")
        conf = broker_conf(
            broker_dir,
            port=self._port,
            bind=self._host,
            gateway_port=self._gateway_port,
            gateway_bind=self._host,
        )
        bridge = broker_dir / "bridge.conf"
        if bridge.is_file():
            conf += "\n" + bridge.read_text()
        return conf + self._extra_conf

    def _render_config(self) -> str:
        # Only root is switched to the `mosquitto` user; see the template for why we stay.
        run_as = "user root" if os.geteuid() == 0 else "## not root: Mosquitto keeps our user"
        return _render_template(
            "mosquitto.conf.tmpl",
            listeners=self._listeners(),
            run_as=run_as,
            data_dir=self.data_dir,
            autosave_interval_s=self._autosave_interval_s,
            max_queued_messages=self._max_queued_messages,
            sys_interval_s=self._sys_interval_s,
        )

    def _arguments(self) -> list[str]:
        return ["-c", str(self.config_path)]


class InfluxDB(ManagedService):
    """A private InfluxDB 1.x server (HTTP API, InfluxQL) with a small client for tests."""

    name = "influxdb"
    binary_name = "influxd"
    binary_fallback = Path("/usr/bin/influxd")
    debian_package = "influxdb"
    url_scheme = "http"

    def __init__(
        self,
        base_dir: Path,
        port: int | None = None,
        *,
        rpc_port: int | None = None,
        request_timeout_s: float = 10.0,
        host: str = HOST,
        netns: NetNs | None = None,
    ) -> None:
        """Prepare a server in ``base_dir/influxdb/``.

        ``rpc_port`` is influxd's backup/restore port (free one picked when None), also on
        127.0.0.1 and kept across restarts; ``request_timeout_s`` bounds each HTTP call of
        create_database(), query() and write_lines().
        """
        super().__init__(base_dir, port, host=host, netns=netns)
        if rpc_port is None:
            rpc_port = next(p for p in free_ports(2) if p != self._port)
        self._rpc_port = rpc_port
        self._request_timeout_s = request_timeout_s

    @property
    def rpc_port(self) -> int:
        """influxd's backup/restore (RPC) port on 127.0.0.1."""
        return self._rpc_port

    def is_ready(self, timeout_s: float = 1.0) -> bool:
        """True if ``GET /ping`` answers 204 within ``timeout_s`` seconds."""
        try:
            response = self._here(lambda: requests.get(f"{self.url}/ping", timeout=timeout_s))
        except requests.RequestException:
            return False
        return response.status_code == 204

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE "<name>"`` (idempotent). Raises ServiceError on any failure."""
        self.query(f"CREATE DATABASE {quote_identifier(name)}")

    def query(self, q: str, db: str | None = None, *, epoch: str | None = None) -> dict[str, Any]:
        """Run InfluxQL ``q`` (POST /query) and return the decoded JSON response.

        ``epoch`` ("ns", "u", "ms", "s", ...) returns times as integers in that unit instead
        of RFC 3339 strings. Raises ServiceError on a transport error, a non-2xx status, or an
        ``error`` in the response or in any statement's result.
        """
        params = {"q": q}
        if db is not None:
            params["db"] = db
        if epoch is not None:
            params["epoch"] = epoch
        response = self._request("query", params=params)
        try:
            body: dict[str, Any] = response.json()
        except ValueError as exc:
            raise ServiceError(f"InfluxDB query {q!r}: response is not JSON: {exc}") from exc
        errors = [body["error"]] if "error" in body else []
        errors += [r["error"] for r in body.get("results", []) if "error" in r]
        if errors:
            raise ServiceError(f"InfluxDB query {q!r} failed: {'; '.join(map(str, errors))}")
        return body

    def write_lines(self, db: str, lines: str, *, precision: str = "ms") -> None:
        """Write line-protocol ``lines`` (POST /write) with timestamps in ``precision`` units.

        Raises ServiceError unless InfluxDB answers 204.
        """
        response = self._request(
            "write", params={"db": db, "precision": precision}, data=lines.encode()
        )
        if response.status_code != 204:
            raise ServiceError(
                f"InfluxDB write to {db!r} answered {response.status_code}: {response.text}"
            )

    def query_points(self, q: str, db: str | None = None) -> list[dict[str, Any]]:
        """Run ``q`` and flatten every series into dicts (columns -> values, tags merged in).

        Times are integers in milliseconds. Raises ServiceError like query().
        """
        points = []
        for result in self.query(q, db, epoch="ms").get("results", []):
            for series in result.get("series", []):
                tags = series.get("tags", {})
                for row in series.get("values", []):
                    points.append({**tags, **dict(zip(series["columns"], row, strict=True))})
        return points

    def _request(
        self, endpoint: str, *, params: dict[str, str], data: bytes | None = None
    ) -> requests.Response:
        # A fresh connection per call: a pooled keep-alive connection would be stale after
        # restart() and fail the first request.
        try:
            response = self._here(
                lambda: requests.post(
                    f"{self.url}/{endpoint}",
                    params=params,
                    data=data,
                    timeout=self._request_timeout_s,
                )
            )
        except requests.RequestException as exc:
            raise ServiceError(f"InfluxDB /{endpoint} on {self.url}: {exc}") from exc
        if not response.ok:
            raise ServiceError(
                f"InfluxDB /{endpoint} answered {response.status_code}: {response.text.strip()}"
            )
        return response

    def _render_config(self) -> str:
        return _render_template(
            "influxdb.conf.tmpl",
            host=self._host,
            http_port=self._port,
            rpc_port=self._rpc_port,
            meta_dir=_toml_string(self.data_dir / "meta"),
            tsm_dir=_toml_string(self.data_dir / "data"),
            wal_dir=_toml_string(self.data_dir / "wal"),
        )

    def _arguments(self) -> list[str]:
        return ["run", "-config", str(self.config_path)]

    def _environment(self) -> dict[str, str]:
        # influxd lets INFLUXDB_<SECTION>_<KEY> variables override the config file: one
        # inherited from the shell could move the port or the data dir of a private instance.
        return {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}


class VictoriaMetrics(ManagedService):
    """A private VictoriaMetrics single-node server (Debian ``victoria-metrics``): the second
    time-series database the gateway's writers are tested against. It takes InfluxDB line
    protocol on ``/write`` (v1) and ``/api/v2/write``; each numeric field becomes a series
    ``{measurement}_{field}`` labelled with the tags (and ``db`` from ``?db=``).

    Started with ``-dedup.minScrapeInterval=1ms``: a point written twice (a replayed batch)
    is then one sample, as InfluxDB keeps one point per series and time; without it every
    replay would add a sample (measured: two).
    """

    name = "victoria-metrics"
    binary_name = "victoria-metrics"
    binary_fallback = Path("/usr/bin/victoria-metrics")
    debian_package = "victoria-metrics"
    url_scheme = "http"

    def is_ready(self, timeout_s: float = 1.0) -> bool:
        """True if ``GET /health`` answers 200 within ``timeout_s`` seconds."""
        try:
            response = requests.get(f"{self.url}/health", timeout=timeout_s)
        except requests.RequestException:
            return False
        return response.status_code == 200

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every sample of the series ``match`` selects (a series selector such as
        ``{__name__=~"room_.*"}``), once what was written is searchable: ``[{"metric": labels,
        "values": [...], "timestamps": [ms, ...]}, ...]``. Raises ServiceError."""
        try:
            flushed = requests.get(f"{self.url}/internal/force_flush", timeout=10)
            response = requests.post(
                f"{self.url}/api/v1/export", data={"match[]": match}, timeout=30
            )
        except requests.RequestException as exc:
            raise ServiceError(f"{self.name} on {self.url}: {exc}") from exc
        if flushed.status_code != 200 or response.status_code != 200:
            raise ServiceError(
                f"{self.name}: export answered {response.status_code}: {response.text[:300]}"
            )
        return [json.loads(line) for line in response.text.splitlines() if line.strip()]

    def _render_config(self) -> str:
        return "# victoria-metrics takes its settings as flags (see the command line)\n"

    def _arguments(self) -> list[str]:
        return [
            f"-httpListenAddr={HOST}:{self._port}",
            f"-storageDataPath={self.data_dir}",
            "-dedup.minScrapeInterval=1ms",
            "-retentionPeriod=100y",  # tests write points of any age
            "-loggerLevel=WARN",
        ]


def quote_identifier(name: str) -> str:
    """Quote an InfluxQL identifier (database, measurement): ``"`` and ``\\`` are escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Services(StartStop):
    """Mosquitto and InfluxDB together in one base directory, started concurrently.

    ``with Services(base_dir) as services:`` starts both and stops both on exit.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        mqtt_port: int | None = None,
        influx_port: int | None = None,
        provision_dir: Path | None = None,
        mqtt_gateway_port: int | None = None,
        influx_rpc_port: int | None = None,
    ) -> None:
        """``provision_dir``: run the broker with that provisioned site's security. A port left
        None is picked free (the demo passes fixed ones, see :func:`preferred_port`)."""
        self.base_dir = Path(base_dir)
        self.mosquitto = Mosquitto(
            self.base_dir, mqtt_port, provision_dir=provision_dir, gateway_port=mqtt_gateway_port
        )
        self.influxdb = InfluxDB(self.base_dir, influx_port, rpc_port=influx_rpc_port)

    def __iter__(self) -> Iterator[ManagedService]:
        return iter((self.mosquitto, self.influxdb))

    def start(self, timeout_s: float = 15.0) -> None:
        """Start both at once; on any failure stop both and raise that ServiceError."""
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="o2chain-start") as pool:
            futures = [pool.submit(service.start, timeout_s) for service in self]
        for future in futures:
            error = future.exception()
            if error is not None:
                self.stop()
                raise error

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop both (each SIGTERM, then SIGKILL after ``timeout_s`` seconds)."""
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="o2chain-stop") as pool:
            futures = [pool.submit(service.stop, timeout_s) for service in self]
        for future in futures:
            future.result()
