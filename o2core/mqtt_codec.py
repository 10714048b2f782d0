"""MQTT 3.1.1 packet encoding and decoding (pure: bytes in, bytes out).

OASIS MQTT 3.1.1, chapters 2 (fixed header, remaining length) and 3 (control packets). The
board firmware's MQTT client (firmware/lib/o2/mqtt.py) is built on it; the gateway reads the
remaining length of MQTT 5 packets with :func:`read_varint` (MQTT 5 section 1.5.5 is the same
encoding) and the broker probe of ``o2base.services`` sends :func:`connect`'s packet.
Every encoder returns one complete packet in one buffer so that the transport can send it with
a single write call (measured: several small writes cost ~44 ms per QoS 1 round trip
through Nagle + delayed ACK). Decoders take the packet body (after the fixed header).
"""


def const(value: int) -> int:
    # MicroPython's compiler folds ``_NAME = const(value)`` into the bytecode itself, whatever
    # ``const`` is bound to (no global, no qstr on the board); CPython calls this identity.
    return value


_CONNECT = const(0x10)
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
_SUBSCRIBE = const(0x82)  # bits 3..0 of _SUBSCRIBE are reserved as 0010 (spec 3.8.1)

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"

_MAX_REMAINING = const(268435455)  # four varint bytes (spec 2.2.3)
_PROTOCOL_LEVEL = const(4)  # 3.1.1

# CONNACK return codes (spec table 3.1)
CONNACK_MESSAGES = (
    "accepted",
    "unacceptable protocol version",
    "identifier rejected",
    "server unavailable",
    "bad user name or password",
    "not authorized",
)


class MQTTError(Exception):
    """A malformed packet, or a broker refusal (CONNACK code != 0)."""


class Incomplete(MQTTError):
    """The buffer ends inside a packet: read more bytes and try again."""


def varint_size(n: int) -> int:
    """Bytes needed to encode remaining length ``n``."""
    if n < 128:
        return 1
    if n < 16384:
        return 2
    if n < 2097152:
        return 3
    return 4


def write_varint(buf: bytearray, pos: int, n: int) -> int:
    """Encode remaining length ``n`` into ``buf`` at ``pos``; returns the next position.

    Raises MQTTError for ``n`` outside 0..268435455 (what four bytes can carry).
    """
    if n < 0 or n > _MAX_REMAINING:
        raise MQTTError("remaining length %d out of range" % n)
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            buf[pos] = b | 0x80
            pos += 1
        else:
            buf[pos] = b
            return pos + 1


def read_varint(buf: bytes | bytearray, pos: int = 0) -> tuple[int, int]:
    """``(value, next_pos)`` of the remaining length that starts at ``buf[pos]``.

    Seven bits a byte, least significant first, the top bit set on every byte but the last.
    Raises Incomplete when ``buf`` ends first, MQTTError when it runs over four bytes.
    """
    end = len(buf)
    value = shift = 0
    while pos < end:  # the gateway reads every message's length here: kept lean
        b = buf[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise MQTTError("remaining length longer than 4 bytes")
    raise Incomplete("remaining length")


def _put_str(buf: bytearray, pos: int, s: bytes) -> int:
    # UTF-8 string / binary data with a two-byte big-endian length prefix (spec 1.5.3).
    n = len(s)
    buf[pos] = n >> 8
    buf[pos + 1] = n & 0xFF
    buf[pos + 2 : pos + 2 + n] = s
    return pos + 2 + n


def _get_str(body: bytes | bytearray, pos: int) -> tuple[bytes, int]:
    if pos + 2 > len(body):
        raise MQTTError("truncated string length")
    n = (body[pos] << 8) | body[pos + 1]
    end = pos + 2 + n
    if end > len(body):
        raise MQTTError("truncated string")
    return bytes(body[pos + 2 : end]), end


def _b(s: str | bytes) -> bytes:
    # Topics, ids and passwords may come as str (config) or bytes.
    if isinstance(s, str):
        return s.encode()
    return s


def _packet(first: int, body_len: int) -> tuple[bytearray, int]:
    # Allocate the whole packet once and write the fixed header; returns (buf, body_pos).
    buf = bytearray(1 + varint_size(body_len) + body_len)
    buf[0] = first
    return buf, write_varint(buf, 1, body_len)


def connect(
    client_id: str | bytes,
    keepalive_s: int = 60,
    clean_session: bool = True,
    will_topic: str | bytes | None = None,
    will_payload: str | bytes = b"",
    will_qos: int = 0,
    will_retain: bool = False,
    username: str | bytes | None = None,
    password: str | bytes | None = None,
) -> bytearray:
    """CONNECT packet (spec 3.1). A password requires a user name (spec 3.1.2.9)."""
    client_id = _b(client_id)
    flags = 0x02 if clean_session else 0
    n = 10 + 2 + len(client_id)
    if will_topic is not None:
        will_topic = _b(will_topic)
        will_payload = _b(will_payload)
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
        n += 2 + len(will_topic) + 2 + len(will_payload)
    if username is not None:
        username = _b(username)
        flags |= 0x80
        n += 2 + len(username)
        if password is not None:
            password = _b(password)
            flags |= 0x40
            n += 2 + len(password)
    elif password is not None:
        raise MQTTError("password without user name")
    buf, pos = _packet(_CONNECT, n)
    pos = _put_str(buf, pos, b"MQTT")
    buf[pos] = _PROTOCOL_LEVEL
    buf[pos + 1] = flags
    buf[pos + 2] = keepalive_s >> 8
    buf[pos + 3] = keepalive_s & 0xFF
    pos = _put_str(buf, pos + 4, client_id)
    if will_topic is not None:
        pos = _put_str(buf, pos, will_topic)
        pos = _put_str(buf, pos, _b(will_payload))
    if username is not None:
        pos = _put_str(buf, pos, username)
        if password is not None:
            pos = _put_str(buf, pos, password)
    return buf


def parse_connack(body: bytes | bytearray) -> tuple[bool, int]:
    """``(session_present, return_code)`` from a CONNACK body."""
    if len(body) != 2:
        raise MQTTError("CONNACK length %d" % len(body))
    return bool(body[0] & 1), body[1]


def publish(
    topic: str | bytes,
    payload: str | bytes,
    qos: int = 0,
    retain: bool = False,
    mid: int = 0,
    dup: bool = False,
) -> bytearray:
    """PUBLISH packet (spec 3.3); ``mid`` (1..65535) only for QoS 1/2."""
    topic = _b(topic)
    payload = _b(payload)
    n = 2 + len(topic) + len(payload)
    if qos:
        if not 0 < mid < 65536:
            raise MQTTError("message id %d out of range" % mid)
        n += 2
    first = PUBLISH | (qos << 1) | (1 if retain else 0) | (0x08 if dup else 0)
    buf, pos = _packet(first, n)
    pos = _put_str(buf, pos, topic)
    if qos:
        buf[pos] = mid >> 8
        buf[pos + 1] = mid & 0xFF
        pos += 2
    buf[pos:] = payload
    return buf


def publish_header_size(topic: str | bytes, qos: int = 1) -> int:
    """Largest header ``publish_header_into`` can write for ``topic`` (4-byte length)."""
    return 1 + 4 + 2 + len(_b(topic)) + (2 if qos else 0)


def publish_header_into(
    buf: bytearray,
    end: int,
    topic: str | bytes,
    payload_len: int,
    qos: int,
    retain: bool,
    mid: int,
) -> int:
    """Write a PUBLISH header so that it ends at ``buf[end]``, where the payload already sits.

    Returns the packet's start offset: ``buf[start:end + payload_len]`` is the whole packet,
    sent with one write and no copy of a large batch (the firmware's send buffer is
    preallocated). ``end`` must leave ``publish_header_size(topic, qos)`` bytes in front.
    """
    topic = _b(topic)
    n = 2 + len(topic) + payload_len + (2 if qos else 0)
    if qos and not 0 < mid < 65536:
        raise MQTTError("message id %d out of range" % mid)
    pos = end
    if qos:
        pos -= 2
        buf[pos] = mid >> 8
        buf[pos + 1] = mid & 0xFF
    pos -= len(topic)
    buf[pos : pos + len(topic)] = topic
    pos -= 2
    buf[pos] = len(topic) >> 8
    buf[pos + 1] = len(topic) & 0xFF
    pos -= varint_size(n)
    write_varint(buf, pos, n)
    pos -= 1
    if pos < 0:
        raise MQTTError("no room for the PUBLISH header")
    buf[pos] = PUBLISH | (qos << 1) | (1 if retain else 0)
    return pos


def parse_publish(first: int, body: bytes | bytearray) -> tuple[bytes, bytes, int, bool, int, bool]:
    """``(topic, payload, qos, retain, mid, dup)`` from a PUBLISH fixed-header byte and body."""
    qos = (first >> 1) & 0x03
    if qos == 3:
        raise MQTTError("PUBLISH with QoS 3")
    topic, pos = _get_str(body, 0)
    mid = 0
    if qos:
        if pos + 2 > len(body):
            raise MQTTError("truncated message id")
        mid = (body[pos] << 8) | body[pos + 1]
        pos += 2
    return topic, bytes(body[pos:]), qos, bool(first & 0x01), mid, bool(first & 0x08)


def puback(mid: int) -> bytes:
    """PUBACK packet (spec 3.4)."""
    return bytes((PUBACK, 2, mid >> 8, mid & 0xFF))


def parse_mid(body: bytes | bytearray) -> int:
    """Message id from a PUBACK (or any two-byte id-only) body."""
    if len(body) < 2:
        raise MQTTError("truncated message id")
    return (body[0] << 8) | body[1]


def subscribe(mid: int, topics: list[tuple[str | bytes, int]]) -> bytearray:
    """SUBSCRIBE packet (spec 3.8) for a list of ``(topic_filter, qos)``."""
    enc = [(_b(t), q) for t, q in topics]
    n = 2
    for t, _ in enc:
        n += 2 + len(t) + 1
    buf, pos = _packet(_SUBSCRIBE, n)
    buf[pos] = mid >> 8
    buf[pos + 1] = mid & 0xFF
    pos += 2
    for t, q in enc:
        pos = _put_str(buf, pos, t)
        buf[pos] = q
        pos += 1
    return buf
