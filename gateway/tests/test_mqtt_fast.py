"""The fast MQTT client against stock paho on the same bytes: every message, same order, same
packet id, topic and payload, whatever way the stream is cut into socket reads."""

from __future__ import annotations

import random
import struct
from typing import TypeVar

import paho.mqtt.client as mqtt
import pytest

from gateway.mqtt_fast import FastClient
from o2core.mqtt_codec import varint_size, write_varint

Message = tuple[int, int, str, bytes, bool]  # qos, packet id, topic, payload, DUP


def varint(n: int) -> bytes:
    """MQTT variable byte integer (section 1.5.5), with the boards' encoder."""
    buf = bytearray(varint_size(n))
    write_varint(buf, 0, n)
    return bytes(buf)


def publish(
    topic: str, payload: bytes, mid: int = 0, qos: int = 1, retain: bool = False, dup: bool = False,
    properties: bytes = b"",
) -> bytes:  # fmt: skip
    """An MQTT 5 PUBLISH packet (section 3.3)."""
    raw_topic = topic.encode()
    body = struct.pack("!H", len(raw_topic)) + raw_topic
    if qos:
        body += struct.pack("!H", mid)
    body += varint(len(properties)) + properties + payload
    header = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    return bytes([header]) + varint(len(body)) + body


class FakeSocket:
    """Hands out ``reads`` one by one (each at most ``bufsize``), then would block."""

    def __init__(self, reads: list[bytes]):
        self.reads = list(reads)

    def close(self) -> None:
        self.reads = []

    def recv(self, bufsize: int) -> bytes:
        if not self.reads:
            raise BlockingIOError()
        head = self.reads[0]
        self.reads[0] = head[bufsize:]
        if not self.reads[0]:
            self.reads.pop(0)
        return head[:bufsize]


def receive(client: mqtt.Client, reads: list[bytes]) -> list[Message]:
    got: list[Message] = []
    client.on_message = lambda c, u, m: got.append(
        (m.qos, m.mid, m.topic, bytes(m.payload), bool(m.dup))
    )
    if isinstance(client, FastClient):
        client.on_message_batch = lambda batch: got.extend(
            (1, mid, topic.decode(), payload, dup) for mid, topic, payload, dup in batch
        )
    sock = FakeSocket(reads)
    client._sock = sock  # type: ignore[assignment]
    for _ in range(10 * len(reads) + 10_000):
        if not sock.reads:
            break
        assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert not sock.reads
    return got


C = TypeVar("C", bound=mqtt.Client)


def client(cls: type[C]) -> C:
    return cls(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)


def stream(seed: int, count: int = 600) -> bytes:
    """Board telemetry with the odd packets among it: properties, QoS 0, retained, DUP,
    a payload long enough for a 3-byte remaining length, an empty payload."""
    rng = random.Random(seed)
    packets = []
    for n in range(1, count):
        topic = f"o2/site-{n % 3}/room-{n % 7:03d}/telemetry"
        payload = b'{"v":1,"boot":1,"seq":%d,"o2_pct":%.1f}' % (n, rng.uniform(20, 26))
        kind = rng.random()
        if kind < 0.03:
            expiry = bytes([0x02]) + struct.pack("!I", 60)  # message expiry interval
            packets.append(publish(topic, payload, mid=n, properties=expiry))
        elif kind < 0.06:
            packets.append(publish(topic, payload, qos=0))
        elif kind < 0.08:
            packets.append(publish(topic, b"x" * rng.choice([200, 20_000]), mid=n))
        elif kind < 0.10:
            packets.append(publish(topic, b"", mid=n, retain=True, dup=True))
        elif kind < 0.14:  # redelivered after a reconnect: the ingest counts these
            packets.append(publish(topic, payload, mid=n, dup=True))
        else:
            packets.append(publish(topic, payload, mid=n))
    return b"".join(packets)


def cuts(data: bytes, seed: int, largest: int) -> list[bytes]:
    rng = random.Random(seed)
    reads, pos = [], 0
    while pos < len(data):
        size = rng.randint(1, largest)
        reads.append(data[pos : pos + size])
        pos += size
    return reads


@pytest.mark.parametrize(
    ("seed", "count", "largest"), [(1, 120, 1), (2, 300, 7), (3, 600, 300), (4, 600, 70_000)]
)
def test_fast_client_delivers_what_paho_delivers(seed: int, count: int, largest: int) -> None:
    reads = cuts(stream(seed, count), seed, largest)
    expected = receive(client(mqtt.Client), reads)
    assert len(expected) == count - 1
    assert receive(client(FastClient), reads) == expected


def test_runs_of_simple_publishes_arrive_as_one_batch() -> None:
    data = b"".join(publish("o2/s/d/telemetry", b"{}", mid=n) for n in range(1, 101))
    fast = client(FastClient)
    batches: list[int] = []
    fast.on_message = lambda c, u, m: batches.append(1)
    fast.on_message_batch = lambda batch: batches.append(len(batch))
    fast._sock = FakeSocket([data])  # type: ignore[assignment]
    fast.loop_read()
    # One read, one run: paho's per-packet path takes none of them (not even the first).
    assert batches == [100]


def test_without_a_batch_callback_every_message_goes_through_on_message() -> None:
    reads = cuts(stream(7), 7, 4000)
    expected = receive(client(mqtt.Client), reads)
    fast = client(FastClient)
    got: list[Message] = []
    fast.on_message = lambda c, u, m: got.append(
        (m.qos, m.mid, m.topic, bytes(m.payload), bool(m.dup))
    )
    sock = FakeSocket(reads)
    fast._sock = sock  # type: ignore[assignment]
    while sock.reads:
        fast.loop_read()
    assert got == expected
