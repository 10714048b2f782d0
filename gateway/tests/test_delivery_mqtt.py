"""MQTT side of delivery: start-up while the broker is down, two gateways sharing one broker's
load through a shared subscription (every reading exactly once), SIGTERM drains and exits 0."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.tests.conftest import (
    gateway_config,
    sim_board_id,
    wait_for_count,
    wait_until,
)
from o2base.procs import ChildProcess, o2chain_argv
from o2base.services import InfluxDB, Mosquitto

pytestmark = pytest.mark.integration


def gateway(cfg: Path, log: Path, env: dict[str, str] | None = None) -> ChildProcess:
    return ChildProcess(o2chain_argv("gateway", "run", "-c", str(cfg)), log, env=env)


def ingested(gw: ChildProcess) -> int:
    match = re.search(r"MQTT ingest stopped: (\d+) messages", gw.log_text())
    assert match, gw.log_tail()
    return int(match.group(1))


# The fast client, and the stock paho client the ingest falls back to when a paho release
# lacks an internal the fast one needs (gateway/mqtt_fast.py): both must deliver everything.
@pytest.mark.parametrize("client", ["fast", "stock"])
def test_starts_while_the_broker_is_down_and_catches_up(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    sim_fleet: Callable[..., ChildProcess],
    client: str,
) -> None:
    mosquitto.stop()
    cfg = gateway_config(
        tmp_path / "gw.toml", mosquitto, influxdb, tmp_path / "st", 2, board_name=sim_board_id
    )
    env = {**os.environ, "O2CHAIN_STOCK_PAHO": "1"} if client == "stock" else None
    with gateway(cfg, tmp_path / "gw.log", env) as gw:
        gw.wait_for_log("MQTT cannot connect", timeout_s=20)
        assert gw.running
        mosquitto.start()
        gw.wait_for_log("MQTT subscribed", timeout_s=20)  # bounded backoff: seconds
        pub = sim_fleet(mosquitto.url, 2, 100, interval_s=0.001)
        wait_until(lambda: not pub.running, 60, "the fleet")
        assert wait_for_count(influxdb, 200, 30) == 200
        gw.stop()
    assert gw.returncode == 0, gw.log_tail()
    stopped = re.search(r"stopped: (\d+) messages.* (\d+) acknowledged", gw.log_text())
    assert stopped and int(stopped.group(1)) == int(stopped.group(2)) > 0, gw.log_tail()
