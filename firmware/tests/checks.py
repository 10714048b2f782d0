# Checks of the pure firmware modules and of o2core, written in the MicroPython/CPython common
# subset. test_pure.py runs every check_* function under CPython (against the sources) and under
# the `micropython` interpreter (against the mpy-cross build): the same vectors on both. The
# o2core vectors come from o2core/vectors.json, shared with the gateway's and the simulators'
# tests; the firmware's own (sensor frames, datasheets, RFC 4231) are here.
import json
import os

import mqtt_peer
from o2 import (
    ads1115,
    alarm,
    auth,
    bme280,
    calibration,
    config,
    gasboard,
    luminox,
    mhz19,
    spool,
    state,
    telemetry,
    ze03,
)

from o2core import mqtt_codec, oxygen, winsen

# Path of o2core/vectors.json: set by whoever runs the checks (conftest.py under CPython,
# run_checks.py under micropython).
VECTORS_FILE = "vectors.json"


def vectors(section):
    """One section of o2core/vectors.json (read anew: the heap holds one section at a time)."""
    with open(VECTORS_FILE) as f:
        return json.load(f)[section]


def from_hex(text):
    return bytes(int(text[i : i + 2], 16) for i in range(0, len(text), 2))


NAN = float("nan")
INF = float("inf")


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


# -- ZE03-O2 (docs/domain.md "Sensor wire protocols") ----------------------------------------------


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


# -- BME280 (Bosch datasheet) ----------------------------------------------------------------------

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


def check_bme280_skipped_measurement_is_no_value():
    # 0x80000 / 0x8000 = "no measurement" (datasheet): compensated it gave ~82 kPa, which
    # dropped the Lhasa high alarm from 27.9 % to 24.6 %.
    skipped = bytes((0x80, 0x00, 0x00, 0x80, 0x00, 0x00, 0x80, 0x00))
    adc_p, adc_t, adc_h = bme280.parse_raw(skipped)
    equal((adc_p, adc_t, adc_h), (0x80000, 0x80000, 0x8000), "raw codes")
    equal(bme280.compensate(DATASHEET_CAL, adc_p, adc_t, adc_h), (None, None, None), "all none")
    p, t, h = bme280.compensate(DATASHEET_CAL, 0x80000, 519888, 30000)
    equal(p, None, "skipped pressure")
    close(t, 25.08, 0.001, "temperature still valid")
    equal(bme280.compensate(DATASHEET_CAL, 415148, 519888, 0x8000)[2], None, "skipped humidity")
    import asyncio

    class Bus:  # an I2C bus with one BME280 whose data registers hold the skipped codes
        def readfrom_mem(self, addr, reg, n):
            if reg == 0xD0:
                return b"\x60"
            return (CAL_A if reg == 0x88 else CAL_B)[:n]

        def readfrom_mem_into(self, addr, reg, buf):
            buf[:] = skipped[: len(buf)] if reg == 0xF7 else bytes(len(buf))

        def writeto_mem(self, addr, reg, buf):
            pass

    if hasattr(asyncio, "sleep_ms"):  # the driver's own asyncio: MicroPython only
        got = asyncio.run(bme280.BME280(Bus()).read())
        equal(got, (None, None, None, 0x08), "driver: no values, quality bit")


def check_bme280_raw_parse():
    d = bytes((0x65, 0x5A, 0xC0, 0x7E, 0xED, 0x00, 0x6D, 0x8E))
    equal(bme280.parse_raw(d), (415148, 519888, 0x6D8E), "raw adc values")


# -- o2core oxygen formulas (o2core/vectors.json) -------------------------------------------------


def check_oxygen_isa_pressure():
    v = vectors("isa_pressure")
    for c in v["cases"]:
        close(oxygen.isa_pressure_kpa(c["alt_m"]), c["kpa"], v["tol_kpa"], "P(%r)" % c["alt_m"])
        close(oxygen.isa_altitude_m(c["kpa"]), c["alt_m"], v["tol_m"], "h(%r)" % c["kpa"])
    for p in v["no_altitude_kpa"]:
        raises(ValueError, oxygen.isa_altitude_m, p)


def check_oxygen_equivalent_altitude():
    v = vectors("equivalent_altitude")
    for c in v["cases"]:
        got = oxygen.equivalent_altitude_m(c["o2_pct"], c["baro_kpa"], c["definition"])
        close(
            got,
            c["eq_alt_m"],
            v["tol_m"],
            "%s %r %% %s" % (c["site"], c["o2_pct"], c["definition"]),
        )
    raises(ValueError, oxygen.equivalent_altitude_m, 25, 64.5, v["unknown_definition"])
    raises(ValueError, oxygen.equivalent_altitude_m, 0, 64.5, "ambient")  # no oxygen, no altitude


def check_oxygen_partial_pressure():
    v = vectors("partial_pressure")
    for c in v["cases"]:
        close(oxygen.ppo2_kpa(c["o2_pct"], c["baro_kpa"]), c["ppo2_kpa"], v["tol_kpa"], "ppO2")
        close(oxygen.pio2_kpa(c["o2_pct"], c["baro_kpa"]), c["pio2_kpa"], v["tol_kpa"], "PIO2")


def check_oxygen_fire_limits():
    v = vectors("fire_limits")
    for c in v["cases"]:
        pb = c["baro_kpa"]
        close(oxygen.nfpa_burn_limit_pct(pb), c["nfpa_pct"], v["tol_pct"], "NFPA at %r" % pb)
        high, warn = oxygen.room_thresholds(pb)
        close(high, c["high_alarm_pct"], v["tol_pct"], "alarm %r" % pb)
        close(warn, c["high_warn_pct"], v["tol_pct"], "warn %r" % pb)
    unusable = v["unusable_kpa"]
    for p in unusable["cases"]:
        close(oxygen.nfpa_burn_limit_pct(p), unusable["nfpa_pct"], 1e-9, "limit for %r" % (p,))


def check_oxygen_baro_band():
    v = vectors("baro_band")
    site = oxygen.isa_pressure_kpa(v["site_alt_m"])
    for p in v["plausible_kpa"]:
        equal(oxygen.baro_plausible(p, site), True, "plausible %r" % p)
    for p in v["implausible_kpa"] + [NAN, INF, -INF]:
        equal(oxygen.baro_plausible(p, site), False, "implausible %r" % (p,))


def check_winsen_checksum():
    for c in vectors("winsen_checksum")["cases"]:
        frame = from_hex(c["hex"])
        equal(winsen.checksum(frame), frame[8], c["what"])


# -- MQTT 3.1.1 packets ----------------------------------------------------------------------------


def _hex(b):
    return "".join("%02x" % x for x in b)


def check_mqtt_varint():
    v = vectors("mqtt_varint")
    for c in v["cases"]:
        n = c["value"]
        enc = mqtt_peer.encode_varint(n)
        equal(_hex(enc), c["hex"], "varint %d" % n)
        equal(mqtt_codec.varint_size(n), len(enc), "size %d" % n)
        equal(mqtt_codec.read_varint(b"\x30" + enc + b"\x00", 1), (n, 1 + len(enc)), "read %d" % n)
    for n in v["too_large"]:
        raises(mqtt_codec.MQTTError, mqtt_peer.encode_varint, n)
    for h in v["incomplete_hex"]:
        raises(mqtt_codec.Incomplete, mqtt_codec.read_varint, from_hex(h))
    for h in v["malformed_hex"]:
        e = raises(mqtt_codec.MQTTError, mqtt_codec.read_varint, from_hex(h))
        equal(isinstance(e, mqtt_codec.Incomplete), False, "malformed, not incomplete: " + h)


def check_mqtt_connect_bytes():
    for c in vectors("mqtt_connect")["cases"]:
        equal(_hex(mqtt_codec.connect(c["client_id"], c["keepalive_s"])), c["hex"], "CONNECT")


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
    first, body, end = mqtt_peer.split_packet(pkt)
    equal((first, end), (0x10, len(pkt)), "header")  # CONNECT
    got = mqtt_peer.parse_connect(body)
    equal(got["client_id"], b"o2-lhasa-hotel-room-101", "client id")
    equal(got["keepalive_s"], 30, "keepalive")
    equal(got["will_topic"], b"o2/s/d/status", "will topic")
    equal(got["will_payload"], b'{"state":"offline"}', "will payload")
    equal((got["will_qos"], got["will_retain"]), (1, True), "will qos/retain")
    equal((got["username"], got["password"]), (b"tech", b"secret"), "credentials")
    equal(body[7], 0xEE, "connect flags")  # user, password, will retain, will QoS 1, will, clean
    raises(mqtt_codec.MQTTError, mqtt_codec.connect, "c", 60, True, None, b"", 0, False, None, "p")


def check_mqtt_connack():
    pkt = mqtt_peer.connack(False, 5)
    first, body, _ = mqtt_peer.split_packet(pkt)
    equal((first, mqtt_codec.parse_connack(body)), (0x20, (False, 5)), "CONNACK")


def check_mqtt_publish():
    pkt = mqtt_codec.publish("a/b", b"hi", 1, True, 10)
    equal(_hex(pkt), "3309" + "0003612f62" + "000a" + "6869", "PUBLISH")
    first, body, _ = mqtt_peer.split_packet(pkt)
    got = mqtt_codec.parse_publish(first, body)
    equal(got, (b"a/b", b"hi", 1, True, 10, False), "parsed PUBLISH")
    q0 = mqtt_codec.publish("t", b"x" * 200)
    first, body, end = mqtt_peer.split_packet(q0)
    equal((first, end, len(body)), (0x30, 1 + 2 + 203, 203), "QoS 0, two-byte length")
    equal(mqtt_codec.parse_publish(first, body)[:3], (b"t", b"x" * 200, 0), "QoS 0 body")
    raises(mqtt_codec.MQTTError, mqtt_codec.publish, "t", b"", 1, False, 0)


def check_mqtt_publish_header_in_place():
    buf = bytearray(64)
    room = mqtt_codec.publish_header_size("o2/s/d/telemetry", 1)
    payload = b'[{"seq":1},{"seq":2}]'
    buf[room : room + len(payload)] = payload
    start = mqtt_codec.publish_header_into(buf, room, "o2/s/d/telemetry", len(payload), 1, False, 7)
    want = mqtt_codec.publish("o2/s/d/telemetry", payload, 1, False, 7)
    equal(bytes(buf[start : room + len(payload)]), bytes(want), "same bytes as publish()")


def check_mqtt_small_packets():
    equal(mqtt_codec.puback(258), b"\x40\x02\x01\x02", "PUBACK")
    equal(mqtt_codec.parse_mid(b"\x01\x02"), 258, "PUBACK id")
    equal(mqtt_codec.PINGREQ_PACKET, b"\xc0\x00", "PINGREQ")
    equal(mqtt_peer.PINGRESP_PACKET, b"\xd0\x00", "PINGRESP")
    equal(mqtt_codec.DISCONNECT_PACKET, b"\xe0\x00", "DISCONNECT")


def check_mqtt_subscribe_roundtrip():
    pkt = mqtt_codec.subscribe(7, [("o2/s/d/cmd", 1), ("x/#", 0)])
    first, body, _ = mqtt_peer.split_packet(pkt)
    equal(first, 0x82, "SUBSCRIBE flags")
    equal(mqtt_peer.parse_subscribe(body), (7, [(b"o2/s/d/cmd", 1), (b"x/#", 0)]), "topics")
    first, body, _ = mqtt_peer.split_packet(mqtt_peer.suback(7, (1, 0x80)))
    equal((first, mqtt_peer.parse_suback(body)), (0x90, (7, [1, 0x80])), "SUBACK")


def check_mqtt_split_stream():
    stream = mqtt_peer.connack() + mqtt_codec.puback(1) + mqtt_peer.PINGRESP_PACKET
    pos = 0
    kinds = []
    while pos < len(stream):
        first, _, pos = mqtt_peer.split_packet(stream, pos)
        kinds.append(first)
    equal(kinds, [0x20, 0x40, 0xD0], "packet kinds")
    raises(mqtt_codec.Incomplete, mqtt_peer.split_packet, mqtt_codec.puback(1)[:3])


# -- telemetry, config -----------------------------------------------------------------------------


def check_telemetry_encode():
    values = (24.5, 64.5, 20.0, 30.0, 15.8025, None)
    doc = json.loads(telemetry.encode(3, 17, 1732400000123, values, 0))
    equal((doc["v"], doc["boot"], doc["seq"], doc["ts"]), (1, 3, 17, 1732400000123), "ids")
    close(doc["ppo2_kpa"], 15.803, 0.0005, "ppo2")
    equal("eq_alt_m" in doc or "quality" in doc, False, "absent fields")
    doc = json.loads(telemetry.encode(1, 1, 0, (None, 64.5, 20.0, 30.0, None, None), 1))
    equal(("o2_pct" in doc, doc["quality"], doc["ts"]), (False, 1, 0), "missing O2 is absent")


# -- spool record format, spool, boot counter ------------------------------------------------------


def fresh_dir():
    # A new empty directory under /tmp (both interpreters; MicroPython has no tempfile).
    r = os.urandom(4)
    path = "/tmp/o2chain-check-%02x%02x%02x%02x" % (r[0], r[1], r[2], r[3])
    os.mkdir(path)
    return path


def reading(seq, boot=1):
    return telemetry.encode(boot, seq, 0, (24.5, 64.5, 20.0, 30.0, 15.8, 2400.0), 0)


def spool_with(count, segment_bytes=4096, max_segments=4):
    # A spool in a fresh directory holding readings 1..count.
    sp = spool.Spool(fresh_dir(), segment_bytes, max_segments)
    sp.open()
    for seq in range(1, count + 1):
        sp.append(reading(seq))
    return sp


def reopened(sp):
    # The spool after a reboot: a new Spool on the same directory, from what is in flash.
    again = spool.Spool(sp.path, sp.segment_bytes, sp.max_segments)
    again.open()
    return again


def drain(sp, size=1200, max_records=5):
    # Every pending reading through peek_batch/release, as parsed JSON objects.
    buf = bytearray(size)
    out: list = []
    while True:
        end = sp.peek_batch(buf, 0, max_records)
        if end == 0:
            return out
        doc = json.loads(bytes(buf[sp.batch_begin : end]))
        if sp.peeked == 1:
            equal(isinstance(doc, dict), True, "one reading is sent as an object")
            doc = [doc]
        equal(len(doc), sp.peeked, "batch length")
        out.extend(doc)
        equal(sp.release(), len(doc), "released")


def check_spool_record_format():
    buf = bytearray(spool.HEADER_LEN + 64)
    n = spool.encode_record(buf, b'{"seq":1}')
    equal(n, spool.HEADER_LEN + 9, "record size")
    equal(bytes(buf[:4]), b"\xa5\x5a\x09\x00", "magic and little-endian length")
    data = bytes(buf[:n]) + bytes(buf[:n])
    payloads, end, status = spool.parse_records(data)
    equal((payloads, end, status), ([b'{"seq":1}', b'{"seq":1}'], 2 * n, "ok"), "two records")
    for cut in range(1, n):  # power loss after any byte of the second record
        payloads, end, status = spool.parse_records(data[: n + cut])
        equal((len(payloads), end, status), (1, n, "torn"), "torn at %d" % cut)
    flipped = bytearray(data)
    flipped[spool.HEADER_LEN + 2] ^= 0x01  # one bit in the first payload
    equal(spool.parse_records(flipped)[1:], (0, "corrupt"), "bit flip mid-segment")
    raises(spool.SpoolError, spool.encode_record, buf, b"")
    raises(spool.SpoolError, spool.encode_record, bytearray(2000), bytes(spool.MAX_RECORD + 1))
    equal(spool.parse_cursor(spool.cursor_text(7, 1234)), (7, 1234), "cursor roundtrip")
    equal(spool.parse_cursor("7 1235 " + spool.cursor_text(7, 1234).split()[2]), None, "bad")
    equal(spool.boot_of(reading(3, boot=42)), 42, "boot of a payload")


def check_spool_batches_and_restart():
    sp = spool_with(30, 2048)
    equal(sp.pending, 30, "pending")
    buf = bytearray(1500)
    end = sp.peek_batch(buf, 0, 5)
    docs = json.loads(bytes(buf[sp.batch_begin : end]))
    equal([doc["seq"] for doc in docs], [1, 2, 3, 4, 5], "oldest first, max_records")
    equal(sp.pending, 30, "nothing released before the PUBACK")
    sp.release()
    equal(sp.pending, 25, "released after the PUBACK")
    # Reboot: a new Spool on the same directory resumes at the cursor, from flash.
    sp2 = reopened(sp)
    equal((sp2.pending, sp2.torn, sp2.corrupt), (25, 0, 0), "after reboot")
    equal([doc["seq"] for doc in drain(sp2, 1500)], list(range(6, 31)), "rest in order")
    equal(sp2.pending, 0, "empty")
    sp2.append(reading(31))
    equal([doc["seq"] for doc in drain(sp2)], [31], "new reading after drain")
    equal(sp2.segments <= 2, True, "delivered segments deleted")


def check_spool_torn_tail_after_power_loss():
    sp = spool_with(3)
    seg = sp.path + "/" + spool.seg_name(sp._segs[-1])
    rec = bytearray(spool.HEADER_LEN + 300)
    n = spool.encode_record(rec, reading(4))
    with open(seg, "ab") as f:  # power loss in the middle of the 4th write
        f.write(rec[: n - 7])
    sp = reopened(sp)
    equal((sp.pending, sp.torn), (3, 1), "torn tail ignored and counted")
    sp.append(reading(5))
    equal(sp.segments, 2, "no append after a torn tail: new segment")
    equal([doc["seq"] for doc in drain(sp)], [1, 2, 3, 5], "torn reading skipped, rest kept")


def check_spool_drop_oldest_is_bounded_and_counted():
    seg_bytes = spool.HEADER_LEN + spool.MAX_RECORD
    sp = spool_with(100, seg_bytes, 3)
    equal(sp.segments, 3, "bounded segments")
    per_seg = seg_bytes // (spool.HEADER_LEN + len(reading(1)))
    equal(sp.pending + sp.dropped, 100, "every reading pending or counted as dropped")
    equal(sp.pending <= 3 * per_seg, True, "bounded size")
    seqs = [doc["seq"] for doc in drain(sp)]
    equal(seqs, list(range(101 - len(seqs), 101)), "the newest are kept, in order")


def check_spool_drop_during_inflight_batch():
    sp = spool_with(3, spool.HEADER_LEN + spool.MAX_RECORD, 2)
    buf = bytearray(2048)
    sp.peek_batch(buf, 0, 2)  # seqs 1, 2 in flight
    for seq in range(4, 40):  # the outage fills the spool: the in-flight segment is dropped
        sp.append(reading(seq))
    sp.release()  # the late PUBACK must not move the cursor backwards
    seqs = [doc["seq"] for doc in drain(sp)]
    equal(seqs, list(range(40 - len(seqs), 40)), "consistent after a drop under a batch")
    equal(sp.dropped + len(seqs), 39, "accounting: the in-flight ones count as dropped")


def check_spool_damaged_cursor_replays_from_oldest():
    sp = spool_with(5)
    buf = bytearray(2048)
    sp.peek_batch(buf, 0, 2)
    sp.release()
    with open(sp.path + "/cursor", "w") as f:
        f.write("garbage")
    sp = reopened(sp)
    equal([doc["seq"] for doc in drain(sp)], [1, 2, 3, 4, 5], "replay (duplicates, no loss)")


def check_boot_counter_copies_and_recovery():
    d = fresh_dir()
    path = d + "/boot_count"
    equal(state.next_boot(path).number, 1, "fresh board")
    equal(state.next_boot(path).number, 2, "second boot")
    with open(path, "w") as f:
        f.write("7 123")  # bad CRC in the main copy: the backup wins
    b = state.next_boot(path)
    equal((b.number, b.recovered), (3, ""), "backup copy")
    for name in (path, path + ".bak"):
        with open(name, "w") as f:
            f.write("\x00\x00")
    b = state.next_boot(path, lambda: 41)
    equal((b.number, b.recovered), (42, "spool"), "both damaged: from the spool")
    for name in (path, path + ".bak"):
        with open(name, "w") as f:
            f.write("1")
    b = state.next_boot(path, lambda: 0, lambda: 5)
    equal((b.number, b.recovered), (state.RANDOM_BOOT_BASE + 6, "random"), "never back to 1")
    equal(state.next_boot(path).number, state.RANDOM_BOOT_BASE + 7, "continues")
    equal(state.decode_counter(state.encode_counter(12)), 12, "counter roundtrip")
    equal(state.rapid_resets(d + "/resets"), 1, "first unstable boot")
    equal(state.rapid_resets(d + "/resets"), 2, "second")
    state.mark_stable(d + "/resets")
    equal(state.rapid_resets(d + "/resets"), 1, "after a stable run")


def check_config_defaults_and_errors():
    cfg = config.validate(
        {"site": "lhasa-hotel", "device": "room-101", "site_altitude_m": 0, "mqtt": {"host": "h"}}
    )
    equal((cfg["kind"], cfg["mqtt.port"], cfg["interval_s"]), ("room", 1883, 10.0), "defaults")
    equal(cfg["sensors.env.addr"], 0x76, "BME280 address")
    bad: tuple = (
        ({"device": "d", "site_altitude_m": 0, "mqtt": {"host": "h"}}, "site: missing"),
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
        if "site_altitude_m" not in raw:
            raw["site_altitude_m"] = 0
        e = raises(config.ConfigError, config.validate, raw)
        if not str(e).startswith(prefix):
            raise AssertionError("error %r does not start with %r" % (str(e), prefix))


MINIMAL = {"site": "s", "device": "d", "site_altitude_m": 3650, "mqtt": {"host": "h"}}


def check_config_site_altitude_is_required():
    # Without it a plateau board without barometer behaved as at sea level (21.95 % high alarm).
    raw = {"site": "s", "device": "d", "mqtt": {"host": "h"}}
    e = raises(config.ConfigError, config.validate, raw)
    equal(str(e), "site_altitude_m: missing (required)", "error names the key")
    e = raises(config.ConfigError, config.validate, dict(raw, site_altitude_m="3650"))
    equal(str(e).startswith("site_altitude_m: expected float"), True, "type error names the key")
    cfg = config.validate(MINIMAL)
    equal(cfg["site_altitude_m"], 3650.0, "given altitude")
    equal(cfg["alarm.warmup_s"], 600.0, "concentrator warm-up default")
    equal(cfg["sensors.co2.type"], "none", "CO2 sensor optional")
    equal(config.validate(dict(MINIMAL, alarm={"on_delay_s": 120}))["alarm.on_delay_s"], 120.0, "")
    raises(config.ConfigError, config.validate, dict(MINIMAL, alarm={"on_delay_s": 301}))
    e = raises(
        config.ConfigError,
        config.validate,
        dict(
            MINIMAL,
            kind="concentrator",
            sensors={"o2": {"type": "gasboard"}, "co2": {"type": "mhz19"}},
        ),
    )
    equal(str(e).startswith("sensors.co2.type"), True, "CO2 only on rooms")
    e = raises(
        config.ConfigError,
        config.validate,
        dict(MINIMAL, sensors={"o2": {"uart": 1}, "co2": {"type": "mhz19", "uart": 1}}),
    )
    equal(str(e).startswith("sensors.co2.uart"), True, "two sensors on one UART")


# -- barometer plausibility and values that must never crash the alarm -----------------------------

BAD_VALUES = (None, 0, 0.0, -5.0, NAN, INF, -INF, 1e300, -1e300, "25")


def check_alarm_survives_any_sensor_value():
    # A barometer at 0 kPa raised ZeroDivisionError in the NFPA formula (reset loop, safe
    # mode, no local alarm). Nothing a sensor can send may raise here.
    cfg = config.validate(MINIMAL)
    for p in BAD_VALUES:
        limit = oxygen.nfpa_burn_limit_pct(p)
        equal(23.0 < limit < 24.0, True, "limit for %r" % (p,))
        a = alarm.Alarms(alarm.room_rules(p, cfg))
        alarm.update_room_thresholds(a, p, cfg)
        for r in a.rules:
            equal(-1000 < r.threshold < 1000, True, "finite threshold %s" % r.name)
    a = alarm.Alarms(alarm.room_rules(64.5, cfg), 0.3, 0, 0, 1000)
    t = 0
    for v in BAD_VALUES:
        a.update(v, t)
        t += 100
    equal(a.last_value, -5.0, "only -5.0 and 0 were numbers")
    a.update(NAN, 0)
    a.update(NAN, 5000)
    equal("sensor_fault" in a.active_names(), True, "NaN is a missing reading")
    c = alarm.Alarms(alarm.concentrator_rules(cfg))
    for v in BAD_VALUES:
        c.update(v, 0)


def check_alarm_threshold_semantics_match_the_gateway():
    # Gateway builtin rules: high when value > threshold, low when value < threshold.
    cfg = config.validate(
        dict(MINIMAL, alarm={"o2_high_alarm_pct": 27.0, "o2_high_warn_pct": 26.0})
    )
    a = alarm.Alarms(alarm.room_rules(64.5, cfg), 0.3, 0, 0)
    a.update(27.0, 0)
    equal("o2_high" in a.active_names(), False, "at the high threshold: not raised")
    a.update(27.01, 1)
    equal("o2_high" in a.active_names(), True, "above: raised")
    b = alarm.Alarms(alarm.room_rules(64.5, cfg), 0.3, 0, 0)
    b.update(19.5, 0)
    equal("o2_deficient" in b.active_names(), False, "at the deficiency threshold: not raised")
    b.update(19.49, 1)
    equal("o2_deficient" in b.active_names(), True, "below: raised")
    c = alarm.Alarms(alarm.concentrator_rules(cfg), 0.3, 0, 0)
    c.update(82.0, 0)
    equal(c.sounding(), False, "purity at 82.0: not raised")
    c.update(81.9, 1)
    equal(c.sounding(), True, "purity below 82: raised")


def check_alarm_warmup_holds_purity_rules():
    cfg = config.validate(MINIMAL)
    c = alarm.Alarms(alarm.concentrator_rules(cfg), 0.3, 0, 0)
    equal(c.flag(3, True, 0.0, 600.0, 0), 1, "warming_up raised")
    equal(c.active_names(), ["warming_up"], "only the warm-up flag")
    c.update(70.0, 100, False, True)
    equal(c.sounding(), False, "purity held during warm-up")
    equal(c.warning(), True, "but not silent: warning LED")
    c.flag(3, False, 0.0, 0.0, 600000)
    c.update(70.0, 600001)
    equal(c.active_names(), ["purity_low"], "raised once warm")
    c.update(None, 600002, False, True)
    c.update(None, 700000, False, True)
    equal("sensor_fault" in c.active_names(), True, "faults not held")


# -- Gasboard-7500 ultrasonic O2 / flow (docs/domain.md "Sensor wire protocols" vectors) -----------

GB_948 = bytes((0x16, 0x09, 0x01, 0x03, 0xB4, 0x00, 0x32, 0x00, 0xD2, 0x00, 0x00, 0x25))
GB_500 = bytes((0x16, 0x09, 0x01, 0x01, 0xF4, 0x00, 0x64, 0x00, 0xD2, 0x00, 0x00, 0xB5))


def check_gasboard_vectors():
    equal(gasboard.READ, bytes((0x11, 0x01, 0x01, 0xED)), "read command")
    p, f, t, st = gasboard.parse_reply(GB_948)
    close(p, 94.8, 1e-6, "purity")
    close(f, 5.0, 1e-6, "flow")
    close(t, 21.0, 1e-6, "temp")
    equal(st, 0, "status")
    p, f, t, st = gasboard.parse_reply(GB_500)
    close(p, 50.0, 1e-6, "purity 2")
    close(f, 10.0, 1e-6, "flow 2")
    close(gasboard.parse_reply(GB_500, 0.01)[1], 1.0, 1e-6, "flow x0.01 variant")
    equal(gasboard.build_reply(94.8, 5.0, 21.0), GB_948, "build")
    raises(gasboard.FrameError, gasboard.parse_reply, GB_948[:11] + b"\x26")
    raises(gasboard.FrameError, gasboard.parse_reply, GB_948[:11])


def check_gasboard_negative_temperature():
    # -5.0 degC = FF CE (two's complement); decoded unsigned it was 6548.6 degC.
    frame = bytearray((0x16, 0x09, 0x01, 0x03, 0xB4, 0x00, 0x32, 0xFF, 0xCE, 0x00, 0x00, 0))
    frame[11] = (256 - sum(frame[:11]) % 256) % 256
    equal(frame[11], 0x2A, "checksum of the vector")
    p, f, t, st = gasboard.parse_reply(bytes(frame))
    close(t, -5.0, 1e-6, "negative temperature")
    close(p, 94.8, 1e-6, "purity unchanged")
    equal(gasboard.build_reply(94.8, 5.0, -5.0), bytes(frame), "build negative")
    close(gasboard.parse_reply(gasboard.build_reply(94.8, 5.0, 45.3))[2], 45.3, 1e-6, "positive")


def check_gasboard_stream_resync():
    parser = gasboard.Parser()
    # Garbage, a false start 0x16 with a wrong LEN, a frame with a bad checksum, two good ones.
    bad_cs = GB_948[:11] + b"\x00"
    stream = b"\x00\x16\x05\x16" + bad_cs + b"\x01\x02" + GB_948 + b"\x16" + GB_500
    got = []
    for b in stream:
        if parser.feed(b):
            got.append(bytes(parser.frame))
    equal(got, [GB_948, GB_500], "frames recovered in order")
    equal(parser.bad >= 2, True, "rejected candidates counted")


# -- local alarm (docs/domain.md "Limits and alarms") ----------------------------------------------


def check_alarm_thresholds():
    # The room rules take o2core's thresholds at the pressure in use and follow it; a site's
    # configured thresholds win.
    v = vectors("fire_limits")
    cfg = config.validate(MINIMAL)
    a = alarm.Alarms(alarm.room_rules(101.325, cfg))
    for c in v["cases"]:
        alarm.update_room_thresholds(a, c["baro_kpa"], cfg)
        close(a.rule("o2_high").threshold, c["high_alarm_pct"], v["tol_pct"], "limit - 1.5")
        close(
            a.rule("o2_high_warn").threshold, c["high_warn_pct"], v["tol_pct"], "min(27, limit - 3)"
        )
    cfg = config.validate(
        dict(MINIMAL, alarm={"o2_high_alarm_pct": 27.0, "o2_high_warn_pct": 26.0})
    )
    a = alarm.Alarms(alarm.room_rules(64.5, cfg))
    got = (a.rule("o2_high").threshold, a.rule("o2_high_warn").threshold)
    equal(got, (27.0, 26.0), "explicit thresholds win")


def check_alarm_hysteresis_and_delays():
    cfg = config.validate(MINIMAL)
    a = alarm.Alarms(alarm.room_rules(64.5, cfg), 0.3, 1000, 5000, 3000)
    equal(a.update(24.5, 0), 0, "normal")
    equal(a.update(28.0, 100), 0, "on-delay running")
    equal(a.update(28.0, 1100), 2, "high alarm and warning after 1 s")
    equal(a.sounding(), True, "buzzer")
    equal([e[0] for e in a.events], ["o2_high", "o2_high_warn"], "events")
    a.events.clear()
    a.update(27.8, 2000)  # below 27.9 but inside the hysteresis band: stays raised
    a.update(27.8, 9000)
    equal(a.sounding(), True, "hysteresis holds")
    a.update(27.5, 9100)
    equal(a.sounding(), True, "off-delay running")
    a.update(27.5, 14200)
    equal(a.sounding(), False, "cleared after the off-delay")
    equal(a.events[-1][:3], ("o2_high", "alarm", "clear"), "clear event")
    a.update(None, 20000)
    a.update(None, 23100)
    equal("sensor_fault" in a.active_names(), True, "missing readings: fault warning")
    equal("o2_high_warn" in a.active_names(), True, "missing readings never clear")
    b = alarm.Alarms(alarm.room_rules(64.5, cfg))
    b.update(19.0, 0)
    equal(b.active_names(), ["o2_low_warn", "o2_deficient"], "deficient")
    c = alarm.Alarms(alarm.room_rules(64.5, cfg))
    c.update(25.0, 0, True)
    equal(c.active_names(), ["o2_over_range"], "ZE03 full scale: at least a warning")
    d = alarm.Alarms(alarm.concentrator_rules(cfg))
    d.update(81.9, 0)
    equal(d.sounding(), True, "purity below 82 %")


# -- SST LuminOx (docs/domain.md "Sensor wire protocols" vector) and ADS1115 galvanic cell ---------


def check_luminox_line():
    o2, ppo2, t, p, st = luminox.parse_line(b"O 0157.1 T +21.3 P 0652 % 024.10 e 0000\r\n")
    close(o2, 24.10, 1e-9, "O2 %")
    close(ppo2, 15.71, 1e-9, "ppO2 kPa")
    close(t, 21.3, 1e-9, "temp")
    close(p, 65.2, 1e-9, "pressure kPa")
    equal(st, 0, "status")
    # No checksum in the protocol: a garbled digit is caught by ppO2 != O2 x P.
    raises(luminox.FrameError, luminox.parse_line, b"O 0157.1 T +21.3 P 0652 % 028.10 e 0000")
    raises(luminox.FrameError, luminox.parse_line, b"O 0157.1 T +21.3 P 0652 % 024.10")
    raises(luminox.FrameError, luminox.parse_line, b"O 0157.1 T +2x.3 P 0652 % 024.10 e 0000")
    raises(luminox.FrameError, luminox.parse_line, b"M 01")


def check_luminox_rejects_non_finite():
    # float() parses "nan" and "inf": the ppO2 consistency check alone let NaN through.
    raises(luminox.FrameError, luminox.parse_line, b"O nan T +21.3 P nan % nan e 0000")
    raises(luminox.FrameError, luminox.parse_line, b"O 0157.1 T +inf P 0652 % 024.10 e 0000")


def check_telemetry_leaves_out_non_finite():
    values = [NAN, INF, 20.0, None, None, None, 800]
    doc = json.loads(telemetry.encode(1, 2, 3, values, 0x80))
    equal("o2_pct" in doc or "baro_kpa" in doc, False, "NaN / inf left out")
    equal((doc["temp_c"], doc["co2_ppm"], doc["quality"]), (20.0, 800, 0x80), "the rest")


def check_calibration_always_corrects_pressure():
    cal = calibration.Calibration()
    equal(cal.cal_kpa, 101.325, "factory calibration at sea level")
    # A factory-calibrated cell in a 25 % room in Lhasa reads 25 * 64.5 / 101.325 = 15.91.
    close(cal.apply(25 * 64.5 / 101.325, 64.5), 25.0, 1e-9, "corrected")
    d = fresh_dir()
    path = d + "/cal.json"
    equal(cal.load(path), False, "no file: factory")
    with open(path, "w") as f:
        f.write('{"gain": 1.2, "offset": 0.0, "cal_kpa": 0.0}')
    equal(cal.load(path), False, "a calibration without pressure is not usable")
    with open(path, "w") as f:
        f.write('{"gain": 1.57, "offset": 0.0, "cal_kpa": 64.5}')
    equal(cal.load(path), True, "usable")
    close(cal.apply(20.95 / 1.57, 64.5), 20.95, 1e-9, "fresh air after on-site calibration")


def check_mhz19_frames():
    equal(mhz19.QUERY, bytes((0xFF, 0x01, 0x86, 0, 0, 0, 0, 0, 0x79)), "read query")
    reply = bytearray((0xFF, 0x86, 0x02, 0x60, 0x47, 0x00, 0x00, 0x00, 0))
    reply[8] = winsen.checksum(reply)  # same checksum family as the ZE03-O2
    equal(reply[8], 0xD1, "checksum")
    equal(mhz19.parse_reply(reply), 608, "CO2 ppm")
    raises(mhz19.FrameError, mhz19.parse_reply, bytes(reply[:8]) + b"\x00")
    raises(mhz19.FrameError, mhz19.parse_reply, b"\xff\x87" + bytes(reply[2:]))


def check_ads1115_conversion():
    close(ads1115.counts_to_mv(0x06, 0x80), 13.0, 1e-9, "1664 counts = 13.0 mV")
    close(ads1115.counts_to_mv(0xFF, 0x80), -1.0, 1e-9, "negative (cell reversed)")
    close(ads1115.LSB_MV, 0.0078125, 1e-12, "7.8125 uV / LSB at +-0.256 V")
    close(ads1115.mv_to_o2_pct(13.0, 13.0 / 20.95), 20.95, 1e-9, "fresh-air calibration")
    equal(ads1115.CONFIG_SINGLE_SHOT, 0x8B83, "config register")


# -- signed commands (RFC 4231 vectors) -----------------------------------------------------------


def check_hmac_sha256_rfc4231():
    vectors = (
        (
            b"\x0b" * 20,
            b"Hi There",
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        (
            b"Jefe",
            b"what do ya want for nothing?",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        (
            b"\xaa" * 131,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
    )
    for key, msg, want in vectors:
        equal(auth.hmac_sha256(key, msg), bytes.fromhex(want), "RFC 4231 %r" % msg[:8])


KEY_HEX = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def signed(body, key_hex=KEY_HEX):
    text = json.dumps(body)
    mac = auth.hmac_sha256(bytes.fromhex(key_hex), text.encode())
    return json.dumps({"body": text, "mac": "".join(["%02x" % b for b in mac])})


def check_command_envelope_verification():
    key = auth.key_bytes(KEY_HEX)
    body = {"id": "a1", "ctr": 7, "site": "s", "device": "d", "cmd": "reboot"}
    equal(auth.verify(key, signed(body), "s", "d", 6)["cmd"], "reboot", "authentic, fresh")
    refusals = (
        (signed(body), 7, "replayed or old counter 7"),
        (signed(body), 9, "replayed or old counter 7"),
        (signed(body, "ff" * 32), 0, "bad mac"),
        (json.dumps({"body": json.dumps(body), "mac": "00"}), 0, "bad mac"),  # short MAC
        (signed(body).replace('\\"ctr\\": 7', '\\"ctr\\": 70'), 0, "bad mac"),
        (signed(dict(body, device="other")), 0, "command for s/other"),
        (signed(dict(body, ctr="8")), 0, "replayed or old counter"),
        (signed(dict(body, args=[1])), 0, "args: expected an object"),
        (json.dumps(body), 0, "expected {"),
        ("not json", 0, "expected {"),
    )
    for payload, last, reason in refusals:
        e = raises(auth.Refused, auth.verify, key, payload, "s", "d", last)
        if not str(e).startswith(reason):
            raise AssertionError("%r does not start with %r" % (str(e), reason))
    e = raises(auth.Refused, auth.key_bytes, None)
    equal(str(e), "commands disabled: no command_key in config.json", "no key")
    d = fresh_dir()
    equal(auth.counter(None, d + "/ctr"), 0, "no counter yet")
    auth.counter(1764000000123, d + "/ctr")
    equal(auth.counter(None, d + "/ctr"), 1764000000123, "persisted (ms-sized counters)")
    with open(d + "/ctr", "w") as f:
        f.write("12x")
    e = raises(auth.Refused, auth.counter, None, d + "/ctr")
    equal(str(e), "/cmd_counter damaged: replace it over USB", "damaged counter refuses all")
    raises(config.ConfigError, config.validate, dict(MINIMAL, command_key="xyz"))
    cfg = config.validate(dict(MINIMAL, command_key=KEY_HEX))
    equal(config.public(cfg)["command_key"], "***", "masked in report_config")
