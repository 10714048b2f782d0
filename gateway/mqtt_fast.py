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
  Anything else - properties present, QoS 0/2, a malformed packet - goes to paho's own code.

Both touch paho internals (``_sock``, ``_sock_recv``, ``_packet_queue``), so :func:`supported`
checks they exist and the ingest falls back to the stock client and ``ack()`` when they do not.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import paho.mqtt.client as mqtt

_PUBACK = struct.Struct("!BBH")  # MQTT 5 section 3.4: PUBACK, remaining length 2, packet id
_PUBACK_TYPE = 0x40
_READ_CHUNK = 65536


def supported() -> bool:
    """True if this paho has the internals the fast client relies on."""
    return all(hasattr(mqtt.Client, name) for name in ("_sock_recv", "_packet_queue", "loop_read"))


class FastClient(mqtt.Client):
    """``mqtt.Client`` with buffered reads and :meth:`ack_many`; otherwise identical."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._rsock: Any = None

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

    def _buffered(self) -> bool:
        return self._sock is not None and self._sock is self._rsock and self._rpos < len(self._rbuf)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._buffered():
            rc = super().loop_read(max_packets)
        return rc

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
