"""Built-in equipment alarms: the device's own alarm bits, product pressure and flow, service
and sensor age, and the Modbus poller's own health.

All are ordinary alarm-engine rules (:class:`gateway.rules.Rule`, THRESHOLD kind) on numeric
fields the Modbus poller emits:

- one 0/1 field per canonical device alarm a profile names in ``[[alarm_bit]]``
  (``o2base.registers.CANONICAL_ALARMS``), judged by ``equipment-<name>``;
- ``outlet_kpa`` against the profile's ``[nominal] outlet_kpa_setpoint`` +-15 % (a profile
  without a setpoint is not judged);
- ``no_flow_running`` (derived here, :class:`EquipmentFields`: 1 while the unit says it runs but
  its flow is below ``no_flow_lpm``) and ``flow_lpm`` against 110 % of ``rated_flow_lpm``;
- the service counters ``compressor_h``, ``filter_h``, ``o2_cell_age_d`` and
  ``calibration_age_d`` against the profile's intervals;
- ``poller_crashed`` of the ``modbus_poller`` measurement, which the poller's supervisor
  emits when a poller task died and was restarted (gateway/modbus.py).

Every default names its source in ``doc`` (``/api/rules``); gateway/README.md, "Equipment
alarms", lists them. ``[nominal]`` values of the device's profile override the defaults; a
config ``[[alarm]]`` with a rule's id replaces the rule.
"""

from __future__ import annotations

import math
from typing import Any

from gateway.config import AlarmKind, Device, DeviceKind, GatewayConfig, Severity, Site
from gateway.readings import FieldValue
from gateway.rules import Rule, nominal
from o2base.registers import CANONICAL_ALARMS, Profile

# Product pressure band around the setpoint (docs/domain.md, "Limits and alarms").
PRESSURE_BAND = 0.15
# ISO 80601-2-69 (201.12.1.101) allows the delivered flow +-10 % of the indicated value: more
# than 110 % of the rated flow is a real over-draw, not meter tolerance.
OVER_FLOW_FACTOR = 1.10
# "No flow": below 10 % of the rated flow while the unit says it runs (the simulated
# concentrator's own low-flow bit uses the same 10 %). WHO technical specifications for oxygen
# concentrators (2015) require a no-flow alarm; the trip point is the manufacturer's.
NO_FLOW_FRACTION = 0.10

# Service intervals when the profile gives none, by device kind (h or d). Typical
# manufacturer values; set your model's in the profile's [nominal] table.
SERVICE_DEFAULTS: dict[str, dict[DeviceKind, float]] = {
    # Concentrators: preventive maintenance about every 5,000 h (typical manufacturer
    # schedules); PSA plants: screw-compressor oil/separator service every 4,000 h.
    "service_interval_h": {DeviceKind.CONCENTRATOR: 5000.0, DeviceKind.PLANT: 4000.0},
    # Concentrator intake/HEPA filters: 6-12 months (4,000 h is 6 months of continuous duty);
    # compressor intake and line filter elements of plants: 2,000 h.
    "filter_interval_h": {DeviceKind.CONCENTRATOR: 4000.0, DeviceKind.PLANT: 2000.0},
    # Galvanic O2 cells last 1-3 years (docs/domain.md, "How equipment degrades"): 2 years.
    "o2_cell_life_d": {DeviceKind.CONCENTRATOR: 730.0, DeviceKind.PLANT: 730.0},
    # Purity analyser calibration: every 3 months (proposal; follow the analyser's manual).
    "calibration_interval_d": {DeviceKind.CONCENTRATOR: 90.0, DeviceKind.PLANT: 90.0},
}

# Severity of each canonical device alarm; anything that stops or spoils the product is an
# alarm, reminders and comfort-level faults are warnings.
ALARM_BIT_SEVERITY: dict[str, Severity] = {
    "purity_low": Severity.ALARM,
    "flow_low": Severity.ALARM,
    "power_fault": Severity.ALARM,
    "temp_high": Severity.WARNING,
    "compressor_overheat": Severity.ALARM,
    "pressure_low": Severity.ALARM,
    "pressure_high": Severity.ALARM,
    "dryer_fault": Severity.ALARM,
    "sieve_fault": Severity.ALARM,
    "o2_sensor_fault": Severity.WARNING,
    "service_due": Severity.INFO,
    "general_fault": Severity.ALARM,
}

# Service and sensor-age reminders, one rule each: (rule id, counter field, the [nominal] key of
# its interval (defaults in SERVICE_DEFAULTS), message, doc).
SERVICE_RULES: tuple[tuple[str, str, str, str, str], ...] = (
    ("service-due", "compressor_h", "service_interval_h",
     "{device}: service due ({value:.0f} h, interval {threshold:.0f} h)",
     "compressor_h >= service_interval_h (default concentrators 5,000 h, plants 4,000 h: "
     "typical manufacturer intervals)"),
    ("filter-service-due", "filter_h", "filter_interval_h",
     "{device}: filter change due ({value:.0f} h, interval {threshold:.0f} h)",
     "filter_h >= filter_interval_h (default concentrators 4,000 h = 6 months of continuous "
     "duty, filter life 6-12 months; plants 2,000 h)"),
    ("o2-cell-age", "o2_cell_age_d", "o2_cell_life_d",
     "{device}: O2 cell {value:.0f} d old (life {threshold:.0f} d): replace",
     "o2_cell_age_d >= o2_cell_life_d (default 730 d; galvanic cells last 1-3 years, "
     "docs/domain.md, How equipment degrades)"),
    ("calibration-due", "calibration_age_d", "calibration_interval_d",
     "{device}: purity analyser calibration due ({value:.0f} d)",
     "calibration_age_d >= calibration_interval_d (default 90 d, proposal)"),
)  # fmt: skip

POLLER_MEASUREMENT = "modbus_poller"  # emitted by the poller supervisor (gateway/modbus.py)


def _service(key: str):  # type: ignore[no-untyped-def]
    def threshold(dev: Device, site: Site) -> float:
        value = nominal(dev, key)
        if value is not None:
            return value
        return SERVICE_DEFAULTS[key].get(dev.kind, math.nan)

    return threshold


def _setpoint_band(factor: float):  # type: ignore[no-untyped-def]
    def threshold(dev: Device, site: Site) -> float:
        setpoint = nominal(dev, "outlet_kpa_setpoint")
        return math.nan if setpoint is None else setpoint * factor  # NaN: never judged

    return threshold


def _over_flow(dev: Device, site: Site) -> float:
    rated = nominal(dev, "rated_flow_lpm")
    return math.nan if rated is None else rated * OVER_FLOW_FACTOR


def equipment_rules(config: GatewayConfig) -> list[Rule]:
    """The built-in equipment rules (appended to ``gateway.builtin_rules.builtin_rules``)."""
    producers = frozenset({DeviceKind.CONCENTRATOR, DeviceKind.PLANT})
    th = AlarmKind.THRESHOLD
    sev = Severity
    rules = [
        Rule(
            f"equipment-{name.replace('_', '-')}", th, ALARM_BIT_SEVERITY.get(name, sev.ALARM),
            name, ">", 0.5, off_delay_s=30,
            message=f"{{device}}: {meaning} (the unit's own alarm)",
            doc="the unit's own alarm bit, named in the profile's [[alarm_bit]]; "
                "off-delay 30 s against chatter (ISA-18.2)",
        )
        for name, meaning in CANONICAL_ALARMS.items()
    ]  # fmt: skip
    B = Rule
    rules += [
        B("outlet-pressure-low", th, sev.ALARM, "outlet_kpa", "<",
          value_fn=_setpoint_band(1 - PRESSURE_BAND), hysteresis=1.0, on_delay_s=60,
          off_delay_s=60, device_kind=producers, only_warm=True,
          doc="product pressure < 85 % of the profile's outlet_kpa_setpoint (docs/domain.md, "
              "Limits and alarms: +-15 % of setpoint); not judged without a setpoint"),
        B("outlet-pressure-high", th, sev.ALARM, "outlet_kpa", ">",
          value_fn=_setpoint_band(1 + PRESSURE_BAND), hysteresis=1.0, on_delay_s=60,
          off_delay_s=60, device_kind=producers, only_warm=True,
          doc="product pressure > 115 % of the profile's outlet_kpa_setpoint (docs/domain.md, "
              "Limits and alarms)"),
        B("flow-none-while-running", th, sev.ALARM, "no_flow_running", ">", 0.5,
          on_delay_s=60, off_delay_s=30, device_kind=producers,
          message="{device}: running but no product flow",
          doc="running with flow < no_flow_lpm (default 10 % of rated_flow_lpm) for 60 s; WHO "
              "technical specifications for oxygen concentrators (2015) require a no-flow alarm"),
        B("flow-above-rated", th, sev.WARNING, "flow_lpm", ">", value_fn=_over_flow,
          on_delay_s=300, off_delay_s=60, device_kind=producers,
          doc="flow > 110 % of the profile's rated_flow_lpm for 5 min (ISO 80601-2-69 "
              "201.12.1.101: flow accuracy +-10 %); purity falls with over-draw"),
    ]  # fmt: skip
    rules += [
        B(rule_id, th, sev.WARNING, field, ">=", value_fn=_service(key), device_kind=producers,
          message=message, doc=doc)
        for rule_id, field, key, message, doc in SERVICE_RULES
    ]  # fmt: skip
    rules += [
        B("modbus-poller-restart", th, sev.ALARM, "poller_crashed", ">", 0.5,
          off_delay_s=600,
          message="{device}: the Modbus poller task died and was restarted (see the log)",
          doc="gateway health: a poller task died (a bug, not a device fault) and its supervisor "
              "restarted it; held 10 min after polling resumed"),
    ]  # fmt: skip
    return rules


class EquipmentFields:
    """Fields the gateway derives from one device's decoded values (see module docstring).

    ``no_flow_running``: 1 when ``state`` is on and ``flow_lpm`` is below ``no_flow_lpm``
    (profile ``[nominal]``, default 10 % of ``rated_flow_lpm``), else 0; absent when either
    field is missing or invalid (no claim without both).
    """

    def __init__(self, profile: Profile):
        names = {r.name for r in profile.registers}
        nominal: dict[str, Any] = profile.nominal
        no_flow = nominal.get("no_flow_lpm")
        rated = nominal.get("rated_flow_lpm")
        if no_flow is None and rated is not None:
            no_flow = NO_FLOW_FRACTION * float(rated)
        self.no_flow_lpm: float | None = None if no_flow is None else float(no_flow)
        self.active = self.no_flow_lpm is not None and {"state", "flow_lpm"} <= names

    def __call__(self, fields: dict[str, FieldValue]) -> None:
        if not self.active:
            return
        state, flow = fields.get("state"), fields.get("flow_lpm")
        if state is None or not isinstance(flow, int | float):
            return
        running = bool(state)
        fields["no_flow_running"] = 1 if running and flow < (self.no_flow_lpm or 0.0) else 0
