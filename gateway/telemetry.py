"""Decode and validate MQTT telemetry (payload v1, contract) into readings. Pure: no I/O.

Validation judges each field of each reading on its own (docs/contracts.md, "What is rejected,
what is flagged"):

- a field the gateway will not use as a number (out of its plausible range, not finite, wrong
  type, a name the schema does not know) is *flagged*: stored as ``{name}_raw`` and listed in
  the reading's ``invalid`` field (``gateway.readings.flag_invalid``); the other fields of the
  reading are stored and judged as usual;
- a board's derived values (``ppo2_kpa``, ``eq_alt_m``) are not judged at all: the enrichment
  stage replaces them with the gateway's own;
- a timestamp ahead of the gateway's clock, or older than a spool could hold, is replaced by
  the arrival time, the board's kept as ``ts_board_ms`` with ``clock_skew_s``;
- only what cannot be a reading at all is a :class:`Reject` (one reason each, counted and
  dead-lettered with the raw payload): a bad topic, an unknown device, oversize, not JSON, not
  an object or array, a missing or invalid ``v``/``boot``/``seq``. In an array only the bad
  items are rejected (:class:`ItemReject`); the good ones are readings.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from operator import itemgetter
from typing import Any, NamedTuple

import orjson

from gateway.config import DeviceKind, GatewayConfig, Transport
from gateway.oxygen import baro_band_kpa
from gateway.readings import (
    INVALID_FIELD,
    RAW_SUFFIX,
    FieldValue,
    InvalidReason,
    Reading,
    flag_invalid,
)
from o2base.schema import telemetry_schema

log = logging.getLogger(__name__)

# Time checks (docs/contracts.md "Time"). A reading stamped further ahead of the gateway's
# clock than FUTURE_TOLERANCE_MS cannot be a measurement yet: its board's clock is wrong. An
# NTP-synced board and gateway agree within milliseconds and transit only makes readings
# older, so 60 s leaves room for a board between two SNTP syncs and a gateway host whose own
# NTP is briefly off, and is still far below anything an alarm delay cares about. Such a
# reading is stored at its arrival time, never at its own: one reading stamped hours ahead
# would otherwise be "the newest" for the alarm engine and hide every later one.
FUTURE_TOLERANCE_MS = 60_000
# Older than any board's flash spool could hold (the largest ESP32 flash, 16 MiB, of ~160-byte
# records at a slow 5-minute interval is under a year; the default spool holds 9.5 h, see
# firmware/README.md): the board's clock was never set (MicroPython's epoch is 2000-01-01,
# Unix's 1970) or the ts is in seconds. Also stored at arrival time, flagged.
MAX_PAST_MS = 400 * 24 * 3600 * 1000
# Kept for callers of the old names (a stamp beyond these is no longer rejected).
MAX_FUTURE_MS = FUTURE_TOLERANCE_MS

# Fields the gateway adds to a reading (docs/contracts.md): a board's own field by one of these
# names is unknown, and its raw value is not kept under a name that could be taken for ours.
TS_BOARD_FIELD = "ts_board_ms"
CLOCK_SKEW_FIELD = "clock_skew_s"
CLOCK_UNSET_FIELD = "clock_unset"
GATEWAY_FIELDS = frozenset(
    {
        INVALID_FIELD,
        TS_BOARD_FIELD,
        CLOCK_SKEW_FIELD,
        CLOCK_UNSET_FIELD,
        "baro_source",
        "o2_lpm",
        "o2_produced_l",
        "boot",
        "seq",
    }
)
# A name a board may give a field we do not know and still have its raw value kept as
# ``{name}_raw`` (InfluxDB field keys stay short and plain); others are listed, not kept.
_SAFE_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
MAX_UNKNOWN_KEPT = 8  # raw values of unknown fields kept per reading (the rest only listed)
MAX_UNKNOWN_LISTED = 32  # unknown names listed one by one in ``invalid``; more are counted
_MAX_LOGGED = 10_000  # (device, field, reason) combinations remembered for first-time logs


class RejectReason(StrEnum):
    BAD_TOPIC = "bad_topic"
    UNKNOWN_DEVICE = "unknown_device"
    OVERSIZE = "oversize"
    NOT_JSON = "not_json"
    BAD_SHAPE = "bad_shape"
    BAD_VERSION = "bad_version"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"  # of v/boot/seq
    OUT_OF_RANGE = "out_of_range"  # of v/boot/seq
    # No longer given (such fields and stamps are flagged and stored now); kept because dead
    # letters stored by earlier versions carry them and the Gateway dashboard lists them.
    UNKNOWN_FIELD = "unknown_field"
    NOT_FINITE = "not_finite"
    BAD_TIMESTAMP = "bad_timestamp"


class Reject(Exception):
    """A message the gateway will not store as data; ``str()`` names device, field, expectation."""

    def __init__(self, reason: RejectReason, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ItemReject:
    """One item of an array that cannot be a reading; the array's other items are stored.

    ``payload`` is the item alone, as JSON, so the dead letter holds what was wrong and a
    replay after a fix (``o2chain gateway deadletters replay``) decodes just that item.
    """

    index: int
    reason: RejectReason
    detail: str
    payload: bytes


@dataclass
class Decoded:
    """What one telemetry message gave: readings (some perhaps flagged) and rejected items."""

    readings: list[Reading]
    rejects: list[ItemReject] = field(default_factory=list)
    device: str = ""  # "site/device" of every reading (the topic's)


@dataclass(frozen=True)
class Topic:
    site: str
    device: str
    kind: str  # telemetry | status | alarm | cmd ...


def parse_topic(prefix: str, topic: str) -> Topic:
    """Split ``{prefix}/{site}/{device}/{kind}``; raises :class:`Reject` otherwise."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != prefix:
        raise Reject(RejectReason.BAD_TOPIC, f"topic {topic!r}: expected {prefix}/SITE/DEVICE/KIND")
    return Topic(parts[1], parts[2], parts[3])


def _check_int(item: dict[str, Any], name: str, spec: dict[str, Any], where: str) -> int | None:
    value = item.get(name)
    if value is None:
        if spec.get("required"):
            raise Reject(RejectReason.MISSING_FIELD, f"{where}: field {name!r} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Reject(RejectReason.BAD_TYPE, f"{where}: {name} = {value!r}, expected an integer")
    if not spec["min"] <= value <= spec["max"]:
        reason = RejectReason.BAD_VERSION if name == "v" else RejectReason.OUT_OF_RANGE
        raise Reject(reason, f"{where}: {name} = {value}, expected {spec['min']}..{spec['max']}")
    return value


# Integers orjson returns exactly (64 bits); a longer one it turns into a float.
_EXACT_INT = float(1 << 63)


def _has_wide_number(doc: Any) -> bool:
    """True if ``doc`` holds a float as large as an integer orjson would not keep exact: the
    payload may have had such an integer (json.loads keeps it an int)."""
    values = doc.values() if doc.__class__ is dict else doc if doc.__class__ is list else (doc,)
    for value in values:
        cls = value.__class__
        if cls is float:
            if not -_EXACT_INT < value < _EXACT_INT:
                return True
        elif (cls is dict or cls is list) and _has_wide_number(value):
            return True
    return False


def _loads(payload: bytes) -> Any:
    """``json.loads(payload)``, parsed by orjson (C) in the usual case.

    orjson is strict RFC 8259 JSON in UTF-8: what it refuses (NaN, lone surrogates, another
    encoding, a number past a double's range) goes through ``json.loads``, so results and error
    messages stay exactly its own; so does a payload in which orjson may have made an integer
    of more than 64 bits a float (:func:`_has_wide_number`).
    """
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return json.loads(payload)
    if _has_wide_number(doc):
        return json.loads(payload)
    return doc


@dataclass(frozen=True)
class _Limits:
    """A schema field's plausible range, read once (not per value from the schema's dicts)."""

    low: float
    high: float
    is_int: bool
    unit: str
    derived: bool  # computed by the board from other fields: replaced by the gateway's own


def _float_raw(value: int) -> float | None:
    """An integer as a float when it fits one (JSON integers are unbounded)."""
    return float(value) if -1e300 < value < 1e300 else None


def _note_invalid(fields: dict[str, FieldValue], entry: str) -> None:
    """Append ``entry`` (``name:reason``) to the reading's ``invalid`` list, as flag_invalid."""
    previous = fields.get(INVALID_FIELD)
    fields[INVALID_FIELD] = entry if not isinstance(previous, str) else f"{previous},{entry}"


_MAX_PLANS = 1000  # key layouts with a plan; then the cache starts again
_le = operator.le
# Below 2**63 in magnitude: a float orjson may have made of a wide integer is beyond it.
_WIDE = math.nextafter(_EXACT_INT, 0.0)


class _Plan(NamedTuple):
    """A key layout's reading in one go (:meth:`TelemetryDecoder._plan`)."""

    values: Callable[[dict[str, Any]], tuple[Any, ...]]  # boot, seq, fields..., v, ts
    names: tuple[str, ...]  # the reading's fields: boot, seq, the fields in the object's order
    classes: tuple[type, ...]  # of each value
    lows: tuple[float, ...]  # each value's range
    highs: tuple[float, ...]
    baro: bool  # baro_kpa is there: judged against the site's band too
    in_order: bool  # boot and seq come before the fields: the object less v and ts is in order


class TelemetryDecoder:
    """Decoder bound to one config: devices indexed once, so a message costs a dict lookup.

    Holds two small bits of state per device: the last arrival time it gave a reading (so
    readings stamped with their arrival time stay distinct points) and which (field, reason)
    it has already logged (each is logged once, then only flagged).
    """

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.schema = telemetry_schema()
        self.prefix = config.mqtt.topic_prefix
        self._id_fields: list[tuple[str, dict[str, Any]]] = list(self.schema["id_fields"].items())
        self._id_limits = [
            (name, spec["min"], spec["max"], spec) for name, spec in self._id_fields if name != "ts"
        ]
        self._ts_max: int = self.schema["id_fields"]["ts"]["max"]
        self._id_names = frozenset(self.schema["id_fields"])
        self._fields: dict[str, dict[str, Any]] = self.schema["fields"]
        self._limits = {
            name: _Limits(
                spec["min"],
                spec["max"],
                spec["type"] == "int",
                spec.get("unit", ""),
                bool(spec.get("derived")),
            )
            for name, spec in self._fields.items()
        }
        self._max_bytes: int = self.schema["max_payload_bytes"]
        self._max_batch: int = self.schema["max_batch"]
        self._devices: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
        # The site's barometric band per device (a board's baro_kpa outside it is flagged).
        self._baro_band: dict[str, tuple[float, float]] = {}
        altitude = {s.id: s.altitude_m for s in config.site}
        for device in config.device:
            if device.transport is not Transport.MQTT:
                continue
            if device.kind is DeviceKind.ROOM:
                measurement = "room"
            else:
                measurement = "concentrator" if device.kind is not DeviceKind.SUPPLY else "supply"
            # One tags dict per device, shared by all its readings (readings are values: no
            # stage changes a reading's tags), so later stages can key caches by it.
            tags = device.tags("sensor")
            self._devices[(device.site, device.id)] = (measurement, tags)
            if device.site in altitude:
                band = baro_band_kpa(altitude[device.site])
                self._baro_band[f"{device.site}/{device.id}"] = band
        # Topics of configured devices, resolved once: (measurement, tags, "site/device").
        self._topics: dict[str, tuple[str, dict[str, str], str]] = {}
        self._last_arrival_ms: dict[str, int] = {}
        self._logged: set[tuple[str, str, str]] = set()
        # The usual reading without a loop over its fields (:meth:`_plan`): per key layout
        # (the object's keys in their order), or None when that layout takes the loop.
        self._plans: dict[tuple[str, ...], _Plan | None] = {}
        # Flagged fields by reason since start (for metrics): {"out_of_range": 3, ...}.
        self.flagged: dict[str, int] = {}
        self.restamped = 0  # readings stored at their arrival time for a bad board clock

    def _resolve(self, topic: str) -> tuple[str, dict[str, str], str]:
        t = parse_topic(self.prefix, topic)
        known = self._devices.get((t.site, t.device))
        if known is None:
            raise Reject(
                RejectReason.UNKNOWN_DEVICE,
                f"device {t.site}/{t.device} is not configured as an MQTT device",
            )
        resolved = (known[0], known[1], f"{t.site}/{t.device}")
        if len(self._topics) >= 4 * len(self._devices) + 64:
            self._topics.clear()  # bounded: only topics of configured devices get here
        self._topics[topic] = resolved
        return resolved

    def _ids(self, item: dict[str, Any], at: str) -> dict[str, int | None]:
        ids: dict[str, int | None] = {}
        for name, low, high, spec in self._id_limits:
            value = item.get(name)
            if value.__class__ is int and low <= value <= high:
                ids[name] = value
            else:  # missing, wrong type or out of range: the checks and their messages
                ids[name] = _check_int(item, name, spec, at)
        return ids

    def _flag(self, where: str, name: str, reason: str, detail: str) -> None:
        """Count a flagged field and log it the first time this device shows it."""
        self.flagged[reason] = self.flagged.get(reason, 0) + 1
        key = (where, name, reason)
        if key not in self._logged:
            if len(self._logged) >= _MAX_LOGGED:
                self._logged.clear()
            self._logged.add(key)
            log.warning("%s: %s; stored flagged %s:%s (logged once)", where, detail, name, reason)

    def _arrival(self, where: str, received_ms: int) -> int:
        """The arrival time as a point time, 1 ms after the device's previous one at least:
        readings of one flush (or one commit batch) stamped this way stay distinct points."""
        last = self._last_arrival_ms.get(where)
        ts = received_ms if last is None or received_ms > last else last + 1
        if len(self._last_arrival_ms) > 4 * len(self._devices) + 64:
            self._last_arrival_ms.clear()
        self._last_arrival_ms[where] = ts
        return ts

    def decode(self, topic: str, payload: bytes, received_ms: int) -> list[Reading]:
        """Readings of a message, all or nothing: raises :class:`Reject` (the first bad item's)
        when any item of an array cannot be a reading. For callers that can only keep or refuse
        a whole message (dead-letter replay); ingest uses :meth:`decode_message`."""
        decoded = self.decode_message(topic, payload, received_ms)
        if decoded.rejects:
            first = decoded.rejects[0]
            raise Reject(first.reason, first.detail)
        return decoded.readings

    def decode_message(self, topic: str, payload: bytes, received_ms: int) -> Decoded:
        """See :func:`decode_telemetry`; items of an array that are bad come back as rejects."""
        known = self._topics.get(topic)
        measurement, tags, where = known if known is not None else self._resolve(topic)
        if len(payload) > self._max_bytes:
            raise Reject(
                RejectReason.OVERSIZE,
                f"{where}: {len(payload)} bytes, expected at most {self._max_bytes}",
            )
        # The usual message, one object whose values are all as its key layout expects, is
        # made in one go (:meth:`_at_once`) straight from orjson's document: its ranges keep
        # every number inside 64 bits, so :func:`_loads`' look for wide integers is not needed.
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            doc = None
        if doc.__class__ is dict:
            reading = self._at_once(doc, where, measurement, tags, received_ms)
            if reading is not None:
                return Decoded([reading], [], where)
        try:
            doc = _loads(payload)
        except (UnicodeDecodeError, ValueError) as exc:
            raise Reject(RejectReason.NOT_JSON, f"{where}: payload is not JSON ({exc})") from None
        if not isinstance(doc, list):
            if not isinstance(doc, dict):
                raise Reject(RejectReason.BAD_SHAPE, f"{where}: expected a JSON object")
            reading = self._reading(doc, where, where, measurement, tags, received_ms)
            return Decoded([reading], [], where)
        if not doc or len(doc) > self._max_batch:
            raise Reject(
                RejectReason.BAD_SHAPE,
                f"{where}: expected an object or 1..{self._max_batch} objects, got {len(doc)}",
            )
        decoded = Decoded([], [], where)
        for n, item in enumerate(doc):
            at = f"{where} item {n} of {len(doc)}"
            try:
                if not isinstance(item, dict):
                    raise Reject(RejectReason.BAD_SHAPE, f"{at}: expected a JSON object")
                reading = self._reading(item, at, where, measurement, tags, received_ms)
            except Reject as rej:
                raw = json.dumps(item).encode()
                decoded.rejects.append(ItemReject(n, rej.reason, rej.detail, raw))
                continue
            decoded.readings.append(reading)
        return decoded

    def _at_once(
        self,
        item: dict[str, Any],
        where: str,
        measurement: str,
        tags: dict[str, str],
        received_ms: int,
    ) -> Reading | None:
        """:meth:`_reading` of an object whose values are each of its key layout's class and
        within range, made without a loop over its fields; None for any other object (then the
        loop judges it, flags and rejects and their messages its own)."""
        keys = tuple(item)
        try:
            plan = self._plans[keys]
        except KeyError:
            plan = self._plan(keys)
        if plan is None:
            return None
        values = plan.values(item)  # boot, seq, the fields in the object's order, v, ts
        if not (
            tuple(map(type, values)) == plan.classes
            and all(map(_le, plan.lows, values))
            and all(map(_le, values, plan.highs))
        ):
            return None
        if plan.in_order:  # a copy is 6x cheaper than a dict of (name, value) pairs
            fields: dict[str, FieldValue] = item.copy()
            del fields["v"], fields["ts"]
        else:
            fields = dict(zip(plan.names, values, strict=False))
        if plan.baro:
            self._check_baro(fields, where, where)
        ts = values[-1]
        if received_ms - MAX_PAST_MS <= ts <= received_ms + FUTURE_TOLERANCE_MS:
            ts_ms = ts
        else:
            ts_ms = self._time(ts, fields, where, where, received_ms)
        return Reading(measurement, tags, fields, ts_ms, {"boot": values[0], "seq": values[1]})

    def _reading(
        self,
        item: dict[str, Any],
        at: str,
        where: str,
        measurement: str,
        tags: dict[str, str],
        received_ms: int,
    ) -> Reading:
        """One reading from one JSON object; raises :class:`Reject` only for its identity."""
        ids = self._ids(item, at)
        boot, seq = ids["boot"] or 0, ids["seq"] or 0
        fields: dict[str, FieldValue] = {"boot": boot, "seq": seq}
        limits = self._limits
        isfinite = math.isfinite
        unknown: list[str] | None = None
        for name, value in item.items():
            lim = limits.get(name)
            if lim is None:
                if name not in self._id_names:
                    if unknown is None:
                        unknown = []
                    unknown.append(name)
                continue
            cls = value.__class__
            if lim.derived:
                # The board's own ppo2/eq_alt: passed on unjudged (never a reason to flag or
                # reject); the enrichment stage replaces them with the gateway's values.
                if cls is float and isfinite(value):
                    fields[name] = value
                elif cls is int and (v := _float_raw(value)) is not None:
                    fields[name] = v
                continue
            if cls is float:
                if not isfinite(value):
                    flag_invalid(fields, name, InvalidReason.NOT_FINITE)
                    self._flag(
                        at,
                        name,
                        InvalidReason.NOT_FINITE,
                        f"{name} = {value!r}, expected a finite number",
                    )
                    continue
            elif cls is not int:  # bool, str, None, list, dict
                flag_invalid(fields, name, InvalidReason.BAD_TYPE)
                self._flag(
                    at, name, InvalidReason.BAD_TYPE, f"{name} = {value!r:.40}, expected a number"
                )
                continue
            # An int is finite (and may be too big for a float: compared, not converted).
            if not lim.low <= value <= lim.high:
                raw = value if cls is float else _float_raw(value)
                flag_invalid(fields, name, InvalidReason.OUT_OF_RANGE, raw)
                self._flag(
                    at,
                    name,
                    InvalidReason.OUT_OF_RANGE,
                    f"{name} = {value!r:.40} {lim.unit}, expected {lim.low}..{lim.high}",
                )
                continue
            if lim.is_int:
                if cls is float and not value.is_integer():
                    flag_invalid(fields, name, InvalidReason.BAD_TYPE, value)
                    self._flag(
                        at, name, InvalidReason.BAD_TYPE, f"{name} = {value!r}, expected an integer"
                    )
                    continue
                fields[name] = int(value)
            else:
                # One InfluxDB field has one type: numbers are floats, whatever JSON made of them.
                fields[name] = value if cls is float else float(value)
        if unknown is not None:
            self._unknown(fields, at, item, unknown)
        self._check_baro(fields, at, where)
        ts_ms = self._time(item.get("ts"), fields, at, where, received_ms)
        meta: dict[str, int | str] = {"boot": boot, "seq": seq}
        return Reading(measurement, tags, fields, ts_ms, meta)

    def _check_baro(self, fields: dict[str, FieldValue], at: str, where: str) -> None:
        """Flag a ``baro_kpa`` outside the barometric band of the device's site."""
        baro = fields.get("baro_kpa")
        if baro is not None:
            band = self._baro_band.get(where)
            if band is not None and not band[0] <= baro <= band[1]:  # type: ignore[operator]
                flag_invalid(fields, "baro_kpa", InvalidReason.OUT_OF_RANGE, baro)
                self._flag(
                    at,
                    "baro_kpa",
                    InvalidReason.OUT_OF_RANGE,
                    f"baro_kpa = {baro} kPa, expected {band[0]:.1f}..{band[1]:.1f} "
                    "for the site's altitude (ISA +/- 10 %)",
                )

    def _plan(self, keys: tuple[str, ...]) -> _Plan | None:
        """How a reading with these keys (in this order) is made in one go, when each value is
        what the layout expects; None when the layout always takes the loop: an identity
        field missing (its reject), a name the schema does not know (its flag)."""
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        plan = None
        ids = ("v", "boot", "seq", "ts")
        data = tuple(k for k in keys if k not in self._id_names)
        if all(k in keys for k in ids) and all(k in self._limits for k in data):
            names = ("boot", "seq", *data)
            id_spec = self.schema["id_fields"]
            lows: list[float] = [id_spec[k]["min"] for k in ("boot", "seq")]
            highs: list[float] = [id_spec[k]["max"] for k in ("boot", "seq")]
            classes: list[type] = [int, int]
            for name in data:
                lim = self._limits[name]
                if lim.derived:  # not judged: any finite float (within 64 bits, see above)
                    lows.append(-_WIDE)
                    highs.append(_WIDE)
                    classes.append(float)
                else:
                    lows.append(lim.low)
                    highs.append(lim.high)
                    classes.append(int if lim.is_int else float)
            # v exactly; ts > 0 (0 = clock not set: the loop stamps it).
            lows += [id_spec["v"]["min"], 1]
            highs += [id_spec["v"]["max"], self._ts_max]
            classes += [int, int]
            plan = _Plan(
                itemgetter(*names, "v", "ts"),
                names,
                tuple(classes),
                tuple(lows),
                tuple(highs),
                "baro_kpa" in data,
                tuple(k for k in keys if k not in ("v", "ts")) == names,
            )
        self._plans[keys] = plan
        return plan

    def _unknown(
        self, fields: dict[str, FieldValue], at: str, item: dict[str, Any], names: list[str]
    ) -> None:
        """Flag fields the schema does not know; keep a few raw values under safe names."""
        kept = 0
        if len(names) > MAX_UNKNOWN_LISTED:
            # Not a board's typo but garbage: listed in bulk, so one message cannot write a
            # huge ``invalid`` string or thousands of log lines.
            more = len(names) - MAX_UNKNOWN_LISTED
            names = names[:MAX_UNKNOWN_LISTED]
            _note_invalid(fields, f"_{more}_more:{InvalidReason.UNKNOWN_FIELD}")
        for name in names:
            value = item[name]
            safe = _SAFE_NAME.fullmatch(name) is not None
            label = name if safe else re.sub(r"[^a-z0-9_]", "_", name.lower())[:48] or "_"
            raw_name = label + RAW_SUFFIX
            if (
                safe
                and kept < MAX_UNKNOWN_KEPT
                and label not in GATEWAY_FIELDS
                and raw_name not in fields
                and raw_name not in self._limits
                and value.__class__ in (int, float)
            ):
                raw = _float_raw(value) if value.__class__ is int else value
                if raw is not None and math.isfinite(raw):
                    fields[raw_name] = raw
                    kept += 1
            _note_invalid(fields, f"{label}:{InvalidReason.UNKNOWN_FIELD}")
            self._flag(
                at,
                label,
                InvalidReason.UNKNOWN_FIELD,
                f"unknown field {name!r:.60}, expected one of the schema's",
            )

    def _time(
        self, ts: Any, fields: dict[str, FieldValue], at: str, where: str, received_ms: int
    ) -> int:
        """The point time of a reading stamped ``ts`` by its board (docs/contracts.md "Time")."""
        if ts.__class__ is int and 0 < ts <= self._ts_max:
            if received_ms - MAX_PAST_MS <= ts <= received_ms + FUTURE_TOLERANCE_MS:
                return ts  # the usual case
            fields[TS_BOARD_FIELD] = ts
            fields[CLOCK_SKEW_FIELD] = round((ts - received_ms) / 1000.0, 3)
            self.restamped += 1
            key = (where, "ts", "ahead" if ts > received_ms else "behind")
            if key not in self._logged:
                self._logged.add(key)
                log.warning(
                    "%s: ts = %d is %+.1f h from the gateway's clock (expected within %d s "
                    "ahead, %d days behind): stored at its arrival time with %s (logged once)",
                    at,
                    ts,
                    (ts - received_ms) / 3.6e6,
                    FUTURE_TOLERANCE_MS // 1000,
                    MAX_PAST_MS // 86_400_000,
                    TS_BOARD_FIELD,
                )
            return self._arrival(where, received_ms)
        if ts is None or (ts.__class__ is int and ts == 0):
            fields[CLOCK_UNSET_FIELD] = True
            return self._arrival(where, received_ms)
        # Not an integer, or outside the schema's 0..year 3000: a broken encoder.
        if ts.__class__ in (int, float) and not isinstance(ts, bool):
            raw: Any = _float_raw(ts) if ts.__class__ is int else ts
            reason = InvalidReason.OUT_OF_RANGE if ts.__class__ is int else InvalidReason.BAD_TYPE
        else:
            raw, reason = None, InvalidReason.BAD_TYPE
        flag_invalid(fields, "ts", reason, raw)
        expected = f"expected an integer 0..{self._ts_max} (ms since the epoch)"
        self._flag(at, "ts", reason, f"ts = {ts!r:.40}, {expected}")
        return self._arrival(where, received_ms)


_decoders: dict[int, tuple[GatewayConfig, TelemetryDecoder]] = {}


def _decoder(config: GatewayConfig) -> TelemetryDecoder:
    cached = _decoders.get(id(config))
    if cached is None or cached[0] is not config:
        if len(_decoders) > 8:
            _decoders.clear()
        cached = _decoders[id(config)] = (config, TelemetryDecoder(config))
    return cached[1]


def decode_telemetry(
    config: GatewayConfig, topic: str, payload: bytes, received_ms: int
) -> list[Reading]:
    """Readings from one telemetry message (an object, or an array of them from a replay).

    Fields that are not plausible are flagged, not rejected (see the module's docstring).
    Raises :class:`Reject` for anything that cannot be telemetry of a configured MQTT device,
    and, here, when any item of an array cannot be a reading (all or nothing); use
    :func:`decode_telemetry_message` to keep the good items of such an array.
    """
    return _decoder(config).decode(topic, payload, received_ms)


def decode_telemetry_message(
    config: GatewayConfig, topic: str, payload: bytes, received_ms: int
) -> Decoded:
    """Readings of one telemetry message and the items of an array that cannot be readings."""
    return _decoder(config).decode_message(topic, payload, received_ms)


# Numeric health fields of a board's retained status message (firmware/README.md) and the
# plausible range of each; anything else in the status is informational and not stored.
HEALTH_FIELDS: dict[str, tuple[float, float]] = {
    "rssi_dbm": (-127.0, 0.0),
    "heap_free_b": (0.0, 16_777_216.0),
    "uptime_s": (0.0, 3.2e9),
    "buffered": (0.0, 1e9),
    "dropped": (0.0, 1e12),
    "boot": (0.0, 4294967295.0),
}


# A board's status is a few hundred bytes; the telemetry schema's bound applies to it as well,
# so a huge one is never parsed (MQTT itself allows 256 MiB).
STATUS_MAX_BYTES = 65536


def decode_status(
    config: GatewayConfig, topic: str, payload: bytes, received_ms: int
) -> tuple[str, Reading | None]:
    """A board's status message: its link state, and a ``device_health`` point when it carries
    health fields.

    Returns ``("online" | "offline", reading or None)``. Raises :class:`Reject` for a topic
    outside the contract; a status of an unknown device, or one that is not JSON (the last
    will may be any bytes on other firmware), still yields the link state but no point.
    Health values of the wrong type or out of range are left out, not rejected: the status
    is a board's self-report, and one bad counter must not hide its link state.

    Time as for telemetry: a status stamped more than :data:`FUTURE_TOLERANCE_MS` ahead or
    :data:`MAX_PAST_MS` behind is stored at ``received_ms`` with ``ts_board_ms``. A status with
    a set clock carries ``clock_skew_s`` = its ts minus ``received_ms`` (s): the board clock's
    lead over the gateway's. Positive values are certain; small negative ones are transit (or
    the age of a retained status the broker hands over on subscribing), not a slow clock.
    """
    t = parse_topic(config.mqtt.topic_prefix, topic)
    state = "online" if b'"online"' in payload else "offline"
    device = config.find_device(t.site, t.device)
    if device is None or device.transport is not Transport.MQTT:
        return state, None
    if len(payload) > STATUS_MAX_BYTES:
        return state, None  # not parsed: a status is a few hundred bytes
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return state, None
    if not isinstance(doc, dict):
        return state, None
    fields: dict[str, FieldValue] = {"online": state == "online"}
    for name, (low, high) in HEALTH_FIELDS.items():
        value = doc.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value) and low <= value <= high:
            fields[name] = float(value)
    fw = doc.get("fw")
    if isinstance(fw, str) and len(fw) <= 64:
        fields["fw"] = fw
    sent = doc.get("ts")
    ts_ms = received_ms
    if sent.__class__ is int and sent > 0:
        fields[CLOCK_SKEW_FIELD] = round((sent - received_ms) / 1000.0, 3)
        if received_ms - MAX_PAST_MS <= sent <= received_ms + FUTURE_TOLERANCE_MS:
            ts_ms = sent
        else:
            fields[TS_BOARD_FIELD] = sent
    tags = {"site": t.site, "device": t.device}
    return state, Reading("device_health", tags, fields, ts_ms)
