"""Link state of a Modbus device as the offline rule sees it: unknown until a poll has had its
chance, offline only after OFFLINE_AFTER failed polls or when the last answer is too old."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.config import parse_config
from gateway.modbus import OFFLINE_AFTER, DeviceHealth
from gateway.sources import Sources, link_state_from

CONFIG = {
    "gateway": {"id": "gw-t"},
    "site": [{"id": "lhasa", "altitude_m": 3650}],
    "device": [
        {"id": "conc-1", "site": "lhasa", "kind": "concentrator", "transport": "modbus",
         "url": "tcp://127.0.0.1:1502", "profile": "medical-concentrator", "interval_s": 5},
    ],
}  # fmt: skip


@dataclass
class Poller:
    device: Any
    health: DeviceHealth = field(default_factory=DeviceHealth)


def link(now: list[float]) -> tuple[Poller, Any]:
    config = parse_config(CONFIG)
    poller = Poller(config.device[0])
    sources = Sources(pollers=[poller])
    return poller, link_state_from(sources, clock_s=lambda: now[0])


def test_first_poll_under_way_is_unknown_not_offline() -> None:
    now = [100.0]
    poller, state = link(now)
    assert state("lhasa", "conc-1") is None  # never polled
    poller.health.polls = 1  # the first poll started, no answer yet (the gateway's first tick)
    assert state("lhasa", "conc-1") is None
    poller.health.online, poller.health.last_ok_monotonic = True, 100.0
    assert state("lhasa", "conc-1") is True


def test_never_answering_device_is_offline_after_the_failed_polls() -> None:
    now = [100.0]
    poller, state = link(now)
    for n in range(1, OFFLINE_AFTER + 1):
        poller.health.polls = poller.health.consecutive_failures = n
        expected = None if n < OFFLINE_AFTER else False
        assert state("lhasa", "conc-1") is expected, n


def test_answered_once_then_silent_goes_offline_after_two_intervals() -> None:
    now = [100.0]
    poller, state = link(now)
    poller.health.polls, poller.health.last_ok_monotonic = 3, 100.0
    poller.health.consecutive_failures = OFFLINE_AFTER
    now[0] = 100.0 + 2 * 5 - 1
    assert state("lhasa", "conc-1") is True  # one lost poll is not offline
    now[0] = 100.0 + 2 * 5 + 1
    assert state("lhasa", "conc-1") is False
