"""A group of gateways that survives the loss of any member: one active, the others standby.

Gateways with the same ``[mqtt] shared_group`` form a group (docs/scaling.md has the design,
the alternatives and what happens when each part dies). In short:

- **One session for the group.** The broker keeps one persistent session, client id
  ``o2chain-{group}`` (:func:`gateway.mqtt_ingest.group_client_id`), and exactly one member,
  the *active*, holds it and runs the whole gateway (ingest, pipeline and alarms, Modbus,
  notifications). Every reading of every device reaches that one member, so alarm delays,
  rates, offline detection and the duplicate window see all of a device's readings.
- **Nothing stranded.** A member that dies leaves its messages in the group's session: queued
  ones, and those it received but had not acknowledged, which the broker sends again (DUP) to
  the member that takes the session over. A member acknowledges a message only once InfluxDB
  holds what came of it (:class:`AckGate`), so its own disk never holds the only copy.
- **Presence and election.** Each member keeps a retained presence message on
  ``{prefix}/_group/{group}/member/{id}`` (state ``standby``/``claim``/``active``, a term number
  ``epoch``, republished every heartbeat) with a retained last will ``offline``. When no live
  member is active or claiming, the first live standby in id order *claims* (publishes
  ``claim``) and waits for its own claim to come back through the broker. The broker passes
  every member the records in one order, so the claim it passed on first is the same for
  everybody: a member backs off if another member's claim reached it before its own came back,
  and otherwise connects with the group's client id and ``clean_start`` off: the broker hands
  it the session with everything queued and unacked. (Ranking simultaneous claims by id
  instead let two members win: the one ranked first may not have claimed yet when the other's
  claim comes back, seen under load.)
- **No fighting.** Mosquitto 2.0.11 closes the old connection of a taken-over session without
  a DISCONNECT (no reason 0x8E; measured), so a member cannot tell "kicked" from "network": the
  active's ingest never reconnects by itself; any loss of its session ends its term, it goes
  back to standby and takes part in the next election like everybody else.
- **Alarms once.** The group's alarms are retained on ``{prefix}/{site}/gateway/{group}/alarm/
  {device}/{rule}``. A member taking over reads them (all retained messages arrive before a
  marker it publishes after subscribing; measured) and starts its alarm engine from them, so a
  condition that was already raised is not raised again; their points are written again
  (same series and time: the same point, as seen by a query).

Liveness: the will marks a member that drops off at once (a SIGKILL closes its socket); the
heartbeat (a third of ``[mqtt] keepalive_s``) covers a broker restart, after which a retained
``active`` of a member that died meanwhile would otherwise stand forever: a member not heard
for three heartbeats is not live.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.alarms import PERSISTED, AlarmEvent
from gateway.config import GatewayConfig, redact_url
from gateway.lineproto import LineEncoder
from gateway.mqtt_callbacks import on_connect
from gateway.mqtt_ingest import apply_connection_settings, group_client_id
from gateway.outbox import Outbox
from gateway.state_store import StateStore

log = logging.getLogger(__name__)

RESTORE_TIMEOUT_S = 30.0
# After a term ends, this long before the member may claim again: the member that took the
# session over (if any) has time to say so, and a broker that refuses us is not hammered.
TERM_BACKOFF_S = 1.0


class Role(StrEnum):
    STANDBY = "standby"
    CLAIM = "claim"  # about to take the group's session over
    ACTIVE = "active"
    OFFLINE = "offline"  # the last will


LIVE_ROLES = frozenset({Role.STANDBY, Role.CLAIM, Role.ACTIVE})


def member_topic(config: GatewayConfig, member: str) -> str:
    return f"{config.mqtt.topic_prefix}/_group/{config.mqtt.shared_group}/member/{member}"


def sync_topic(config: GatewayConfig, member: str) -> str:
    """A member's private topic for markers: what it publishes there comes back to it after
    everything the broker had queued for it before (retained messages included)."""
    return f"{config.mqtt.topic_prefix}/_group/{config.mqtt.shared_group}/sync/{member}"


def alarm_filter(config: GatewayConfig) -> str:
    return f"{config.mqtt.topic_prefix}/+/gateway/{config.mqtt.shared_group}/alarm/+/+"


@dataclass
class Member:
    """What one member last said about itself, and when we heard it (our monotonic clock)."""

    role: Role
    epoch: int
    heard_s: float


class GroupMember:
    """This gateway's presence in its group and its part in the election. Thread-safe: paho's
    thread feeds it, the runner waits on it (:meth:`await_turn`)."""

    def __init__(self, config: GatewayConfig, clock: Callable[[], float] = time.monotonic):
        if not config.mqtt.shared_group:
            raise ValueError("a group member needs [mqtt] shared_group")
        self.config = config
        self.group = config.mqtt.shared_group
        self.me = config.gateway.id
        self.clock = clock
        self.heartbeat_s = max(1.0, config.mqtt.keepalive_s / 3)
        self.dead_after_s = 3 * self.heartbeat_s
        self.role = Role.STANDBY
        self.epoch = 0  # the term this member holds or claims; standbys: the highest seen
        self.members: dict[str, Member] = {}
        self._cond = threading.Condition()
        self._synced = False
        self._token = ""
        self._claim_echoed = False
        # Members whose claim (or active record) reached us after we claimed and before our
        # own claim came back: the broker passed theirs on first, so they go first.
        self._ahead: set[str] = set()
        self._claimed_at = 0.0
        self._next_beat = 0.0
        self._hold_until = 0.0
        self._stopping = False
        self.terms = 0
        self.topic = member_topic(config, self.me)
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"o2chain-{self.me}-ha",
            protocol=mqtt.MQTTv5,
        )
        apply_connection_settings(client, config.mqtt)
        client.will_set(self.topic, self._payload(Role.OFFLINE), qos=1, retain=True)
        client.on_connect = on_connect(
            log, f"HA {self.group}: MQTT refused the member's connection", self._on_connect
        )
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.client = client

    # -- presence --------------------------------------------------------------------------

    def _payload(self, role: Role) -> bytes:
        doc = {"v": 1, "member": self.me, "state": role.value, "epoch": self.epoch}
        if role is not Role.OFFLINE:
            doc["ts"] = int(time.time() * 1000)
        return json.dumps(doc, separators=(",", ":")).encode()

    def _announce(self) -> None:
        """Publish our role (retained); the caller holds the condition's lock."""
        self.client.publish(self.topic, self._payload(self.role), qos=1, retain=True)
        self._next_beat = self.clock() + self.heartbeat_s

    def start(self) -> None:
        cfg = self.config.mqtt
        self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        """Leave the group: our presence record is deleted (a member that is gone for good
        leaves nothing behind), then disconnect (a clean disconnect sends no will)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        info = self.client.publish(self.topic, b"", qos=1, retain=True)
        with contextlib.suppress(Exception):
            if self.client.is_connected():
                info.wait_for_publish(timeout=2.0)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, flags: mqtt.ConnectFlags) -> None:
        log.info("HA %s: %s connected to %s", self.group, self.me, redact_url(self.config.mqtt.url))
        client.subscribe(
            [
                (member_topic(self.config, "+"), 1),
                (sync_topic(self.config, self.me), 1),
            ]
        )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.error("HA %s: subscription refused: %s", self.group, reason_codes)
            return
        self.resync()

    def resync(self) -> None:
        """Send a marker: once it is back, every retained presence record has arrived, and
        every message published before we sent it."""
        with self._cond:
            self._synced = False
            self._token = secrets.token_hex(8)
            token = self._token
        self.client.publish(sync_topic(self.config, self.me), token.encode(), qos=1)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._synced = False
            self._cond.notify_all()
        if not self._stopping:
            log.warning("HA %s: member connection lost (%s); reconnecting", self.group, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if topic == sync_topic(self.config, self.me):
            with self._cond:
                if msg.payload.decode(errors="replace") == self._token and not self._synced:
                    self._synced = True
                    self._announce()  # a fresh record: we are live
                    log.info("HA %s: %s in sync: %s", self.group, self.me, self.describe())
                self._cond.notify_all()
            return
        member = topic.rsplit("/", 1)[-1]
        now = self.clock()
        with self._cond:
            if not msg.payload:
                self.members.pop(member, None)  # left the group cleanly
                self._cond.notify_all()
                return
            try:
                doc = json.loads(msg.payload)
                role = Role(doc["state"])
                epoch = int(doc.get("epoch", 0))
            except (ValueError, KeyError, TypeError):
                log.warning("HA %s: unreadable presence on %s", self.group, topic)
                return
            if member == self.me:
                if msg.retain:
                    return  # our own record from an earlier run
                if role is Role.CLAIM and epoch == self.epoch and self.role is Role.CLAIM:
                    self._claim_echoed = True
            else:
                # A record handed over at subscription gets the benefit of the doubt for
                # dead_after_s from now; its owner republishes within a heartbeat if alive.
                self.members[member] = Member(role, epoch, now)
                if (
                    self.role is Role.CLAIM
                    and not self._claim_echoed
                    and role in (Role.CLAIM, Role.ACTIVE)
                ):
                    self._ahead.add(member)
                if role is Role.ACTIVE and epoch > self.epoch and self.role is not Role.ACTIVE:
                    self.epoch = epoch
            self._cond.notify_all()

    # -- election --------------------------------------------------------------------------

    def _live(self, now: float) -> dict[str, Member]:
        return {
            name: m
            for name, m in self.members.items()
            if m.role in LIVE_ROLES and now - m.heard_s < self.dead_after_s
        }

    def describe(self) -> str:
        now = self.clock()
        live = self._live(now)
        parts = [f"{self.me}={self.role.value}"] + [
            f"{name}={m.role.value}" for name, m in sorted(live.items())
        ]
        return ", ".join(parts)

    def _decide(self, now: float) -> bool:
        """One step of the election (lock held); True when this member may take over now."""
        if now >= self._next_beat and self.client.is_connected():
            self._announce()
        if not self._synced or self._stopping:
            return False
        live = self._live(now)
        busy = {n: m for n, m in live.items() if m.role in (Role.CLAIM, Role.ACTIVE)}
        if self.role is Role.STANDBY:
            if busy or now < self._hold_until:
                return False
            standbys = sorted([self.me, *(n for n, m in live.items() if m.role is Role.STANDBY)])
            if standbys[0] != self.me:
                return False
            seen = [m.epoch for m in self.members.values()]
            self.epoch = max([self.epoch, *seen]) + 1
            self.role = Role.CLAIM
            self._claim_echoed = False
            self._ahead = set()
            self._claimed_at = now
            self._announce()
            log.info(
                "HA %s: %s claims the group's session (term %d)", self.group, self.me, self.epoch
            )
            return False
        if self.role is Role.CLAIM:
            # Only a claim the broker passed on before ours counts: one that comes after ours
            # came back was sent later, and its member sees ours first and backs off.
            rivals = [n for n, m in busy.items() if m.role is Role.ACTIVE or n in self._ahead]
            if rivals:
                log.info("HA %s: %s backs off for %s", self.group, self.me, ", ".join(rivals))
                self._to_standby(now)
                return False
            if self._claim_echoed:
                return True
            if now - self._claimed_at > self.dead_after_s:
                self._to_standby(now)  # our claim never came back: the broker is away
            return False
        return False

    def _to_standby(self, now: float, hold_s: float = TERM_BACKOFF_S) -> None:
        self.role = Role.STANDBY
        self._hold_until = now + hold_s
        if self.client.is_connected():
            self._announce()

    def await_turn(self, stop: threading.Event) -> bool:
        """Block until this member may take the group's session over (True) or ``stop``."""
        while not stop.is_set():
            with self._cond:
                if self._decide(self.clock()):
                    return True
                self._cond.wait(timeout=min(0.5, self.heartbeat_s))
        return False

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def became_active(self) -> None:
        """The group's session is ours (the broker accepted our connect)."""
        with self._cond:
            if self.role is Role.CLAIM:
                self.role = Role.ACTIVE
                self.terms += 1
                self._announce()
                log.info(
                    "HA %s: %s is active (term %d): %s",
                    self.group,
                    self.me,
                    self.epoch,
                    self.describe(),
                )

    def end_term(self, why: str) -> None:
        """Back to standby after a term (session lost, or stopping) and look again."""
        with self._cond:
            was = self.role
            self._to_standby(self.clock())
            self._cond.notify_all()
        if was is not Role.STANDBY:
            log.info("HA %s: %s is standby again (%s)", self.group, self.me, why)
        if not self._stopping:
            self.resync()

    def heartbeat_loop(self, stop: threading.Event) -> None:
        """Keeps the record fresh while a term runs (await_turn does it between terms)."""
        while not stop.is_set():
            with self._cond:
                if self.clock() >= self._next_beat and self.client.is_connected():
                    self._announce()
            stop.wait(min(0.5, self.heartbeat_s))


class AckGate:
    """Holds the acknowledgement of each committed MQTT batch until the outbox rows that came
    of it have left for InfluxDB: then the broker, not this member's disk, holds every message
    InfluxDB does not have yet, and a member that dies for good loses nothing.

    A batch is tied to the outbox's row-id high-water mark at its commit (``sqlite_sequence``:
    rows committed by other sources meanwhile only make the wait a little longer); the drainer
    reports the last row id it removed (:attr:`gateway.writer.OutboxDrainer.on_drained`).
    """

    def __init__(self, outbox: Outbox):
        self.outbox = outbox
        self._lock = threading.Lock()
        self._held: deque[tuple[int, list[Any], Callable[[list[Any]], None]]] = deque()
        with outbox.lock:
            (oldest,) = outbox.db.execute("SELECT MIN(id) FROM outbox").fetchone()
        self._drained = self._high_water() if oldest is None else int(oldest) - 1
        self.released = 0
        self.held_max = 0

    def _high_water(self) -> int:
        with self.outbox.lock:
            row = self.outbox.db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"
            ).fetchone()
        return 0 if row is None else int(row[0])

    def hold(self, batch: list[Any], ack: Callable[[list[Any]], None]) -> None:
        """After ``batch`` committed: ``ack(batch)`` once its rows are in InfluxDB."""
        high = self._high_water()
        with self._lock:
            if high > self._drained or self._held:
                self._held.append((high, batch, ack))
                self.held_max = max(self.held_max, len(self._held))
                return
        ack(batch)
        self.released += len(batch)

    def drained(self, last_id: int) -> None:
        """Every outbox row up to ``last_id`` is in InfluxDB (or dead-lettered)."""
        due = []
        with self._lock:
            self._drained = max(self._drained, last_id)
            while self._held and self._held[0][0] <= self._drained:
                due.append(self._held.popleft())
        for _, batch, ack in due:
            ack(batch)
            self.released += len(batch)

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(len(b) for _, b, _ in self._held)


# -- alarms: restored from the group's retained messages ------------------------------------


@dataclass(frozen=True)
class RestoredAlarms:
    """The group's active alarms as retained on the broker (``topic -> payload``)."""

    retained: dict[str, bytes]

    def states(self) -> dict[str, dict[str, Any]]:
        """``site/device/rule -> persisted state`` for the alarm engine's store."""
        out = {}
        for payload in self.retained.values():
            doc = json.loads(payload)
            state = {k: doc[k] for k in PERSISTED if k in doc}
            if state.get("active"):
                out[f"{doc['site']}/{doc['device']}/{doc['rule']}"] = state
        return out

    def points(self) -> list[str]:
        """The line-protocol points of the events retained: the same series and time as the
        point the member that raised them committed, so writing them again changes nothing
        a query sees, and brings back one that member could not write before it died."""
        encoder = LineEncoder()
        lines: list[str] = []
        for payload in self.retained.values():
            doc = json.loads(payload)
            if not isinstance(doc.get("ts"), int) or not doc.get("event"):
                continue  # a republished state without its event's time
            alarm = {k: v for k, v in doc.items() if k not in ("v", "event", "ts", "by")}
            event = AlarmEvent(doc["ts"], doc["event"], alarm, doc.get("by"), alarm.get("key", ""))
            reading = event.to_reading()
            reading.meta.pop("alarm_event", None)
            encoded = encoder.encode(reading)
            if encoded:
                lines.append(encoded)
        return lines


def read_group_alarms(
    config: GatewayConfig, timeout_s: float = RESTORE_TIMEOUT_S
) -> RestoredAlarms:
    """Every retained alarm of the group, read through a short-lived client: subscribe, then a
    marker on our private topic; the marker arrives after the last retained message."""
    me = config.gateway.id
    token = secrets.token_hex(8).encode()
    done = threading.Event()
    failed: list[str] = []
    retained: dict[str, bytes] = {}
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"o2chain-{me}-restore", protocol=mqtt.MQTTv5
    )
    apply_connection_settings(client, config.mqtt)
    marker = sync_topic(config, me) + "/restore"

    def on_connect(c: mqtt.Client, u: Any, f: Any, reason: ReasonCode, p: Any) -> None:
        if reason.is_failure:
            failed.append(str(reason))
            done.set()
            return
        c.subscribe([(alarm_filter(config), 1), (marker, 1)])

    def on_subscribe(c: mqtt.Client, u: Any, mid: int, codes: list[ReasonCode], p: Any) -> None:
        if any(rc.is_failure for rc in codes):
            failed.append(f"subscription refused: {codes}")
            done.set()
            return
        c.publish(marker, token, qos=1)

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == marker:
            if msg.payload == token:
                done.set()
        elif msg.retain and msg.payload:
            retained[msg.topic] = bytes(msg.payload)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    cfg = config.mqtt
    client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            raise TimeoutError(f"the group's retained alarms did not arrive in {timeout_s:g} s")
        if failed:
            raise ConnectionError(f"reading the group's alarms: {failed[0]}")
    finally:
        client.disconnect()
        client.loop_stop()
    return RestoredAlarms(retained)


def install_alarm_states(config: GatewayConfig, restored: RestoredAlarms) -> int:
    """Make the group's retained alarms this member's alarm state (the engine starts from
    it): what the member had from an earlier term of its own is replaced."""
    from gateway.app import prepare_state_dir

    store = StateStore(prepare_state_dir(config.gateway.state_dir))
    try:
        states = restored.states()
        for key in store.load_states():
            if key not in states:
                store.save_state(key, None)
        for key, state in states.items():
            store.save_state(key, state)
        return len(states)
    finally:
        store.close()


# -- the member's life: standby, terms --------------------------------------------------------


class _StandbyDrain:
    """While standby, what an earlier term left in this member's outbox still goes out
    (Modbus readings, alarm and chain points: nobody else has them). MQTT readings in it were
    never acknowledged, so the active member writes them too: the same points."""

    def __init__(self, config: GatewayConfig):
        from gateway.app import influx_drain, prepare_state_dir

        self.outbox = Outbox(prepare_state_dir(config.gateway.state_dir))
        self.writer, self.drainer = influx_drain(config, self.outbox)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.outbox.depth():
            log.info("standby: %d points of an earlier term go to InfluxDB", self.outbox.depth())
        self.task = asyncio.create_task(self.drainer.run(self.stop), name="standby-writer")

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        self.writer.close()
        self.outbox.close()


async def _run_term(config: GatewayConfig, member: GroupMember, stop: asyncio.Event) -> str:
    """One term as the group's active member; returns why it ended."""
    from gateway.app import Gateway

    restored = await asyncio.to_thread(read_group_alarms, config)
    installed = await asyncio.to_thread(install_alarm_states, config, restored)
    gateway = Gateway(config)
    gate = AckGate(gateway.outbox)
    term_stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    ended: list[str] = []

    def session(present: bool) -> None:
        member.became_active()
        if not present:
            log.warning(
                "HA %s: the broker had no session for the group: a first start, or it was lost",
                member.group,
            )

    def lost(why: str) -> None:
        gateway.alarm_mqtt.mute()  # the member holding the session now speaks for the alarms
        ended.append(f"session lost: {why}")
        with contextlib.suppress(RuntimeError):  # the loop is closing: stopping anyway
            loop.call_soon_threadsafe(term_stop.set)

    gateway.mqtt.on_session = session
    gateway.mqtt.on_session_lost = lost
    gateway.mqtt.hold_acks = gate.hold
    gateway.drainer.on_drained.append(gate.drained)
    gateway.alarm_mqtt.adopt(restored.retained)
    points = restored.points()
    if points:
        gateway.outbox.commit([], keep_lines=points)
    log.info(
        "HA %s: %s takes over: %d active alarms restored from the group's retained messages",
        member.group,
        member.me,
        installed,
    )

    async def follow_stop() -> None:
        await stop.wait()
        ended.append("stopping")
        term_stop.set()

    follower = asyncio.create_task(follow_stop())
    beat_stop = threading.Event()
    beat = threading.Thread(target=member.heartbeat_loop, args=(beat_stop,), daemon=True)
    beat.start()
    try:
        await gateway.run(term_stop)
    finally:
        beat_stop.set()
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    log.info(
        "HA %s: term ended: %d messages acknowledged after InfluxDB had them, %d waiting",
        member.group,
        gate.released,
        gate.waiting,
    )
    return ended[0] if ended else "stopped"


async def run_member(config: GatewayConfig, stop: asyncio.Event) -> int:
    """The gateway service in a group: standby until elected, then active until the group's
    session is lost or ``stop``; again and again."""
    member = GroupMember(config)
    member.start()
    log.info(
        "HA %s: %s joins as standby (group session %s, heartbeat %.1f s)",
        member.group,
        member.me,
        group_client_id(config),
        member.heartbeat_s,
    )
    stop_flag = threading.Event()

    async def relay_stop() -> None:
        await stop.wait()
        stop_flag.set()
        member.wake()

    relay = asyncio.create_task(relay_stop())
    standby: _StandbyDrain | None = None
    try:
        while not stop.is_set():
            standby = _StandbyDrain(config)
            standby.start()
            turn = await asyncio.to_thread(member.await_turn, stop_flag)
            await standby.close()
            standby = None
            if not turn:
                break
            try:
                why = await _run_term(config, member, stop)
            except Exception as exc:  # a term that cannot start: back to standby, try again
                log.exception("HA %s: term failed", member.group)
                why = f"failed: {exc}"
            member.end_term(why)
    finally:
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay
        if standby is not None:
            await standby.close()
        member.stop()
        log.info("HA %s: %s left the group", member.group, member.me)
    return 0
