"""o2core's own checks on CPython: the vector file is well-formed, and the codec's edges that
its users rely on. The vectors themselves are run by the gateway's, the firmware's (on the
MicroPython unix port too) and the simulators' tests (o2core/README.md)."""

from __future__ import annotations

import ast
import json
from importlib.resources import files
from pathlib import Path

import pytest

from o2core import mqtt_codec, oxygen

CORE = Path(__file__).resolve().parents[1]


def test_every_vector_section_names_its_source() -> None:
    vectors = json.loads(files("o2core").joinpath("vectors.json").read_text())
    sections = {k: v for k, v in vectors.items() if k != "about"}
    assert sections, "no vectors"
    for name, section in sections.items():
        assert len(section.get("source", "")) > 20, f"{name}: no source"
        assert section["cases"], f"{name}: no cases"


def test_modules_import_only_what_a_board_has() -> None:
    # The firmware's mypy run checks o2core against the MicroPython stubs; this is the cheap,
    # explicit version of the same rule (firmware/README.md "MicroPython").
    board_has = {"micropython", "asyncio", "gc", "json", "math", "struct", "time", "sys"}
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]} if node.level == 0 else set()
            else:
                continue
            assert names <= board_has | {"o2core"}, f"{path.name} imports {names}"


def test_read_varint_stops_at_the_last_byte_and_refuses_a_fifth() -> None:
    # The board reads the length a byte at a time into a 4-byte buffer that may hold stale
    # bytes after the last one (firmware/lib/o2/mqtt.py).
    assert mqtt_codec.read_varint(b"\x05\xff\xff\xff") == (5, 1)
    assert mqtt_codec.read_varint(bytearray(b"\x80\x01\xff\xff")) == (128, 2)
    with pytest.raises(mqtt_codec.MQTTError) as info:
        mqtt_codec.read_varint(b"\x80\x80\x80\x80")
    assert not isinstance(info.value, mqtt_codec.Incomplete)


def test_formulas_reject_what_has_no_answer() -> None:
    with pytest.raises(ValueError, match="pressure 0 kPa: expected > 0"):
        oxygen.isa_altitude_m(0)
    with pytest.raises(ValueError, match="eq_alt_definition 'bogus'"):
        oxygen.equivalent_altitude_m(25.0, 64.5, "bogus")
    assert oxygen.room_thresholds(64.5, 27.0, None)[0] == 27.0
