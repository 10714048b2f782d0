"""Tests of o2base.services: private Mosquitto and InfluxDB instances and their fixtures."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from o2base import services
from o2base.services import (
    InfluxDB,
    Mosquitto,
    ServiceError,
    Services,
    mqtt_connect_packet,
    mqtt_handshake,
    quote_identifier,
)

TIMEOUT_S = 5.0


# -- pure parts ------------------------------------------------------------------------------


def test_connect_packet_matches_mqtt_311_layout():
    packet = mqtt_connect_packet("ab", keepalive_s=60)
    # fixed header, remaining length 14, "MQTT", level 4, clean session, keep-alive 60, id "ab"
    assert packet == b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02ab"


def test_connect_packet_uses_multibyte_remaining_length():
    packet = mqtt_connect_packet("x" * 200)
    body_length = 10 + 2 + 200
    assert packet[1:3] == bytes([body_length % 128 | 0x80, body_length // 128])
    assert len(packet) == 3 + body_length


def test_connect_packet_rejects_out_of_range_keepalive():
    with pytest.raises(ValueError):
        mqtt_connect_packet("a", keepalive_s=70_000)


def test_handshake_is_false_without_a_broker():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert mqtt_handshake("127.0.0.1", port, timeout_s=0.5) is False


def test_handshake_is_false_for_a_silent_server():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        started = time.monotonic()
        assert mqtt_handshake("127.0.0.1", server.getsockname()[1], timeout_s=0.3) is False
        assert time.monotonic() - started < 2.0


def test_quote_identifier_escapes_quotes_and_backslashes():
    assert quote_identifier('a"b\\c') == '"a\\"b\\\\c"'


def test_ports_are_fixed_at_creation(tmp_path):
    broker = Mosquitto(tmp_path, port=12345)
    database = InfluxDB(tmp_path)
    assert (broker.host, broker.port, broker.url) == ("127.0.0.1", 12345, "mqtt://127.0.0.1:12345")
    assert database.url == f"http://127.0.0.1:{database.port}"
    assert database.rpc_port != database.port
    assert not broker.running and broker.pid is None
    assert broker.data_dir == tmp_path.resolve() / "mosquitto" / "data"
    assert database.log_path == tmp_path.resolve() / "influxdb" / "influxdb.log"


def test_missing_binary_names_the_package_and_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(services.shutil, "which", lambda name: None)
    monkeypatch.setattr(Mosquitto, "binary_fallback", tmp_path / "no-such-mosquitto")
    with pytest.raises(ServiceError, match=r"'mosquitto'.*apt-get install -y mosquitto influxdb"):
        Mosquitto(tmp_path).start()


def test_rendered_mosquitto_config_keeps_root_and_has_no_queue_limit(tmp_path):
    config = Mosquitto(tmp_path)._render_config()
    assert "max_queued_messages 0\n" in config
    assert f"persistence_location {tmp_path.resolve()}/mosquitto/data/\n" in config
    assert ("user root\n" in config) == (os.geteuid() == 0)


# -- helpers for the integration tests -------------------------------------------------------


class MqttClient:
    """A paho client that connects synchronously and queues what it receives."""

    def __init__(self, broker: Mosquitto, client_id: str = "", clean: bool = True) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean
        )
        self.client.on_connect = lambda c, u, flags, rc, props: self._connected.set()
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self._subscribed.set()
        self.client.on_message = lambda c, u, message: self.messages.put(message)
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        if not self._connected.wait(TIMEOUT_S):
            self.close()
            raise AssertionError("no CONNACK from the broker")

    def subscribe(self, topic: str) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(TIMEOUT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(TIMEOUT_S)  # returns once the broker's PUBACK arrived
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_clients(mosquitto: Mosquitto) -> Iterator[list[MqttClient]]:
    """Clients opened by a test; closed at teardown whatever happened."""
    opened: list[MqttClient] = []
    yield opened
    for client in opened:
        client.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- Mosquitto ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_qos1_message_passes_through_the_broker(mosquitto, mqtt_clients):
    subscriber = MqttClient(mosquitto)
    publisher = MqttClient(mosquitto)
    mqtt_clients += [subscriber, publisher]
    subscriber.subscribe("o2/site-a/dev-1/telemetry")
    publisher.publish("o2/site-a/dev-1/telemetry", b'{"v": 1}')
    message = subscriber.messages.get(timeout=TIMEOUT_S)
    assert (message.topic, message.payload, message.qos) == (
        "o2/site-a/dev-1/telemetry",
        b'{"v": 1}',
        1,
    )


@pytest.mark.integration
def test_retained_message_survives_restart(mosquitto, mqtt_clients):
    publisher = MqttClient(mosquitto)
    publisher.publish("o2/site-a/dev-1/status", b'{"state":"online"}', retain=True)
    publisher.close()
    old_pid, port = mosquitto.pid, mosquitto.port

    mosquitto.restart()

    assert mosquitto.port == port and mosquitto.pid != old_pid
    subscriber = MqttClient(mosquitto)
    mqtt_clients.append(subscriber)
    subscriber.subscribe("o2/site-a/+/status")
    message = subscriber.messages.get(timeout=TIMEOUT_S)
    assert message.retain and message.payload == b'{"state":"online"}'
    assert (mosquitto.data_dir / "mosquitto.db").is_file()
    assert "Error" not in mosquitto.log_tail(200)


@pytest.mark.integration
def test_persistent_session_keeps_queued_messages_across_restart(mosquitto, mqtt_clients):
    subscriber = MqttClient(mosquitto, client_id="gateway-1", clean=False)
    subscriber.subscribe("o2/+/+/telemetry")
    subscriber.close()
    publisher = MqttClient(mosquitto)
    for seq in range(1500):  # more than Mosquitto's default max_queued_messages (1000)
        publisher.publish("o2/site-a/dev-1/telemetry", str(seq).encode())
    publisher.close()

    mosquitto.restart()

    subscriber = MqttClient(mosquitto, client_id="gateway-1", clean=False)
    mqtt_clients.append(subscriber)
    received: list[bytes] = []
    with contextlib.suppress(queue.Empty):
        while len(received) < 1500:
            received.append(bytes(subscriber.messages.get(timeout=TIMEOUT_S).payload))
    # With Mosquitto's default max_queued_messages (1000) only 1000 arrive (checked by hand).
    assert len(received) == 1500, f"{len(received)} of 1500 queued messages delivered"
    assert received == [str(seq).encode() for seq in range(1500)]


@pytest.mark.integration
def test_kill_then_start(mosquitto):
    pid = mosquitto.pid
    assert pid is not None
    mosquitto.kill()
    assert not mosquitto.running and mosquitto.pid is None and _gone(pid)
    assert not mosquitto.is_ready(timeout_s=0.5)
    mosquitto.start()
    assert mosquitto.running and mosquitto.is_ready()


@pytest.mark.integration
def test_frozen_broker_does_not_answer_until_thawed(mosquitto):
    mosquitto.freeze()
    assert mosquitto.frozen and mosquitto.running
    assert not mosquitto.is_ready(timeout_s=0.5)
    mosquitto.thaw()
    assert not mosquitto.frozen
    assert mosquitto.is_ready(timeout_s=TIMEOUT_S)


@pytest.mark.integration
def test_stop_of_a_frozen_broker_is_clean(mosquitto):
    pid = mosquitto.pid
    mosquitto.freeze()
    started = time.monotonic()
    mosquitto.stop(timeout_s=TIMEOUT_S)
    assert time.monotonic() - started < TIMEOUT_S  # SIGTERM handled, no SIGKILL needed
    assert pid is not None and _gone(pid)


@pytest.mark.integration
def test_two_brokers_run_side_by_side(tmp_path):
    with Mosquitto(tmp_path / "a") as first, Mosquitto(tmp_path / "b") as second:
        assert first.port != second.port
        assert first.is_ready() and second.is_ready()


@pytest.mark.integration
def test_clean_stop_leaves_no_process(tmp_path):
    broker = Mosquitto(tmp_path)
    broker.start()
    pid = broker.pid
    assert pid is not None
    broker.stop()
    assert broker.pid is None and _gone(pid)
    broker.stop()  # a second stop is a no-op


@pytest.mark.integration
def test_port_in_use_raises_with_log_tail(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        broker = Mosquitto(tmp_path, port=squatter.getsockname()[1])
        with pytest.raises(ServiceError, match=r"exited with code[\s\S]*Address already in use"):
            broker.start(timeout_s=TIMEOUT_S)
    assert not broker.running


# -- InfluxDB ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_write_and_query_a_point(influxdb):
    influxdb.create_database("o2")
    influxdb.write_lines("o2", "room,site=a,device=d1 o2_pct=24.3,seq=7i 1732400000123")
    points = influxdb.query_points('SELECT * FROM "room"', db="o2")
    assert points == [
        {"time": 1732400000123, "site": "a", "device": "d1", "o2_pct": 24.3, "seq": 7}
    ]


@pytest.mark.integration
def test_query_errors_raise(influxdb):
    with pytest.raises(ServiceError, match="database not found"):
        influxdb.query("SELECT * FROM x", db="nope")
    with pytest.raises(ServiceError, match="error parsing query"):
        influxdb.query("SELEKT 1")
    influxdb.create_database("o2")
    with pytest.raises(ServiceError, match="400"):
        influxdb.write_lines("o2", "not line protocol")


@pytest.mark.integration
def test_point_survives_restart_and_kill(influxdb):
    influxdb.create_database("o2")
    influxdb.write_lines("o2", "room,device=d1 o2_pct=21.0 1732400000000")
    influxdb.restart()
    assert influxdb.query_points("SELECT o2_pct FROM room", db="o2")[0]["o2_pct"] == 21.0
    influxdb.write_lines("o2", "room,device=d1 o2_pct=22.0 1732400001000")
    influxdb.kill()  # the WAL is written before /write answers 204
    influxdb.start()
    values = [p["o2_pct"] for p in influxdb.query_points("SELECT o2_pct FROM room", db="o2")]
    assert values == [21.0, 22.0]


@pytest.mark.integration
def test_frozen_influxdb_does_not_answer_until_thawed(influxdb):
    influxdb.freeze()
    assert not influxdb.is_ready(timeout_s=0.5)
    influxdb.thaw()
    assert influxdb.is_ready(timeout_s=TIMEOUT_S)


@pytest.mark.integration
def test_internal_database_is_not_written(influxdb):
    names = influxdb.query("SHOW DATABASES")["results"][0]["series"][0].get("values", [])
    assert ["_internal"] not in names


@pytest.mark.integration
def test_influxd_knows_every_key_we_write(tmp_path):
    """influxd ignores unknown keys silently; its effective config must echo each of ours."""
    database = InfluxDB(tmp_path)
    database.instance_dir.mkdir(parents=True)
    database.config_path.write_text(database._render_config())
    effective_text = subprocess.run(
        [str(InfluxDB.find_binary()), "config", "-config", str(database.config_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ours = tomllib.loads(database.config_path.read_text())
    effective = tomllib.loads(effective_text)
    # Upstream's name for the key Debian calls reporting-enabled; written for upstream builds.
    assert ours.pop("reporting-disabled") is True
    assert effective["reporting-enabled"] is False
    for key, value in ours.items():
        if isinstance(value, dict):
            for subkey, subvalue in value.items():
                assert effective[key][subkey] == subvalue, f"[{key}] {subkey}"
        else:
            assert effective[key] == value, key
    for section in ("graphite", "collectd", "opentsdb", "udp"):
        assert all(not listener["enabled"] for listener in effective[section]), section
    assert effective["ifql"]["enabled"] is False


# -- both ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_services_start_and_stop_together(tmp_path):
    with Services(tmp_path) as both:
        assert both.mosquitto.is_ready() and both.influxdb.is_ready()
        pids = [both.mosquitto.pid, both.influxdb.pid]
    assert all(pid is not None and _gone(pid) for pid in pids)
    assert not both.mosquitto.running and not both.influxdb.running


@pytest.mark.integration
def test_fixtures_share_one_service_dir(mosquitto, influxdb, service_dir: Path):
    assert mosquitto.instance_dir.parent == influxdb.instance_dir.parent == service_dir.resolve()


@pytest.mark.integration
def test_session_fixtures_are_running(mosquitto_session, influxdb_session):
    assert mosquitto_session.is_ready() and influxdb_session.is_ready()
