"""The demo runs every entry of its timeline: ``broker_restart`` restarts the broker the demo
owns (boards and gateway reconnect), and no broker outlives the demo."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from o2base.procs import o2chain_argv, process_state

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z", "X")


def test_demo_restarts_its_broker_at_broker_restart(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    # 200x: the restart (1200 simulated s) comes 6 s after the scenario starts.
    done = subprocess.run(
        o2chain_argv(
            "demo", "--data-dir", str(tmp_path / "data"), "--speed", "200", "--duration", "12",
            "--http-port", "0", "--mqtt-port", "0", "--influx-port", "0", "--no-auto-ack",
            "--summary-json", str(summary),
        ),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "timeline: restarting the MQTT broker" in done.stdout
    assert "timeline: MQTT broker back on mqtts://127.0.0.1:" in done.stdout
    log = (tmp_path / "data" / "services" / "mosquitto" / "mosquitto.log").read_text()
    assert log.count("--- o2chain: starting mosquitto") == 2  # started, restarted once
    # The gateway came back to the restarted broker.
    gateway_log = (tmp_path / "data" / "logs" / "gateway.log").read_text()
    assert gateway_log.count("MQTT subscribed") >= 2
    pids = json.loads(summary.read_text())["pids"]
    assert [p for p in pids if _alive(p)] == []
