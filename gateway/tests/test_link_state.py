"""Link state flows through the pipeline: the Modbus poller's and the MQTT status path's
``device_health`` readings carry a LinkReport to the LinkTracker stage, which the alarm engine
and the observer read. A Modbus device is unknown until a poll has had its chance, offline only
after OFFLINE_AFTER failed polls or when the last answer is too old; a board's last will counts
once it has stood STATUS_SETTLE_S with the gateway connected, after a reconnect only once the
boards had RECONNECT_GRACE_S to come back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.config import parse_config
from gateway.links import (
    LINK,
    RECONNECT_GRACE_S,
    STATUS_SETTLE_S,
    Link,
    LinkReport,
    LinkTracker,
    broker_event,
)
from gateway.modbus import OFFLINE_AFTER, DevicePoller
from gateway.mqtt_ingest import MqttIngest, _Queued
from gateway.outbox import NewDeadLetter, Outbox
from gateway.pipeline import Output, Pipeline
from gateway.readings import Reading
from o2base.registers import load_profile

CONFIG = {
    "gateway": {"id": "gw-t"},
    "site": [{"id": "lhasa", "altitude_m": 3650}],
    "device": [
        {"id": "conc-1", "site": "lhasa", "kind": "concentrator", "transport": "modbus",
         "url": "tcp://127.0.0.1:1502", "profile": "medical-concentrator", "interval_s": 5},
        {"id": "room-1", "site": "lhasa", "kind": "room", "transport": "mqtt"},
    ],
}  # fmt: skip


class Clock:
    """One clock for the sources and the tracker: monotonic seconds and wall ms."""

    def __init__(self) -> None:
        self.s = 1_790_000_000.0

    def __call__(self) -> float:
        return self.s

    def ms(self) -> int:
        return int(self.s * 1000)


class Silent:
    """A Modbus client that never connects: every poll fails (io)."""

    connected = False

    async def connect(self) -> bool:
        return False

    def close(self) -> None:
        pass


def modbus(clock: Clock) -> tuple[DevicePoller, LinkTracker, list[Reading]]:
    """A real poller whose readings go through a pipeline with the tracker (what it passed on,
    the outbox would get)."""
    config = parse_config(CONFIG)
    tracker = LinkTracker(config, clock.ms)
    passed: list[Reading] = []
    pipeline = Pipeline([tracker])
    device = config.device[0]
    poller = DevicePoller(
        device,
        load_profile(device.profile or ""),
        lambda d: Silent(),  # type: ignore[arg-type,return-value]
        lambda r: passed.extend(pipeline.process([r])),
        wall_clock_ms=clock.ms,
        clock=clock,
    )
    return poller, tracker, passed


def test_first_poll_under_way_is_unknown_not_offline() -> None:
    clock = Clock()
    poller, tracker, passed = modbus(clock)
    assert tracker.state("lhasa", "conc-1") is None  # never polled
    asyncio.run(poller.poll_and_emit())  # the first poll failed
    assert poller.health.consecutive_failures == 1 < OFFLINE_AFTER
    assert [r.measurement for r in passed] == ["device_health"]  # stored as before
    assert passed[0].fields["online"] is False
    assert tracker.state("lhasa", "conc-1") is None  # the gateway's first tick: no alarm
    poller.health.online, poller.health.last_ok_monotonic = True, clock()  # it answers
    tracker(list(filter(None, [poller.health_reading()])))  # a change: reported at once
    assert tracker.state("lhasa", "conc-1") is True


def test_never_answering_device_is_offline_after_the_failed_polls() -> None:
    clock = Clock()
    poller, tracker, passed = modbus(clock)
    for n in range(1, OFFLINE_AFTER + 1):
        asyncio.run(poller.poll_and_emit())
        clock.s += 5
        expected = None if n < OFFLINE_AFTER else False
        assert tracker.state("lhasa", "conc-1") is expected, n
    # One point per change of the link, not one per poll.
    assert len(passed) == OFFLINE_AFTER
    assert all(isinstance(r.meta[LINK], LinkReport) for r in passed)


def test_answered_once_then_silent_goes_offline_after_two_intervals() -> None:
    clock = Clock()
    poller, tracker, _ = modbus(clock)
    start = clock()
    poller.health.polls, poller.health.last_ok_monotonic = 3, start
    poller.health.consecutive_failures = OFFLINE_AFTER
    point = poller.health_reading()
    assert point is not None and point.fields["online"] is False
    tracker([point])
    clock.s = start + 2 * 5 - 1
    assert tracker.state("lhasa", "conc-1") is True  # one lost poll is not offline
    clock.s = start + 2 * 5 + 1
    assert tracker.state("lhasa", "conc-1") is False  # no new report needed: time did it


@dataclass
class Board:
    """The real MQTT status path and the ingest's connect/disconnect callbacks, wired as the
    gateway wires them, into a pipeline whose first stage is the tracker."""

    ingest: MqttIngest
    tracker: LinkTracker
    pipeline: Pipeline
    clock: Clock
    out: Output = field(default_factory=Output)

    def connect(self) -> None:
        self.ingest._on_connect(self.ingest.client, mqtt.ConnectFlags(session_present=True))

    def drop(self) -> None:
        reason = ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")
        flags = mqtt.DisconnectFlags(is_disconnect_packet_from_server=False)
        self.ingest._on_disconnect(self.ingest.client, None, flags, reason, None)

    def status(self, payload: bytes) -> None:
        dead: list[NewDeadLetter] = []
        message = _Queued(self.ingest.stats.connects, 1, 1, "o2/lhasa/room-1/status", payload)
        self.ingest._process_chunk([message], self.clock.ms(), self.out, dead)
        assert dead == []

    def tick(self) -> None:
        """The gateway's tick: a pass that takes what the callbacks posted."""
        assert self.pipeline.process([]) == []

    def link(self) -> bool | None:
        return self.tracker.state("lhasa", "room-1")


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Board]:
    config = parse_config(CONFIG)
    clock = Clock()
    tracker = LinkTracker(config, clock.ms)
    pipeline = Pipeline([tracker])
    outbox = Outbox(tmp_path / "o.sqlite")
    ingest = MqttIngest(config, outbox, process=pipeline.process)
    ingest.on_broker = lambda up, n: pipeline.post(broker_event(up, n, clock.ms()))
    b = Board(ingest, tracker, pipeline, clock)
    b.connect()
    yield b
    outbox.close()


ONLINE, WILL = b'{"state":"online","fw":"1.4.0","boot":3}', b'{"state":"offline"}'


def test_last_will_counts_once_settled_while_connected(board: Board) -> None:
    assert board.link() is None  # no status yet
    board.status(ONLINE)
    assert board.link() is True
    board.status(WILL)  # its last will, the gateway listening
    assert board.link() is None
    board.clock.s += STATUS_SETTLE_S
    assert board.link() is False
    assert [line.split(",", 1)[0] for line in board.out.lines] == ["device_health"] * 2
    # A will that is not JSON (other firmware): the link state still flows, nothing stored.
    board.status(ONLINE)
    board.status(b"\xff gone")
    board.clock.s += STATUS_SETTLE_S
    assert board.link() is False
    assert len(board.out.lines) == 3


def test_last_wills_of_a_broker_going_down_are_not_offline(board: Board) -> None:
    """A broker that shuts down publishes every board's last will, then drops the gateway: the
    engine may look in between, and while the gateway is disconnected, but raises nothing."""
    board.status(ONLINE)
    assert board.link() is True
    board.status(WILL)  # the will, an instant before the drop
    assert board.link() is None
    board.drop()
    board.tick()  # the next pass: before the engine judges again, the tracker knows
    board.clock.s += 2 * STATUS_SETTLE_S  # the broker is down for a while
    assert board.link() is None
    board.connect()  # back: the reconnect grace runs
    board.tick()
    assert board.link() is None
    board.clock.s += RECONNECT_GRACE_S + 1  # the board never came back
    assert board.link() is False


def test_wills_received_before_the_drop_but_passed_after_it_wait_too(board: Board) -> None:
    """The drop is posted by paho's thread while the wills still wait in the commit queue: the
    pass that takes them takes the drop first."""
    board.status(ONLINE)
    board.drop()
    board.status(WILL)  # of the lost connection, in the same pass as the posted drop
    board.clock.s += 2 * STATUS_SETTLE_S
    assert board.link() is None


def test_last_wills_of_a_broker_restart_wait_for_the_boards_to_return(board: Board) -> None:
    board.status(ONLINE)
    assert board.link() is True
    # The broker restarts: the gateway reconnects and finds the board's last will.
    board.drop()
    board.connect()
    board.status(WILL)
    assert board.link() is None
    board.clock.s += RECONNECT_GRACE_S - 1
    assert board.link() is None
    board.status(ONLINE)  # back within the grace
    assert board.link() is True
    board.status(WILL)
    board.clock.s += 1.5  # grace over: a board that did not come back, or died since, ...
    assert board.link() is None  # ... is offline once its will has stood a moment
    board.clock.s += STATUS_SETTLE_S
    assert board.link() is False


def test_only_configured_devices_are_tracked(tmp_path: Path) -> None:
    config = parse_config(CONFIG)
    tracker = LinkTracker(config, Clock().ms)
    for n in range(1000):
        tracker.report("nowhere", f"dev-{n}", LinkReport(True))
    assert tracker.state("nowhere", "dev-1") is None
    assert len(tracker._links) == len(config.device)  # bounded by the config


def test_link_names_what_the_status_api_and_metrics_show() -> None:
    for online, name, gauge in ((True, "online", 1), (False, "offline", 0), (None, "unknown", -1)):
        link = Link.of(online)
        assert link == name and link.online is online and link.gauge == gauge
