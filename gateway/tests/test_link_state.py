"""Link state of a Modbus device as the offline rule sees it: unknown until a poll has had its
chance, offline only after OFFLINE_AFTER failed polls or when the last answer is too old."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from gateway.config import parse_config
from gateway.modbus import OFFLINE_AFTER, DeviceHealth
from gateway.mqtt_ingest import IngestStats
from gateway.sources import RECONNECT_GRACE_S, STATUS_SETTLE_S, Sources, link_state_from

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


def board_link(now: list[float]) -> tuple[IngestStats, Any]:
    stats = IngestStats(connected=True, connects=1)
    mqtt = SimpleNamespace(stats=stats)
    sources = Sources(mqtt=mqtt, pollers=[])
    return stats, link_state_from(sources, clock_s=lambda: now[0])


def test_last_will_counts_once_settled_while_connected() -> None:
    now = [100.0]
    stats, state = board_link(now)
    assert state("lhasa", "room-1") is None  # no status yet
    stats.device_state["lhasa/room-1"] = "online"
    assert state("lhasa", "room-1") is True
    stats.device_state["lhasa/room-1"] = "offline"  # its last will, the gateway listening
    assert state("lhasa", "room-1") is None
    now[0] += STATUS_SETTLE_S
    assert state("lhasa", "room-1") is False


def test_last_wills_of_a_broker_going_down_are_not_offline() -> None:
    """A broker that shuts down publishes every board's last will, then drops the gateway: the
    engine may look in between, and while the gateway is disconnected, but raises nothing."""
    now = [100.0]
    stats, state = board_link(now)
    stats.device_state["lhasa/room-1"] = "online"
    assert state("lhasa", "room-1") is True
    stats.device_state["lhasa/room-1"] = "offline"  # the will, an instant before the drop
    assert state("lhasa", "room-1") is None
    stats.connected = False
    now[0] += 2 * STATUS_SETTLE_S  # the broker is down for a while
    assert state("lhasa", "room-1") is None
    stats.connected, stats.connects = True, 2  # back: the reconnect grace runs
    assert state("lhasa", "room-1") is None
    now[0] += RECONNECT_GRACE_S + 1  # the board never came back
    assert state("lhasa", "room-1") is False


def test_last_wills_of_a_broker_restart_wait_for_the_boards_to_return() -> None:
    now = [100.0]
    stats, state = board_link(now)
    stats.device_state["lhasa/room-1"] = "online"
    assert state("lhasa", "room-1") is True
    # The broker restarts: the gateway reconnects and finds the board's last will.
    stats.connects, stats.device_state["lhasa/room-1"] = 2, "offline"
    assert state("lhasa", "room-1") is None
    now[0] += RECONNECT_GRACE_S - 1
    assert state("lhasa", "room-1") is None
    stats.device_state["lhasa/room-1"] = "online"  # back within the grace
    assert state("lhasa", "room-1") is True
    stats.device_state["lhasa/room-1"] = "offline"
    now[0] += 2  # grace over: a board that did not come back, or died since, is offline
    assert state("lhasa", "room-1") is None  # once its will has stood a moment
    now[0] += STATUS_SETTLE_S
    assert state("lhasa", "room-1") is False
