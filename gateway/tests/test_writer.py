"""Outbox + drainer with an in-memory InfluxDB twin: order, retry, bisecting rejects."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.influx import InfluxRejected, InfluxUnavailable
from gateway.outbox import Outbox
from gateway.writer import OutboxDrainer


class TwinInflux:
    """Accepts lines; fails while ``down``; rejects any batch holding a line with ``poison``."""

    def __init__(self) -> None:
        self.accepted: list[str] = []
        self.down = 0  # number of next calls that fail as unavailable
        self.calls = 0

    def write(self, lines: list[str]) -> None:
        self.calls += 1
        if self.down:
            self.down -= 1
            raise InfluxUnavailable("connection refused")
        if any("poison" in line for line in lines):
            raise InfluxRejected(400, "field type conflict")
        self.accepted.extend(lines)


async def drain(outbox: Outbox, twin: TwinInflux, batch_size: int = 4) -> OutboxDrainer:
    drainer = OutboxDrainer(outbox, twin, batch_size, flush_interval_s=0.01, max_backoff_s=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(drainer.run(stop))
    for _ in range(2000):
        if outbox.depth() == 0:
            break
        await asyncio.sleep(0.005)
    stop.set()
    await task
    return drainer


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox.sqlite")


def test_delivers_in_order_and_empties_the_outbox(outbox: Outbox) -> None:
    lines = [f"room,device=r v={i} {i}" for i in range(10)]
    outbox.add(lines)
    twin = TwinInflux()
    drainer = asyncio.run(drain(outbox, twin))
    assert twin.accepted == lines
    assert outbox.depth() == 0 and drainer.stats.written == 10 and drainer.stats.batches == 3


def test_points_wait_while_influx_is_down(outbox: Outbox) -> None:
    outbox.add(["m v=1 1", "m v=2 2"])
    twin = TwinInflux()
    twin.down = 3
    drainer = asyncio.run(drain(outbox, twin))
    assert twin.accepted == ["m v=1 1", "m v=2 2"]
    assert drainer.stats.failures == 3


def test_rejected_points_go_to_dead_letters_without_blocking_the_rest(outbox: Outbox) -> None:
    lines = [f"m v={i} {i}" for i in range(7)]
    lines[4] = "m poison=1 4"
    outbox.add(lines)
    twin = TwinInflux()
    drainer = asyncio.run(drain(outbox, twin, batch_size=8))
    assert twin.accepted == [line for line in lines if "poison" not in line]
    (letter,) = outbox.dead_letters()
    assert letter.source == "influx" and letter.reason == "http_400"
    assert letter.payload == b"m poison=1 4" and "field type conflict" in letter.detail
    assert drainer.stats.rejected == 1 and outbox.depth() == 0


def test_outbox_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    first = Outbox(path)
    first.add(["a v=1 1", "b v=2 2"])
    first.close()  # what SIGKILL leaves behind is a committed WAL: reopening must see it
    second = Outbox(path)
    assert [line for _, line in second.peek(10)] == ["a v=1 1", "b v=2 2"]
