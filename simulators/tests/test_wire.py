"""Sensor wires: docs/domain.md test vectors, protocol behaviour in fake time, faults, a pty."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import time
from collections.abc import Callable, Iterator
from importlib.resources import files

import pytest

from simulators.wire import winsen
from simulators.wire.faults import PtySensor
from simulators.wire.gasboard import READ_QUERY, GasboardWire, read_reply
from simulators.wire.luminox import LuminOxWire, line
from simulators.wire.mhz19 import READ_QUERY as READ_CO2
from simulators.wire.mhz19 import MHZ19Wire
from simulators.wire.ze03 import ZE03Wire
from simulators.wire.ze03 import reply_frame as ze03_reply

VECTORS = [
    ("16 09 01 03 B4 00 32 00 D2 00 00 25", 94.8, 5.0, 21.0),
    ("16 09 01 01 F4 00 64 00 D2 00 00 B5", 50.0, 10.0, 21.0),
]


def decode_gasboard(frame: bytes, flow_scale: float = 0.1) -> tuple[float, float, float]:
    """An independent decoder, straight from docs/domain.md, Sensor wire protocols."""
    if len(frame) != 12 or frame[:3] != b"\x16\x09\x01":
        raise ValueError(f"not a read reply: {frame.hex(' ')}")
    if (256 - sum(frame[:-1]) % 256) % 256 != frame[-1]:
        raise ValueError("bad checksum")
    o2, flow, temp = (int.from_bytes(frame[i : i + 2], "big") for i in (3, 5, 7))
    return o2 * 0.1, flow * flow_scale, temp * 0.1


@contextlib.contextmanager
def opened(port: str) -> Iterator[int]:
    """The pty at ``port`` opened as the host's UART."""
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    try:
        yield fd
    finally:
        os.close(fd)


def read_until(fd: int, enough: Callable[[bytes], bool], timeout_s: float) -> bytes:
    """What the sensor sends on ``fd`` until ``enough(got)`` or ``timeout_s`` (then what came:
    the caller's asserts say what was missing)."""
    got = b""
    deadline = time.monotonic() + timeout_s
    while not enough(got) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], min(0.5, timeout_s / 10))
        if ready:
            got += os.read(fd, 256)
    return got


@pytest.mark.parametrize(("hex_frame", "o2", "flow", "temp"), VECTORS)
def test_gasboard_frames_match_the_domain_vectors(hex_frame, o2, flow, temp) -> None:
    assert read_reply(o2, flow, temp) == bytes.fromhex(hex_frame)
    assert decode_gasboard(bytes.fromhex(hex_frame)) == pytest.approx((o2, flow, temp))


def test_gasboard_answers_the_read_query_and_streams_every_500_ms() -> None:
    wire = GasboardWire(o2_pct=94.8, flow_lpm=5.0, temp_c=21.0, noise_pct=0.0)
    assert wire.tick(0.0) == b""
    # A query split across reads, with line noise before it: the sensor resyncs on 0x11.
    assert wire.receive(b"\x00\x11\x01", 0.1) == b""
    answer = wire.receive(b"\x01\xed", 0.1)
    assert answer == bytes.fromhex(VECTORS[0][0])
    assert wire.receive(bytes.fromhex("11010100"), 0.2) == b""  # bad checksum: ignored
    assert wire.bad_frames == 1
    streamed = [wire.tick(t / 10) for t in range(1, 31)]  # 0.1 .. 3.0 s
    assert sum(1 for f in streamed if f) == 6  # every 500 ms
    assert all(decode_gasboard(f) == pytest.approx((94.8, 5.0, 21.0)) for f in streamed if f)
    version = wire.receive(bytes.fromhex("11011ED0"), 3.1)
    assert version[:3] == b"\x16\x0c\x1e" and version[3:-1] == b"GB7500-SIM1"


def test_gasboard_flow_scale_variant() -> None:
    wire = GasboardWire(o2_pct=93.0, flow_lpm=5.0, flow_scale=0.01, noise_pct=0.0)
    frame = wire.receive(READ_QUERY, 0.0)
    assert decode_gasboard(frame, flow_scale=0.01)[1] == pytest.approx(5.0)
    assert frame[5:7] == (500).to_bytes(2, "big")


def test_gasboard_faults() -> None:
    wire = GasboardWire(o2_pct=93.0, noise_pct=0.0, seed=3, stream_interval_s=None)
    wire.faults.bad_checksum_every = 2
    frames = [wire.receive(READ_QUERY, float(t)) for t in range(4)]
    with pytest.raises(ValueError, match="checksum"):
        decode_gasboard(frames[1])
    decode_gasboard(frames[2])
    wire.faults.bad_checksum_every = 0
    wire.faults.drop_every = 1
    assert wire.receive(READ_QUERY, 5.0) == b""
    wire.faults.drop_every = 0
    wire.faults.garbage_every = 1
    noisy = wire.receive(READ_QUERY, 6.0)
    assert len(noisy) > 12 and decode_gasboard(noisy[noisy.rindex(b"\x16\x09\x01") :])
    wire.faults.garbage_every = 0
    wire.faults.drift_per_h = -1.0  # sensor ageing
    wire.receive(READ_QUERY, 0.0)
    drifted = decode_gasboard(wire.receive(READ_QUERY, 7200.0))[0]
    assert drifted == pytest.approx(91.0, abs=0.11)
    wire.faults.drift_per_h = 0.0
    wire.faults.stuck = True
    first = decode_gasboard(wire.receive(READ_QUERY, 8000.0))
    wire.o2_pct = 50.0
    assert decode_gasboard(wire.receive(READ_QUERY, 8001.0)) == first
    wire.faults.stuck = False
    wire.faults.disconnected = True
    assert wire.receive(READ_QUERY, 8002.0) == b""


LUMINOX_RE = re.compile(
    rb"O (\d{4}\.\d) T ([+-]\d{2}\.\d) P (\d{4}) % (\d{3}\.\d{2}) e (\d{4})\r\n"
)


def test_luminox_line_matches_the_domain_example() -> None:
    assert line(24.10, 21.3, 65.2) == b"O 0157.1 T +21.3 P 0652 % 024.10 e 0000\r\n"
    m = LUMINOX_RE.fullmatch(line(24.10, 21.3, 65.2))
    assert m is not None
    ppo2, _temp, pressure, o2, _status = (float(g) for g in m.groups())
    assert ppo2 == pytest.approx(o2 / 100 * pressure, abs=0.1)


def test_luminox_modes_and_faults() -> None:
    wire = LuminOxWire(o2_pct=24.1, temp_c=21.3, baro_kpa=65.2, noise_pct=0.0, seed=2)
    assert wire.tick(0.0) == b""
    streamed = [wire.tick(t / 10) for t in range(1, 31)]
    assert [s for s in streamed if s] == [b"O 0157.1 T +21.3 P 0652 % 024.10 e 0000\r\n"] * 3
    assert wire.receive(b"M 1\r\n", 3.1) == b"M 01\r\n"
    assert all(wire.tick(3.1 + t) == b"" for t in range(5))  # poll mode: silent
    assert wire.receive(b"%\r\n", 9.0) == b"% 024.10\r\n"
    assert LUMINOX_RE.fullmatch(wire.receive(b"A\r\n", 9.1))
    wire.faults.bad_checksum_every = 1
    garbled = wire.receive(b"A\r\n", 9.2)
    assert b"?" in garbled and not LUMINOX_RE.fullmatch(garbled)
    wire.faults.bad_checksum_every = 0
    wire.faults.garbage_every = 1
    noisy = wire.receive(b"A\r\n", 9.3)
    assert LUMINOX_RE.search(noisy) and not LUMINOX_RE.fullmatch(noisy)


def test_gasboard_on_a_real_pty() -> None:
    wire = GasboardWire(o2_pct=94.8, noise_pct=0.0, stream_interval_s=0.5)
    with PtySensor(wire) as sim, opened(sim.port_path) as fd:
        os.write(fd, READ_QUERY)
        # The query's answer comes at once; a streamed frame follows within 0.5 s.
        got = read_until(fd, lambda got: len(got) >= 24, 5)
    assert len(got) >= 24
    assert decode_gasboard(got[:12]) == pytest.approx((94.8, 5.0, 21.0))
    assert decode_gasboard(got[12:24])[0] == pytest.approx(94.8)


def test_cli_serves_a_luminox_on_a_pty(tmp_path) -> None:
    from o2base.procs import ChildProcess, o2chain_argv

    argv = o2chain_argv("sim", "sensor", "luminox", "--o2-pct", "24.1", "--fault", "drop_every=2")
    with ChildProcess(argv, tmp_path / "luminox.log") as sim:
        port = sim.wait_for_log(r'"port": "([^"]+)"').group(1)
        with opened(port) as fd:
            os.write(fd, b"M 1\r\nA\r\nA\r\nA\r\n")
            got = read_until(fd, lambda got: got.count(b"\n") >= 2, 5)
    lines = got.split(b"\r\n")
    assert lines[0] == b"M 01"
    assert LUMINOX_RE.fullmatch(lines[1] + b"\r\n")


def test_gasboard_sends_negative_temperature_as_twos_complement() -> None:
    # -5.0 degC = 0xFFCE; an independent signed decode of the frame.
    frame = read_reply(94.8, 5.0, -5.0)
    assert frame.hex(" ") == "16 09 01 03 b4 00 32 ff ce 00 00 2a"
    assert int.from_bytes(frame[7:9], "big", signed=True) * 0.1 == pytest.approx(-5.0)


def test_ze03_reads_partial_pressure() -> None:
    # Factory-calibrated at sea level: a 25 % room in Lhasa (64.5 kPa) reads ~15.9 %.
    wire = ZE03Wire(o2_pct=25.0, noise_pct=0.0, baro_kpa=64.5)
    assert wire.reading_pct() == pytest.approx(15.91, abs=0.01)
    assert wire.receive(bytes.fromhex("ff0186000000000079"), 0.0) == ze03_reply(15.9)
    wire.baro_kpa = 101.325
    assert wire.receive(bytes.fromhex("ff0186000000000079"), 0.0) == ze03_reply(25.0)
    wire.o2_pct = 41.0  # beyond the module's 25.0 % full scale: clamped
    assert wire.receive(bytes.fromhex("ff0186000000000079"), 0.0) == ze03_reply(25.0)


def decode_mhz19(frame: bytes) -> int:
    """Independent decoder from the Winsen MH-Z19B manual."""
    if len(frame) != 9 or frame[:2] != b"\xff\x86":
        raise ValueError(f"not a read reply: {frame.hex(' ')}")
    if (0xFF - sum(frame[1:8]) + 1) & 0xFF != frame[8]:
        raise ValueError("bad checksum")
    return frame[2] * 256 + frame[3]


def test_mhz19_answers_reads_and_ignores_bad_frames() -> None:
    wire = MHZ19Wire(co2_ppm=608, temp_c=31, noise_ppm=0.0)
    assert wire.receive(b"\x00\xff\x01\x86\x00", 0.0) == b""  # noise, then half a query
    answer = wire.receive(bytes.fromhex("0000000079"), 0.0)
    assert answer == bytes.fromhex("ff 86 02 60 47 00 00 00 d1")
    assert decode_mhz19(answer) == 608
    assert wire.receive(bytes.fromhex("ff0186000000000078"), 0.1) == b""  # bad checksum
    assert wire.bad_frames >= 1 and wire.queries == 1
    assert wire.receive(bytes.fromhex("ff0179000000000086"), 0.2) == b""  # ABC off: no answer
    wire.faults.disconnected = True
    assert wire.receive(READ_CO2, 0.3) == b""


def test_cli_serves_an_mhz19_on_a_pty(tmp_path) -> None:
    from o2base.procs import ChildProcess, o2chain_argv

    argv = o2chain_argv("sim", "sensor", "mhz19", "--co2-ppm", "1200")
    with ChildProcess(argv, tmp_path / "mhz19.log") as sim:
        port = sim.wait_for_log(r'"port": "([^"]+)"').group(1)
        with opened(port) as fd:
            os.write(fd, READ_CO2)
            got = read_until(fd, lambda got: len(got) >= 9, 5)
    assert abs(decode_mhz19(got[:9]) - 1200) <= 30


def test_cli_serves_a_ze03_on_a_pty_with_its_faults(tmp_path) -> None:
    """`sim sensor ze03`: the cell reads the O2 partial pressure (24 % at 65.2 kPa reads
    15.4 % in sea-level units), and a wire fault from the command line applies."""
    from o2base.procs import ChildProcess, o2chain_argv

    query = bytes.fromhex("ff0186000000000079")

    def ask(port: str, count: int) -> list[bytes]:
        answers = []
        with opened(port) as fd:
            for _ in range(count):
                os.write(fd, query)
                answers.append(read_until(fd, lambda got: len(got) >= 9, 2))
        return answers

    argv = o2chain_argv("sim", "sensor", "ze03", "--o2-pct", "24", "--baro-kpa", "65.2",
                        "--fault", "drop_every=2")  # fmt: skip
    with ChildProcess(argv, tmp_path / "ze03.log") as sim:
        port = sim.wait_for_log(r'"port": "([^"]+)"').group(1)
        answers = ask(port, 4)
    assert [len(a) for a in answers] == [9, 0, 9, 0]  # every 2nd answer dropped
    first = answers[0]
    assert first[:2] == b"\xff\x86" and (-sum(first[1:8])) & 0xFF == first[8]
    assert abs((first[2] * 256 + first[3]) / 10 - 24 * 65.2 / 101.325) <= 0.2


def test_winsen_checksum_oracle_answers_the_shared_vectors() -> None:
    """The simulators' Winsen checksum is the oracle of o2core.winsen (written independently):
    both answer o2core/vectors.json."""
    vectors = json.loads(files("o2core").joinpath("vectors.json").read_text())
    for case in vectors["winsen_checksum"]["cases"]:
        frame = bytes.fromhex(case["hex"])
        assert winsen.checksum(frame) == frame[8], case["what"]
