"""Modbus device profiles: register tables, decoding, encoding and read planning.

A profile is a table of rows (field, table, address, type, word order, scale, unit) rendered by
one generic codec, shared by the simulators (encode) and the gateway (plan + decode). Pure: no
sockets, no clocks. Profile files live in ``o2chain/profiles/*.toml``, one per equipment model.

Address convention: ``address`` in a profile is the number printed in the vendor's manual;
the profile's ``address_base`` says what that number means (0: PDU address; 1: 1-based
register number, e.g. "register 1" = PDU 0). Reference numbers like 40001 are written as
``address = 40001`` with ``address_base = 40001`` (DOMAIN.md section 5: 40001 = holding 0).
"""

from __future__ import annotations

import math
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
    invert: bool = False  # some vendors report alarm bits active-low (DOMAIN.md section 5)
    description: str = ""
    min: float | None = None  # plausible range of the engineering value, for tests and checks
    max: float | None = None

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
        if self.scale == 1.0 and self.offset == 0.0 and self.type is not RegType.FLOAT32:
            return int(number)
        return float(number) * self.scale + self.offset

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


@dataclass(frozen=True)
class Profile:
    """A device model's register map and nominal data."""

    name: str
    kind: str  # "concentrator" | "plant" | "supply" (gateway measurement)
    description: str
    registers: tuple[Register, ...]
    nominal: dict[str, Any] = field(default_factory=dict)
    address_base: int = 0  # what the file's addresses meant (0: PDU, 1: register numbers)

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
}


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
            reg = Register(
                name=str(row["name"]),
                table=Table(row["table"]),
                address=int(row["address"]) - int(base),
                type=RegType(row["type"]),
                word_order=WordOrder(row.get("word_order", default_order)),
                scale=float(row.get("scale", 1.0)),
                offset=float(row.get("offset", 0.0)),
                unit=str(row.get("unit", "")),
                bit=int(row.get("bit", 0)),
                invert=bool(row.get("invert", False)),
                description=str(row.get("description", "")),
                min=None if row.get("min") is None else float(row["min"]),
                max=None if row.get("max") is None else float(row["max"]),
            )
        except KeyError as exc:
            raise ProfileError(f"{where}: missing key {exc.args[0]!r}") from exc
        except ValueError as exc:
            raise ProfileError(f"{where}: {exc}") from exc
        if not 0 <= reg.address <= 0xFFFF - reg.words + 1:
            raise ProfileError(f"{where}: address {row['address']} outside 0..65535 after base")
        if reg.table.is_bits != (reg.type is RegType.BOOL):
            raise ProfileError(f"{where}: type {reg.type} does not fit table {reg.table}")
        if reg.scale == 0:
            raise ProfileError(f"{where}: scale must not be 0")
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
    )


def _profile_dir() -> Path:
    return Path(str(resources.files("o2chain") / "profiles"))


def profile_names() -> list[str]:
    """Names of the bundled profiles, sorted."""
    return sorted(p.stem for p in _profile_dir().glob("*.toml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a bundled profile by name, or any profile file by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = _profile_dir() / f"{name_or_path}.toml"
        if not path.exists():
            raise ProfileError(
                f"unknown profile {name_or_path!r}; available: {', '.join(profile_names())}"
            )
    with path.open("rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{path}: {exc}") from exc
    profile = parse_profile(data, str(path.name))
    if profile.name != path.stem:
        raise ProfileError(f"{path}: [profile].name {profile.name!r} must match the file name")
    return profile
