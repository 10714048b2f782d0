"""Modbus device profiles: register tables, decoding, encoding and read planning.

A profile is a table of rows (field, table, address, type, word order, scale, unit) rendered by
one generic codec, shared by the simulators (encode) and the gateway (plan + decode). Pure: no
sockets, no clocks. Profile files live in ``o2base/profiles/*.toml``, one per equipment model.

Address convention: ``address`` in a profile is the number printed in the vendor's manual;
the profile's ``address_base`` says what that number means (0: PDU address; 1: 1-based
register number, e.g. "register 1" = PDU 0). Reference numbers like 40001 are written as
``address = 40001`` with ``address_base = 40001`` (docs/domain.md, "Modbus equipment": 40001 =
holding register 0).

**Checked decoding** (:meth:`ReadBlock.decode_checked`): a row whose raw contents is one of its
"no value" codes (:data:`DEFAULT_SENTINELS`, overridable per profile in ``[workarounds]`` and per
row with ``sentinels = [...]``), a float that is NaN or infinite, or an engineering value outside
the row's ``min``..``max`` (or the canonical field's :data:`CANONICAL_RANGES`) is returned as an
:class:`Invalid` naming why, never as a number.

**Alarm bits** (``[[alarm_bit]]``): the device's own alarm flags, each named canonically
(:data:`CANONICAL_ALARMS`) with its polarity; :meth:`Profile.alarm_fields` turns the decoded
rows into one 0/1 integer field per alarm.
"""

from __future__ import annotations

import math
import os
import struct
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any


class ProfileError(ValueError):
    """A profile file is malformed; the message names the file, the row and the key."""


class Table(StrEnum):
    HOLDING = "holding"  # function 3, read/write words
    INPUT = "input"  # function 4, read-only words
    COIL = "coil"  # function 1, read/write bits
    DISCRETE = "discrete"  # function 2, read-only bits

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)


class RegType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    BOOL = "bool"  # one coil / discrete input
    BITS = "bits"  # one bit of a 16-bit word (``bit`` = 0..15, LSB = 0)


class WordOrder(StrEnum):
    ABCD = "ABCD"  # big-endian words, high word first
    CDAB = "CDAB"  # big-endian words, low word first ("word swap")


_WORDS = {RegType.INT32: 2, RegType.UINT32: 2, RegType.FLOAT32: 2}
_STRUCT = {
    RegType.INT16: ">h",
    RegType.UINT16: ">H",
    RegType.INT32: ">i",
    RegType.UINT32: ">I",
    RegType.FLOAT32: ">f",
}
# Modbus application protocol v1.1b3, section 6: at most 125 registers or 2000 bits per read.
MAX_READ_WORDS = 125
MAX_READ_BITS = 2000

Value = float | int | bool

# Raw register contents that devices commonly send for "no value" (sensor absent, warming up,
# out of its range): the extremes of each type. Keys are the type, values the unsigned raw
# patterns (32-bit: the two words in ABCD order after the row's word order is applied). NaN
# (any exponent-all-ones pattern) is always rejected for float32, as not finite.
DEFAULT_SENTINELS: dict[RegType, frozenset[int]] = {
    RegType.INT16: frozenset({0x7FFF, 0x8000}),
    RegType.UINT16: frozenset({0xFFFF}),
    RegType.INT32: frozenset({0x7FFFFFFF, 0x80000000}),
    RegType.UINT32: frozenset({0xFFFFFFFF}),
    RegType.FLOAT32: frozenset(),
}

# Plausible ranges of the canonical fields (docs/domain.md, "Modbus equipment"), used for a
# profile row that gives no ``min``/``max`` of its own. Physical limits, not alarm limits.
CANONICAL_RANGES: dict[str, tuple[float, float]] = {
    "purity_pct": (0.0, 100.0),
    "flow_lpm": (0.0, 100_000.0),
    "flow_nm3h": (0.0, 6_000.0),
    "outlet_kpa": (-100.0, 25_000.0),
    "tank_kpa": (-100.0, 25_000.0),
    "bed_a_kpa": (-100.0, 2_000.0),
    "bed_b_kpa": (-100.0, 2_000.0),
    "feed_air_kpa": (-100.0, 2_000.0),
    "dew_point_c": (-100.0, 60.0),
    "compressor_temp_c": (-40.0, 200.0),
    "ambient_temp_c": (-50.0, 70.0),
    "temp_c": (-50.0, 150.0),
    "power_w": (0.0, 1_000_000.0),
    "run_h": (0.0, 1_000_000.0),
    "compressor_h": (0.0, 1_000_000.0),
    "filter_h": (0.0, 1_000_000.0),
    "o2_cell_age_d": (0.0, 36_500.0),
    "calibration_age_d": (0.0, 36_500.0),
}

# The device alarms a profile may name in ``[[alarm_bit]]`` (canonical name: meaning). The
# gateway's built-in equipment rules (gateway/equipment_rules.py) raise one alarm per name;
# the list follows the alarms WHO's technical specifications for oxygen concentrators (2015)
# require (low purity, no flow, power failure, overheating, high/low system pressure) plus the
# PSA plant's dryer and compressor.
CANONICAL_ALARMS: dict[str, str] = {
    "purity_low": "product purity below the unit's own limit",
    "flow_low": "product flow low or blocked (no flow)",
    "power_fault": "power supply failure",
    "temp_high": "cabinet or unit over temperature",
    "compressor_overheat": "compressor over temperature",
    "pressure_low": "system pressure low",
    "pressure_high": "system pressure high",
    "dryer_fault": "feed air dryer fault",
    "sieve_fault": "sieve bed or valve cycle fault",
    "o2_sensor_fault": "oxygen sensor fault",
    "service_due": "the unit's own service reminder",
    "general_fault": "unspecified device fault",
}


class Invalid:
    """A decoded row the gateway must not use as a number.

    ``reason`` is ``sentinel``, ``not_finite`` or ``out_of_range`` (the strings of
    ``gateway.readings.InvalidReason``); ``raw`` is the register contents as an unsigned integer
    for sentinels and non-finite floats, the engineering value for out-of-range values;
    ``expected`` says what a valid value looks like.
    """

    __slots__ = ("expected", "raw", "reason")

    def __init__(self, reason: str, raw: float, expected: str):
        self.reason = reason
        self.raw = raw
        self.expected = expected

    def __repr__(self) -> str:
        return f"Invalid({self.reason!r}, {self.raw!r}, {self.expected!r})"


@dataclass(frozen=True)
class Register:
    """One row of a register table. ``address`` is the PDU address (0-based)."""

    name: str
    table: Table
    address: int
    type: RegType
    word_order: WordOrder = WordOrder.ABCD
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    bit: int = 0
    invert: bool = (
        False  # some vendors report alarm bits active-low (docs/domain.md, "Modbus equipment")
    )
    description: str = ""
    min: float | None = None  # plausible range of the engineering value (checked decoding)
    max: float | None = None
    sentinels: frozenset[int] = frozenset()  # raw patterns meaning "no value" (see module doc)
    # The field's type in InfluxDB, which keeps one type per field and measurement: "" = as
    # decoded (an unscaled integer register an integer, anything else a float); "integer"
    # rounds the engineering value, "float" writes an unscaled integer as a float.
    field_type: str = ""

    @property
    def value_class(self) -> str:
        """What this row's field is stored as: ``boolean``, ``integer`` or ``float``."""
        if self.type is RegType.BOOL or self.type is RegType.BITS:
            return "boolean"
        if self.field_type:
            return self.field_type
        plain = self.scale == 1.0 and self.offset == 0.0 and self.type is not RegType.FLOAT32
        return "integer" if plain else "float"

    @property
    def words(self) -> int:
        """Number of 16-bit words (or bits, for bit tables) this row occupies."""
        return _WORDS.get(self.type, 1)

    def decode(self, raw: list[int] | list[bool]) -> Value:
        """Engineering value from the raw words (or bits) of this row, scale and offset applied."""
        if self.type is RegType.BOOL:
            return bool(raw[0]) != self.invert
        if self.type is RegType.BITS:
            return bool((int(raw[0]) >> self.bit) & 1) != self.invert
        words = [int(w) & 0xFFFF for w in raw[: self.words]]
        if self.word_order is WordOrder.CDAB:
            words.reverse()
        data = b"".join(w.to_bytes(2, "big") for w in words)
        (number,) = struct.unpack(_STRUCT[self.type], data)
        return self._engineering(number)

    def _engineering(self, number: float) -> int | float:
        plain = self.scale == 1.0 and self.offset == 0.0 and self.type is not RegType.FLOAT32
        if not self.field_type:
            return int(number) if plain else float(number) * self.scale + self.offset
        value = number if plain else float(number) * self.scale + self.offset
        return round(value) if self.field_type == "integer" else float(value)

    def decode_checked(self, raw: list[int] | list[bool]) -> Value | Invalid:
        """Like :meth:`decode`, but a "no value" code, a non-finite float or a value outside
        ``min``..``max`` comes back as :class:`Invalid` (bit rows are never invalid)."""
        rtype = self.type
        if rtype is RegType.BOOL:
            return bool(raw[0]) != self.invert
        if rtype is RegType.BITS:
            return bool((int(raw[0]) >> self.bit) & 1) != self.invert
        if self.words == 1:
            pattern = int(raw[0]) & 0xFFFF
        elif self.word_order is WordOrder.CDAB:
            pattern = ((int(raw[1]) & 0xFFFF) << 16) | (int(raw[0]) & 0xFFFF)
        else:
            pattern = ((int(raw[0]) & 0xFFFF) << 16) | (int(raw[1]) & 0xFFFF)
        if pattern in self.sentinels:
            return Invalid("sentinel", pattern, f"a value, not the {rtype} 'no value' code")
        number: float | int
        if rtype is RegType.UINT16 or rtype is RegType.UINT32:
            number = pattern
        elif rtype is RegType.INT16:
            number = pattern - 0x10000 if pattern & 0x8000 else pattern
        elif rtype is RegType.INT32:
            number = pattern - 0x100000000 if pattern & 0x80000000 else pattern
        else:
            (number,) = struct.unpack(">f", pattern.to_bytes(4, "big"))
            if not math.isfinite(number):
                return Invalid("not_finite", pattern, f"a finite float32, got {number}")
        value: Value = self._engineering(number)
        lo, hi = self.min, self.max
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return Invalid("out_of_range", value, f"{_g(lo)}..{_g(hi)} {self.unit}".rstrip())
        return value

    def encode(self, value: Value) -> list[int]:
        """Raw words for an engineering value (the inverse of :meth:`decode`).

        Raises ``ValueError`` when the value does not fit the register type.
        """
        if self.type in (RegType.BOOL, RegType.BITS):
            return [int(bool(value) != self.invert)]
        raw = (float(value) - self.offset) / self.scale
        if self.type is RegType.FLOAT32:
            data = struct.pack(">f", raw)
        else:
            if not math.isfinite(raw):
                raise ValueError(f"{self.name}: {value!r} is not a finite number")
            try:
                data = struct.pack(_STRUCT[self.type], round(raw))
            except struct.error as exc:
                raise ValueError(f"{self.name}: {value!r} does not fit {self.type}") from exc
        words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
        if self.word_order is WordOrder.CDAB:
            words.reverse()
        return words


@dataclass(frozen=True)
class ReadBlock:
    """One Modbus read request covering neighbouring rows of one table."""

    table: Table
    start: int
    count: int
    registers: tuple[Register, ...]

    def decode(self, raw: list[int] | list[bool]) -> dict[str, Value]:
        """Decode every row of the block from the block's raw words/bits."""
        if len(raw) < self.count:
            raise ValueError(
                f"{self.table} read at {self.start}: expected {self.count} values, got {len(raw)}"
            )
        values: dict[str, Value] = {}
        for reg in self.registers:
            i = reg.address - self.start
            values[reg.name] = reg.decode(raw[i : i + reg.words])
        return values

    def decode_checked(
        self, raw: list[int] | list[bool], values: dict[str, Value], invalid: dict[str, Invalid]
    ) -> None:
        """Decode every row into ``values``, or into ``invalid`` when it is no usable number.

        Raises :class:`ShortResponseError` when ``raw`` holds fewer values than the block.
        """
        if len(raw) < self.count:
            raise ShortResponseError(self, len(raw))
        start = self.start
        for reg in self.registers:
            i = reg.address - start
            value = reg.decode_checked(raw[i : i + reg.words])
            if isinstance(value, Invalid):
                invalid[reg.name] = value
            else:
                values[reg.name] = value

    def describe(self) -> str:
        """``holding 0+8`` (table, PDU start and count), for messages."""
        return f"{self.table} {self.start}+{self.count}"


class ShortResponseError(ValueError):
    """A device answered a read with fewer registers (or bits) than asked for."""

    def __init__(self, block: ReadBlock, got: int):
        missing = [r.name for r in block.registers if r.address + r.words > block.start + got]
        super().__init__(
            f"{block.describe()}: expected {block.count} "
            f"{'bits' if block.table.is_bits else 'registers'}, got {got} "
            f"(missing {', '.join(missing)})"
        )
        self.block = block
        self.got = got


def _g(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


@dataclass(frozen=True)
class AlarmBit:
    """One device alarm: bit ``bit`` of row ``register`` (for a bool/bit row: the row itself)
    means canonical alarm ``name`` when it reads ``active_high`` (1) or not (active low)."""

    name: str
    register: str
    bit: int = 0
    active_high: bool = True
    description: str = ""


@dataclass(frozen=True)
class Profile:
    """A device model's register map and nominal data."""

    name: str
    kind: str  # "concentrator" | "plant" | "supply" (gateway measurement)
    description: str
    registers: tuple[Register, ...]
    nominal: dict[str, Any] = field(default_factory=dict)
    address_base: int = 0  # what the file's addresses meant (0: PDU, 1: register numbers)
    alarm_bits: tuple[AlarmBit, ...] = ()

    def alarm_fields(self, values: dict[str, Value]) -> dict[str, int]:
        """One 0/1 integer field per ``[[alarm_bit]]`` whose row decoded (1 = alarm active).

        Integers, not bools: the alarm engine judges numbers only.
        """
        out: dict[str, int] = {}
        for ab in self.alarm_bits:
            raw = values.get(ab.register)
            if raw is None:
                continue  # the row was invalid or not read: no claim either way
            bit = (int(raw) >> ab.bit) & 1
            out[ab.name] = bit if ab.active_high else bit ^ 1
        return out

    def register(self, name: str) -> Register:
        for reg in self.registers:
            if reg.name == name:
                return reg
        raise KeyError(f"profile {self.name!r} has no register {name!r}")

    def plan_reads(self, max_words: int = MAX_READ_WORDS, gap_fill: int = 8) -> list[ReadBlock]:
        """Coalesce neighbouring rows into as few reads as possible.

        Rows of one table whose addresses are at most ``gap_fill`` words apart share a request
        (the unused words in between are read and ignored), up to ``max_words`` per request
        (bit tables: ``MAX_READ_BITS``).
        """
        blocks: list[ReadBlock] = []
        for table in Table:
            rows = sorted((r for r in self.registers if r.table is table), key=lambda r: r.address)
            limit = MAX_READ_BITS if table.is_bits else min(max_words, MAX_READ_WORDS)
            current: list[Register] = []
            start = end = 0
            for reg in rows:
                reg_end = reg.address + reg.words
                if current and reg.address - end <= gap_fill and reg_end - start <= limit:
                    current.append(reg)
                    end = max(end, reg_end)
                    continue
                if current:
                    blocks.append(ReadBlock(table, start, end - start, tuple(current)))
                current, start, end = [reg], reg.address, reg_end
            if current:
                blocks.append(ReadBlock(table, start, end - start, tuple(current)))
        return blocks


_ROW_KEYS = {
    "name",
    "table",
    "address",
    "type",
    "word_order",
    "scale",
    "offset",
    "unit",
    "bit",
    "invert",
    "description",
    "min",
    "max",
    "sentinels",
    "field_type",
}
_ALARM_KEYS = {"name", "register", "bit", "active", "description"}
_WORKAROUND_KEYS = {"sentinels"}


def _raw_codes(value: Any, where: str) -> frozenset[int]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFFFFFF for v in value
    ):
        raise ProfileError(f"{where}: expected a list of raw codes 0..0xFFFFFFFF, got {value!r}")
    return frozenset(value)


def _sentinel_table(data: dict[str, Any], source: str) -> dict[RegType, frozenset[int]]:
    """``[workarounds] sentinels``: ``false`` (none), or per-type lists replacing the defaults."""
    work = data.get("workarounds", {})
    if not isinstance(work, dict):
        raise ProfileError(f"{source}: [workarounds] must be a table")
    unknown = set(work) - _WORKAROUND_KEYS
    if unknown:
        raise ProfileError(f"{source}: [workarounds]: unknown key(s) {sorted(unknown)}")
    spec = work.get("sentinels", True)
    if spec is True:
        return dict(DEFAULT_SENTINELS)
    if spec is False:
        return {t: frozenset() for t in DEFAULT_SENTINELS}
    if not isinstance(spec, dict):
        raise ProfileError(
            f"{source}: [workarounds].sentinels: expected true, false or a table of type = [codes]"
        )
    table = dict(DEFAULT_SENTINELS)
    for type_name, codes in spec.items():
        try:
            rtype = RegType(type_name)
        except ValueError:
            raise ProfileError(
                f"{source}: [workarounds].sentinels.{type_name}: expected one of "
                f"{', '.join(t.value for t in DEFAULT_SENTINELS)}"
            ) from None
        table[rtype] = _raw_codes(codes, f"{source}: [workarounds].sentinels.{type_name}")
    return table


def _alarm_bits(data: dict[str, Any], regs: dict[str, Register], source: str) -> list[AlarmBit]:
    rows = data.get("alarm_bit", [])
    if not isinstance(rows, list):
        raise ProfileError(f"{source}: alarm_bit must be an array of tables [[alarm_bit]]")
    bits: list[AlarmBit] = []
    for i, row in enumerate(rows):
        where = f"{source}: [[alarm_bit]] #{i + 1} ({row.get('name', '?')})"
        unknown = set(row) - _ALARM_KEYS
        if unknown:
            raise ProfileError(f"{where}: unknown key(s) {sorted(unknown)}")
        name, reg_name = row.get("name"), row.get("register")
        if name not in CANONICAL_ALARMS:
            raise ProfileError(
                f"{where}: name must be one of {', '.join(CANONICAL_ALARMS)}, got {name!r}"
            )
        reg = regs.get(str(reg_name))
        if reg is None:
            raise ProfileError(f"{where}: register {reg_name!r} is not a [[register]] of this file")
        if reg.type not in (RegType.UINT16, RegType.INT16, RegType.BOOL, RegType.BITS):
            raise ProfileError(f"{where}: register {reg_name!r} is {reg.type}, not a bit word")
        bit = row.get("bit", 0)
        single = reg.type in (RegType.BOOL, RegType.BITS)
        if not isinstance(bit, int) or not (bit == 0 if single else 0 <= bit <= 15):
            expected = "0 (the row is one bit)" if single else "0..15"
            raise ProfileError(f"{where}: bit must be {expected}, got {bit!r}")
        active = row.get("active", "high")
        if active not in ("high", "low"):
            raise ProfileError(f"{where}: active must be 'high' or 'low', got {active!r}")
        if name in regs or any(b.name == name for b in bits):
            raise ProfileError(f"{where}: field {name!r} is already used")
        bits.append(
            AlarmBit(name, reg.name, bit, active == "high", str(row.get("description", "")))
        )
    return bits


def parse_profile(data: dict[str, Any], source: str) -> Profile:
    """Build a :class:`Profile` from parsed TOML; raises :class:`ProfileError` naming the key."""
    head = data.get("profile")
    if not isinstance(head, dict):
        raise ProfileError(f"{source}: missing [profile] table")
    for key in ("name", "kind"):
        if not isinstance(head.get(key), str):
            raise ProfileError(f"{source}: [profile].{key} must be a string")
    base = head.get("address_base", 0)
    default_order = head.get("word_order", "ABCD")
    sentinel_table = _sentinel_table(data, source)
    rows = data.get("register")
    if not isinstance(rows, list) or not rows:
        raise ProfileError(f"{source}: needs at least one [[register]] row")
    registers: list[Register] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        where = f"{source}: [[register]] #{i + 1} ({row.get('name', '?')})"
        unknown = set(row) - _ROW_KEYS
        if unknown:
            raise ProfileError(f"{where}: unknown key(s) {sorted(unknown)}")
        try:
            rtype = RegType(row["type"])
            name = str(row["name"])
            lo, hi = CANONICAL_RANGES.get(name, (None, None))
            codes = sentinel_table.get(rtype, frozenset())
            if "sentinels" in row:
                codes = _raw_codes(row["sentinels"], f"{where}: sentinels")
            reg = Register(
                name=name,
                table=Table(row["table"]),
                address=int(row["address"]) - int(base),
                type=rtype,
                word_order=WordOrder(row.get("word_order", default_order)),
                scale=float(row.get("scale", 1.0)),
                offset=float(row.get("offset", 0.0)),
                unit=str(row.get("unit", "")),
                bit=int(row.get("bit", 0)),
                invert=bool(row.get("invert", False)),
                description=str(row.get("description", "")),
                min=lo if row.get("min") is None else float(row["min"]),
                max=hi if row.get("max") is None else float(row["max"]),
                sentinels=codes,
                field_type=str(row.get("field_type", "")),
            )
        except KeyError as exc:
            raise ProfileError(f"{where}: missing key {exc.args[0]!r}") from exc
        except ProfileError:
            raise
        except ValueError as exc:
            raise ProfileError(f"{where}: {exc}") from exc
        if not 0 <= reg.address <= 0xFFFF - reg.words + 1:
            raise ProfileError(f"{where}: address {row['address']} outside 0..65535 after base")
        if reg.table.is_bits != (reg.type is RegType.BOOL):
            raise ProfileError(f"{where}: type {reg.type} does not fit table {reg.table}")
        if reg.scale == 0:
            raise ProfileError(f"{where}: scale must not be 0")
        if reg.field_type and (
            reg.field_type not in ("integer", "float") or reg.value_class == "boolean"
        ):
            raise ProfileError(
                f"{where}: field_type {reg.field_type!r}: expected 'integer' or 'float' "
                "(on a number row; a bool or bits row is always a boolean)"
            )
        if reg.name in seen:
            raise ProfileError(f"{where}: duplicate field {reg.name!r}")
        seen.add(reg.name)
        registers.append(reg)
    return Profile(
        name=head["name"],
        kind=head["kind"],
        description=str(head.get("description", "")),
        registers=tuple(registers),
        nominal=dict(data.get("nominal", {})),
        address_base=int(base),
        alarm_bits=tuple(_alarm_bits(data, {r.name: r for r in registers}, source)),
    )


def _profile_dir() -> Path:
    return Path(str(resources.files("o2base") / "profiles"))


PROFILE_PATH_ENV = "O2CHAIN_PROFILE_PATH"


def profile_dirs() -> list[Path]:
    """Where a profile *name* is looked up, in order: each folder of ``$O2CHAIN_PROFILE_PATH``
    (separated by ``:``), then the bundled profiles."""
    extra = [Path(p) for p in os.environ.get(PROFILE_PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, _profile_dir()]


def profile_names() -> list[str]:
    """Names of the profiles on the search path (bundled ones included), sorted."""
    return sorted({p.stem for d in profile_dirs() if d.is_dir() for p in d.glob("*.toml")})


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a profile by name (from :func:`profile_dirs`) or any profile file by path (a value
    ending in ``.toml``: absolute, or relative to the current directory)."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        found = [d / f"{name_or_path}.toml" for d in profile_dirs()]
        found = [f for f in found if f.is_file()]
        if not found:
            searched = f" (${PROFILE_PATH_ENV} and bundled)" if len(profile_dirs()) > 1 else ""
            raise ProfileError(
                f"unknown profile {name_or_path!r}{searched}; available: "
                f"{', '.join(profile_names())}; or give the path of a .toml file"
            )
        path = found[0]
    elif not path.is_file():
        raise ProfileError(f"{path}: no such profile file (relative paths start in {Path.cwd()})")
    with path.open("rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{path}: {exc}") from exc
    profile = parse_profile(data, str(path.name))
    if profile.name != path.stem:
        raise ProfileError(f"{path}: [profile].name {profile.name!r} must match the file name")
    return profile
