"""The gateway's busy threads carry their names in the kernel too, so `top -H`, `ps -L` and
py-spy's native view tell the committer, paho's network threads and the drains apart."""

from pathlib import Path

import pytest

from gateway.tests.conftest import gateway_config, start_gateway, wait_until
from o2base.services import InfluxDB, Mosquitto

pytestmark = pytest.mark.integration

EXPECTED = {"mqtt-commit", "mqtt-ingest", "mqtt-alarms", "influx-writer"}


def os_thread_names(pid: int) -> set[str]:
    names = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.add((task / "comm").read_text().strip())
        except OSError:  # a thread that ended meanwhile
            continue
    return names


def test_gateway_threads_are_named_for_the_kernel(
    tmp_path: Path, mosquitto_session: Mosquitto, influxdb_session: InfluxDB
) -> None:
    cfg = gateway_config(
        tmp_path / "gw.toml", mosquitto_session, influxdb_session, tmp_path / "state", boards=1
    )
    gw = start_gateway(cfg, tmp_path / "gw.log")
    try:
        assert gw.pid is not None
        # Each thread names itself when it starts (paho's: at its first connection).
        wait_until(lambda: os_thread_names(gw.pid or 0) >= EXPECTED, 15, "the named threads")
    finally:
        gw.stop()
    assert gw.returncode == 0, gw.log_tail()
