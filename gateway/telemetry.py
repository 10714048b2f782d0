"""Decode and validate MQTT telemetry (payload v1, contract) into readings. Pure: no I/O.

Every way a message can be wrong maps to one :class:`Reject` reason, so rejects can be counted
by reason and dead-lettered with the raw payload.
"""

from __future__ import annotations

import json
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


def decode_telemetry(
    config: GatewayConfig, topic: str, payload: bytes, received_ms: int
) -> list[Reading]:
    """Readings from one telemetry message (an object, or an array of them from a replay).

    Raises :class:`Reject` for anything that is not valid telemetry of a configured MQTT device.
    The whole message is rejected if one element is bad: a board sends what it measured, so a
    bad element means a bad encoder, and the raw message is kept for inspection and replay.
    """
    schema = telemetry_schema()
    t = parse_topic(config.mqtt.topic_prefix, topic)
    device = config.find_device(t.site, t.device)
    if device is None or device.transport is not Transport.MQTT:
        raise Reject(
            RejectReason.UNKNOWN_DEVICE,
            f"device {t.site}/{t.device} is not configured as an MQTT device",
        )
    where = f"{t.site}/{t.device}"
    if len(payload) > schema["max_payload_bytes"]:
        raise Reject(
            RejectReason.OVERSIZE,
            f"{where}: {len(payload)} bytes, expected at most {schema['max_payload_bytes']}",
        )
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Reject(RejectReason.NOT_JSON, f"{where}: payload is not JSON ({exc})") from None
    items = doc if isinstance(doc, list) else [doc]
    if not items or len(items) > schema["max_batch"]:
        raise Reject(
            RejectReason.BAD_SHAPE,
            f"{where}: expected an object or 1..{schema['max_batch']} objects, got {len(items)}",
        )
    if device.kind is DeviceKind.ROOM:
        measurement = "room"
        tags = {"site": t.site, "device": t.device, "room": device.room or t.device}
    else:
        measurement = "concentrator" if device.kind is not DeviceKind.SUPPLY else "supply"
        tags = {"site": t.site, "device": t.device, "source": "sensor"}
    readings = []
    for n, item in enumerate(items):
        at = where if len(items) == 1 else f"{where} item {n}"
        if not isinstance(item, dict):
            raise Reject(RejectReason.BAD_SHAPE, f"{at}: expected a JSON object")
        ids = {name: _check_int(item, name, spec, at) for name, spec in schema["id_fields"].items()}
        fields: dict[str, FieldValue] = {"boot": ids["boot"] or 0, "seq": ids["seq"] or 0}
        for name, value in item.items():
            if name in schema["id_fields"]:
                continue
            spec = schema["fields"].get(name)
            if spec is None:
                raise Reject(RejectReason.UNKNOWN_FIELD, f"{at}: unknown field {name!r}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise Reject(RejectReason.BAD_TYPE, f"{at}: {name} = {value!r}, expected a number")
            if not math.isfinite(value):
                raise Reject(RejectReason.NOT_FINITE, f"{at}: {name} = {value!r} is not finite")
            if not spec["min"] <= value <= spec["max"]:
                raise Reject(
                    RejectReason.OUT_OF_RANGE,
                    f"{at}: {name} = {value} {spec.get('unit', '')}, "
                    f"expected {spec['min']}..{spec['max']}",
                )
            # One InfluxDB field has one type: numbers are floats, whatever JSON made of them.
            fields[name] = int(value) if spec["type"] == "int" else float(value)
        ts = ids["ts"] or 0
        if ts == 0:
            ts = received_ms
            fields["clock_unset"] = True
        elif ts > received_ms + MAX_FUTURE_MS or ts < received_ms - MAX_PAST_MS:
            raise Reject(
                RejectReason.BAD_TIMESTAMP,
                f"{at}: ts = {ts} is {(ts - received_ms) / 3.6e6:+.1f} h from the gateway's clock",
            )
        meta: dict[str, int | str] = {"boot": fields["boot"], "seq": fields["seq"]}  # type: ignore[dict-item]
        readings.append(Reading(measurement, dict(tags), fields, ts, meta))
    return readings
