"""Checked decoding of profile rows (unit tests, no sockets): "no value" sentinels per type and
per profile, NaN/inf floats, plausible ranges, alarm bits with polarity, and clear errors for
malformed [[alarm_bit]] / [workarounds] tables."""

from __future__ import annotations

import math
from typing import Any

import pytest

from o2base.registers import (
    CANONICAL_ALARMS,
    Invalid,
    ProfileError,
    ShortResponseError,
    load_profile,
    parse_profile,
    profile_names,
)


def profile(rows: list[dict[str, Any]], **extra: Any) -> Any:
    return parse_profile(
        {"profile": {"name": "t", "kind": "concentrator"}, "register": rows, **extra}, "t.toml"
    )


ROWS = [
    {"name": "temp_c", "table": "holding", "address": 0, "type": "int16", "scale": 0.1},
    {"name": "flow_lpm", "table": "holding", "address": 1, "type": "uint16", "scale": 0.1,
     "min": 0.0, "max": 10.0},
    {"name": "run_h", "table": "holding", "address": 2, "type": "uint32"},
    {"name": "purity_pct", "table": "holding", "address": 4, "type": "float32",
     "word_order": "CDAB"},
    {"name": "alarm_bits", "table": "holding", "address": 6, "type": "uint16"},
]  # fmt: skip


def decode(p: Any, words: list[int]) -> tuple[dict[str, Any], dict[str, Invalid]]:
    values: dict[str, Any] = {}
    invalid: dict[str, Invalid] = {}
    [block] = p.plan_reads()
    block.decode_checked(words, values, invalid)
    return values, invalid


GOOD = [215, 50, 0, 1200, 0x0000, 0x42BA, 0]  # 21.5 degC, 5 L/min, 1200 h, 93.0 %


def test_good_values_decode_as_before() -> None:
    p = profile(ROWS)
    values, invalid = decode(p, GOOD)
    assert invalid == {}
    assert values == {
        "temp_c": pytest.approx(21.5),
        "flow_lpm": pytest.approx(5.0),
        "run_h": 1200,
        "purity_pct": pytest.approx(93.0),
        "alarm_bits": 0,
    }


@pytest.mark.parametrize(
    ("name", "index", "words", "reason", "raw"),
    [
        ("temp_c", 0, [0x7FFF], "sentinel", 0x7FFF),
        ("temp_c", 0, [0x8000], "sentinel", 0x8000),
        ("flow_lpm", 1, [0xFFFF], "sentinel", 0xFFFF),
        ("flow_lpm", 1, [101], "out_of_range", pytest.approx(10.1)),
        ("run_h", 2, [0xFFFF, 0xFFFF], "sentinel", 0xFFFFFFFF),
        ("run_h", 2, [0x7FFF, 0xFFFF], "out_of_range", 0x7FFFFFFF),  # canonical run_h range
        ("purity_pct", 4, [0x0000, 0x7FC0], "not_finite", 0x7FC00000),  # NaN, CDAB
        ("purity_pct", 4, [0x0000, 0xFF80], "not_finite", 0xFF800000),  # -inf
        ("purity_pct", 4, [0x0000, 0x42F0], "out_of_range", 120.0),  # canonical 0..100 %
    ],
)
def test_no_value_codes_non_finite_and_implausible_values_are_invalid(
    name: str, index: int, words: list[int], reason: str, raw: Any
) -> None:
    raw_words = list(GOOD)
    raw_words[index : index + len(words)] = words
    values, invalid = decode(profile(ROWS), raw_words)
    assert name not in values
    assert set(invalid) == {name}
    assert invalid[name].reason == reason and invalid[name].raw == raw
    assert invalid[name].expected  # says what a good value looks like


def test_sentinel_table_per_profile_and_per_row() -> None:
    off = profile(ROWS, workarounds={"sentinels": False})
    values, invalid = decode(off, [0x8000, 0xFFFF, 0, 0, 0, 0, 0xFFFF])
    # Without the sentinel table -3276.8 degC and 6553.5 L/min are numbers, but implausible.
    assert {k: v.reason for k, v in invalid.items()} == {
        "temp_c": "out_of_range",
        "flow_lpm": "out_of_range",
    }
    assert values["alarm_bits"] == 0xFFFF
    vendor = profile(ROWS, workarounds={"sentinels": {"int16": [0x7FFE]}})
    _, invalid = decode(vendor, [0x7FFE, 50, 0, 0, 0, 0, 0xFFFF])
    assert set(invalid) == {"temp_c", "alarm_bits"}  # uint16 keeps the default 0xFFFF
    rows = [dict(r) for r in ROWS]
    rows[4]["sentinels"] = []  # an alarm word where 0xFFFF means "all alarms": not a code
    values, invalid = decode(profile(rows), [*GOOD[:6], 0xFFFF])
    assert invalid == {} and values["alarm_bits"] == 0xFFFF


def test_short_answer_names_what_is_missing() -> None:
    [block] = profile(ROWS).plan_reads()
    with pytest.raises(ShortResponseError, match=r"expected 7 registers, got 5 \(missing"):
        block.decode_checked(GOOD[:5], {}, {})


def test_alarm_bits_polarity_and_integer_fields() -> None:
    rows = [
        *ROWS,
        {"name": "alarm_dryer", "table": "discrete", "address": 0, "type": "bool"},
        {"name": "ok_word", "table": "holding", "address": 7, "type": "bits", "bit": 2},
    ]
    bits = [
        {"name": "purity_low", "register": "alarm_bits", "bit": 0},
        {"name": "compressor_overheat", "register": "alarm_bits", "bit": 3, "active": "low"},
        {"name": "dryer_fault", "register": "alarm_dryer"},
        {"name": "pressure_low", "register": "ok_word", "active": "low"},
    ]
    p = profile(rows, alarm_bit=bits)
    fields = p.alarm_fields({"alarm_bits": 0b1001, "alarm_dryer": True, "ok_word": True})
    assert fields == {
        "purity_low": 1,
        "compressor_overheat": 0,
        "dryer_fault": 1,
        "pressure_low": 0,
    }
    assert all(type(v) is int for v in fields.values())
    # An invalid (missing) alarm word claims nothing either way.
    assert p.alarm_fields({"alarm_dryer": False, "ok_word": False}) == {
        "dryer_fault": 0,
        "pressure_low": 1,
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"alarm_bit": [{"name": "boom", "register": "alarm_bits"}]}, "name must be one of"),
        ({"alarm_bit": [{"name": "purity_low", "register": "nope"}]}, "'nope' is not a"),
        ({"alarm_bit": [{"name": "purity_low", "register": "run_h"}]}, "not a bit word"),
        ({"alarm_bit": [{"name": "purity_low", "register": "alarm_bits", "bit": 16}]},
         "bit must be 0..15"),
        ({"alarm_bit": [{"name": "purity_low", "register": "alarm_bits", "active": "1"}]},
         "active must be 'high' or 'low'"),
        ({"alarm_bit": [{"name": "purity_low", "register": "alarm_bits", "colour": 1}]},
         "unknown key"),
        ({"workarounds": {"sentinels": {"int64": [1]}}}, "expected one of int16"),
        ({"workarounds": {"sentinels": {"int16": ["x"]}}}, "expected a list of raw codes"),
        ({"workarounds": {"quirk": True}}, "unknown key"),
    ],
)  # fmt: skip
def test_malformed_tables_name_the_file_the_row_and_the_expectation(
    extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ProfileError, match=r"t\.toml") as err:
        profile(ROWS, **extra)
    assert message in str(err.value)


@pytest.mark.parametrize("name", profile_names())
def test_bundled_profiles_name_only_canonical_alarms(name: str) -> None:
    p = load_profile(name)
    assert p.alarm_bits, f"{name} names no alarm bits"
    assert {b.name for b in p.alarm_bits} <= set(CANONICAL_ALARMS)
    for reg in p.registers:  # every numeric row has a plausible range to check against
        if reg.type.value not in ("bool", "bits"):
            assert reg.min is not None and reg.max is not None, (name, reg.name)
            assert math.isfinite(reg.min) and math.isfinite(reg.max)
