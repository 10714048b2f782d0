"""End to end on one emulated board: the compiled firmware on `micropython`, a real Mosquitto,
the simulated ZE03 on a pty and the BME280 register model, observed by a paho subscriber."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from o2base.services import Mosquitto
from o2chain.firmware_runner import BoardRunner
from simulators.physics.atmosphere import equivalent_altitude_m, isa_pressure_kpa

SITE, DEVICE = "lhasa-hotel", "room-101"
PREFIX = f"o2/{SITE}/{DEVICE}/"
O2_PCT = 24.5
ALTITUDE_M = 3650


class Subscriber:
    """A paho 2.x client collecting every message; ``wait_for`` blocks on a condition."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(5), "no SUBACK"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(
        self,
        what: str,
        pred: Callable[[str, dict[str, Any], bool], bool],
        count: int = 1,
        timeout_s: float = 10.0,
    ) -> list[tuple[str, dict[str, Any], bool]]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                found = [m for m in self.messages if pred(*m)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {count}x {what} in {timeout_s} s: {self.messages}")
                self._cond.wait(left)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def subscriber(mosquitto: Mosquitto) -> Iterator[Subscriber]:
    sub = Subscriber(mosquitto, PREFIX + "#")
    yield sub
    sub.close()


def is_status(state: str, boot: int | None = None) -> Callable[[str, dict[str, Any], bool], bool]:
    def pred(topic: str, doc: dict[str, Any], retain: bool) -> bool:
        return (
            topic == PREFIX + "status"
            and doc.get("state") == state
            and (boot is None or doc.get("boot") == boot)
        )

    return pred


def is_telemetry(boot: int) -> Callable[[str, dict[str, Any], bool], bool]:
    return lambda topic, doc, retain: topic == PREFIX + "telemetry" and doc["boot"] == boot


def check_reading(doc: dict[str, Any]) -> None:
    assert doc["v"] == 1
    assert "quality" not in doc, doc
    assert abs(doc["o2_pct"] - O2_PCT) <= 0.3  # 0.1 % resolution, 0.05 % simulated noise
    assert abs(doc["baro_kpa"] - isa_pressure_kpa(ALTITUDE_M)) < 0.01
    assert abs(doc["temp_c"] - 20.0) < 0.02
    assert abs(doc["rh_pct"] - 30.0) < 0.1
    # o2_pct is published to 0.01 %: ppO2 from the unrounded value may differ by 0.005 x PB.
    assert abs(doc["ppo2_kpa"] - doc["o2_pct"] * doc["baro_kpa"] / 100) < 0.004
    # ~300 m per % O2: the 0.005 % rounding of o2_pct is worth 1.5 m. Checked against the
    # simulators' independent formula (the oracle of o2core's).
    assert abs(doc["eq_alt_m"] - equivalent_altitude_m(doc["o2_pct"], doc["baro_kpa"])) < 2.5
    # ts is 0 until the (runner's) SNTP answered, then the host's clock, UTC.
    assert doc["ts"] == 0 or abs(doc["ts"] / 1000 - time.time()) < 10


@pytest.mark.integration
def test_board_publishes_status_telemetry_and_will(
    mosquitto: Mosquitto, subscriber: Subscriber, tmp_path: Path
) -> None:
    cfg = {
        "site": SITE,
        "device": DEVICE,
        "site_altitude_m": ALTITUDE_M,
        "interval_s": 1,
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "keepalive_s": 5},
    }
    board = BoardRunner(cfg, tmp_path / "board", o2_pct=O2_PCT, site_calibrated=True)
    try:
        t0 = time.monotonic()
        board.start()
        subscriber.wait_for("online status", is_status("online", boot=1))
        readings = subscriber.wait_for("telemetry", is_telemetry(1), count=3)
        assert readings[-1][1]["ts"] > 0, "clock never set from SNTP"
        first_telemetry_s = time.monotonic() - t0
        docs = [doc for _, doc, _ in readings]
        for doc in docs:
            check_reading(doc)
        seqs = [doc["seq"] for doc in docs]
        assert seqs == sorted(set(seqs)) and seqs[0] == 1, seqs

        # The birth message is retained: a late subscriber gets it at once.
        late = Subscriber(mosquitto, PREFIX + "status")
        try:
            late.wait_for("retained online", lambda t, d, r: r and d["state"] == "online")
        finally:
            late.close()

        board.kill()  # power loss: the broker sends the last will
        subscriber.wait_for("offline will", is_status("offline"))

        board.start()  # reboot: boot counter persisted and incremented
        subscriber.wait_for("online after reboot", is_status("online", boot=2))
        again = subscriber.wait_for("telemetry after reboot", is_telemetry(2), count=2)
        assert [doc["seq"] for _, doc, _ in again][:2] == [1, 2]
        check_reading(again[0][1])
        heap = board.heap_free()
        offline_before = len([m for m in subscriber.messages if is_status("offline")(*m)])
        board.stop()  # orderly: the firmware says offline itself, before DISCONNECT
        subscriber.wait_for("offline on stop", is_status("offline"), count=offline_before + 1)
        print(f"first telemetry after {first_telemetry_s:.2f} s; heap free per cycle {heap}")
    finally:
        board.kill()
