"""Bounds through a real ``o2chain gateway run`` process, a real Mosquitto and InfluxDB: big bad
payloads and a flood of bad messages do not grow the state directory or the log, URLs with
credentials never reach the log, and the state directory is the gateway's own."""

from __future__ import annotations

import hashlib
import re
import stat
import subprocess
import threading
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gateway.outbox import DEADLETTER_PAYLOAD_MAX
from gateway.tests.conftest import SITE, deadletters, gateway_config, publish_all, wait_until
from o2base.procs import ChildProcess, o2chain_argv
from o2base.services import InfluxDB, Mosquitto

pytestmark = pytest.mark.integration

TOPIC = f"o2/{SITE}/room-000/telemetry"
# Over the schema's 64 KiB, under the broker's max_packet_size (128 KiB): it reaches the gateway
# and is dead-lettered, cut to DEADLETTER_PAYLOAD_MAX. Bigger packets the broker refuses itself
# (test_the_broker_refuses_packets_over_its_bound).
BIG = 120 << 10
MAX_COUNT = 20


def metric(text: str, name: str) -> float:
    values = [float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    return sum(values)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir())


def test_big_bad_payloads_and_a_flood_stay_bounded(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)  # as an older release (or a hand) left it
    mqtt_url = mosquitto.url.replace("mqtt://", "mqtt://gw:mqtt-s3cret@")
    influx_url = influxdb.url.replace("http://", "http://admin:influx-s3cret@")
    cfg = gateway_config(
        tmp_path / "gw.toml",
        mosquitto,
        influxdb,
        state,
        boards=1,
        gateway={"deadletter_max_count": MAX_COUNT},
        mqtt={"url": mqtt_url},
        influx={"url": influx_url},
    )
    bad = [(TOPIC, b"garbage %d" % n) for n in range(60)]
    big = [
        (TOPIC, b'{"pad":"' + bytes([65 + n]) * BIG + b'"}') for n in range(2)
    ]  # oversize (the schema's bound is 64 KiB)
    unknown = [(f"o2/{SITE}/ghost-{n}/status", b'{"state":"online"}') for n in range(5)]
    with ChildProcess(o2chain_argv("gateway", "run", "-c", str(cfg)), tmp_path / "gw.log") as gw:
        gw.wait_for_log("MQTT subscribed", timeout_s=30)
        listening = gw.wait_for_log(r"HTTP listening on (http://\S+)", timeout_s=10)
        metrics_url = f"{listening.group(1)}/metrics"
        before = dir_bytes(state)

        def metrics() -> str:
            with urllib.request.urlopen(metrics_url, timeout=5) as r:
                return str(r.read().decode())

        publish_all(mosquitto, bad + big + unknown, "corpus-board")
        wait_until(
            lambda: (
                metric(metrics(), "o2chain_rejects_total") >= 62
                and metric(metrics(), "o2chain_unknown_devices_seen") >= 5
            ),
            60,
            "62 rejects and 5 unknown devices",
        )
        text = metrics()
        grown = dir_bytes(state) - before
        letters = deadletters(cfg, "list", "--limit", "1000")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
        dir_mode = stat.S_IMODE(state.stat().st_mode)
        gw.stop()
        assert gw.returncode == 0, gw.log_tail()
    log = gw.log_text()

    # Counters exact, the oldest dead letters dropped and counted, the big ones kept cut.
    assert metric(text, "o2chain_rejects_total") == 62
    assert metric(text, "o2chain_deadletters") == MAX_COUNT
    assert metric(text, "o2chain_deadletters_dropped_total") == 62 - MAX_COUNT
    assert metric(text, "o2chain_deadletters_truncated_total") == 2
    assert len(letters) == MAX_COUNT
    assert [dl["payload"] for dl in letters[:-2]] == [f"garbage {n}" for n in range(42, 60)]
    for (_, payload), letter in zip(big, letters[-2:], strict=True):
        assert letter["reason"] == "oversize" and letter["truncated"] is True
        assert letter["payload"] == payload[:DEADLETTER_PAYLOAD_MAX].decode()
        assert letter["payload_len"] == len(payload)
        assert letter["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    # Whole payloads were kept before (two 5 MiB payloads: state dir 4.4 -> 24.9 MB).
    assert grown < 2 << 20, grown

    # One full line per reason, the rest summed up (at stop at the latest), not 62 lines.
    rejected = [ln for ln in log.splitlines() if "mqtt_ingest: rejected MQTT message on" in ln]
    assert len(rejected) == 2, rejected
    assert "rejected MQTT messages (not_json): 59 more since the last line" in log

    # Unknown devices: seen, listed in the metrics, not given a link state.
    assert metric(text, "o2chain_unknown_devices_seen") == 5

    # No credential anywhere in the log; the start line shows the URLs redacted.
    assert "s3cret" not in log
    assert f"MQTT {mqtt_url.replace('mqtt-s3cret', '***')}" in log
    assert influx_url.replace("influx-s3cret", "***") in log

    # The state directory is the gateway's own: 0700, SQLite files 0600.
    assert dir_mode == 0o700
    assert {n: m for n, m in modes.items() if n.startswith("outbox.sqlite")} == {
        "outbox.sqlite": 0o600,
        "outbox.sqlite-wal": 0o600,
        "outbox.sqlite-shm": 0o600,
    }

    # A cut dead letter is not replayed as data; replay says so in one line.
    out = subprocess.run(
        o2chain_argv("gateway", "deadletters", "-c", str(cfg), "replay", "--reason", "oversize"),
        capture_output=True,
        text=True,
        check=True,
    )
    (line,) = out.stderr.splitlines()
    assert "2 dead letter(s) not replayed: their payload was kept cut at 4096 bytes" in line
    assert '"replayed": 0' in out.stdout and '"truncated": 2' in out.stdout


def test_the_broker_refuses_packets_over_its_bound(mosquitto: Mosquitto) -> None:
    """A 5 MiB publish (MQTT allows 256 MiB) ends the sender's connection at the broker
    (max_packet_size in o2chain's broker configs) and never reaches a subscriber."""
    got: list[bytes] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bound-sub")
    sub.on_message = lambda c, u, m: got.append(bytes(m.payload))
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe(f"o2/{SITE}/#", qos=1)
    sub.loop_start()
    dropped = threading.Event()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bound-pub")
    pub.on_disconnect = lambda *args: dropped.set()
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    try:
        pub.publish(TOPIC, b"x" * (5 << 20), qos=1)
        assert dropped.wait(10), "the broker kept a 5 MiB publisher connected"
        marker = pub if pub.is_connected() else sub
        marker.publish(TOPIC, b"after", qos=1).wait_for_publish(timeout=10)
        wait_until(lambda: b"after" in got, 10, "the marker message")
        assert all(len(p) < 1 << 20 for p in got)
    finally:
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()
