"""The broker's side of MQTT 3.1.1 (pure, common subset): decoders of what the board sends
and encoders of what a broker answers. Test-only twin of ``o2core.mqtt_codec`` -- kept out of
the firmware so that the board does not carry a broker's code in its heap.
"""

from o2core.mqtt_codec import (
    CONNACK,
    Incomplete,
    MQTTError,
    _get_str,
    _packet,
    parse_mid,
    read_varint,
    varint_size,
    write_varint,
)

SUBACK = 0x90
PROTOCOL_LEVEL = 4  # 3.1.1
PINGRESP_PACKET = b"\xd0\x00"


def encode_varint(n: int) -> bytes:
    """Remaining length ``n`` as its 1..4 bytes (the board's encoder writes into a buffer)."""
    buf = bytearray(varint_size(n))
    write_varint(buf, 0, n)
    return bytes(buf)


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
    n, body_pos = read_varint(buf, pos + 1)
    end = body_pos + n
    if end > len(buf):
        raise Incomplete("body")
    return buf[pos], bytes(buf[body_pos:end]), end
