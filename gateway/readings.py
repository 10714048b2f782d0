"""The gateway's one internal data shape: a point bound for InfluxDB."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final

from influxdb_client import Point, WritePrecision

FieldValue = float | int | bool | str
# Measurements a device's own readings arrive as (docs/contracts.md); the gateway derives the
# rest (chain balance, health, pollers' state).
DEVICE_MEASUREMENTS = frozenset({"room", "concentrator", "supply"})


def wall_ms() -> int:
    """The host's wall clock in ms since the epoch (UTC), the time base of ``Reading.ts_ms``:
    the default ``clock_ms`` of the stages (tests pass their own)."""
    return int(time.time() * 1000)


# Built twice for every reading (decoder, enrichment): slots, and not ``frozen``, whose
# ``__init__`` sets each attribute through ``object.__setattr__`` (measured: 4.5 us against 1 us
# a reading here). Treat it as immutable all the same: stages build a new one to change it.
@dataclass(slots=True)
class Reading:
    """One point: measurement, tags, fields and the reading's time in ms since the epoch (UTC).

    Point identity in InfluxDB is measurement + tags + time, which is what makes replays of the
    same reading overwrite rather than duplicate (the delivery guarantee, gateway/README.md).
    """

    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    ts_ms: int
    # Not stored: where the reading came from (boot, seq) or what must commit with it.
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_line(self) -> str:
        """InfluxDB line protocol (escaping by influxdb-client's ``Point``)."""
        point = Point(self.measurement)
        for key in sorted(self.tags):
            point.tag(key, self.tags[key])
        for key in sorted(self.fields):
            point.field(key, self.fields[key])
        point.time(self.ts_ms, write_precision=WritePrecision.MS)
        line: str = point.to_line_protocol()
        return line


def number(fields: dict[str, FieldValue], name: str) -> float | None:
    """Field ``name`` as a float, or None when it is missing or not a number (bools are not)."""
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


# A field the gateway will not use as a number (out of its plausible range, not finite, a
# Modbus "no value" sentinel, the wrong type) is not stored under its own name: its raw value
# goes to ``{name}_raw`` (when it is a finite number) and the string field ``invalid`` lists
# ``name:reason`` pairs. The rest of the reading is stored and judged as usual, and the alarm
# engine raises ``sensor-fault`` on a reading that carries ``invalid`` (docs/contracts.md).
INVALID_FIELD = "invalid"
RAW_SUFFIX = "_raw"


class InvalidReason:
    # Final: constants of the class (mypyc, bench/bench_compiled.py, takes a plain class
    # attribute for an instance attribute and refuses to read it through the class).
    OUT_OF_RANGE: Final = "out_of_range"
    NOT_FINITE: Final = "not_finite"
    BAD_TYPE: Final = "bad_type"
    SENTINEL: Final = "sentinel"
    UNKNOWN_FIELD: Final = "unknown_field"


def flag_invalid(fields: dict[str, FieldValue], name: str, reason: str, raw: object = None) -> None:
    """Move field ``name`` out of the numbers of ``fields``, keeping its raw value, and record
    why in ``fields["invalid"]`` (comma-separated ``name:reason``)."""
    fields.pop(name, None)
    if (
        isinstance(raw, int | float)
        and not isinstance(raw, bool)
        and abs(float(raw)) < float("inf")  # finite (NaN fails the comparison too)
    ):
        fields[name + RAW_SUFFIX] = float(raw)
    entry = f"{name}:{reason}"
    previous = fields.get(INVALID_FIELD)
    fields[INVALID_FIELD] = entry if not isinstance(previous, str) else f"{previous},{entry}"


def invalid_fields(fields: dict[str, FieldValue]) -> list[tuple[str, str]]:
    """The ``(name, reason)`` pairs a reading was flagged with (empty when all is well)."""
    text = fields.get(INVALID_FIELD)
    if not isinstance(text, str) or not text:
        return []
    pairs = []
    for item in text.split(","):
        name, sep, reason = item.partition(":")
        if sep:
            pairs.append((name, reason))
    return pairs
