"""Built-in alarms of the oxygen supply: line pressure, reserve and banks, liquid oxygen,
tank pressure and days of supply left (devices of kind ``supply``).

All are THRESHOLD rules (:class:`gateway.rules.Rule`) on numeric fields the Modbus poller reads
through the supply profiles (o2base/profiles/{buffer-tank,cylinder-manifold,lox-tank,
area-alarm-panel}.toml), plus ``days_left`` which gateway/supply_forecast.py adds. The panel's
own low/high pressure bits are ``[[alarm_bit]]`` rows judged by the equipment rules
(``equipment-pressure-low`` / ``-high``, gateway/equipment_rules.py).

Defaults and their sources: docs/domain.md, "Limits and alarms", "Medical gas supply";
gateway/README.md lists the rules. ``[nominal]`` values of the device's profile override them;
a config ``[[alarm]]`` with a rule's id replaces a rule.
"""

from __future__ import annotations

import math

from gateway.config import AlarmKind, Device, DeviceKind, GatewayConfig, Severity, Site
from gateway.rules import Rule, ThresholdFn, nominal

# NFPA 99 (2012) area alarms: a rise or fall of 20 % from the normal line pressure.
PRESSURE_BAND = 0.20
ZONES = 4  # zone1_kpa .. zone4_kpa of area alarm panels / zone valve boxes
BANK_EMPTY_KPA = 1500.0  # project choice: 10 % of a 15 MPa fill (changeover is near 1 MPa)
LOX_LEVEL_LOW_PCT = 20.0  # project choice: order the tanker at a fifth of the tank
LEVEL_LOW_PCT = 20.0  # project choice: buffer tank usable gas
DAYS_LEFT_WARN = 3.0  # project choice: a weekend plus a delivery day
DAYS_LEFT_ALARM = 1.0  # project choice: less than a day of supply
VAPORISER_OUT_MIN_C = -20.0  # project choice: cold gas reaches the pipeline
SUPPLY = frozenset({DeviceKind.SUPPLY})


def _band(factor_sign: int) -> ThresholdFn:
    def threshold(dev: Device, site: Site) -> float:
        setpoint = nominal(dev, "pressure_kpa_setpoint")
        if setpoint is None:
            return math.nan  # never judged without the normal line pressure
        band_pct = nominal(dev, "pressure_band_pct")
        band = PRESSURE_BAND if band_pct is None else band_pct / 100.0
        return setpoint * (1.0 + factor_sign * band)

    return threshold


def _nominal_or(key: str, default: float) -> ThresholdFn:
    def threshold(dev: Device, site: Site) -> float:
        value = nominal(dev, key)
        return default if value is None else value

    return threshold


def _limit(
    rule_id: str,
    severity: Severity,
    field: str,
    op: str,
    value_fn: ThresholdFn,
    *,
    hysteresis: float,
    delay_s: float,
    doc: str,
    message: str = "",
) -> Rule:
    """A supply threshold on ``field`` against ``value_fn`` (per device, from its profile's
    ``[nominal]``; NaN: not judged), with the same on- and off-delay."""
    return Rule(
        rule_id,
        AlarmKind.THRESHOLD,
        severity,
        field,
        op,
        value_fn=value_fn,
        hysteresis=hysteresis,
        on_delay_s=delay_s,
        off_delay_s=delay_s,
        message=message,
        device_kind=SUPPLY,
        doc=doc,
    )


def supply_rules(config: GatewayConfig) -> list[Rule]:
    """The built-in supply rules (appended to ``gateway.builtin_rules.builtin_rules``)."""
    sev = Severity
    band_doc = (
        "NFPA 99 area alarm: 20 % {dir} the normal line pressure (profile [nominal] "
        "pressure_kpa_setpoint; pressure_band_pct overrides); not judged without one"
    )
    lines = [("pressure_kpa", "supply-pressure")] + [
        (f"zone{n}_kpa", f"supply-zone{n}-pressure") for n in range(1, ZONES + 1)
    ]
    rules: list[Rule] = []
    for name, rule_id in lines:
        rules += [
            _limit(f"{rule_id}-low", sev.ALARM, name, "<", _band(-1), hysteresis=5.0, delay_s=30,
                   message=f"{{device}}: {name} {{value:.0f}} kPa below {{threshold:.0f}} kPa",
                   doc=band_doc.format(dir="below") + "; on-delay 30 s rides through a "
                       "changeover"),
            _limit(f"{rule_id}-high", sev.ALARM, name, ">", _band(+1), hysteresis=5.0, delay_s=30,
                   message=f"{{device}}: {name} {{value:.0f}} kPa above {{threshold:.0f}} kPa",
                   doc=band_doc.format(dir="above")),
        ]  # fmt: skip
    rules.append(
        Rule("supply-reserve-in-use", AlarmKind.THRESHOLD, sev.WARNING, "reserve_in_use", ">",
             0.5, off_delay_s=60, device_kind=SUPPLY,
             message="{device}: changed over to the reserve bank; replace the empty bank",
             doc="the manifold changed over and the empty bank is not yet replaced (project "
                 "choice: warning; the line is still supplied)")
    )  # fmt: skip
    rules += [
        _limit(f"supply-bank-{side}-empty", sev.WARNING, f"bank_{side}_kpa", "<",
               _nominal_or("bank_empty_kpa", BANK_EMPTY_KPA), hysteresis=100.0, delay_s=60,
               message=f"{{device}}: {side} bank empty ({{value:.0f}} kPa)",
               doc="cylinder bank below bank_empty_kpa (default 1,500 kPa = 10 % of a 15 MPa "
                   "fill, project choice: the bank is about to change over or has; replace it)")
        for side in ("left", "right")
    ]  # fmt: skip
    days_left = "{device}: {value:.1f} days of supply left at the present use"
    rules += [
        _limit("supply-lox-level-low", sev.ALARM, "lox_level_pct", "<",
               _nominal_or("lox_level_low_pct", LOX_LEVEL_LOW_PCT), hysteresis=1.0, delay_s=60,
               message="{device}: liquid oxygen level {value:.1f} % (limit {threshold:.0f} %)",
               doc="LOX level below lox_level_low_pct (default 20 %, project choice)"),
        _limit("supply-level-low", sev.WARNING, "level_pct", "<",
               _nominal_or("level_low_pct", LEVEL_LOW_PCT), hysteresis=2.0, delay_s=60,
               doc="buffer tank usable gas below level_low_pct (default 20 %, project choice)"),
        _limit("supply-tank-pressure-high", sev.ALARM, "tank_kpa", ">",
               _nominal_or("tank_kpa_high", math.nan), hysteresis=20.0, delay_s=60,
               message="{device}: tank pressure {value:.0f} kPa above {threshold:.0f} kPa",
               doc="vessel pressure above the profile's tank_kpa_high (set below the safety "
                   "valve); not judged without one"),
        _limit("supply-vaporiser-cold", sev.WARNING, "vaporiser_out_c", "<",
               _nominal_or("vaporiser_out_min_c", VAPORISER_OUT_MIN_C), hysteresis=2.0,
               delay_s=300,
               doc="vaporiser outlet below vaporiser_out_min_c (default -20 degC, project "
                   "choice: an overloaded or iced vaporiser)"),
        _limit("supply-days-left", sev.WARNING, "days_left", "<",
               _nominal_or("days_left_warn", DAYS_LEFT_WARN), hysteresis=0.25, delay_s=300,
               message=days_left,
               doc="forecast days of supply (gateway/supply_forecast.py) below days_left_warn "
                   "(default 3 d, project choice)"),
        _limit("supply-days-left-low", sev.ALARM, "days_left", "<",
               _nominal_or("days_left_alarm", DAYS_LEFT_ALARM), hysteresis=0.1, delay_s=300,
               message=days_left,
               doc="forecast days of supply below days_left_alarm (default 1 d, project choice)"),
    ]  # fmt: skip
    return rules
