# Checks of the pure firmware modules, written in the MicroPython/CPython common subset.
# test_pure.py runs every check_* function under CPython (against the sources) and under the
# `micropython` interpreter (against the mpy-cross build): the same vectors on both.
import json

from o2 import bme280, config, mqtt_codec, oxygen, telemetry, ze03
from o2.outbox import Outbox


def close(got, want, tol, what):
    if not abs(got - want) <= tol:
        raise AssertionError("%s: got %r, want %r +- %r" % (what, got, want, tol))


def equal(got, want, what):
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (what, got, want))


def raises(exc, fn, *args):
    try:
        fn(*args)
    except exc as e:
        return e
    raise AssertionError("%s did not raise %s" % (fn, exc))


# -- ZE03-O2 (DOMAIN.md section 4) ---------------------------------------------------------


def check_ze03_command_vectors():
    equal(ze03.QUERY, bytes((0xFF, 0x01, 0x86, 0, 0, 0, 0, 0, 0x79)), "query")
    equal(ze03.SET_QA_MODE, bytes((0xFF, 0x01, 0x78, 0x41, 0, 0, 0, 0, 0x46)), "Q&A mode")
    equal(ze03.SET_ACTIVE_MODE, bytes((0xFF, 0x01, 0x78, 0x40, 0, 0, 0, 0, 0x47)), "active")


def check_ze03_reply_roundtrip():
    for pct in (0.0, 20.9, 24.5, 25.0):
        frame = ze03.build_reply(pct)
        equal(len(frame), 9, "reply length")
        close(ze03.parse_reply(frame), pct, 0.001, "O2 %")
    # FF 86 00 F5 ... : 245 counts = 24.5 %
    frame = bytes((0xFF, 0x86, 0x00, 0xF5, 0, 0, 0, 0, (-(0x86 + 0xF5)) & 0xFF))
    close(ze03.parse_reply(frame), 24.5, 0.001, "O2 from vector")


def check_ze03_rejects_bad_frames():
    good = ze03.build_reply(21.0)
    bad_cs = good[:8] + bytes(((good[8] + 1) & 0xFF,))
    raises(ze03.FrameError, ze03.parse_reply, bad_cs)
    raises(ze03.FrameError, ze03.parse_reply, good[:8])
    raises(ze03.FrameError, ze03.parse_reply, b"\xfe" + good[1:])


def check_ze03_resync():
    buf = bytearray(b"\x00\xff\x17\x04" + ze03.build_reply(22.0))
    equal(ze03.find_reply(buf, len(buf)), 4, "reply start after garbage")
    equal(ze03.find_reply(b"\x01\x02\xff", 3), 2, "possible start at the end")
    equal(ze03.find_reply(b"\x01\x02", 2), -1, "no start")


# -- BME280 (Bosch datasheet) ----------------------------------------------------------------

# Bosch BMP280 datasheet 3.12 worked example (same T/P formulas as the BME280).
DATASHEET_CAL = (
    27504,
    26435,
    -1000,
    36477,
    -10685,
    3024,
    2855,
    140,
    -7,
    15500,
    -14600,
    6000,
    75,
    362,
    0,
    313,
    50,
    30,
)
CAL_A = bytes(
    (
        0x70,
        0x6B,
        0x43,
        0x67,
        0x18,
        0xFC,
        0x7D,
        0x8E,
        0x43,
        0xD6,
        0xD0,
        0x0B,
        0x27,
        0x0B,
        0x8C,
        0x00,
        0xF9,
        0xFF,
        0x8C,
        0x3C,
        0xF8,
        0xC6,
        0x70,
        0x17,
        0x00,
        0x4B,
    )
)
CAL_B = bytes((0x6A, 0x01, 0x00, 0x13, 0x29, 0x03, 0x1E))


def _humidity_double(cal, tf, adc_h):
    # Datasheet 4.2.3 bme280_compensate_H_double: an independent check of the integer version.
    h1, h2, h3, h4, h5, h6 = cal[12:18]
    v = tf - 76800.0
    v = (adc_h - (h4 * 64.0 + h5 / 16384.0 * v)) * (
        h2 / 65536.0 * (1.0 + h6 / 67108864.0 * v * (1.0 + h3 / 67108864.0 * v))
    )
    v = v * (1.0 - h1 * v / 524288.0)
    return min(100.0, max(0.0, v))


def check_bme280_calibration_parse():
    equal(bme280.parse_calibration(CAL_A, CAL_B), DATASHEET_CAL, "calibration words")
    # H4/H5 share register 0xE5 and are signed 12-bit
    neg = bme280.parse_calibration(CAL_A, bytes((0, 0, 0, 0xFF, 0xFF, 0xFF, 0x80)))
    equal(neg[15:18], (-1, -1, -128), "negative H4, H5, H6")


def check_bme280_datasheet_example():
    tf = bme280.t_fine(DATASHEET_CAL, 519888)
    equal(tf, 128422, "t_fine")
    close(bme280.temperature_c(tf), 25.08, 0.0001, "temperature")
    close(bme280.pressure_pa(DATASHEET_CAL, tf, 415148), 100653.27, 0.05, "pressure")


def check_bme280_humidity_against_float_formula():
    tf = bme280.t_fine(DATASHEET_CAL, 519888)
    for adc_h in (20000, 25000, 30000, 35000):
        want = _humidity_double(DATASHEET_CAL, tf, adc_h)
        close(bme280.humidity_pct(DATASHEET_CAL, tf, adc_h), want, 0.05, "humidity %d" % adc_h)
    equal(bme280.humidity_pct(DATASHEET_CAL, tf, 0), 0.0, "humidity clamps at 0")
    equal(bme280.humidity_pct(DATASHEET_CAL, tf, 65535), 100.0, "humidity clamps at 100")


def check_bme280_raw_parse():
    d = bytes((0x65, 0x5A, 0xC0, 0x7E, 0xED, 0x00, 0x6D, 0x8E))
    equal(bme280.parse_raw(d), (415148, 519888, 0x6D8E), "raw adc values")


# -- oxygen formulas (DOMAIN.md section 2 table) -----------------------------------------------

SITES = (  # name, altitude m, PB kPa, eq. alt at 23/25/27 % (West), ambient at 25 %
    ("Lhasa", 3650, 64.50, (2989, 2386, 1817), 2259),
    ("Shigatse", 3840, 62.94, (3184, 2585, 2020), 2455),
    ("Nagqu", 4500, 57.73, (3861, 3277, 2726), 3138),
)


def check_oxygen_isa_pressure():
    close(oxygen.isa_pressure_kpa(0), 101.325, 1e-9, "sea level")
    for name, alt, pb, _, _ in SITES:
        close(oxygen.isa_pressure_kpa(alt), pb, 0.005, name + " PB")
        close(oxygen.isa_altitude_m(oxygen.isa_pressure_kpa(alt)), alt, 0.01, name + " h(P)")


def check_oxygen_equivalent_altitude_table():
    for name, alt, pb, west, ambient in SITES:
        for o2, want in zip((23, 25, 27), west):
            got = oxygen.equivalent_altitude_m(o2, pb)
            close(got, want, 1.0, "%s %d %% west" % (name, o2))
        close(oxygen.equivalent_altitude_m(25, pb, "ambient"), ambient, 1.0, name + " ambient")
    raises(ValueError, oxygen.equivalent_altitude_m, 25, 64.5, "bogus")


def check_oxygen_partial_pressure():
    close(oxygen.ppo2_kpa(25.0, 64.5), 16.125, 1e-9, "ppo2")
    close(oxygen.ppo2_kpa(20.95, 101.325), 21.227, 0.001, "sea level ppo2")
    # The O2 needed for an equivalent altitude is the inverse of the equivalent altitude.
    need = oxygen.o2_for_equivalent_altitude_pct(2386, 64.50)
    close(need, 25.0, 0.01, "O2 for Lhasa at 2386 m")


# -- MQTT 3.1.1 packets -------------------------------------------------------------------------

VARINTS = (
    (0, "00"),
    (127, "7f"),
    (128, "8001"),
    (16383, "ff7f"),
    (16384, "808001"),
    (2097151, "ffff7f"),
    (2097152, "80808001"),
    (268435455, "ffffff7f"),
)


def _hex(b):
    return "".join("%02x" % x for x in b)


def check_mqtt_varint():
    for n, h in VARINTS:
        enc = mqtt_codec.encode_varint(n)
        equal(_hex(enc), h, "varint %d" % n)
        equal(mqtt_codec.decode_varint(enc), (n, len(enc)), "decode %d" % n)
    raises(mqtt_codec.MQTTError, mqtt_codec.encode_varint, 268435456)
    raises(mqtt_codec.Incomplete, mqtt_codec.decode_varint, b"\x80")
    raises(mqtt_codec.MQTTError, mqtt_codec.decode_varint, b"\x80\x80\x80\x80\x01")


def check_mqtt_connect_bytes():
    # Minimal CONNECT, clean session, keep-alive 60 s, client id "c" (spec 3.1).
    equal(_hex(mqtt_codec.connect("c", 60)), "100d00044d5154540402003c000163", "CONNECT")


def check_mqtt_connect_roundtrip():
    pkt = mqtt_codec.connect(
        "o2-lhasa-hotel-room-101",
        30,
        True,
        "o2/s/d/status",
        b'{"state":"offline"}',
        1,
        True,
        "tech",
        "secret",
    )
    first, body, end = mqtt_codec.split_packet(pkt)
    equal((first, end), (mqtt_codec.CONNECT, len(pkt)), "header")
    got = mqtt_codec.parse_connect(body)
    equal(got["client_id"], b"o2-lhasa-hotel-room-101", "client id")
    equal(got["keepalive_s"], 30, "keepalive")
    equal(got["will_topic"], b"o2/s/d/status", "will topic")
    equal(got["will_payload"], b'{"state":"offline"}', "will payload")
    equal((got["will_qos"], got["will_retain"]), (1, True), "will qos/retain")
    equal((got["username"], got["password"]), (b"tech", b"secret"), "credentials")
    equal(body[7], 0xEE, "connect flags")  # user, password, will retain, will QoS 1, will, clean
    raises(mqtt_codec.MQTTError, mqtt_codec.connect, "c", 60, True, None, b"", 0, False, None, "p")


def check_mqtt_connack():
    pkt = mqtt_codec.connack(False, 5)
    first, body, _ = mqtt_codec.split_packet(pkt)
    equal((first, mqtt_codec.parse_connack(body)), (0x20, (False, 5)), "CONNACK")


def check_mqtt_publish():
    pkt = mqtt_codec.publish("a/b", b"hi", 1, True, 10)
    equal(_hex(pkt), "3309" + "0003612f62" + "000a" + "6869", "PUBLISH")
    first, body, _ = mqtt_codec.split_packet(pkt)
    got = mqtt_codec.parse_publish(first, body)
    equal(got, (b"a/b", b"hi", 1, True, 10, False), "parsed PUBLISH")
    q0 = mqtt_codec.publish("t", b"x" * 200)
    first, body, end = mqtt_codec.split_packet(q0)
    equal((first, end, len(body)), (0x30, 1 + 2 + 203, 203), "QoS 0, two-byte length")
    equal(mqtt_codec.parse_publish(first, body)[:3], (b"t", b"x" * 200, 0), "QoS 0 body")
    raises(mqtt_codec.MQTTError, mqtt_codec.publish, "t", b"", 1, False, 0)


def check_mqtt_small_packets():
    equal(mqtt_codec.puback(258), b"\x40\x02\x01\x02", "PUBACK")
    equal(mqtt_codec.parse_mid(b"\x01\x02"), 258, "PUBACK id")
    equal(mqtt_codec.PINGREQ_PACKET, b"\xc0\x00", "PINGREQ")
    equal(mqtt_codec.PINGRESP_PACKET, b"\xd0\x00", "PINGRESP")
    equal(mqtt_codec.DISCONNECT_PACKET, b"\xe0\x00", "DISCONNECT")


def check_mqtt_subscribe_roundtrip():
    pkt = mqtt_codec.subscribe(7, [("o2/s/d/cmd", 1), ("x/#", 0)])
    first, body, _ = mqtt_codec.split_packet(pkt)
    equal(first, 0x82, "SUBSCRIBE flags")
    equal(mqtt_codec.parse_subscribe(body), (7, [(b"o2/s/d/cmd", 1), (b"x/#", 0)]), "topics")
    first, body, _ = mqtt_codec.split_packet(mqtt_codec.suback(7, (1, 0x80)))
    equal((first, mqtt_codec.parse_suback(body)), (0x90, (7, [1, 0x80])), "SUBACK")


def check_mqtt_split_stream():
    stream = mqtt_codec.connack() + mqtt_codec.puback(1) + mqtt_codec.PINGRESP_PACKET
    pos = 0
    kinds = []
    while pos < len(stream):
        first, _, pos = mqtt_codec.split_packet(stream, pos)
        kinds.append(first)
    equal(kinds, [0x20, 0x40, 0xD0], "packet kinds")
    raises(mqtt_codec.Incomplete, mqtt_codec.split_packet, mqtt_codec.puback(1)[:3])


# -- telemetry, outbox, config --------------------------------------------------------------------


def check_telemetry_encode():
    values = (24.5, 64.5, 20.0, 30.0, 15.8025, None)
    doc = json.loads(telemetry.encode(3, 17, 1732400000123, values, 0))
    equal((doc["v"], doc["boot"], doc["seq"], doc["ts"]), (1, 3, 17, 1732400000123), "ids")
    close(doc["ppo2_kpa"], 15.803, 0.0005, "ppo2")
    equal("eq_alt_m" in doc or "quality" in doc, False, "absent fields")
    doc = json.loads(telemetry.encode(1, 1, 0, (None, 64.5, 20.0, 30.0, None, None), 1))
    equal(("o2_pct" in doc, doc["quality"], doc["ts"]), (False, 1, 0), "missing O2 is absent")


def check_outbox_order_ack_requeue():
    box = Outbox(3)
    for p in (b"1", b"2", b"3"):
        box.put(p)
    s1 = box.next_unsent()
    box.mark_sent(s1, 11)
    s2 = box.next_unsent()
    box.mark_sent(s2, 12)
    equal((box.payload(s1), box.payload(s2)), (b"1", b"2"), "oldest first")
    equal(box.ack(12), True, "ack out of order")
    equal(len(box), 3, "head not released before its own ack")
    box.requeue()
    equal(box.payload(box.next_unsent()), b"1", "requeued head")
    box.mark_sent(box.next_unsent(), 13)
    equal(box.ack(13), True, "ack head")
    equal(len(box), 1, "acked slots released")
    box.put(b"4")
    box.put(b"5")
    box.put(b"6")
    equal((len(box), box.dropped), (3, 1), "full ring drops the oldest")
    equal(box.payload(box.next_unsent()), b"4", "oldest kept")
    equal(box.ack(999), False, "unknown id")


def check_config_defaults_and_errors():
    cfg = config.validate({"site": "lhasa-hotel", "device": "room-101", "mqtt": {"host": "h"}})
    equal((cfg["kind"], cfg["mqtt.port"], cfg["interval_s"]), ("room", 1883, 10.0), "defaults")
    equal(cfg["sensors.env.addr"], 0x76, "BME280 address")
    bad = (
        ({"device": "d", "mqtt": {"host": "h"}}, "site: missing"),
        ({"site": "Lhasa", "device": "d", "mqtt": {"host": "h"}}, "site: expected a name"),
        (
            {"site": "s", "device": "d", "mqtt": {"host": "h", "port": "1883"}},
            "mqtt.port: expected int",
        ),
        (
            {"site": "s", "device": "d", "mqtt": {"host": "h", "port": 0}},
            "mqtt.port: expected a value",
        ),
        (
            {"site": "s", "device": "d", "kind": "tank", "mqtt": {"host": "h"}},
            "kind: expected one of",
        ),
    )
    for raw, prefix in bad:
        e = raises(config.ConfigError, config.validate, raw)
        if not str(e).startswith(prefix):
            raise AssertionError("error %r does not start with %r" % (str(e), prefix))
