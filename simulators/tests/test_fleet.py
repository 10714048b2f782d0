"""Fleet generator against a real Mosquitto: contract, store and forward, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.telemetry import decode_telemetry
from o2base.procs import o2chain_argv, wait_until
from o2base.services import Mosquitto
from simulators.fleet import Fleet, FleetConfig, FleetSummary, default_room_source
from simulators.physics.atmosphere import Weather

SITE = "fleet-test"


def gateway_config(devices: list[str], tmp_path: Path) -> Any:
    return parse_config(
        {
            "gateway": {"id": "gw-test", "state_dir": str(tmp_path / "gw")},
            "mqtt": {"url": "mqtt://127.0.0.1:1883"},
            "influx": {"url": "http://127.0.0.1:8086", "database": "test"},
            "site": [{"id": SITE, "altitude_m": 3650}],
            "device": [
                {"id": d, "site": SITE, "kind": "room", "transport": "mqtt", "room": d}
                for d in devices
            ],
        }
    )


def test_config_rejects_nonsense() -> None:
    base: dict[str, Any] = dict(host="127.0.0.1", port=1, site="s", interval_s=1.0, readings=1)
    with pytest.raises(ValueError, match="boards"):
        FleetConfig(boards=0, **base).validate()
    with pytest.raises(ValueError, match="batch_max"):
        FleetConfig(boards=1, batch_max=501, **base).validate()
    assert FleetConfig(boards=3, first_board=7, **base).device_id(2) == "room-0009"


@pytest.mark.integration
def test_fleet_speaks_the_contract(mosquitto: Mosquitto, mqtt_recorder: Any, tmp_path: Path):
    rec = mqtt_recorder("o2/#")
    boards, readings = 5, 40
    config = FleetConfig(
        host=mosquitto.host,
        port=mosquitto.port,
        site=SITE,
        boards=boards,
        interval_s=0,
        readings=readings,
        seed=4,
        boot=7,
        timeout_s=30,
    )
    summary = asyncio.run(Fleet(config).run())
    assert summary.complete
    assert summary.readings_sent == boards * readings
    assert summary.readings_dropped == 0
    rec.wait_for(lambda: len(rec.readings()) >= boards * readings)
    # Every status topic ends offline (retained), after an online birth carrying the boot.
    rec.wait_for(lambda: sum(b'"offline"' in p for t, p, _ in rec.messages) >= boards)

    cfg = gateway_config(summary.devices, tmp_path)
    now_ms = time.time_ns() // 1_000_000
    by_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
    co2_seen: set[str] = set()
    for topic, payload, _ in rec.messages:
        if topic.endswith("/telemetry"):
            for r in decode_telemetry(cfg, topic, payload, now_ms):  # raises on a contract break
                assert r.measurement == "room" and "invalid" not in r.fields  # or flags it
                assert set(r.fields) >= {"o2_pct", "baro_kpa", "ppo2_kpa", "temp_c", "rh_pct"}
                assert "invalid" not in r.fields, r.fields  # co2_ppm too passes the validator
                if "co2_ppm" in r.fields:
                    co2_seen.add(topic.split("/")[2])
            continue
        status = json.loads(payload)
        device = topic.split("/")[2]
        by_device[device].append(status)
    for device in summary.devices:
        assert by_device[device][0] == {"state": "online", "fw": "o2sim-fleet/1", "boot": 7,
                                        "sim": True}  # fmt: skip
        assert by_device[device][-1] == {"state": "offline"}

    per_board: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for topic, item in rec.readings():
        per_board[topic.split("/")[2]].append(item)
    assert sorted(per_board) == summary.devices
    for items in per_board.values():
        items.sort(key=lambda i: i["seq"])
        assert [i["seq"] for i in items] == list(range(readings))
        ts = [i["ts"] for i in items]
        assert all(b > a for a, b in itertools.pairwise(ts)), "ts must increase"
        assert all(i["boot"] == 7 and i["v"] == 1 for i in items)
        # Room physics: a working enriched room at 3650 m sits in the 24-26 % band.
        assert all(23.5 < i["o2_pct"] < 26.5 for i in items)
        assert all(60.0 < i["baro_kpa"] < 67.0 for i in items)
        # Hotel rooms ventilated to GB 50736 with one or two guests: 800-1,500 ppm at 3650 m.
        co2 = [i["co2_ppm"] for i in items if "co2_ppm" in i]
        assert co2 == [] or (len(co2) == readings and all(700 < c < 1600 for c in co2))
    # The boards whose room has a CO2 sensor (about half) and only those publish co2_ppm.
    weather = Weather(config.altitude_m, seed=config.seed)
    with_sensor = {
        config.device_id(i)
        for i in range(boards)
        if default_room_source(i, config.seed, weather).room.params.co2_sensor
    }
    assert co2_seen == with_sensor and 0 < len(with_sensor) < boards


def run_across_an_outage(
    broker: Mosquitto,
    rec: Any,
    outage: Any,
    *,
    seen_before: int,
    measured_during: int,
    **config: Any,
) -> FleetSummary:
    """Run a fleet (``config``: boards, readings and more) on ``broker`` in a thread, readings
    every 50 ms, reconnecting within 0.2 s; once ``seen_before`` readings arrived, hold the
    broker in the ``outage`` (a context manager) until the boards measured ``measured_during``
    more readings; return the fleet's summary."""
    fleet = Fleet(
        FleetConfig(
            host=broker.host,
            port=broker.port,
            site=SITE,
            interval_s=0.05,
            reconnect_min_s=0.05,
            reconnect_max_s=0.2,
            timeout_s=60,
            **config,
        )
    )
    result: list[FleetSummary] = []
    runner = threading.Thread(target=lambda: result.append(asyncio.run(fleet.run())))
    runner.start()
    try:
        rec.wait_for(lambda: len(rec.readings()) >= seen_before)
        with outage:
            measured = sum(b.measured for b in fleet.boards)
            # Boards keep measuring while the broker is away (polling another thread's
            # counters: there is no event to await across the thread boundary).
            wait_until(
                lambda: sum(b.measured for b in fleet.boards) >= measured + measured_during,
                20,
                "the boards to go on measuring while the broker is away",
                error=AssertionError,
            )
    finally:
        runner.join(timeout=60)
    assert result, "fleet did not finish"
    return result[0]


@contextlib.contextmanager
def stopped(broker: Mosquitto) -> Iterator[None]:
    broker.stop()
    yield
    broker.start()


@contextlib.contextmanager
def frozen(broker: Mosquitto) -> Iterator[None]:
    broker.freeze()
    try:
        yield
    finally:
        broker.thaw()


@pytest.mark.integration
def test_fleet_stores_and_forwards_across_a_broker_restart(
    mosquitto: Mosquitto, mqtt_recorder: Any
) -> None:
    rec = mqtt_recorder("o2/+/+/telemetry")
    boards, readings = 4, 60
    summary = run_across_an_outage(
        mosquitto, rec, stopped(mosquitto), seen_before=40, measured_during=4 * boards,
        boards=boards, readings=readings, boot=3,
    )  # fmt: skip
    assert summary.complete, summary
    assert summary.readings_sent == boards * readings
    assert summary.reconnects >= boards
    assert summary.batches_sent >= 1, "the backlog must be replayed as JSON arrays"
    rec.wait_for(lambda: {(t, i["seq"]) for t, i in rec.readings()}.__len__() == boards * readings)
    assert any(p.startswith(b"[") for _, p, _ in rec.messages)


@pytest.mark.integration
def test_cli_prints_one_json_summary(mosquitto: Mosquitto) -> None:
    argv = o2chain_argv(
        "sim", "fleet", "--mqtt", mosquitto.url, "--site", SITE, "--boards", "3",
        "--interval-s", "0", "--readings", "25", "--seed", "1",
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["boards"] == 3
    assert summary["readings_sent"] == 75
    assert summary["first_device"] == "room-0001" and summary["last_device"] == "room-0003"
    assert summary["last_ts"] - summary["first_ts"] >= 24  # at least 1 ms per reading


def test_cli_rejects_a_bad_url() -> None:
    argv = o2chain_argv("sim", "fleet", "--mqtt", "http://x", "--site", "s", "--boards", "1",
                        "--interval-s", "1", "--readings", "1")  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "mqtt://HOST:PORT" in done.stderr


@pytest.mark.integration
def test_fleet_survives_a_frozen_broker(mosquitto: Mosquitto, mqtt_recorder: Any) -> None:
    """SIGSTOP: TCP stays up but nothing answers; keep-alive notices, boards buffer and replay."""
    rec = mqtt_recorder("o2/+/+/telemetry")
    boards, readings = 3, 80
    summary = run_across_an_outage(
        mosquitto, rec, frozen(mosquitto), seen_before=20, measured_during=40 * boards // 4,
        boards=boards, readings=readings, keepalive_s=1, connect_timeout_s=0.5,
    )  # fmt: skip
    assert summary.complete, summary
    assert summary.readings_sent == boards * readings
    rec.wait_for(lambda: len({(t, i["seq"]) for t, i in rec.readings()}) == boards * readings)


def test_default_rooms_are_enriched_hotel_rooms_half_with_co2() -> None:
    weather = Weather(3650.0, seed=2)
    sources = [default_room_source(i, 2, weather) for i in range(200)]
    rooms = [s.room for s in sources]
    # GB 50736: 30 m3/h for each of the two guests a hotel room is built for.
    assert all(r.params.ventilation_m3h == pytest.approx(60.0) for r in rooms)
    co2 = [r.co2_ppm for r in rooms]
    assert all(800.0 < c < 1450.0 for c in co2)  # one or two guests at 3650 m
    assert all(24.4 < r.o2_pct < 25.6 for r in rooms)
    share = sum(r.params.co2_sensor for r in rooms) / len(rooms)
    assert 0.35 < share < 0.65
    readings = [s.measure(600.0) for s in sources]
    pairs = zip(readings, rooms, strict=True)
    assert all(("co2_ppm" in x) == r.params.co2_sensor for x, r in pairs)
    assert all(23.8 < x["o2_pct"] < 26.2 for x in readings)
