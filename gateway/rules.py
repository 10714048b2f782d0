"""Alarm rules: what one rule is, how it selects devices and resolves its threshold, and the
raise/clear conditions every kind shares (operators and hysteresis). Pure: no state, no I/O.

The conditions are strict for the built-ins (``>`` for high, ``<`` for low: a value on the
threshold itself does not raise), as the firmware judges them (docs/domain.md, Limits and
alarms); config rules may choose ``>=`` / ``<=``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway import oxygen
from gateway.config import AlarmKind, AlarmRule, Device, DeviceKind, Severity, Site

ThresholdFn = Callable[[Device, Site], float]


@dataclass(frozen=True)
class Rule:
    """A rule ready to evaluate. ``value_fn`` computes per-device thresholds (built-ins)."""

    id: str
    kind: AlarmKind
    severity: Severity
    field: str | None = None
    op: str = ">"
    value: float | None = None
    value_fn: ThresholdFn | None = None
    hysteresis: float = 0.0
    on_delay_s: float = 0.0
    off_delay_s: float = 0.0
    message: str = ""
    site: str | None = None
    device: str | None = None
    device_kind: frozenset[DeviceKind] = frozenset()
    silence_intervals: float = 3.0
    window_s: float = 300.0
    learn_s: float = 86400.0
    baseline: tuple[tuple[float, float], ...] = ()
    flow_field: str = "flow_lpm"
    only_warm: bool = False  # producers: judge only while running and past warm-up
    source: str = "config"  # "builtin" or "config"
    doc: str = ""  # where the default comes from (README table, /api/rules)

    @classmethod
    def from_config(cls, r: AlarmRule) -> Rule:
        return cls(
            id=r.id,
            kind=r.kind,
            severity=r.severity,
            field=r.field,
            op=r.op,
            value=r.value,
            hysteresis=r.hysteresis,
            on_delay_s=r.on_delay_s,
            off_delay_s=r.off_delay_s,
            message=r.message,
            site=r.site,
            device=r.device,
            device_kind=frozenset(r.device_kind),
            silence_intervals=r.silence_intervals,
            window_s=r.window_s,
            learn_s=r.learn_s,
            baseline=tuple(sorted(r.baseline)),
            flow_field=r.flow_field,
        )

    def applies(self, dev: Device) -> bool:
        if self.site is not None and dev.site != self.site:
            return False
        if self.device is not None and not fnmatch.fnmatchcase(dev.id, self.device):
            return False
        return not self.device_kind or dev.kind in self.device_kind

    def threshold(self, dev: Device, site: Site) -> float:
        if self.value_fn is not None:
            return self.value_fn(dev, site)
        return float(self.value if self.value is not None else math.nan)

    def describe(self) -> dict[str, Any]:
        """JSON description (``/api/rules``)."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "severity": self.severity.value,
            "field": self.field,
            "op": self.op,
            "value": self.value,
            "dynamic_value": self.value_fn is not None,
            "hysteresis": self.hysteresis,
            "on_delay_s": self.on_delay_s,
            "off_delay_s": self.off_delay_s,
            "site": self.site,
            "device": self.device,
            "device_kind": sorted(k.value for k in self.device_kind),
            "source": self.source,
            "doc": self.doc,
        }


def exceeds(op: str, value: float, threshold: float) -> bool:
    if op == ">":
        return value > threshold
    if op == ">=":
        return value >= threshold
    if op == "<":
        return value < threshold
    return value <= threshold


def back_inside(op: str, value: float, threshold: float, hysteresis: float) -> bool:
    """The clear condition: on the good side of the threshold by at least ``hysteresis``."""
    if hysteresis <= 0:
        return not exceeds(op, value, threshold)
    if op in (">", ">="):
        return value < threshold - hysteresis
    return value > threshold + hysteresis


def nominal(dev: Device, key: str) -> float | None:
    """A value from the device profile's ``[nominal]`` table (o2base/profiles/*.toml)."""
    if not dev.profile:
        return None
    from o2base.registers import ProfileError, load_profile

    try:
        value = load_profile(dev.profile).nominal.get(key)
    except (ProfileError, OSError):
        return None
    return None if value is None else float(value)


def site_pb(site: Site) -> float:
    # "from the site's pressure" (docs/domain.md, Limits and alarms): ISA at the site's
    # altitude, a steady threshold that does not chatter with the weather (real station
    # pressure differs by about 1 %).
    return oxygen.isa_pressure_kpa(site.altitude_m)
