"""MQTT ingest (paho-mqtt 2.x, MQTT 5): persistent session, QoS 1, group commit, manual ack.

paho's network thread only queues each message (whole runs of them per socket read, through
:attr:`FastClient.on_message_batch`). A committer thread takes everything queued, decodes and
validates it, drops duplicates (:mod:`gateway.dedup`), runs the pipeline once over the batch's
readings, commits readings, dead letters and the duplicate tracker's state in **one** SQLite
transaction, and only then acknowledges those messages, in the order they arrived
(the delivery guarantee, gateway/README.md). A message the decoder or the pipeline fails on
becomes a dead letter (``pipeline_error``) on its own; the rest of its batch is committed. The
broker keeps every unacknowledged message in the gateway's session and redelivers it after a
crash; the tracker, committed with the readings, then recognises it.

The number of unacknowledged messages is bounded by MQTT 5 *Receive Maximum*
(``[mqtt] receive_maximum``). Mosquitto 2.0.11 was measured here sending far more than that
under load (82,000 queued at a Receive Maximum of 5,000), so the queue in memory has its own
bound too: past :data:`MAX_QUEUED` paho's thread waits for the committer, which stops the
socket being read, and TCP flow control holds the broker back. When the outbox is at its bound
(policy ``block``) or the disk fails, the committer retries the same commit and acknowledges
nothing meanwhile: the broker holds the rest (and may drop the connection for missed
keep-alives; the session and the unacknowledged messages survive that).

Acknowledgements carry the connection they belong to: after a reconnect a packet id means
another message, so messages of an earlier connection are committed but never acknowledged
(the broker redelivers them and the tracker drops them as duplicates).

In a group of gateways (``[mqtt] shared_group``, :mod:`gateway.ha`) the session is the group's
(client id ``o2chain-{group}``) and only the group's active member holds it: the ingest then
neither subscribes through ``$share`` nor reconnects by itself (after a lost connection another
member may hold the session, and taking it back would kick that member: the group decides,
through :attr:`MqttIngest.on_session_lost`), and :attr:`MqttIngest.hold_acks` may hold
acknowledgements back until what they acknowledge is in InfluxDB.
"""

from __future__ import annotations

import logging
import sqlite3
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.alarms import AlarmEvent
from gateway.config import GatewayConfig, MqttSection, Transport, redact_url
from gateway.dedup import IN_SEQUENCE, Check, DeviceCounters, SeqTracker, Verdict
from gateway.lineproto import LineEncoder
from gateway.links import LINK, LinkReport, link_only
from gateway.mqtt_callbacks import on_connect
from gateway.mqtt_fast import FastClient, RawPublish, supported
from gateway.outbox import NewDeadLetter, Outbox, OutboxFullError
from gateway.pipeline import Output
from gateway.ratelog import RateLimitedLog
from gateway.readings import Reading, wall_ms
from gateway.telemetry import Reject, TelemetryDecoder, decode_status, parse_topic
from o2base.procs import name_os_thread

log = logging.getLogger(__name__)

MAX_MESSAGES_PER_COMMIT = 5000
MAX_QUEUED = 4 * MAX_MESSAGES_PER_COMMIT  # messages received and not yet taken for a commit
# A commit with at least this many messages goes at once; a smaller one lingers (commit_linger_ms)
LINGER_FILL = 500
# While a commit lingers, paho's thread waits for its deadline and reads this long before it.
READ_AHEAD_S = 0.010
# Messages decoded, run through the pipeline and encoded in one pass: the stages' per-call cost
# is shared, and the run's objects stay in CPU caches and die young (measured: a 5,000-message
# pass cost 24 us per reading, passes of 100 cost 19 us).
PIPELINE_CHUNK = 100
_RETRY_FIRST_S = 0.05
_RETRY_MAX_S = 2.0
# Status messages of devices that are not configured: the newest ones kept (the live page's
# "seen but not configured"), the oldest evicted. Anybody allowed to publish could invent
# devices without end; the configured ones are always kept.
MAX_UNKNOWN_DEVICES = 1000
# Mosquitto's count of the PUBLISH messages it dropped at its queue limits
# (max_queued_messages, max_queued_bytes; mosquitto(8), "$SYS topics"), every sys_interval.
BROKER_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
_BROKER_DROPPED = BROKER_DROPPED_TOPIC.encode()
_LOGGED_TEXT_MAX = 200  # topics and details in log lines (a topic may be 64 KiB)
MAX_TOPICS_KEPT = 4096  # topics as sent -> as text (paho's thread), bounded
_new_tuple = tuple.__new__


def _short(text: str) -> str:
    return text if len(text) <= _LOGGED_TEXT_MAX else text[: _LOGGED_TEXT_MAX - 3] + "..."


@dataclass
class IngestStats:
    messages: int = 0
    readings: int = 0  # committed to the outbox
    duplicates: int = 0
    gaps: int = 0
    rejects: dict[str, int] = field(default_factory=dict)
    commits: int = 0
    commit_failures: int = 0
    acked: int = 0
    ack_failures: int = 0  # acks that raised: the broker redelivers, but it must be seen
    paused: int = 0  # times paho's thread waited for room in the queue
    unacked_stale: int = 0  # committed, but their connection was gone: the broker redelivers
    # Redelivered (DUP) messages that were new to the outbox: work a dropped connection or a
    # killed gateway had received and not committed, recovered from the broker.
    redelivered_uncommitted: int = 0
    connects: int = 0
    connected: bool = False
    # Devices that sent a status and are not configured: "site/device" -> (state, ms), newest
    # last, at most MAX_UNKNOWN_DEVICES (the oldest evicted, counted).
    unknown_devices: OrderedDict[str, tuple[str, int]] = field(default_factory=OrderedDict)
    unknown_evicted: int = 0
    # Messages the broker dropped at its queue limits, all clients (BROKER_DROPPED_TOPIC), and
    # when it said so; None while the broker has not told (no $SYS access, not yet published).
    broker_dropped: int | None = None
    broker_dropped_ms: int = 0


AlarmWriter = Callable[[Sequence[AlarmEvent]], Callable[[sqlite3.Connection], None] | None]
# How a committed batch gets acknowledged: ``hold(batch, ack)`` calls ``ack(batch)`` now or later.
AckHold = Callable[[list["_Queued"], Callable[[list["_Queued"]], None]], None]
REASON_SESSION_TAKEN_OVER = 0x8E  # MQTT 5: another connection took the session over


class _Abandoned(Exception):
    """Stopping while a commit cannot succeed: nothing committed, nothing acknowledged."""


class _Queued(NamedTuple):  # a tuple: built for every message, a dataclass costs 3x more
    connection: int
    mid: int
    qos: int
    topic: str
    payload: bytes
    dup: bool = False  # the broker sends it again: an earlier connection did not ack it


def group_client_id(config: GatewayConfig) -> str:
    """The ingest's MQTT client id, under which the broker keeps the session: the gateway's own
    (``o2chain-{gateway.id}``), or in a group the group's (``o2chain-{shared_group}``), shared by
    every member; ``[mqtt] client_id`` overrides either."""
    cfg = config.mqtt
    if cfg.client_id:
        return cfg.client_id
    if cfg.shared_group:
        return f"o2chain-{cfg.shared_group}"
    return f"o2chain-{config.gateway.id}"


def apply_connection_settings(client: mqtt.Client, cfg: MqttSection) -> None:
    """Credentials (from the password file or environment), TLS with the configured CA, and a
    bounded reconnect backoff: seconds, not minutes, so an outage ends with the broker's."""
    if cfg.username:
        password = cfg.password()
        client.username_pw_set(cfg.username, password.get_secret_value() if password else None)
    if cfg.tls:
        client.tls_set(
            ca_certs=str(cfg.ca_file) if cfg.ca_file else None, cert_reqs=ssl.CERT_REQUIRED
        )
    client.reconnect_delay_set(min_delay=1, max_delay=5)


class MqttIngest:
    """Subscribes to telemetry and status of every site; paho thread + committer thread."""

    def __init__(
        self,
        config: GatewayConfig,
        outbox: Outbox,
        on_committed: Callable[[], None] = lambda: None,
        process: Callable[[list[Reading]], list[Reading]] = lambda readings: readings,
        wall_clock_ms: Callable[[], int] = wall_ms,
        alarm_writer: AlarmWriter = lambda events: None,
        announce: Callable[[list[AlarmEvent]], None] = lambda events: None,
    ):
        """``alarm_writer(events)`` gives what stores the events' alarm state inside the commit
        that holds their points (``StateStore.writer``); ``announce(events)`` runs after it."""
        self.config = config
        self.outbox = outbox
        self.on_committed = on_committed
        self.process = process
        self.alarm_writer = alarm_writer
        self.announce = announce
        self.wall_clock_ms = wall_clock_ms
        self.stats = IngestStats()
        self._configured = {
            f"{d.site}/{d.id}" for d in config.device if d.transport is Transport.MQTT
        }
        # One WARNING per reject reason, then a summary a minute: stats.rejects stays exact.
        self.reject_log = RateLimitedLog(log, "rejected MQTT messages")
        self.decoder = TelemetryDecoder(config)
        self.encoder = LineEncoder()
        self.tracker = SeqTracker.from_rows(outbox.seq_rows())
        self.connected_event = threading.Event()
        self.subscribed_event = threading.Event()
        self._queue: list[_Queued] = []
        self._queue_cond = threading.Condition()
        self._linger_s = config.mqtt.commit_linger_ms / 1000.0
        # paho's thread reads this long before a lingering commit's deadline (_read_pause).
        self._read_ahead_s = min(READ_AHEAD_S, self._linger_s / 4)
        self._first_at: float | None = None  # monotonic arrival of the queue's first message
        self._lingering = False  # the committer waits for the commit to fill (_read_pause)
        # At most half the broker's window (Receive Maximum) a commit: the other half keeps
        # arriving while it is stored (a commit of the whole window leaves the broker nothing to
        # send until its acknowledgements go out). And well under a small outbox bound (about
        # 1 KiB per message).
        self._commit_limit = max(
            1,
            min(
                MAX_MESSAGES_PER_COMMIT,
                config.mqtt.receive_maximum // 2,
                outbox.max_bytes // 4096,
            ),
        )
        self._read_wake = threading.Event()
        self._topic_text: dict[bytes, str] = {}
        self._ack_lock = threading.Lock()
        self._connection = 0
        self._stopping = False
        self._draining = False
        self._committer: threading.Thread | None = None
        cfg = config.mqtt
        self.group = cfg.shared_group
        self.client_id = group_client_id(config)
        # Called (paho's thread) when the connection is up, with the broker's "session present".
        self.on_session: Callable[[bool], None] = lambda present: None
        # Called (paho's thread) at each connect (True) and disconnect (False), with stats.connects.
        self.on_broker: Callable[[bool, int], None] = lambda up, connection: None
        # Group mode: called once (paho's thread) when the connection is lost for any reason;
        # the ingest does not reconnect then.
        self.on_session_lost: Callable[[str], None] = lambda reason: None
        # None: acknowledge right after the commit; else the group's gate (gateway.ha.AckGate).
        self.hold_acks: AckHold | None = None
        client_class = FastClient if supported() else mqtt.Client
        client = client_class(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
            # A group member never takes the group's session back by itself: see the module doc.
            reconnect_on_failure=self.group is None,
        )
        apply_connection_settings(client, cfg)
        client.max_inflight_messages_set(1000)
        refused = f"MQTT {redact_url(self.config.mqtt.url)} refused the connection"
        client.on_connect = on_connect(log, refused, self._on_connect)
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        if isinstance(client, FastClient):
            client.on_message_batch = self._on_messages
        client.on_subscribe = self._on_subscribe
        client.on_connect_fail = self._on_connect_fail
        self.client = client
        self._connect_failures = 0
        self._ack_errors = 0
        self._sys_mid: int | None = None
        self._sys_refused = False

    @property
    def sequence(self) -> dict[str, DeviceCounters]:
        """Per device (``site/device``): duplicates, gaps, missing, late, unverified."""
        return self.tracker.counters

    def _topics(self) -> list[str]:
        prefix = self.config.mqtt.topic_prefix
        return [f"{prefix}/+/+/telemetry", f"{prefix}/+/+/status"]

    def start(self) -> None:
        """Connect in the background; works when the broker is down (keeps retrying)."""
        cfg = self.config.mqtt
        self._committer = threading.Thread(
            target=self._commit_loop, name="mqtt-commit", daemon=True
        )
        self._committer.start()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = cfg.session_expiry_s
        props.ReceiveMaximum = cfg.receive_maximum
        self.client.connect_async(
            cfg.host, cfg.port, keepalive=cfg.keepalive_s, clean_start=False, properties=props
        )
        self.client.loop_start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop taking messages, commit and acknowledge those queued, then disconnect.

        Messages arriving meanwhile are left unacknowledged: the broker keeps them.
        """
        self._draining = True
        self._read_wake.set()
        with self._queue_cond:
            self._stopping = True
            self._queue_cond.notify_all()
        if self._committer is not None:
            self._committer.join(timeout_s)
        self.client.disconnect()
        self.client.loop_stop()
        st = self.stats
        log.info(
            "MQTT ingest stopped: %d messages, %d readings committed, %d duplicates dropped, "
            "%d seq gaps, %d rejected, %d acknowledged, %d redelivered uncommitted",
            st.messages,
            st.readings,
            st.duplicates,
            st.gaps,
            sum(st.rejects.values()),
            st.acked,
            st.redelivered_uncommitted,
        )

    # -- paho's thread -------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, flags: mqtt.ConnectFlags) -> None:
        name_os_thread("mqtt-ingest")  # paho's network thread, for top -H and py-spy
        self.stats.connects += 1
        self.stats.connected = True
        self.on_broker(True, self.stats.connects)
        self._connect_failures = 0
        log.info(
            "MQTT connected to %s as %s (session present: %s)",
            redact_url(self.config.mqtt.url),
            self.client_id,
            flags.session_present,
        )
        if self.stats.connects > 1 and not flags.session_present:
            log.warning(
                "MQTT broker %s lost the gateway's session: messages it had queued are gone",
                redact_url(self.config.mqtt.url),
            )
        self.connected_event.set()
        client.subscribe([(t, 1) for t in self._topics()])
        # Apart, so that a broker refusing $SYS (an ACL) refuses only this one.
        self._sys_mid = client.subscribe(BROKER_DROPPED_TOPIC, 0)[1]
        self.on_session(bool(flags.session_present))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._connect_failures += 1
        n = self._connect_failures
        if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th ...: visible, not a flood
            log.warning(
                "MQTT cannot connect to %s (attempt %d); retrying every 1-5 s",
                redact_url(self.config.mqtt.url),
                n,
            )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if mid == self._sys_mid:
            if failed and not self._sys_refused:
                self._sys_refused = True
                log.info(
                    "MQTT broker refuses %s (%s): messages it drops at its queue limits "
                    "are not counted",
                    BROKER_DROPPED_TOPIC,
                    ", ".join(failed),
                )
            return
        if failed:
            log.error("MQTT subscription refused: %s", ", ".join(failed))
            return
        # Tests and the demo wait for this line before publishing.
        log.info("MQTT subscribed to %s", ", ".join(self._topics()))
        self.subscribed_event.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._ack_lock:
            self._connection += 1  # packet ids of the old connection mean nothing any more
        self.stats.connected = False
        self.on_broker(False, self.stats.connects)
        self.connected_event.clear()
        self.subscribed_event.clear()
        if self.group is not None:
            if self._draining:
                return  # our own stop
            taken = getattr(reason, "value", None) == REASON_SESSION_TAKEN_OVER
            why = "session taken over" if taken else str(reason)
            log.warning(
                "MQTT group session %s lost (%s): not reconnecting, the group decides",
                self.client_id,
                why,
            )
            self.on_session_lost(why)
            return
        if reason.is_failure:
            log.warning(
                "MQTT disconnected from %s: %s; reconnecting",
                redact_url(self.config.mqtt.url),
                reason,
            )

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg._topic == _BROKER_DROPPED:
            self._broker_dropped(msg.payload)
            return
        if self._draining:
            return  # not acknowledged: the broker keeps it for the next run
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = repr(msg._topic)  # MQTT says UTF-8; a broker that let it through did not
        queued = _Queued(
            self._connection, msg.mid, msg.qos, topic, bytes(msg.payload), bool(msg.dup)
        )
        self._enqueue([queued])

    def _broker_dropped(self, payload: bytes | bytearray) -> None:
        """The broker's dropped-message count ($SYS, QoS 0: no acknowledgement)."""
        try:
            count = int(payload)
        except ValueError:
            log.warning("MQTT %s: %r is not a count", BROKER_DROPPED_TOPIC, payload[:40])
            return
        stats = self.stats
        if stats.broker_dropped is not None and count > stats.broker_dropped:
            log.warning(
                "MQTT broker dropped %d more messages at its queue limits (%d since it started)",
                count - stats.broker_dropped,
                count,
            )
        stats.broker_dropped, stats.broker_dropped_ms = count, self.wall_clock_ms()

    def _on_messages(self, batch: list[RawPublish]) -> None:
        """:meth:`_on_message` for a run of QoS 1 messages cut out of one socket read."""
        if self._draining:
            return  # not acknowledged: the broker keeps them for the next run
        connection = self._connection
        queued: list[_Queued] = []
        append = queued.append
        topics = self._topic_text
        for mid, raw_topic, payload, dup in batch:
            topic = topics.get(raw_topic)
            if topic is None:  # a board's topic is the same every time: decoded once
                try:
                    topic = raw_topic.decode()
                except UnicodeDecodeError:
                    topic = repr(raw_topic)  # as _on_message does
                if len(topics) >= MAX_TOPICS_KEPT:
                    topics.clear()
                topics[raw_topic] = topic
            # tuple.__new__: the NamedTuple's own __new__ is a Python call per message
            append(_new_tuple(_Queued, (connection, mid, 1, topic, payload, dup)))
        self._enqueue(queued)

    def _enqueue(self, queued: list[_Queued]) -> None:
        """Hand messages to the committer (paho's thread). The committer is woken only when it
        has something to do: the first message of a commit, a commit full enough to go at
        once. Below that, while the commit lingers, paho's thread waits for the commit's
        deadline too (:meth:`_read_pause`) rather than reading message by message."""
        cond = self._queue_cond
        with cond:
            # The bound is checked per run: the queue may pass it by one socket read's worth.
            if len(self._queue) >= MAX_QUEUED:
                self.stats.paused += 1
                cond.wait_for(lambda: len(self._queue) < MAX_QUEUED or self._stopping, timeout=1.0)
            if not self._queue:
                self._first_at = time.monotonic()
                self._queue += queued
                cond.notify_all()
            else:
                self._queue += queued
                if len(self._queue) >= LINGER_FILL:
                    cond.notify_all()
            # Only while the committer waits for this commit to fill: while it is busy with the
            # previous one, what arrives must be read (and queued) for the next.
            lingering = self._lingering and len(self._queue) < LINGER_FILL
            deadline = (self._first_at or 0.0) + self._linger_s
        if lingering:
            self._read_pause(deadline)

    def _read_pause(self, deadline: float) -> None:
        """Light load: while the committer waits for a commit to fill, paho's thread sleeps
        until just before the commit's deadline,
        so what arrives meanwhile waits in the socket and is read (and queued) in one go; one
        wake-up of each thread per commit instead of one per message. Woken early by
        :meth:`stop` and by acknowledgements to send (they wait for this thread)."""
        wait_s = deadline - self._read_ahead_s - time.monotonic()
        if wait_s > 0 and not self._draining:
            self._read_wake.wait(wait_s)
            self._read_wake.clear()

    # -- committer thread ----------------------------------------------------------------------

    def _commit_loop(self) -> None:
        name_os_thread("mqtt-commit")
        linger_s = self._linger_s
        while True:
            with self._queue_cond:
                while not self._queue and not self._stopping:
                    # Idle with reject lines held back: their summary is written on time.
                    due_s = self.reject_log.due_in_s()
                    if due_s is None or due_s > 0:
                        self._queue_cond.wait(due_s)
                    self.reject_log.flush()
                if not self._queue:
                    self.reject_log.flush(force=True)
                    return
                if linger_s > 0 and len(self._queue) < LINGER_FILL:
                    # Light load: the commit fills until LINGER_FILL messages or until its
                    # first message has waited linger_s, whichever comes first: one fsync and
                    # one InfluxDB write for many readings. The linger adapts to the arrival
                    # rate (LINGER_FILL / rate, bounded by linger_s); under load it is full at
                    # once.
                    if self._first_at is None:
                        self._first_at = time.monotonic()
                    deadline = self._first_at + linger_s
                    self._lingering = True
                    while len(self._queue) < LINGER_FILL and not self._stopping:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._queue_cond.wait(remaining)
                    self._lingering = False
                limit = self._commit_limit
                batch = self._queue[:limit]
                del self._queue[:limit]
                # What is left (a full queue) starts the next commit's linger now.
                self._first_at = time.monotonic() if self._queue else None
                self._queue_cond.notify_all()  # paho's thread may wait for room
            try:
                self._commit_batch(batch)
            except _Abandoned:
                log.warning(
                    "stopping: %d messages not stored, left to the broker",
                    len(batch) + len(self._queue),
                )
                return
            except Exception:  # a bug must not stop ingest; the messages stay unacknowledged
                log.exception("MQTT batch of %d messages not stored", len(batch))

    def _commit_batch(self, batch: list[_Queued]) -> None:
        out = Output()
        dead: list[NewDeadLetter] = []
        now_ms = self.wall_clock_ms()
        self.stats.messages += len(batch)
        for start in range(0, len(batch), PIPELINE_CHUNK):
            self._process_chunk(batch[start : start + PIPELINE_CHUNK], now_ms, out, dead)
        self._commit_until_done(out, dead)
        self.reject_log.flush()
        self.stats.readings += len(out.lines)
        self.stats.commits += 1
        if self.hold_acks is None:
            self._ack(batch)
        else:
            self.hold_acks(batch, self._ack)
        if out.lines or out.keep_lines:
            self.on_committed()

    def _process_chunk(
        self, chunk: list[_Queued], now_ms: int, out: Output, dead: list[NewDeadLetter]
    ) -> None:
        """Decode, drop duplicates, run the pipeline and encode a run of messages, adding
        to ``out`` and ``dead``. The readings of the whole run go through the pipeline in one
        call (its stages then pay their lock, clock and bookkeeping once, not per message);
        ``sources`` remembers which message each reading came from, so a failing pipeline can
        still be narrowed down to the message that made it fail."""
        encode = self.encoder.encode
        decode = self.decoder.decode_message
        fresh_all: list[Reading] = []
        sources: list[tuple[_Queued, int, int]] = []  # message, its first reading, count
        for queued in chunk:
            if queued.topic.endswith("/status"):
                # Health goes through the pipeline like readings: the alarm engine judges a
                # board's clock skew on it, the observer shows it.
                health = self._status(queued, now_ms)
                if health is not None:
                    sources.append((queued, len(fresh_all), 1))
                    fresh_all.append(health)
                continue
            try:
                decoded = decode(queued.topic, queued.payload, now_ms)
            except Reject as rej:
                self._reject(dead, queued, rej.reason, rej.detail)
                self.reject_log.log(
                    rej.reason,
                    "rejected MQTT message on %s: %s",
                    _short(queued.topic),
                    _short(str(rej)),
                )
                continue
            except Exception as exc:  # a decoder bug: that message is kept, the rest go on
                log.exception("decoding failed on a message on %s", queued.topic)
                self._reject(dead, queued, "pipeline_error", repr(exc))
                continue
            # Items of an array that cannot be readings: each its own dead letter (the item's
            # JSON, its index in the detail); the array's good items are stored.
            for item in decoded.rejects:
                self._reject(dead, queued._replace(payload=item.payload), item.reason, item.detail)
                self.reject_log.log(
                    item.reason,
                    "rejected item %d of an MQTT message on %s: %s: %s",
                    item.index,
                    _short(queued.topic),
                    item.reason,
                    _short(item.detail),
                )
            fresh = self._drop_duplicates(decoded.readings, decoded.device)
            if fresh and queued.dup:
                # Sent to an earlier connection (or instance) that never committed it.
                self.stats.redelivered_uncommitted += 1
            if fresh:
                sources.append((queued, len(fresh_all), len(fresh)))
                fresh_all += fresh
        if not sources:
            return
        try:
            processed = self.process(fresh_all)
        except Exception:
            log.exception("pipeline failed on a run of %d messages", len(sources))
            processed = self._process_one_by_one(fresh_all, sources, dead)
        out.add(processed, encode)

    def _reject(self, dead: list[NewDeadLetter], queued: _Queued, reason: str, detail: str) -> None:
        stats = self.stats
        stats.rejects[reason] = stats.rejects.get(reason, 0) + 1
        dead.append(NewDeadLetter("mqtt", queued.topic, reason, detail, queued.payload))

    def _process_one_by_one(
        self,
        fresh_all: list[Reading],
        sources: list[tuple[_Queued, int, int]],
        dead: list[NewDeadLetter],
    ) -> list[Reading]:
        """After a failed batch: each message's readings on their own, so only the messages
        the pipeline fails on become dead letters (``pipeline_error``), as before batching.
        Stages may see some readings twice then; they tolerate replays (same timestamps)."""
        processed: list[Reading] = []
        for queued, first, count in sources:
            try:
                processed += self.process(fresh_all[first : first + count])
            except Exception as exc:
                log.exception("pipeline failed on a message on %s", queued.topic)
                self._reject(dead, queued, "pipeline_error", repr(exc))
        return processed

    def _status(self, queued: _Queued, now_ms: int) -> Reading | None:
        """A configured board's status: its health fields as a ``device_health`` point that
        carries its link state to the pipeline (gateway/links.py)."""
        try:
            state, health = decode_status(self.config, queued.topic, queued.payload, now_ms)
        except Reject:
            return None
        t = parse_topic(self.config.mqtt.topic_prefix, queued.topic)
        key = f"{t.site}/{t.device}"
        if key in self._configured:
            link = LinkReport(state == "online", connection=self.stats.connects)
            if health is None:  # not JSON (another firmware's will): the link state alone
                return link_only(t.site, t.device, link, now_ms)
            health.meta[LINK] = link
            return health
        unknown = self.stats.unknown_devices
        key = _short(key)
        unknown.pop(key, None)
        unknown[key] = (state, now_ms)
        while len(unknown) > MAX_UNKNOWN_DEVICES:
            unknown.popitem(last=False)
            self.stats.unknown_evicted += 1
        return health

    def _drop_duplicates(self, readings: list[Reading], device: str) -> list[Reading]:
        """The readings of one message (all of ``device``, ``site/device``) not seen before."""
        check_seq = self.tracker.check
        if len(readings) == 1:  # the usual message
            meta = readings[0].meta
            boot = meta.get("boot", 0)
            check = check_seq(device, boot, meta.get("seq", 0))
            if check is IN_SEQUENCE or self._fresh(check, device, boot):
                return readings
            return []
        fresh = []
        for r in readings:
            meta = r.meta
            boot = meta.get("boot", 0)
            check = check_seq(device, boot, meta.get("seq", 0))
            if check is IN_SEQUENCE or self._fresh(check, device, boot):
                fresh.append(r)
        return fresh

    def _fresh(self, check: Check, device: str, boot: int) -> bool:
        """Whether a reading the tracker did not find next in sequence is kept: duplicates are
        dropped (counted), a gap it opens is counted and logged."""
        if check.verdict is Verdict.DUPLICATE:
            self.stats.duplicates += 1
            return False
        if check.gap:
            self.stats.gaps += 1
            log.warning(
                "seq gap: %s boot %d: %d reading(s) missing (seq %d..%d)",
                device,
                boot,
                check.gap,
                check.gap_from,
                check.gap_to,
            )
        return True

    def _commit_until_done(self, out: Output, dead: list[NewDeadLetter]) -> None:
        """Commit, retrying (without acknowledging anything) while the outbox is full or the
        disk fails; raises only when stopping (nothing committed, nothing acknowledged).

        Alarm events do not wait for room: at a full outbox they are committed on their own
        (with their state) and announced at once; the readings follow when there is room."""
        seq_rows = self.tracker.take_dirty()
        keep_lines, events = out.keep_lines, out.events
        delay = _RETRY_FIRST_S
        reported = False
        while True:
            try:
                self.outbox.commit(
                    out.lines,
                    dead,
                    seq_rows,
                    keep_lines=keep_lines,
                    also=self.alarm_writer(events) if events else None,
                )
                if reported:
                    log.info("outbox accepts again")
                if events:
                    self.announce(events)
                return
            except OutboxFullError as exc:
                if not reported:
                    log.warning("%s: not acknowledging; the broker holds messages", exc)
                    reported = True
                if keep_lines:
                    also = self.alarm_writer(events) if events else None
                    self.outbox.commit([], keep_lines=keep_lines, also=also)
                    if events:
                        self.announce(events)
                    keep_lines, events = [], []
                self.outbox.wait_for_room(1.0)
            except Exception as exc:
                self.stats.commit_failures += 1
                if not reported:
                    log.error("outbox commit failed (%s); retrying, not acknowledging", exc)
                    reported = True
                with self._queue_cond:
                    self._queue_cond.wait_for(lambda: self._stopping, timeout=delay)
                delay = min(delay * 2, _RETRY_MAX_S)
            if self._stopping:
                raise _Abandoned()

    def _ack(self, batch: list[_Queued]) -> None:
        with self._ack_lock:
            current = self._connection
            mids = []
            for queued in batch:
                if queued.qos == 0:
                    continue
                if queued.connection != current:
                    self.stats.unacked_stale += 1
                    continue
                mids.append(queued.mid)  # QoS 1: the only QoS subscribed
            # A failed ack loses nothing (the broker redelivers what was not acknowledged and
            # the tracker drops it), but acks that keep failing stall the session at Receive
            # Maximum: it must be seen, not swallowed.
            try:
                if isinstance(self.client, FastClient):
                    self.client.ack_many(mids)
                else:
                    for mid in mids:
                        rc = self.client.ack(mid, 1)
                        if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                            raise RuntimeError(f"paho ack() returned {rc}")
            except Exception:
                self._ack_errors += 1
                self.stats.ack_failures += len(mids)
                n = self._ack_errors
                if n == 1:  # the first time: the whole story
                    log.exception("MQTT acknowledgements failed; the broker will redeliver")
                elif n & (n - 1) == 0:  # then the 2nd, 4th, 8th ...: visible, not a flood
                    log.error("MQTT acknowledgements failed (%d so far)", self.stats.ack_failures)
                return
            self.stats.acked += len(mids)
            if mids:
                self._read_wake.set()  # paho's thread sends them; it may wait in _read_pause
