"""Fast InfluxDB line-protocol encoding of :class:`Reading` (hot path of MQTT ingest).

Escaping and number formatting are influxdb-client's own (its ``Point`` helpers); what is added
is a cache of the escaped series prefix (measurement + tags; looked up first by the identity of
the tags dict, which the decoder shares among a device's readings) and of each field layout (the
field names sorted, with their escaped ``key=``), since a facility has a few hundred series
that send the same fields thousands of times. The output is byte for byte what
``Reading.to_line()`` (``Point.to_line_protocol``) gives; a test pins that.

The usual reading (finite floats, plain ints and strings) is written without a Python loop over
its fields. Per field layout and combination of value classes a ``%`` template is made once
(``key=%s`` with the quotes and the ``i`` of ints in it); the values are taken out with one
``itemgetter`` call and turned into text by one ``map``: floats and strings through caches of
their text (a sensor's values repeat: ``repr`` of a float was most of the encoding's time, a
dict lookup is a tenth of it), ints by ``int.__repr__``. Anything else (a bool, None, an enum, a
float that is not finite) takes the loop. The caches are bounded and start again when full.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from operator import call, itemgetter
from typing import Any

from influxdb_client.client.write.point import (
    _ESCAPE_MEASUREMENT,
    _ESCAPE_STRING,
    _append_tags,
    _escape_key,
    _escape_string,
)

from gateway.readings import Reading

_MAX_CACHED_SERIES = 100_000  # bounded: a fleet of 10^5 boards, then the cache starts again
# By tags identity: each entry keeps its tags dict alive, and readings made with a fresh dict
# each (derived points, pollers) would fill it; bounded lower, then it starts again.
_MAX_CACHED_TAGS = 20_000
_MAX_CACHED_LAYOUTS = 10_000  # distinct field sets (in their dict order)
_MAX_TEMPLATES = 16  # value class combinations per layout with a template (then: the loop)
_MAX_CACHED_TEXTS = 50_000  # floats and strings with their text, each cache

_isfinite = math.isfinite


class _NotFinite(Exception):
    """A float that is not finite: the point takes the loop (which leaves the field out)."""


class _FloatText(dict[float, str]):
    """float -> its line-protocol text, as ``Point`` writes it: ``str(float)`` without a
    trailing ``.0``. Zero is never kept: -0.0 equals 0.0 as a key, yet is written ``-0``."""

    def __missing__(self, value: float) -> str:
        if not _isfinite(value):
            raise _NotFinite
        text = repr(value)  # str(float) is repr(float)
        if text[-2:] == ".0":
            text = text[:-2]
        if value:
            if len(self) >= _MAX_CACHED_TEXTS:
                self.clear()
            self[value] = text
        return text


class _StringText(dict[str, str]):
    """str -> its escaped text inside a line-protocol string field's quotes."""

    def __missing__(self, value: str) -> str:
        text = value.translate(_ESCAPE_STRING)
        if len(self) >= _MAX_CACHED_TEXTS:
            self.clear()
        self[value] = text
        return text


# A layout's template for one combination of value classes: the ``%`` template ("" when this
# combination takes the loop) and, per value, what turns it into its text.
_Template = tuple[str, tuple[Any, ...]]
_NO_TEMPLATE: _Template = ("", ())


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
        self._by_tags: dict[int, tuple[dict[str, str], str, str]] = {}  # id: (tags, meas., prefix)
        self._layouts: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}
        # field names in dict order -> (getter of the values in line order, class tuple ->
        # template); None: this layout always takes the loop.
        self._fast: dict[tuple[str, ...], tuple[Any, dict[tuple[type, ...], _Template]] | None]
        self._fast = {}
        self._float_text = _FloatText()
        self._string_text = _StringText()

    def _prefix(self, reading: Reading) -> str:
        # The decoder shares one tags dict per device among its readings (and no stage changes
        # a reading's tags): first by that dict's identity, the entry keeping the dict alive
        # (its id cannot be reused while cached) and checked with ``is``.
        tags = reading.tags
        entry = self._by_tags.get(id(tags))
        if entry is not None and entry[0] is tags and entry[1] == reading.measurement:
            return entry[2]
        prefix = self._series_prefix(reading)
        if len(self._by_tags) >= _MAX_CACHED_TAGS:
            self._by_tags.clear()
        self._by_tags[id(tags)] = (tags, reading.measurement, prefix)
        return prefix

    def _series_prefix(self, reading: Reading) -> str:
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

    def _fast_layout(
        self, names: tuple[str, ...]
    ) -> tuple[Any, dict[tuple[type, ...], _Template]] | None:
        if len(self._fast) >= _MAX_CACHED_LAYOUTS:
            self._fast.clear()
        if len(names) == 1:  # itemgetter would give the value, not a tuple of one
            (name,) = names
            plan: tuple[Any, dict[tuple[type, ...], _Template]] | None = (
                lambda fields: (fields[name],),
                {},
            )
        else:
            plan = (itemgetter(*sorted(names)), {}) if names else None
        self._fast[names] = plan
        return plan

    def _template(
        self, names: tuple[str, ...], classes: tuple[type, ...], templates: dict[Any, _Template]
    ) -> _Template:
        parts: list[str] = []
        texts: list[Callable[[Any], str]] = []
        for (_, key), cls in zip(self._layout(names), classes, strict=True):
            key_eq = key.replace("%", "%%")  # a "%" in a name is the template's too
            if cls is float:
                parts.append(f"{key_eq}%s")
                texts.append(self._float_text.__getitem__)
            elif cls is int:
                parts.append(f"{key_eq}%si")
                texts.append(int.__repr__)
            elif cls is str:
                parts.append(f'{key_eq}"%s"')
                texts.append(self._string_text.__getitem__)
            else:  # bool, None, subclasses: the loop's rules
                parts = []
                break
        template = (",".join(parts), tuple(texts)) if parts else _NO_TEMPLATE
        if len(templates) >= _MAX_TEMPLATES:
            return _NO_TEMPLATE
        templates[classes] = template
        return template

    def encode(self, reading: Reading) -> str:
        """One line, ms precision; raises ValueError for a field type InfluxDB cannot hold."""
        fields: dict[str, Any] = reading.fields  # Any: types are told apart by class below
        names = tuple(fields)
        try:
            plan = self._fast[names]
        except KeyError:
            plan = self._fast_layout(names)
        if plan is not None:
            values = plan[0](fields)
            template = plan[1].get(tuple(map(type, values)))
            if template is None:
                template = self._template(names, tuple(map(type, values)), plan[1])
            if template[0]:
                try:
                    text = template[0] % tuple(map(call, template[1], values))
                except _NotFinite:
                    pass  # the loop leaves that field out
                else:
                    return f"{self._prefix(reading)}{text} {int(reading.ts_ms)}"
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
