"""pytest plugin: private Mosquitto and InfluxDB instances as fixtures.

Enabled for the whole repo by ``pytest_plugins = ["o2chain.testing"]`` in the root conftest.py.

Fixtures:

- ``service_dir``: a fresh directory for one test's service instances.
- ``victoria_metrics``: a private VictoriaMetrics, the second real database (function scope).
- ``mosquitto``, ``influxdb``: started before the test, stopped after it (function scope); the
  test may restart(), kill(), freeze() them at will.
- ``mosquitto_session``, ``influxdb_session``: one instance for the whole run, for tests that
  only need a service to exist. Do not stop or freeze them; use your own database / topic names.
- ``provisioned_site``: boards ``room-a``/``room-b`` provisioned by ``o2chain provision`` and a
  broker running with that security (TLS, passwords, ACLs); :class:`MqttProbe` talks to it.

When a test fails, the last lines of the log of every service it used are added to its report
(a section per service, with the log's path), so a broker or database error shows up next to the
assertion.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from o2base.procs import ChildProcess, o2chain_argv
from o2base.services import (
    HOST,
    LOG_TAIL_LINES,
    InfluxDB,
    ManagedService,
    Mosquitto,
    ServiceError,
    Services,
    VictoriaMetrics,
)


def wait_for_points(
    influxdb: InfluxDB, db: str, query: str, count: int, timeout_s: float = 20.0
) -> list[dict[str, Any]]:
    """Poll InfluxDB until ``query`` returns at least ``count`` points, then return them.

    Writers in other processes give no event to await except the data itself; the poll is
    bounded by ``timeout_s`` and fails with what it last saw.
    """
    deadline = time.monotonic() + timeout_s
    points: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            points = influxdb.query_points(query, db=db)
        except ServiceError:  # database not created yet
            points = []
        if len(points) >= count:
            return points
        time.sleep(0.1)
    raise AssertionError(f"expected {count} points for {query!r}, got {len(points)}: {points}")


def assert_same_keys(lang: str, texts: dict[str, Any], english: dict[str, Any]) -> None:
    """The ``lang`` translation catalogue has exactly the English one's keys, each with a text
    (the dashboards' and the live page's catalogues are checked alike)."""
    assert sorted(texts) == sorted(english), (
        f"{lang}.json: missing {sorted(set(english) - set(texts))}, "
        f"extra {sorted(set(texts) - set(english))}"
    )
    for key, text in texts.items():
        assert isinstance(text, str) and text.strip(), f"{lang}.json: {key} is empty"


def write_users_file(path: Path, *users: tuple[str, str, str, str | None]) -> Path:
    """Write a gateway users file (``[http] users_file``, gateway/auth.py) with mode 0600: one
    ``(name, role, password, API token or None)`` a user, the secrets stored as their hashes."""
    from gateway.auth import hash_token
    from gateway.passwords import hash_password

    hashes: dict[str, str] = {}  # scrypt costs tens of ms: once a password
    lines = []
    for name, role, password, token in users:
        if password not in hashes:
            hashes[password] = hash_password(password)
        lines += ["[[user]]", f'name = "{name}"', f'role = "{role}"']
        lines.append(f'password_hash = "{hashes[password]}"')
        if token is not None:
            lines.append(f'token_hash = "{hash_token(token)}"')
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class DemoRun:
    """What one bounded ``o2chain demo`` run left behind."""

    data_dir: Path
    stdout: str
    summary: dict[str, Any]


DEMO_DURATION_S = 20


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """Run ``o2chain demo --duration 20`` once per session and keep its data.

    At 20x the scenario's first fault (conc-4's Modbus link lost at 120 simulated seconds)
    comes 6 s in, so the run also holds an offline alarm and health data.

    The acceptance run is 30 s; 20 s keeps CI shorter and still spans several poll and board
    intervals. Tests open a new InfluxDB on ``data_dir / "services"`` to read what it stored.
    """
    base = tmp_path_factory.mktemp("demo")
    summary_path = base / "summary.json"
    result = subprocess.run(
        o2chain_argv(
            "demo", "--duration", str(DEMO_DURATION_S), "--data-dir", str(base / "data"),
            "--interval-s", "2", "--speed", "20", "--summary-json", str(summary_path),
        ),
        capture_output=True, text=True, timeout=DEMO_DURATION_S + 90,
    )  # fmt: skip
    if result.returncode != 0 or not summary_path.exists():
        pytest.fail(f"o2chain demo failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return DemoRun(base / "data", result.stdout, json.loads(summary_path.read_text()))


@pytest.fixture
def concentrator_sim(tmp_path: Path) -> Iterator[str]:
    """A medical-concentrator Modbus TCP simulator process; yields its ``tcp://`` URL."""
    with ChildProcess(
        o2chain_argv(
            "sim",
            "concentrator",
            "--profile",
            "medical-concentrator",
            "--listen",
            "tcp://127.0.0.1:0",
            "--seed",
            "3",
        ),
        tmp_path / "sim-concentrator.log",
    ) as sim:
        match = sim.wait_for_log(r'"listening": "(tcp://127\.0\.0\.1:\d+)"')
        yield match.group(1)


def write_skeleton_gateway_config(
    path: Path,
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    modbus_url: str,
    state_dir: Path,
    *,
    gateway_id: str = "gw-test",
    database: str = "o2test",
) -> Path:
    """Write the walking skeleton's gateway config to ``path``: site lhasa-hotel, room-101 over
    MQTT and conc-1, a medical concentrator over Modbus at ``modbus_url`` (e.g.
    :func:`concentrator_sim`), flushed to InfluxDB every 0.2 s."""
    import tomli_w

    config = {
        "gateway": {"id": gateway_id, "state_dir": str(state_dir)},
        "mqtt": {"url": mosquitto.url},
        "influx": {"url": influxdb.url, "database": database, "flush_interval_s": 0.2},
        "site": [{"id": "lhasa-hotel", "altitude_m": 3650}],
        "device": [
            {"id": "room-101", "site": "lhasa-hotel", "kind": "room", "transport": "mqtt"},
            {
                "id": "conc-1",
                "site": "lhasa-hotel",
                "kind": "concentrator",
                "transport": "modbus",
                "url": modbus_url,
                "profile": "medical-concentrator",
                "interval_s": 0.5,
            },
        ],
    }
    path.write_bytes(tomli_w.dumps(config).encode())
    return path


@pytest.fixture
def service_dir(tmp_path: Path) -> Path:
    """A fresh directory for service instances (``<tmp_path>/services``).

    No permission games are needed: o2chain's Mosquitto config keeps a root-started broker
    from switching to the ``mosquitto`` user, so a 0700 pytest temp dir is fine.
    """
    path = tmp_path / "services"
    path.mkdir()
    return path


@pytest.fixture
def mosquitto(service_dir: Path) -> Iterator[Mosquitto]:
    """A started private broker (``.url`` = ``mqtt://127.0.0.1:<port>``), stopped afterwards."""
    with Mosquitto(service_dir) as broker:
        yield broker


@pytest.fixture
def influxdb(service_dir: Path) -> Iterator[InfluxDB]:
    """A started private InfluxDB 1.x (``.url`` = ``http://127.0.0.1:<port>``), stopped after."""
    with InfluxDB(service_dir) as database:
        yield database


@pytest.fixture
def victoria_metrics(service_dir: Path) -> Iterator[VictoriaMetrics]:
    """A started private VictoriaMetrics (``.url`` = ``http://127.0.0.1:<port>``), stopped
    after the test: the second real time-series database."""
    with VictoriaMetrics(service_dir) as database:
        yield database


@pytest.fixture(scope="session")
def mosquitto_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One private broker shared by the whole test session."""
    with Mosquitto(tmp_path_factory.mktemp("mosquitto-session")) as broker:
        yield broker


@pytest.fixture(scope="session")
def influxdb_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB]:
    """One private InfluxDB shared by the whole test session."""
    with InfluxDB(tmp_path_factory.mktemp("influxdb-session")) as database:
        yield database


def _services_used_by(item: pytest.Item) -> list[ManagedService]:
    """Every ManagedService among the item's fixture values (also inside a Services)."""
    found: list[ManagedService] = []
    for value in getattr(item, "funcargs", {}).values():
        candidates = list(value) if isinstance(value, Services) else [value]
        found += [c for c in candidates if isinstance(c, ManagedService) and c not in found]
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of each used service's log to a failed test's report."""
    report = yield
    if report.failed:
        for service in _services_used_by(item):
            title = f"{service.name} log, last {LOG_TAIL_LINES} lines of {service.log_path}"
            report.sections.append((title, service.log_tail()))
    return report


# -- provisioned (secure) broker -----------------------------------------------------------------


def write_site_inventory(
    path: Path,
    devices: dict[str, dict[str, Any]],
    *,
    port: int,
    gateway_port: int,
    site: str = "test-site",
    gateway_id: str = "gw-test",
    extra_defaults: dict[str, Any] | None = None,
) -> Path:
    """Write an inventory (firmware/inventory.example.toml format, plus the ``[broker]`` and
    ``[gateway]`` tables of ``o2chain provision``) for boards on a private broker: host
    127.0.0.1, certificate name ``localhost``. ``devices`` maps device id -> its table."""
    import tomli_w

    doc = {
        "defaults": {
            "site": site,
            "site_altitude_m": 3650,
            "mqtt": {
                "host": HOST,
                "port": port,
                "tls": {"ca_file": "/ca.pem", "server_hostname": "localhost"},
            },
            **(extra_defaults or {}),
        },
        "devices": devices,
        "broker": {"port": port, "bind": HOST, "gateway_port": gateway_port, "gateway_bind": HOST},
        "gateway": {"id": gateway_id},
    }
    path.write_bytes(tomli_w.dumps(doc).encode())
    return path


@dataclass(frozen=True)
class ProvisionedSite:
    """A site provisioned by ``o2chain provision`` and its broker, started with that security."""

    dir: Path
    broker: Mosquitto
    site: str
    gateway_id: str

    def board_config(self, device: str) -> dict[str, Any]:
        """The board's provisioned config.json."""
        doc: dict[str, Any] = json.loads((self.dir / "boards" / device / "config.json").read_text())
        return doc

    def board_login(self, device: str) -> tuple[str, str]:
        mqtt = self.board_config(device)["mqtt"]
        return mqtt["username"], mqtt["password"]

    def service_password(self, account: str) -> str:
        """``gateway``, ``operator`` or ``dashboard``: its provisioned MQTT password."""
        return (self.dir / account / "mqtt-password").read_text().strip()

    def client(self, username: str | None, password: str | None, **kwargs: Any) -> MqttProbe:
        """A probe on the boards' listener (``gateway=True``: on the gateway's)."""
        gateway = kwargs.pop("gateway", False)
        port = self.broker.gateway_port if gateway else self.broker.port
        assert port is not None
        return MqttProbe(
            port, username=username, password=password, ca_file=self.broker.ca_file, **kwargs
        )


SITE_DEVICES = {"room-a": {"kind": "room"}, "room-b": {"kind": "room"}}


@pytest.fixture
def provisioned_site(tmp_path: Path) -> Iterator[ProvisionedSite]:
    """Boards ``room-a`` and ``room-b`` of site ``test-site`` provisioned into
    ``tmp_path/provision`` and a private broker running with that security (TLS listeners for
    boards and for the gateway, passwords, ACLs, no anonymous access)."""
    from o2chain.provision import provision

    broker = Mosquitto(tmp_path / "services", provision_dir=tmp_path / "provision")
    assert broker.gateway_port is not None
    inventory = write_site_inventory(
        tmp_path / "inventory.toml",
        SITE_DEVICES,
        port=broker.port,
        gateway_port=broker.gateway_port,
    )
    provision(inventory, tmp_path / "provision")
    with broker:
        yield ProvisionedSite(tmp_path / "provision", broker, "test-site", "gw-test")


class MqttProbe:
    """A paho client for access tests that waits for the broker's answers (CONNACK, PUBACK,
    SUBACK) instead of sleeping, and keeps every message it receives.

    MQTT 5 by default: a refused PUBLISH is answered with reason code 135 (not authorized).
    """

    def __init__(
        self,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        client_id: str = "",
        protocol: int = 5,
        will: tuple[str, bytes, bool] | None = None,
        timeout_s: float = 10.0,
        host: str = HOST,
    ) -> None:
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.port = port
        self.host = host
        self.timeout_s = timeout_s
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if protocol == 5 else mqtt.MQTTv311,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_file is not None:
            self.client.tls_set(ca_certs=str(ca_file))
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=will[2])
        self.messages: list[tuple[str, bytes, bool]] = []
        self.connack: int | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self._cond = threading.Condition()
        self._acks: dict[int, int] = {}
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_ack
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._cond:
            self.connack = int(reason.value)
            if not reason.is_failure:
                self.connected.set()
            self._cond.notify_all()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        with self._cond:
            if self.connack is None:
                self.connack = int(getattr(reason, "value", 128)) or 128
            self.disconnected.set()
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
            self._cond.notify_all()

    def _on_ack(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._cond:
            self._acks[mid] = int(getattr(reason, "value", 0))
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        with self._cond:
            self._acks[mid] = max(int(r.value) for r in reasons)
            self._cond.notify_all()

    def _wait(self, ready: Any, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(ready, self.timeout_s):
                raise AssertionError(
                    f"MQTT probe on port {self.port}: no {what} in {self.timeout_s} s"
                )

    def connect(self) -> int:
        """Connect and return the CONNACK reason code (0 = accepted). An error on the TLS or
        TCP level (no CONNACK at all) raises OSError."""
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        self._wait(lambda: self.connack is not None, "CONNACK")
        assert self.connack is not None
        return self.connack

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False) -> int:
        """Publish at QoS 1 and return the PUBACK reason code: 0 accepted, 135 not authorized
        (MQTT 5; MQTT 3.1.1 has no code: always 0)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        self._wait(lambda: info.mid in self._acks, f"PUBACK for {topic}")
        code = self._acks.pop(info.mid)
        return 0 if code == 16 else code  # 16 "no matching subscribers" is a success (MQTT 5)

    def subscribe(self, topic: str) -> int:
        """Subscribe at QoS 1 and return the highest SUBACK code (1 = granted QoS 1)."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        self._wait(lambda: mid in self._acks, f"SUBACK for {topic}")
        return self._acks.pop(mid)

    def wait_for(self, topic: str, payload: bytes | None = None) -> tuple[str, bytes, bool]:
        """The first message received on ``topic`` (with ``payload`` if given)."""

        def match() -> tuple[str, bytes, bool] | None:
            for m in self.messages:
                if m[0] == topic and (payload is None or m[1] == payload):
                    return m
            return None

        self._wait(lambda: match() is not None, f"message on {topic}")
        found = match()
        assert found is not None
        return found

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> MqttProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
