"""The whole chain through real parts: the walking skeleton every later test builds on.

Real Mosquitto + real InfluxDB + the concentrator simulator over Modbus TCP + the firmware on
the real `micropython` interpreter (simulated sensors on its wires) + the gateway process.
Asserted by querying InfluxDB.
"""

from __future__ import annotations

import json
import queue
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from o2base.procs import ChildProcess, o2chain_argv
from o2base.services import InfluxDB, Mosquitto
from o2chain.firmware_runner import BoardRunner
from o2chain.testing import wait_for_points, write_skeleton_gateway_config

pytestmark = pytest.mark.integration

SITE = "lhasa-hotel"  # the site of write_skeleton_gateway_config
ROOM_O2_PCT = 24.6


def board_config(mosquitto: Mosquitto) -> dict[str, Any]:
    return {
        "site": SITE,
        "device": "room-101",
        "kind": "room",
        "site_altitude_m": 3650,
        "interval_s": 1,
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
        "sensors": {
            "o2": {"type": "ze03", "uart": 1, "tx": 17, "rx": 16},
            "env": {"type": "bme280", "i2c": 0, "sda": 21, "scl": 22, "addr": 118},
        },
    }


def test_board_and_concentrator_readings_reach_influxdb(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, concentrator_sim: str
) -> None:
    # A witness on the broker records what the board really sent, timestamps included.
    sent: queue.Queue[dict[str, Any]] = queue.Queue()
    witness = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="hil-witness")
    witness.on_message = lambda c, u, m: sent.put(json.loads(m.payload))
    witness.connect(mosquitto.host, mosquitto.port)
    witness.subscribe(f"o2/{SITE}/room-101/telemetry", qos=1)
    witness.loop_start()

    cfg = write_skeleton_gateway_config(
        tmp_path / "gw.toml", mosquitto, influxdb, concentrator_sim, tmp_path / "gw-state",
        gateway_id="gw-hil", database="hil",
    )  # fmt: skip
    try:
        with ChildProcess(
            o2chain_argv("gateway", "run", "-c", str(cfg)), tmp_path / "gw.log"
        ) as gw:
            gw.wait_for_log("MQTT subscribed")
            with BoardRunner(board_config(mosquitto), tmp_path / "board", o2_pct=ROOM_O2_PCT):
                first = sent.get(timeout=30)
                rooms = wait_for_points(
                    influxdb,
                    "hil",
                    f"SELECT * FROM room WHERE site = '{SITE}' AND device = 'room-101'",
                    2,
                )
            concs = wait_for_points(
                influxdb, "hil", "SELECT * FROM concentrator WHERE device = 'conc-1'", 1
            )
    finally:
        witness.loop_stop()
        witness.disconnect()

    assert first["v"] == 1 and first["ts"] > 1_700_000_000_000
    by_time = {p["time"]: p for p in rooms}
    assert first["ts"] in by_time, "the point's time must be the board's timestamp"
    point = by_time[first["ts"]]
    assert point["site"] == SITE and point["device"] == "room-101"
    assert point["seq"] == first["seq"] and point["boot"] == first["boot"]
    assert point["o2_pct"] == pytest.approx(ROOM_O2_PCT, abs=0.3)
    assert point["ppo2_kpa"] == pytest.approx(point["o2_pct"] * point["baro_kpa"] / 100, rel=1e-3)
    assert 60.0 < point["baro_kpa"] < 70.0  # Lhasa, about 64.5 kPa (ISA at 3650 m)

    conc = concs[0]
    assert conc["site"] == SITE and conc["source"] == "modbus"
    assert 80.0 < conc["purity_pct"] < 96.0
    assert 0.5 < conc["flow_lpm"] < 5.0
