"""A flagged field is never a number (gateway/README.md, "Validation"; docs/contracts.md): for
every field of the telemetry schema and every way it can be wrong, the decoded reading does not
carry it under its own name, ``invalid`` names it with the reason, the rest is kept, and the
line that reaches the outbox has no such field either."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config import GatewayConfig, parse_config
from gateway.readings import invalid_fields
from gateway.telemetry import TelemetryDecoder
from o2base.schema import telemetry_schema

NOW_MS = 1_795_000_000_000
TOPIC = "o2/lhasa/room-1/telemetry"
SCHEMA: dict[str, dict[str, Any]] = telemetry_schema()["fields"]
JUDGED = sorted(name for name, spec in SCHEMA.items() if not spec.get("derived"))


def config() -> GatewayConfig:
    return parse_config({
        "site": [{"id": "lhasa", "altitude_m": 3650}],
        "device": [{"id": "room-1", "site": "lhasa", "kind": "room", "transport": "mqtt"}],
    })  # fmt: skip


def bad_values(spec: dict[str, Any]) -> list[tuple[Any, str]]:
    span = float(spec["max"]) - float(spec["min"])
    values: list[tuple[Any, str]] = [
        (float(spec["max"]) + max(1.0, span), "out_of_range"),
        (float(spec["min"]) - max(1.0, span), "out_of_range"),
        ("12", "bad_type"),
        (True, "bad_type"),
    ]
    if spec["type"] == "int":
        values.append((float(spec["min"]) + 0.5, "bad_type"))  # a count is whole
    return values


@pytest.mark.parametrize("name", JUDGED)
def test_every_flagged_field_leaves_the_numbers(name: str) -> None:
    decoder = TelemetryDecoder(config())
    for value, reason in bad_values(SCHEMA[name]):
        body = {"v": 1, "boot": 1, "seq": 1, "ts": NOW_MS - 1000, name: value}
        if name != "o2_pct":
            body["o2_pct"] = 24.0  # a good field next to the bad one
        (reading,) = decoder.decode(TOPIC, json.dumps(body).encode(), NOW_MS)
        assert name not in reading.fields, (name, value, reading.fields)
        assert (name, reason) in invalid_fields(reading.fields), (name, value, reading.fields)
        if name != "o2_pct":
            assert reading.fields["o2_pct"] == 24.0
        assert f",{name}=" not in reading.to_line() and f" {name}=" not in reading.to_line()


def test_a_pressure_outside_the_sites_band_leaves_the_numbers() -> None:
    decoder = TelemetryDecoder(config())
    body = {"v": 1, "boot": 1, "seq": 1, "ts": NOW_MS - 1000, "o2_pct": 24.0, "baro_kpa": 101.3}
    (reading,) = decoder.decode(TOPIC, json.dumps(body).encode(), NOW_MS)  # sea level in Lhasa
    assert "baro_kpa" not in reading.fields and reading.fields["baro_kpa_raw"] == 101.3
    assert invalid_fields(reading.fields) == [("baro_kpa", "out_of_range")]
