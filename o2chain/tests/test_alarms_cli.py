"""`o2chain alarms list|ack|shelve` against a real gateway (real Mosquitto and InfluxDB): a
board's reading raises an alarm, the operator lists, acknowledges and shelves it from the shell,
by password login (session cookie + CSRF token) and by API token (Bearer)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import tomli_w

from o2base.procs import ChildProcess, o2chain_argv, wait_until
from o2base.services import InfluxDB, Mosquitto
from o2chain.alarms_cli import AlarmsClient
from o2chain.testing import write_users_file

pytestmark = pytest.mark.integration

SITE = "lhasa-hotel"
KEY = f"{SITE}/room-101/room-o2-high"
OPERATOR, VIEWER, PASSWORD, TOKEN = "dolma", "tenzin", "yak butter tea", "t0ken-for-tools-0123"
USERS = [(OPERATOR, "operator", PASSWORD, TOKEN), (VIEWER, "viewer", PASSWORD, None)]


@dataclass
class Gateway:
    url: str
    base: Path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    base = tmp_path_factory.mktemp("alarms-cli")
    with Mosquitto(base / "services") as broker, InfluxDB(base / "services") as influx:
        config = {
            "gateway": {"id": "gw-cli", "state_dir": str(base / "state"),
                        "http_listen": "127.0.0.1:0"},
            "http": {"users_file": str(write_users_file(base / "users.toml", *USERS))},
            "mqtt": {"url": broker.url},
            "influx": {"url": influx.url, "database": "o2cli", "flush_interval_s": 0.5},
            "site": [{"id": SITE, "altitude_m": 3650}],
            "device": [{"id": "room-101", "site": SITE, "kind": "room", "transport": "mqtt",
                        "room": "101", "interval_s": 60}],
            # The built-in limit with a short on-delay keeps the test fast.
            "alarm": [{"id": "room-o2-high", "field": "o2_pct", "op": ">", "value": 27.89,
                       "severity": "critical", "device_kind": ["room"], "on_delay_s": 0.0,
                       "hysteresis": 0.3}],
        }  # fmt: skip
        (base / "gateway.toml").write_bytes(tomli_w.dumps(config).encode())
        argv = o2chain_argv("gateway", "run", "-c", str(base / "gateway.toml"))
        with ChildProcess(argv, base / "gateway.log") as gw:
            url = gw.wait_for_log(r"HTTP listening on (http://127\.0\.0\.1:\d+)").group(1)
            gw.wait_for_log("MQTT subscribed")
            board = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cli-board")
            board.connect(broker.host, broker.port)
            board.loop_start()
            doc = {"v": 1, "boot": 1, "seq": 1, "ts": int(time.time() * 1000), "o2_pct": 28.6}
            board.publish(
                f"o2/{SITE}/room-101/telemetry", json.dumps(doc), qos=1
            ).wait_for_publish()
            board.loop_stop()
            board.disconnect()
            client = AlarmsClient(url)
            # The gateway gives no event to a bystander but the alarm itself: poll its API.
            wait_until(
                lambda: any(a["key"] == KEY for a in client.alarms()["alarms"]),
                20,
                "the high-O2 alarm",
                error=AssertionError,
            )
            yield Gateway(url, base)


def alarms(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(o2chain_argv("alarms", *args), capture_output=True, text=True, timeout=60)


def test_list_ack_shelve_from_the_shell(gateway: Gateway) -> None:
    password = gateway.base / "pw"
    password.write_text(PASSWORD + "\n")
    listed = alarms("list", "--url", gateway.url)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()[:2]
    assert header.split()[:4] == ["SEVERITY", "STATE", "SINCE", "KEY"]
    assert row.split()[:2] == ["critical", "raised"] and KEY in row

    # A viewer may read but not act: one line naming the refusal, exit 1.
    refused = alarms("ack", KEY, "--url", gateway.url, "--user", VIEWER,
                     "--password-file", str(password))  # fmt: skip
    assert refused.returncode == 1 and "403" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    acked = alarms("ack", KEY, "--url", gateway.url, "--user", OPERATOR,
                   "--password-file", str(password))  # fmt: skip
    assert acked.returncode == 0, acked.stderr
    assert acked.stdout.strip() == f"{KEY}: acknowledged (critical, acked by {OPERATOR})"
    assert "acked by dolma" in alarms("list", "--url", gateway.url).stdout

    token = gateway.base / "token"
    token.write_text(TOKEN)
    shelved = alarms("shelve", KEY, "--for", "600", "--reason", "sensor swap",
                     "--url", gateway.url, "--token-file", str(token))  # fmt: skip
    assert shelved.returncode == 0, shelved.stderr
    assert shelved.stdout.strip() == f"{KEY}: shelved (critical, shelved by {OPERATOR})"
    log = alarms("list", "--url", gateway.url, "--log", "5").stdout
    assert f"shelve    {KEY} by {OPERATOR}" in log and f"ack       {KEY} by {OPERATOR}" in log

    back = alarms("unshelve", KEY, "--url", gateway.url, "--token-file", str(token))
    assert back.returncode == 0 and back.stdout.strip().startswith(f"{KEY}: unshelved")
    again = alarms("unshelve", KEY, "--url", gateway.url, "--token-file", str(token))
    assert again.returncode == 1 and "409" in again.stderr  # not shelved any more


def test_mistakes_get_one_line(gateway: Gateway, tmp_path: Path) -> None:
    cases = [
        (["ack", KEY, "--url", gateway.url], 2, "need an operator"),
        (["ack", "room-101", "--url", gateway.url, "--token-file", "/nonexistent"], 2,
         "--token-file /nonexistent"),
        (["list", "--url", "ftp://x"], 2, "expected http://HOST:PORT"),
        (["list", "--url", "http://127.0.0.1:9"], 1, "no gateway answers at http://127.0.0.1:9"),
        (["ack", "a/b/c", "--url", gateway.url, "--token-file", str(tmp_path / "t")], 2, "t:"),
    ]  # fmt: skip
    (tmp_path / "t").write_text("")
    for args, code, text in cases:
        done = alarms(*args)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0] and lines[0].startswith("o2chain alarms"), (
            args,
            lines,
        )
