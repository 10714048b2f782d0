"""A paho-mqtt client that reads its socket in large chunks and acknowledges in batches.

Measured here (bench/bench_gateway.py), stock paho 2.x tops out near 12,000-15,000 QoS 1
messages/s on one core: it reads each packet with three ``recv`` calls or more (command byte,
each length byte, body) and writes each 4-byte PUBACK with its own ``send`` and its own wake-up
byte. This subclass changes only those two things:

- ``_sock_recv`` serves paho's small reads from a 64 KiB buffer filled by one ``recv``, and
  ``loop_read`` keeps parsing while that buffer holds data (otherwise ``select`` would wait on a
  socket whose bytes are already in user space);
- :meth:`ack_many` queues the PUBACKs of many messages as one write, in the order given
  (MQTT 5 section 4.6: acknowledgements in the order the messages arrived);
- ``_handle_publish`` decodes a QoS 1 PUBLISH without properties (what boards send) directly;
  paho builds and clears a full ``Properties`` object for every message (~25 % of its time).
  Anything else - properties present, QoS 0/2, a malformed packet - goes to paho's own code;
- with :attr:`FastClient.on_message_batch` set, the PUBLISH packets of that kind lying complete
  in the buffer are cut out of it in one loop and handed over together as
  ``(packet id, topic bytes, payload, DUP flag)``: paho's per-packet path (a state dict, three
  reads, an ``MQTTMessage`` with its own ``Condition``, a topic-filter match, two lock rounds) cost
  the ingest about 20 us per message, more than half of what the rest of the gateway spends.
  A packet of any other kind, or one cut by the end of the buffer, still goes through paho,
  after the batch before it was handed over, so messages keep their order.

All of this touches paho internals, listed in :data:`PAHO_INTERNALS`; :func:`supported` checks
every one of them on a real client instance at start, and the ingest falls back to the stock
client and ``ack()`` when any is missing (or when ``O2CHAIN_STOCK_PAHO=1`` asks for it).
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from o2core.mqtt_codec import MQTTError, read_varint

log = logging.getLogger(__name__)

_PUBACK = struct.Struct("!BBH")  # MQTT 5 section 3.4: PUBACK, remaining length 2, packet id
_PUBACK_TYPE = 0x40
_READ_CHUNK = 65536
_PUBLISH_QOS1_MASK, _PUBLISH_QOS1 = 0xF6, 0x32  # type PUBLISH, QoS 1; DUP and RETAIN either way

# (packet id, topic as sent, payload, DUP flag) of one QoS 1 PUBLISH
RawPublish = tuple[int, bytes, bytes, bool]


# Every paho name the fast client reads, calls or overrides that is not public API.
PAHO_INTERNALS = (
    "_sock", "_sock_recv", "_packet_queue", "_in_packet", "_protocol", "_manual_ack",
    "_msgtime_mutex", "_in_callback_mutex", "_last_bytes_received", "_handle_publish",
    "_handle_on_message",
)  # fmt: skip


def missing_internals() -> list[str]:
    """The names of :data:`PAHO_INTERNALS` this paho lacks (checked on an instance: some are
    set in ``__init__``)."""
    probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    return [name for name in PAHO_INTERNALS if not hasattr(probe, name)]


def supported() -> bool:
    """True if this paho has every internal the fast client relies on, and the stock client
    was not asked for (``O2CHAIN_STOCK_PAHO=1``)."""
    if os.environ.get("O2CHAIN_STOCK_PAHO") == "1":
        return False
    missing = missing_internals()
    if missing:
        log.warning("this paho-mqtt lacks %s: using the stock client", ", ".join(missing))
    return not missing


class FastClient(mqtt.Client):
    """``mqtt.Client`` with buffered reads and :meth:`ack_many`; otherwise identical."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._rsock: Any = None
        # Set by the ingest: receives runs of simple QoS 1 PUBLISH packets (see the module doc).
        self.on_message_batch: Callable[[list[RawPublish]], None] | None = None
        # The paho internals the batch path reads; without them every packet goes through paho.
        self._batch_internals = isinstance(getattr(self, "_in_packet", None), dict) and all(
            hasattr(self, name)
            for name in ("_protocol", "_manual_ack", "_msgtime_mutex", "_in_callback_mutex")
        )

    def _sock_recv(self, bufsize: int) -> bytes:
        sock = self._sock
        if sock is not self._rsock:  # a new connection: bytes of the old one mean nothing
            self._rbuf, self._rpos, self._rsock = b"", 0, sock
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(_READ_CHUNK)  # raises BlockingIOError when empty
            if not data:
                return data  # connection closed
            self._rbuf, self._rpos = data, 0
        chunk = self._rbuf[self._rpos : self._rpos + bufsize]
        self._rpos += len(chunk)
        return chunk

    def _fill(self) -> bool:
        """Read what the socket holds into the (empty) buffer; False at the end of the stream
        (nothing kept: paho's next read sees it too)."""
        sock = self._sock
        if sock is not self._rsock:
            self._rbuf, self._rpos, self._rsock = b"", 0, sock
        data = super()._sock_recv(_READ_CHUNK)  # raises BlockingIOError when empty
        if not data:
            return False
        self._rbuf, self._rpos = data, 0
        return True

    def _buffered(self) -> bool:
        return self._sock is not None and self._sock is self._rsock and self._rpos < len(self._rbuf)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        if self._batch_ready() and not self._buffered() and self._sock is not None:
            # The socket's bytes into the buffer, and the PUBLISH packets at its head cut out
            # at once: paho's per-packet path would take the first one. An error or the end
            # of the stream is left to paho, which reads the socket again and handles it.
            try:
                filled = self._fill()
            except BlockingIOError:
                return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS  # nothing to read after all
            except OSError:
                filled = False
            if filled:
                self._read_publishes()
                if not self._buffered():
                    return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        rc = super().loop_read(max_packets)
        while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._buffered():
            if self._batch_ready():
                self._read_publishes()
                if not self._buffered():
                    break
            rc = super().loop_read(max_packets)  # one packet the fast path does not take
        return rc

    def _batch_ready(self) -> bool:
        return (
            self.on_message_batch is not None
            and self._batch_internals
            and self._protocol == mqtt.MQTTv5
            and self._manual_ack
            and self._in_packet["command"] == 0  # paho is not in the middle of a packet
        )

    def _read_publishes(self) -> None:
        """Cut the complete QoS 1 PUBLISH packets without properties off the buffer's head
        and hand them to :attr:`on_message_batch` at once; stop at anything else."""
        buf, pos, end = self._rbuf, self._rpos, len(self._rbuf)
        batch: list[RawPublish] = []
        while pos < end and (buf[pos] & _PUBLISH_QOS1_MASK) == _PUBLISH_QOS1:
            try:  # the remaining length (MQTT 5 section 1.5.5, the same as 3.1.1's)
                length, i = read_varint(buf, pos + 1)
            except MQTTError:
                break  # cut by the buffer's end, or malformed: paho's code decides
            stop = i + length
            if stop > end or length < 5:
                break
            # Section 3.3.2: topic (length-prefixed), packet id, property length (0: none).
            topic_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
            if topic_end + 3 > stop or buf[topic_end + 2] != 0:
                break
            mid = (buf[topic_end] << 8) | buf[topic_end + 1]
            dup = bool(buf[pos] & 0x08)  # section 3.3.1.1: a redelivery
            batch.append((mid, buf[i + 2 : topic_end], buf[topic_end + 3 : stop], dup))
            pos = stop
        self._rpos = pos
        if batch and self.on_message_batch is not None:
            with self._msgtime_mutex:  # what paho does per packet (keep-alive bookkeeping)
                self._last_bytes_received = mqtt.time_func()
            with self._in_callback_mutex:  # as paho calls on_message
                self.on_message_batch(batch)

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        header = self._in_packet["command"]
        if self._protocol != mqtt.MQTTv5 or (header & 0x06) != 0x02 or not self._manual_ack:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        try:
            # MQTT 5 section 3.3.2: topic (length-prefixed), packet id, property length, ...
            end_topic = 2 + ((packet[0] << 8) | packet[1])
            mid = (packet[end_topic] << 8) | packet[end_topic + 1]
            if packet[end_topic + 2] != 0:
                return super()._handle_publish()  # properties: let paho decode them
        except IndexError:
            return super()._handle_publish()  # malformed: paho raises the right error
        message = mqtt.MQTTMessage(mid=mid, topic=bytes(packet[2:end_topic]))
        message.dup = bool(header & 0x08)
        message.qos = 1
        message.retain = bool(header & 0x01)
        message.payload = bytes(packet[end_topic + 3 :])
        message.timestamp = time.monotonic()
        self._handle_on_message(message)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: list[int]) -> None:
        """Acknowledge QoS 1 messages ``mids`` (in this order) with one queued write."""
        if mids:
            packet = b"".join([_PUBACK.pack(_PUBACK_TYPE, 2, mid) for mid in mids])
            self._packet_queue(_PUBACK_TYPE, packet, 0, 1)
