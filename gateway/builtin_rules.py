"""The built-in rules (oxygen, purity, CO2, dryers, links, board clocks, sensor faults, and the
equipment rules of gateway/equipment_rules.py) and how config rules layer over them.

gateway/README.md "Alarm defaults" lists every default with its source (docs/domain.md).
"""

from __future__ import annotations

from typing import Any

from gateway import oxygen
from gateway.config import AlarmKind, Device, DeviceKind, GatewayConfig, Severity, Site
from gateway.equipment_rules import equipment_rules
from gateway.rules import Rule, nominal, site_pb
from gateway.supply_rules import supply_rules


def builtin_rules(config: GatewayConfig) -> list[Rule]:
    """The defaults of docs/domain.md, Limits and alarms; gateway/README.md "Alarm defaults"
    lists them with their sources."""
    room = frozenset({DeviceKind.ROOM})
    conc = frozenset({DeviceKind.CONCENTRATOR})
    plant = frozenset({DeviceKind.PLANT})
    offline_n = config.alarm_engine.offline_intervals

    def purity_low(dev: Device, site: Site) -> float:
        default = 82.0 if dev.kind is DeviceKind.CONCENTRATOR else 90.0
        return nominal(dev, "purity_alarm_pct") or default

    def purity_warn(dev: Device, site: Site) -> float:
        return nominal(dev, "purity_warn_pct") or 91.0

    def stale_after(dev: Device, site: Site) -> float:
        return 5.0 * dev.interval_s

    B = Rule
    sev = Severity
    th = AlarmKind.THRESHOLD
    return [
        B("purity-low", th, sev.ALARM, "purity_pct", "<", value_fn=purity_low, hysteresis=1.0,
          on_delay_s=60, off_delay_s=60, device_kind=conc | plant, only_warm=True,
          doc="medical concentrators < 82 % (ISO 80601-2-69 / YY 9706.269); PSA plants < 90 % "
              "(Ph. Eur. Oxygen 93: 90-96 %); profile [nominal] purity_alarm_pct overrides"),
        B("purity-warn", th, sev.WARNING, "purity_pct", "<", value_fn=purity_warn,
          hysteresis=0.5, on_delay_s=120, off_delay_s=60, device_kind=plant, only_warm=True,
          doc="PSA plants < 91 % (project choice, docs/domain.md); profile purity_warn_pct "
              "overrides"),
        B("purity-sensor-fault", th, sev.WARNING, "purity_pct", ">", 96.5, hysteresis=0.5,
          on_delay_s=60, off_delay_s=60, device_kind=conc | plant,
          doc="PSA product cannot exceed about 95.7 % (argon): > 96.5 % is a sensor fault"),
        B("purity-residual", AlarmKind.RESIDUAL, sev.WARNING, "purity_pct", "<", -3.0,
          hysteresis=1.0, on_delay_s=1800, off_delay_s=600, device_kind=conc | plant,
          only_warm=True, learn_s=86400.0,
          doc="purity 3 % below the unit's own purity-flow baseline (learned over its first "
              "day): sieve wetting/ageing shows at the same flow (docs/domain.md, How "
              "equipment degrades)"),
        B("room-o2-high", th, sev.CRITICAL, "o2_pct", ">",
          value_fn=lambda d, s: oxygen.room_high_alarm_pct(site_pb(s)), hysteresis=0.3,
          on_delay_s=30, off_delay_s=60, device_kind=room,
          doc="NFPA increased-burning-rate limit 23.45/sqrt(PB/101.325) - 1.5 "
              "(Lhasa 27.9 %); project choice (docs/domain.md)"),
        B("room-o2-high-warn", th, sev.WARNING, "o2_pct", ">",
          value_fn=lambda d, s: oxygen.room_high_warn_pct(site_pb(s)), hysteresis=0.3,
          on_delay_s=60, off_delay_s=60, device_kind=room,
          doc="min(27 %, NFPA limit - 3) (Lhasa 26.4 %); project choice (docs/domain.md)"),
        B("room-o2-deficient", th, sev.CRITICAL, "o2_pct", "<", 19.5, hysteresis=0.3,
          on_delay_s=30, off_delay_s=60, device_kind=room,
          doc="oxygen-deficient atmosphere < 19.5 % (OSHA 29 CFR 1910.146)"),
        B("room-o2-low-effect", th, sev.WARNING, "o2_pct", "<", 22.0, hysteresis=0.3,
          on_delay_s=600, off_delay_s=60, device_kind=room,
          doc="enrichment without effect < 22 % (target band 24-26 %); project choice "
              "(docs/domain.md)"),
        B("co2-warn", th, sev.WARNING, "co2_ppm", ">", 1000.0, hysteresis=50.0,
          on_delay_s=300, off_delay_s=300, device_kind=room,
          doc="GB/T 18883 daily mean 0.10 %"),
        B("co2-high", th, sev.ALARM, "co2_ppm", ">", 1500.0, hysteresis=50.0,
          on_delay_s=300, off_delay_s=300, device_kind=room, doc="project choice (docs/domain.md)"),
        B("dew-point-warn", th, sev.WARNING, "dew_point_c", ">", -40.0, hysteresis=2.0,
          on_delay_s=300, off_delay_s=300, doc="plant dryer: dew point > -40 degC"),
        B("dew-point-high", th, sev.ALARM, "dew_point_c", ">", -30.0, hysteresis=2.0,
          on_delay_s=300, off_delay_s=300, doc="plant dryer: dew point > -30 degC"),
        B("device-offline", AlarmKind.OFFLINE, sev.ALARM, silence_intervals=offline_n,
          doc=f"MQTT last will, Modbus poller offline, or silent > {offline_n:g} intervals"),
        B("clock-ahead", th, sev.WARNING, "clock_skew_s", ">", 60.0, hysteresis=30.0,
          off_delay_s=300,
          doc="the board's clock runs more than 60 s ahead of the gateway's (its readings are "
              "stored at arrival time, docs/contracts.md): fix its NTP"),
        B("clock-behind", th, sev.WARNING, "clock_skew_s", "<", -300.0, hysteresis=30.0,
          off_delay_s=300,
          doc="the board's clock runs more than 5 min behind: its readings carry wrong times; "
              "fix its NTP"),
        B("sensor-fault", AlarmKind.FLAGGED, sev.WARNING, "invalid", off_delay_s=300,
          doc="a reading carried a field the gateway will not use as a number (implausible, "
              "a no-value sentinel, not finite): stored flagged (docs/contracts.md); the "
              "other fields are judged as usual"),
        B("room-o2-stale", AlarmKind.STALE, sev.WARNING, "o2_pct", value_fn=stale_after,
          device_kind=room, doc="the board reports but no O2 value for 5 intervals"),
        B("purity-stale", AlarmKind.STALE, sev.WARNING, "purity_pct", value_fn=stale_after,
          device_kind=conc | plant, doc="the unit reports but no purity for 5 intervals"),
        *equipment_rules(config),  # gateway/equipment_rules.py
        *supply_rules(config),  # gateway/supply_rules.py
    ]  # fmt: skip


def effective_rules(config: GatewayConfig) -> list[Rule]:
    """Built-ins (unless ``alarm_engine.builtin = false``) with config rules layered on top:
    a config rule with a built-in's id replaces it; ``enabled = false`` removes it."""
    rules: dict[str, Rule] = {}
    if config.alarm_engine.builtin:
        for b in builtin_rules(config):
            rules[b.id] = Rule(**{**_fields(b), "source": "builtin"})
    for cfg in config.alarm:
        if not cfg.enabled:
            rules.pop(cfg.id, None)
            continue
        rules[cfg.id] = Rule.from_config(cfg)
    return list(rules.values())


def _fields(rule: Rule) -> dict[str, Any]:
    return {f: getattr(rule, f) for f in rule.__dataclass_fields__}
