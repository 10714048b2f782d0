"""Decode and validate MQTT telemetry (payload v1, contract) into readings. Pure: no I/O.

Every way a message can be wrong maps to one :class:`Reject` reason, so rejects can be counted
by reason and dead-lettered with the raw payload.
"""

from __future__ import annotations

import json
import json.scanner
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.config import DeviceKind, GatewayConfig, Transport
from gateway.readings import FieldValue, Reading
from o2chain.schema import telemetry_schema

MAX_FUTURE_MS = 24 * 3600 * 1000  # a board clock more than a day ahead is wrong, not early
MAX_PAST_MS = 400 * 24 * 3600 * 1000  # older than a flash spool can hold: a clock fault


class RejectReason(StrEnum):
    BAD_TOPIC = "bad_topic"
    UNKNOWN_DEVICE = "unknown_device"
    OVERSIZE = "oversize"
    NOT_JSON = "not_json"
    BAD_SHAPE = "bad_shape"
    BAD_VERSION = "bad_version"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    BAD_TYPE = "bad_type"
    NOT_FINITE = "not_finite"
    OUT_OF_RANGE = "out_of_range"
    BAD_TIMESTAMP = "bad_timestamp"


class Reject(Exception):
    """A message the gateway will not store as data; ``str()`` names device, field, expectation."""

    def __init__(self, reason: RejectReason, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


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


# What json.loads uses (a default JSONDecoder's scanner): same numbers, same errors. (typeshed
# types make_scanner's argument as a scanner; CPython's json/decoder.py passes the decoder.)
_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def _loads(payload: bytes) -> Any:
    """``json.loads(payload)``, minus its per-call encoding detection for the usual payload.

    A payload that opens with ``{`` or ``[`` followed by a non-NUL byte is UTF-8 by RFC 8259's
    detection rules (what ``json.loads`` applies to bytes), so it is decoded as such and scanned
    directly; anything else, and any payload that fails here, goes through ``json.loads`` so
    results and error messages stay exactly its own.
    """
    if payload[:1] in (b"{", b"[") and payload[1:2] != b"\x00":
        try:
            text = payload.decode("utf-8", "surrogatepass")
            doc, end = _SCAN(text, 0)
        except (UnicodeDecodeError, StopIteration, ValueError):
            pass
        else:
            if end == len(text) or not text[end:].strip(" \t\n\r"):
                return doc
    return json.loads(payload)


@dataclass(frozen=True)
class _Limits:
    """A schema field's plausible range, read once (not per value from the schema's dicts)."""

    low: float
    high: float
    is_int: bool
    unit: str


class TelemetryDecoder:
    """Decoder bound to one config: devices indexed once, so a message costs a dict lookup."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.schema = telemetry_schema()
        self.prefix = config.mqtt.topic_prefix
        self._id_fields: list[tuple[str, dict[str, Any]]] = list(self.schema["id_fields"].items())
        self._id_limits = [(name, spec["min"], spec["max"], spec) for name, spec in self._id_fields]
        self._fields: dict[str, dict[str, Any]] = self.schema["fields"]
        self._limits = {
            name: _Limits(spec["min"], spec["max"], spec["type"] == "int", spec.get("unit", ""))
            for name, spec in self._fields.items()
        }
        self._max_bytes: int = self.schema["max_payload_bytes"]
        self._max_batch: int = self.schema["max_batch"]
        self._devices: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
        for device in config.device:
            if device.transport is not Transport.MQTT:
                continue
            if device.kind is DeviceKind.ROOM:
                measurement = "room"
                tags = {"site": device.site, "device": device.id, "room": device.room or device.id}
            else:
                measurement = "concentrator" if device.kind is not DeviceKind.SUPPLY else "supply"
                tags = {"site": device.site, "device": device.id, "source": "sensor"}
            self._devices[(device.site, device.id)] = (measurement, tags)
        # Topics of configured devices, resolved once: (measurement, tags, "site/device").
        self._topics: dict[str, tuple[str, dict[str, str], str]] = {}

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

    def decode(self, topic: str, payload: bytes, received_ms: int) -> list[Reading]:
        """See :func:`decode_telemetry`."""
        known = self._topics.get(topic)
        measurement, tags, where = known if known is not None else self._resolve(topic)
        if len(payload) > self._max_bytes:
            raise Reject(
                RejectReason.OVERSIZE,
                f"{where}: {len(payload)} bytes, expected at most {self._max_bytes}",
            )
        try:
            doc = _loads(payload)
        except (UnicodeDecodeError, ValueError) as exc:
            raise Reject(RejectReason.NOT_JSON, f"{where}: payload is not JSON ({exc})") from None
        items = doc if isinstance(doc, list) else [doc]
        if not items or len(items) > self._max_batch:
            raise Reject(
                RejectReason.BAD_SHAPE,
                f"{where}: expected an object or 1..{self._max_batch} objects, got {len(items)}",
            )
        limits = self._limits
        isfinite = math.isfinite
        readings = []
        for n, item in enumerate(items):
            at = where if len(items) == 1 else f"{where} item {n}"
            if not isinstance(item, dict):
                raise Reject(RejectReason.BAD_SHAPE, f"{at}: expected a JSON object")
            ids = self._ids(item, at)
            fields: dict[str, FieldValue] = {"boot": ids["boot"] or 0, "seq": ids["seq"] or 0}
            for name, value in item.items():
                lim = limits.get(name)
                if lim is None:
                    if name in ids:
                        continue
                    raise Reject(RejectReason.UNKNOWN_FIELD, f"{at}: unknown field {name!r}")
                cls = value.__class__
                if cls is not float and (
                    isinstance(value, bool) or not isinstance(value, int | float)
                ):
                    raise Reject(
                        RejectReason.BAD_TYPE, f"{at}: {name} = {value!r}, expected a number"
                    )
                # An int is finite (and may be too big for a float: compared, not converted).
                if (cls is float or not isinstance(value, int)) and not isfinite(value):
                    raise Reject(RejectReason.NOT_FINITE, f"{at}: {name} = {value!r} is not finite")
                if not lim.low <= value <= lim.high:
                    raise Reject(
                        RejectReason.OUT_OF_RANGE,
                        f"{at}: {name} = {value} {lim.unit}, expected {lim.low}..{lim.high}",
                    )
                # One InfluxDB field has one type: numbers are floats, whatever JSON made of them.
                if lim.is_int:
                    fields[name] = int(value)
                else:
                    fields[name] = value if cls is float else float(value)
            ts = ids["ts"] or 0
            if ts == 0:
                ts = received_ms
                fields["clock_unset"] = True
            elif ts > received_ms + MAX_FUTURE_MS or ts < received_ms - MAX_PAST_MS:
                raise Reject(
                    RejectReason.BAD_TIMESTAMP,
                    f"{at}: ts = {ts} is {(ts - received_ms) / 3.6e6:+.1f} h "
                    "from the gateway's clock",
                )
            meta: dict[str, int | str] = {"boot": ids["boot"] or 0, "seq": ids["seq"] or 0}
            readings.append(Reading(measurement, dict(tags), fields, ts, meta))
        return readings


_decoders: dict[int, tuple[GatewayConfig, TelemetryDecoder]] = {}


def decode_telemetry(
    config: GatewayConfig, topic: str, payload: bytes, received_ms: int
) -> list[Reading]:
    """Readings from one telemetry message (an object, or an array of them from a replay).

    Raises :class:`Reject` for anything that is not valid telemetry of a configured MQTT device.
    The whole message is rejected if one element is bad: a board sends what it measured, so a
    bad element means a bad encoder, and the raw message is kept for inspection and replay.
    """
    cached = _decoders.get(id(config))
    if cached is None or cached[0] is not config:
        if len(_decoders) > 8:
            _decoders.clear()
        cached = _decoders[id(config)] = (config, TelemetryDecoder(config))
    return cached[1].decode(topic, payload, received_ms)


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
    """
    t = parse_topic(config.mqtt.topic_prefix, topic)
    state = "online" if b'"online"' in payload else "offline"
    device = config.find_device(t.site, t.device)
    if device is None or device.transport is not Transport.MQTT:
        return state, None
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
    # The board's clock when it sent the status, if set and sane; else the receive time.
    sent = doc.get("ts")
    ts_ms = received_ms
    sane = received_ms - MAX_PAST_MS, received_ms + MAX_FUTURE_MS
    if isinstance(sent, int) and not isinstance(sent, bool) and sane[0] <= sent <= sane[1]:
        ts_ms = sent
    tags = {"site": t.site, "device": t.device}
    return state, Reading("device_health", tags, fields, ts_ms)
