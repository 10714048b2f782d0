"""The observer folds a pipeline call's readings per device (gateway/observe.py): a call with
many readings of one device must leave the status document, /metrics and /api/history exactly
as feeding the same readings one call each."""

from __future__ import annotations

import random
from typing import Any

from gateway.config import GatewayConfig, parse_config
from gateway.observe import HISTORY_POINTS, Observer
from gateway.readings import FieldValue, Reading
from gateway.sources import Sources

NOW_MS = 1_795_000_000_000


def config() -> GatewayConfig:
    return parse_config({
        "site": [{"id": "lhasa", "altitude_m": 3650}],
        "device": [
            {"id": "room-1", "site": "lhasa", "kind": "room", "transport": "mqtt"},
            {"id": "room-2", "site": "lhasa", "kind": "room", "transport": "mqtt"},
            {"id": "tank-1", "site": "lhasa", "kind": "supply", "transport": "mqtt"},
        ],
    })  # fmt: skip


def readings(n: int, seed: int) -> list[Reading]:
    """Several devices interleaved (tank-1's tagged as a poller's: counted as modbus), some
    replays, mixed layouts, ints, bools and strings, an unknown device and a derived
    measurement the observer leaves out."""
    rng = random.Random(seed)
    tags = {
        "room-1": {"site": "lhasa", "device": "room-1", "room": "room-1"},
        "room-2": {"site": "lhasa", "device": "room-2", "room": "room-2"},
        "tank-1": {"site": "lhasa", "device": "tank-1", "source": "modbus", "point": "tank-1"},
        "ghost": {"site": "lhasa", "device": "ghost", "room": "ghost"},
    }
    names = ["o2_pct", "temp_c", "eq_alt_m", "level_pct", "state", "invalid"]
    out = []
    for k in range(n):
        device = rng.choice(["room-1", "room-1", "room-1", "room-2", "tank-1", "ghost"])
        ts = NOW_MS + k * 1000 - (rng.randint(0, 60_000) if rng.random() < 0.15 else 0)
        fields: dict[str, FieldValue] = {}
        for name in rng.sample(names, rng.randint(1, len(names))):
            if name == "state":
                fields[name] = rng.random() < 0.5
            elif name == "invalid":
                fields[name] = "rh_pct:out_of_range"
            elif rng.random() < 0.2:
                fields[name] = rng.randint(0, 100)
            else:
                fields[name] = round(rng.uniform(15, 30), 2)
        measurement = "supply" if device == "tank-1" else "room"
        if rng.random() < 0.05:
            measurement = "chain"  # derived: not a device reading
        out.append(Reading(measurement, tags[device], fields, ts))
    return out


def seen(observer: Observer) -> tuple[Any, ...]:
    return observer.status(), observer.prometheus(), observer.history()


def test_a_call_of_many_readings_leaves_what_one_reading_per_call_leaves() -> None:
    batch = readings(3 * HISTORY_POINTS, seed=7)  # more than a history holds per device
    clock = [NOW_MS + 10_000_000]
    one_call = Observer(config(), Sources(), clock_ms=lambda: clock[0])
    one_by_one = Observer(config(), Sources(), clock_ms=lambda: clock[0])
    one_call(batch)
    for r in batch:
        one_by_one([r])
    clock[0] += 2500  # ages in the documents are taken at the same clock
    assert seen(one_call) == seen(one_by_one)
    status = one_call.status()
    assert status["gateway"]["readings"]["modbus"] == sum(
        1 for r in batch if r.tags["device"] == "tank-1" and r.measurement == "supply"
    )
    (site,) = status["sites"]
    room1 = next(d for d in site["devices"] if d["id"] == "room-1")
    assert room1["values"] and room1["last_seen_ms"] == NOW_MS + 10_000_000


def test_calls_of_any_size_agree() -> None:
    """The same stream cut into calls of random sizes, against one reading per call."""
    batch = readings(600, seed=11)
    rng = random.Random(3)
    clock = [NOW_MS + 10_000_000]
    chunked = Observer(config(), Sources(), clock_ms=lambda: clock[0])
    one_by_one = Observer(config(), Sources(), clock_ms=lambda: clock[0])
    i = 0
    while i < len(batch):
        step = rng.randint(1, 60)
        chunked(batch[i : i + step])
        for r in batch[i : i + step]:
            one_by_one([r])
        i += step
        clock[0] += 1000
        assert seen(chunked) == seen(one_by_one)
