"""Register codec and profile files."""

from __future__ import annotations

import os
import struct
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from o2base.registers import (
    ProfileError,
    Register,
    RegType,
    Table,
    WordOrder,
    load_profile,
    parse_profile,
    profile_names,
)


def test_float32_word_orders_decode_a_known_value() -> None:
    # 93.1 as IEEE-754 single is 0x42BA3333: ABCD sends 0x42BA first, CDAB sends 0x3333 first.
    (bits,) = struct.unpack(">I", struct.pack(">f", 93.1))
    assert bits == 0x42BA3333
    abcd = Register("p", Table.INPUT, 0, RegType.FLOAT32, WordOrder.ABCD)
    cdab = Register("p", Table.INPUT, 0, RegType.FLOAT32, WordOrder.CDAB)
    assert abcd.decode([0x42BA, 0x3333]) == pytest.approx(93.1, abs=1e-5)
    assert cdab.decode([0x3333, 0x42BA]) == pytest.approx(93.1, abs=1e-5)
    assert cdab.encode(93.1) == [0x3333, 0x42BA]


@pytest.mark.parametrize(
    ("reg_type", "raw", "scale", "expected"),
    [
        (RegType.UINT16, [948], 0.1, 94.8),
        (RegType.INT16, [0xFFF6], 0.1, -1.0),  # -10 two's complement, x0.1
        (RegType.UINT32, [0x0001, 0x0002], 1.0, 65538),
        (RegType.INT32, [0xFFFF, 0xFFFE], 1.0, -2),
    ],
)
def test_integer_types_and_scale(
    reg_type: RegType, raw: list[int], scale: float, expected: float
) -> None:
    reg = Register("x", Table.HOLDING, 0, reg_type, scale=scale)
    assert reg.decode(raw) == pytest.approx(expected)
    assert reg.encode(expected) == raw


def test_bits_and_inverted_polarity() -> None:
    word = 0b0000_0000_0000_0100
    assert Register("a", Table.HOLDING, 0, RegType.BITS, bit=2).decode([word]) is True
    assert Register("a", Table.HOLDING, 0, RegType.BITS, bit=1).decode([word]) is False
    active_low = Register("a", Table.DISCRETE, 0, RegType.BOOL, invert=True)
    assert active_low.decode([False]) is True


def test_encode_refuses_values_that_do_not_fit() -> None:
    reg = Register("flow_lpm", Table.HOLDING, 0, RegType.UINT16, scale=0.1)
    with pytest.raises(ValueError, match="flow_lpm"):
        reg.encode(7000.0)  # 70000 raw > 65535


def test_bundled_profiles_load_and_plan_coalesced_reads() -> None:
    assert {"medical-concentrator", "psa-plant"} <= set(profile_names())
    plant = load_profile("psa-plant")
    blocks = plant.plan_reads()
    # Eight neighbouring input registers rows -> one request; three discrete inputs -> one.
    assert [(b.table, b.start, b.count) for b in blocks] == [
        (Table.INPUT, 0, 16),
        (Table.DISCRETE, 0, 3),
    ]
    medical = load_profile("medical-concentrator")
    assert medical.register("purity_pct").address == 0  # "register 1" in the manual = PDU 0


def test_plan_splits_on_gap_and_size_limit() -> None:
    regs = [
        {"name": f"r{i}", "table": "holding", "address": a, "type": "uint16"}
        for i, a in enumerate([0, 1, 30, 31])
    ]
    profile = parse_profile({"profile": {"name": "t", "kind": "supply"}, "register": regs}, "t")
    assert [(b.start, b.count) for b in profile.plan_reads(gap_fill=8)] == [(0, 2), (30, 2)]
    assert [(b.start, b.count) for b in profile.plan_reads(gap_fill=40)] == [(0, 32)]
    assert [(b.start, b.count) for b in profile.plan_reads(max_words=20, gap_fill=40)] == [
        (0, 2),
        (30, 2),
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"name": "x", "table": "holding", "address": 0}, "missing key 'type'"),
        ({"name": "x", "table": "holdings", "address": 0, "type": "uint16"}, "holdings"),
        ({"name": "x", "table": "coil", "address": 0, "type": "uint16"}, "does not fit"),
        ({"name": "x", "table": "holding", "address": 0, "type": "uint16", "scal": 1}, "scal"),
        ({"name": "x", "table": "holding", "address": 0, "type": "uint16", "scale": 0}, "scale"),
    ],
)
def test_bad_profile_rows_name_the_row_and_key(row: dict[str, object], message: str) -> None:
    with pytest.raises(ProfileError, match=message) as err:
        parse_profile({"profile": {"name": "t", "kind": "plant"}, "register": [row]}, "t.toml")
    assert "t.toml" in str(err.value) and "#1" in str(err.value)


def test_unknown_profile_lists_the_available_ones() -> None:
    with pytest.raises(ProfileError, match="psa-plant"):
        load_profile("no-such-model")


def _my_profile(folder: Path, name: str) -> Path:
    from importlib import resources

    bundled = Path(str(resources.files("o2base") / "profiles" / "psa-plant.toml")).read_text()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(bundled.replace('name = "psa-plant"', f'name = "{name}"', 1))
    return path


def test_profile_search_path_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name is looked up in $O2CHAIN_PROFILE_PATH, then among the bundled profiles; a .toml
    value is a path (from the current directory, or beside the scenario file that names it)."""
    import subprocess

    from o2base.procs import o2chain_argv
    from o2base.registers import ProfileError, load_profile
    from simulators.scenario import load_scenario

    _my_profile(tmp_path / "site-profiles", "our-plant")
    env = {**os.environ, "O2CHAIN_PROFILE_PATH": str(tmp_path / "site-profiles")}
    listed = subprocess.run(o2chain_argv("sim", "profiles"), capture_output=True, text=True,
                            env=env, timeout=60)  # fmt: skip
    assert {"our-plant", "psa-plant"} <= set(listed.stdout.split())
    monkeypatch.setenv("O2CHAIN_PROFILE_PATH", str(tmp_path / "site-profiles"))
    assert load_profile("our-plant").name == "our-plant"
    monkeypatch.delenv("O2CHAIN_PROFILE_PATH")
    with pytest.raises(ProfileError, match=r"unknown profile .our-plant.*path of a .toml file"):
        load_profile("our-plant")
    with pytest.raises(ProfileError, match="no such profile file"):
        load_profile(tmp_path / "nowhere.toml")

    scenario_dir = tmp_path / "scenarios"
    _my_profile(scenario_dir, "beside")
    bundled = Path(
        str(resources.files("simulators") / "scenarios" / "lhasa-hotel.toml")
    ).read_text()
    text = bundled.replace('profile = "psa-plant"', 'profile = "beside.toml"', 1)
    (scenario_dir / "mine.toml").write_text(text)
    monkeypatch.chdir(tmp_path)  # not the scenario's folder
    scenario = load_scenario(scenario_dir / "mine.toml")
    refs = [e.profile for e in scenario.plant if e.profile.endswith(".toml")]
    assert refs == [str(scenario_dir / "beside.toml")]


@pytest.mark.parametrize(
    ("field_type", "scale", "raw", "expected"),
    [
        ("", 0.1, [0, 12345], 1234.5),  # as decoded: scaled, a float
        ("integer", 0.1, [0, 12345], 1234),  # whole units, rounded
        ("integer", 0.1, [0, 12346], 1235),
        ("", 1.0, [0, 7], 7),  # as decoded: unscaled, an integer
        ("float", 1.0, [0, 7], 7.0),
    ],
)
def test_field_type_sets_what_a_number_row_is_stored_as(
    field_type: str, scale: float, raw: list[int], expected: float
) -> None:
    reg = Register("run_h", Table.HOLDING, 0, RegType.INT32, scale=scale, field_type=field_type)
    for value in (reg.decode(raw), reg.decode_checked(raw)):
        assert value == expected and type(value) is type(expected)
    assert reg.value_class == {int: "integer", float: "float"}[type(expected)]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('type = "int32"\nfield_type = "text"', "field_type 'text': expected 'integer' or"),
        ('type = "bits"\nbit = 1\nfield_type = "integer"', "field_type 'integer': .* bits row"),
    ],
)
def test_a_bad_field_type_is_named(tmp_path: Path, row: str, message: str) -> None:
    text = f"""
[profile]
name = "x"
kind = "plant"

[[register]]
name = "run_h"
table = "holding"
address = 0
{row}
"""
    with pytest.raises(ProfileError, match=r"\[\[register\]\] #1 \(run_h\): " + message):
        parse_profile(tomllib.loads(text), "x.toml")


def test_every_bundled_row_decodes_to_its_value_class() -> None:
    python = {"boolean": bool, "integer": int, "float": float}
    for name in profile_names():
        for block in load_profile(name).plan_reads():
            raw: list[int] | list[bool] = (
                [True] * block.count if block.table.is_bits else [1] * block.count
            )
            for reg in block.registers:
                offset = reg.address - block.start
                value = reg.decode(raw[offset : offset + reg.words])
                assert type(value) is python[reg.value_class], (name, reg.name, value)
