"""Fast InfluxDB line-protocol encoding of :class:`Reading` (hot path of MQTT ingest).

Escaping and number formatting are influxdb-client's own (its ``Point`` helpers); what is added
is a cache of the escaped series prefix (measurement + tags) and of escaped field keys, since a
facility has a few hundred series and sends each thousands of times. The output is byte for byte
what ``Reading.to_line()`` (``Point.to_line_protocol``) gives; a test pins that.
"""

from __future__ import annotations

import math

from influxdb_client.client.write.point import (
    _ESCAPE_MEASUREMENT,
    _append_tags,
    _escape_key,
    _escape_string,
)

from gateway.readings import Reading

_MAX_CACHED_SERIES = 100_000  # bounded: a fleet of 10^5 boards, then the cache starts again


class LineEncoder:
    """``encoder.encode(reading) -> str``; not thread-safe (one per thread)."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        self._keys: dict[str, str] = {}

    def _prefix(self, reading: Reading) -> str:
        key = (reading.measurement, tuple(sorted(reading.tags.items())))
        prefix = self._series.get(key)
        if prefix is None:
            if len(self._series) >= _MAX_CACHED_SERIES:
                self._series.clear()
            prefix = _escape_key(reading.measurement, _ESCAPE_MEASUREMENT) + _append_tags(
                reading.tags
            )
            self._series[key] = prefix
        return prefix

    def _key(self, name: str) -> str:
        escaped = self._keys.get(name)
        if escaped is None:
            if len(self._keys) >= _MAX_CACHED_SERIES:
                self._keys.clear()
            escaped = self._keys[name] = _escape_key(name)
        return escaped

    def encode(self, reading: Reading) -> str:
        """One line, ms precision; raises ValueError for a field type InfluxDB cannot hold."""
        parts = []
        for name in sorted(reading.fields):
            value = reading.fields[name]
            if value is None:
                continue
            key = self._key(name)
            if value is True or value is False:
                parts.append(f"{key}={'true' if value else 'false'}")
            elif isinstance(value, float):
                if not math.isfinite(value):
                    continue
                text = str(value)
                if text.endswith(".0"):
                    text = text[:-2]
                parts.append(f"{key}={text}")
            elif isinstance(value, int):
                parts.append(f"{key}={value}i")
            elif isinstance(value, str):
                parts.append(f'{key}="{_escape_string(value)}"')
            else:
                raise ValueError(f"field {name!r}: type {type(value).__name__} is not supported")
        if not parts:
            raise ValueError(f"{reading.measurement} {reading.tags}: a point needs a field")
        return f"{self._prefix(reading)}{','.join(parts)} {int(reading.ts_ms)}"
