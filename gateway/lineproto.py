"""Fast InfluxDB line-protocol encoding of :class:`Reading` (hot path of MQTT ingest).

Escaping and number formatting are influxdb-client's own (its ``Point`` helpers); what is added
is a cache of the escaped series prefix (measurement + tags) and of each field layout (the
field names sorted, with their escaped ``key=``), since a facility has a few hundred series
that send the same fields thousands of times. The output is byte for byte what
``Reading.to_line()`` (``Point.to_line_protocol``) gives; a test pins that.
"""

from __future__ import annotations

import math
from typing import Any

from influxdb_client.client.write.point import (
    _ESCAPE_MEASUREMENT,
    _append_tags,
    _escape_key,
    _escape_string,
)

from gateway.readings import Reading

_MAX_CACHED_SERIES = 100_000  # bounded: a fleet of 10^5 boards, then the cache starts again
_MAX_CACHED_LAYOUTS = 10_000  # distinct field sets (in their dict order)

_isfinite = math.isfinite


def _value(name: str, key_eq: str, value: object) -> str | None:
    """``key=value`` for any type ``Point`` takes (subclasses included); None to leave out."""
    if value is True or value is False:
        return f"{key_eq}{'true' if value else 'false'}"
    if isinstance(value, float):
        if not _isfinite(value):
            return None
        text = str(value)
        if text.endswith(".0"):
            text = text[:-2]
        return f"{key_eq}{text}"
    if isinstance(value, int):
        return f"{key_eq}{value}i"
    if isinstance(value, str):
        return f'{key_eq}"{_escape_string(value)}"'
    raise ValueError(f"field {name!r}: type {type(value).__name__} is not supported")


class LineEncoder:
    """``encoder.encode(reading) -> str``; not thread-safe (one per thread)."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        self._layouts: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}

    def _prefix(self, reading: Reading) -> str:
        # Keyed by the tags in their dict order (no sort per point): the same series in
        # another order is another key with the same prefix, computed from sorted tags.
        key = (reading.measurement, tuple(reading.tags.items()))
        prefix = self._series.get(key)
        if prefix is None:
            if len(self._series) >= _MAX_CACHED_SERIES:
                self._series.clear()
            prefix = _escape_key(reading.measurement, _ESCAPE_MEASUREMENT) + _append_tags(
                reading.tags
            )
            self._series[key] = prefix
        return prefix

    def _layout(self, names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        """``(name, escaped "name=")`` in line-protocol order (sorted by name)."""
        if len(self._layouts) >= _MAX_CACHED_LAYOUTS:
            self._layouts.clear()
        layout = tuple((name, f"{_escape_key(name)}=") for name in sorted(names))
        self._layouts[names] = layout
        return layout

    def encode(self, reading: Reading) -> str:
        """One line, ms precision; raises ValueError for a field type InfluxDB cannot hold."""
        fields: dict[str, Any] = reading.fields  # Any: types are told apart by class below
        names = tuple(fields)
        layout = self._layouts.get(names)
        if layout is None:
            layout = self._layout(names)
        parts: list[str] = []
        append = parts.append
        for name, key_eq in layout:
            value = fields[name]
            cls = value.__class__
            if cls is float:  # nearly every field: the decoder makes numbers floats
                if _isfinite(value):
                    text = repr(value)  # str(float) is repr(float)
                    append(key_eq + text[:-2] if text.endswith(".0") else key_eq + text)
            elif cls is int:
                append(f"{key_eq}{value}i")
            elif cls is str:
                append(f'{key_eq}"{_escape_string(value)}"')
            elif value is not None:
                part = _value(name, key_eq, value)
                if part is not None:
                    append(part)
        if not parts:
            raise ValueError(f"{reading.measurement} {reading.tags}: a point needs a field")
        return f"{self._prefix(reading)}{','.join(parts)} {int(reading.ts_ms)}"
