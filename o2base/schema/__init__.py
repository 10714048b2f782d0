"""The telemetry payload schema (contract), shared by the gateway, simulators and firmware tests."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def telemetry_schema() -> dict[str, Any]:
    """The parsed ``telemetry_v1.json`` (fields, their types, units and plausible ranges)."""
    text = (resources.files("o2base.schema") / "telemetry_v1.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema
