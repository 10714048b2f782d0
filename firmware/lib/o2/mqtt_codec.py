"""MQTT 3.1.1 packet encoding and decoding (pure: bytes in, bytes out).

OASIS MQTT 3.1.1, chapters 2 (fixed header, remaining length) and 3 (control packets).
Every encoder returns one complete packet in one buffer so that the transport can send it with
a single write call (MICROPYTHON.md: several small writes cost ~44 ms per QoS 1 round trip
through Nagle + delayed ACK). Decoders take the packet body (after the fixed header).
"""

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
SUBSCRIBE = 0x82  # bits 3..0 of SUBSCRIBE are reserved as 0010 (spec 3.8.1)
SUBACK = 0x90
PINGREQ = 0xC0
PINGRESP = 0xD0
DISCONNECT = 0xE0

PINGREQ_PACKET = b"\xc0\x00"
PINGRESP_PACKET = b"\xd0\x00"
DISCONNECT_PACKET = b"\xe0\x00"

MAX_REMAINING = 268435455  # four varint bytes (spec 2.2.3)
PROTOCOL_LEVEL = 4  # 3.1.1

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


def write_varint(buf, pos: int, n: int) -> int:
    """Encode remaining length ``n`` into ``buf`` at ``pos``; returns the next position."""
    if n < 0 or n > MAX_REMAINING:
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


def encode_varint(n: int) -> bytes:
    """Remaining length ``n`` as 1..4 bytes."""
    buf = bytearray(varint_size(n))
    write_varint(buf, 0, n)
    return bytes(buf)


def decode_varint(buf, pos: int = 0):
    """``(value, next_pos)`` of the remaining length at ``buf[pos:]``.

    Raises Incomplete if the buffer ends first, MQTTError if longer than 4 bytes.
    """
    value = 0
    shift = 0
    for i in range(4):
        if pos + i >= len(buf):
            raise Incomplete("remaining length")
        b = buf[pos + i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos + i + 1
        shift += 7
    raise MQTTError("remaining length longer than 4 bytes")


def _put_str(buf, pos: int, s) -> int:
    # UTF-8 string / binary data with a two-byte big-endian length prefix (spec 1.5.3).
    n = len(s)
    buf[pos] = n >> 8
    buf[pos + 1] = n & 0xFF
    buf[pos + 2 : pos + 2 + n] = s
    return pos + 2 + n


def _get_str(body, pos: int):
    if pos + 2 > len(body):
        raise MQTTError("truncated string length")
    n = (body[pos] << 8) | body[pos + 1]
    end = pos + 2 + n
    if end > len(body):
        raise MQTTError("truncated string")
    return bytes(body[pos + 2 : end]), end


def _b(s):
    # Topics, ids and passwords may come as str (config) or bytes.
    if isinstance(s, str):
        return s.encode()
    return s


def _packet(first: int, body_len: int):
    # Allocate the whole packet once and write the fixed header; returns (buf, body_pos).
    buf = bytearray(1 + varint_size(body_len) + body_len)
    buf[0] = first
    return buf, write_varint(buf, 1, body_len)


def connect(
    client_id,
    keepalive_s: int = 60,
    clean_session: bool = True,
    will_topic=None,
    will_payload=b"",
    will_qos: int = 0,
    will_retain: bool = False,
    username=None,
    password=None,
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
    buf, pos = _packet(CONNECT, n)
    pos = _put_str(buf, pos, b"MQTT")
    buf[pos] = PROTOCOL_LEVEL
    buf[pos + 1] = flags
    buf[pos + 2] = keepalive_s >> 8
    buf[pos + 3] = keepalive_s & 0xFF
    pos = _put_str(buf, pos + 4, client_id)
    if will_topic is not None:
        pos = _put_str(buf, pos, will_topic)
        pos = _put_str(buf, pos, will_payload)
    if username is not None:
        pos = _put_str(buf, pos, username)
        if password is not None:
            pos = _put_str(buf, pos, password)
    return buf


def parse_connect(body) -> dict:
    """Decode a CONNECT body into a dict (the keyword arguments of ``connect``)."""
    proto, pos = _get_str(body, 0)
    if proto != b"MQTT" or body[pos] != PROTOCOL_LEVEL:
        raise MQTTError("not MQTT 3.1.1")
    flags = body[pos + 1]
    out = {
        "keepalive_s": (body[pos + 2] << 8) | body[pos + 3],
        "clean_session": bool(flags & 0x02),
        "will_topic": None,
        "will_payload": b"",
        "will_qos": 0,
        "will_retain": False,
        "username": None,
        "password": None,
    }
    out["client_id"], pos = _get_str(body, pos + 4)
    if flags & 0x04:
        out["will_topic"], pos = _get_str(body, pos)
        out["will_payload"], pos = _get_str(body, pos)
        out["will_qos"] = (flags >> 3) & 0x03
        out["will_retain"] = bool(flags & 0x20)
    if flags & 0x80:
        out["username"], pos = _get_str(body, pos)
    if flags & 0x40:
        out["password"], pos = _get_str(body, pos)
    return out


def connack(session_present: bool = False, return_code: int = 0) -> bytes:
    """CONNACK packet (spec 3.2)."""
    return bytes((CONNACK, 2, 1 if session_present else 0, return_code))


def parse_connack(body):
    """``(session_present, return_code)`` from a CONNACK body."""
    if len(body) != 2:
        raise MQTTError("CONNACK length %d" % len(body))
    return bool(body[0] & 1), body[1]


def publish(topic, payload, qos: int = 0, retain: bool = False, mid: int = 0, dup: bool = False):
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


def parse_publish(first: int, body):
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


def parse_mid(body) -> int:
    """Message id from a PUBACK (or any two-byte id-only) body."""
    if len(body) < 2:
        raise MQTTError("truncated message id")
    return (body[0] << 8) | body[1]


def subscribe(mid: int, topics) -> bytearray:
    """SUBSCRIBE packet (spec 3.8) for a list of ``(topic_filter, qos)``."""
    enc = [(_b(t), q) for t, q in topics]
    n = 2
    for t, _ in enc:
        n += 2 + len(t) + 1
    buf, pos = _packet(SUBSCRIBE, n)
    buf[pos] = mid >> 8
    buf[pos + 1] = mid & 0xFF
    pos += 2
    for t, q in enc:
        pos = _put_str(buf, pos, t)
        buf[pos] = q
        pos += 1
    return buf


def parse_subscribe(body):
    """``(mid, [(topic_filter, qos), ...])`` from a SUBSCRIBE body."""
    mid = parse_mid(body)
    pos = 2
    topics = []
    while pos < len(body):
        t, pos = _get_str(body, pos)
        if pos >= len(body):
            raise MQTTError("truncated SUBSCRIBE")
        topics.append((t, body[pos]))
        pos += 1
    return mid, topics


def suback(mid: int, codes) -> bytes:
    """SUBACK packet (spec 3.9); ``codes`` are granted QoS values or 0x80 (failure)."""
    buf, pos = _packet(SUBACK, 2 + len(codes))
    buf[pos] = mid >> 8
    buf[pos + 1] = mid & 0xFF
    buf[pos + 2 :] = bytes(codes)
    return bytes(buf)


def parse_suback(body):
    """``(mid, [granted_qos_or_0x80, ...])`` from a SUBACK body."""
    return parse_mid(body), list(body[2:])


def split_packet(buf, pos: int = 0):
    """``(first_byte, body, next_pos)`` of the packet at ``buf[pos:]``; raises Incomplete."""
    if pos >= len(buf):
        raise Incomplete("fixed header")
    n, body_pos = decode_varint(buf, pos + 1)
    end = body_pos + n
    if end > len(buf):
        raise Incomplete("body")
    return buf[pos], bytes(buf[body_pos:end]), end
