"""What a notification says: the catalogue (Simplified Chinese and English, one place each) and
the composition of one message from a queued row.

A message must be understood by someone woken at 3 a.m.: which facility (site name and id),
which room or unit, what is wrong in plain words with the value, the limit and the unit, how
severe, what to do first, and where to look and acknowledge (the live page; acknowledging needs
an operator login there). The first actions follow docs/domain.md, "Limits and alarms": a high
room O2 is a fire hazard (NFPA 99 burning-rate limit), below 19.5 % is an oxygen-deficient
atmosphere (OSHA 29 CFR 1910.146), low purity means the product is out of specification
(ISO 80601-2-69, Ph. Eur. "Oxygen 93").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from gateway.config import DeviceKind, GatewayConfig, NotifyTarget

# Per built-in rule (gateway/alarms.py): (what is wrong, what to do first).
RULES: dict[str, dict[str, tuple[str, str]]] = {
    "zh": {
        "room-o2-high": (
            "房间氧浓度过高(火灾风险)",
            "立即停止向该房间供氧增氧;开窗通风;禁止明火和吸烟。",
        ),
        "room-o2-high-warn": (
            "房间氧浓度偏高",
            "调小该房间的供氧流量;检查增氧控制器。",
        ),
        "room-o2-deficient": (
            "房间缺氧(低于 19.5 %)",
            "立即通风;检查供气(制氧机排气或氮气是否泄漏);如有人头痛、头晕等不适,立即撤离房间。",
        ),
        "room-o2-low-effect": (
            "增氧无效(房间氧浓度低)",
            "检查制氧机是否运行、门窗是否关闭、输氧管路是否脱落。",
        ),
        "purity-low": (
            "氧气纯度过低",
            "切换到备用气源;减小用氧流量;联系维修服务。",
        ),
        "purity-warn": (
            "氧气纯度下降",
            "减小用氧流量;安排维修;密切关注纯度。",
        ),
        "purity-sensor-fault": (
            "纯度读数不可信(传感器故障)",
            "检查或校准纯度传感器;用便携式氧分析仪核对。",
        ),
        "purity-residual": (
            "纯度低于该设备在同等流量下的正常值(分子筛老化或受潮)",
            "安排维修:检查空气干燥机和分子筛。",
        ),
        "co2-warn": ("二氧化碳偏高(通风不足)", "加强通风:打开新风或窗户。"),
        "co2-high": ("二氧化碳过高(通风严重不足)", "立即通风:打开新风或窗户。"),
        "dew-point-warn": ("进气露点偏高(干燥机)", "检查空气干燥机;纯度随后会下降。"),
        "dew-point-high": ("进气露点过高(干燥机故障)", "立即检查空气干燥机;准备备用气源。"),
        "device-offline": (
            "设备离线",
            "检查设备电源和网络;在恢复前收不到该设备的读数和报警。",
        ),
        "sensor-fault": ("传感器故障(读数不可信)", "检查传感器;在修复前不要相信其读数。"),
        "room-o2-stale": ("氧传感器无读数", "检查氧传感器及其连线。"),
        "purity-stale": ("纯度传感器无读数", "检查纯度传感器及其连线。"),
    },
    "en": {
        "room-o2-high": (
            "Room O2 too high (fire hazard)",
            "Stop oxygen enrichment of the room; ventilate; no open flames or smoking.",
        ),
        "room-o2-high-warn": (
            "Room O2 above the comfort band",
            "Turn down the room's oxygen flow; check the enrichment controller.",
        ),
        "room-o2-deficient": (
            "Room oxygen-deficient (below 19.5 %)",
            "Ventilate now; check the supply (PSA exhaust or nitrogen leak?); leave the room "
            "if anyone has symptoms (headache, dizziness).",
        ),
        "room-o2-low-effect": (
            "Enrichment not working (room O2 low)",
            "Check the concentrator runs, doors and windows are closed, the tubing is on.",
        ),
        "purity-low": (
            "Oxygen purity too low",
            "Switch to the backup supply; reduce the flow; call service.",
        ),
        "purity-warn": (
            "Oxygen purity dropping",
            "Reduce the flow; plan service; watch the purity.",
        ),
        "purity-sensor-fault": (
            "Purity reading implausible (sensor fault)",
            "Check or recalibrate the purity sensor; verify with a handheld analyser.",
        ),
        "purity-residual": (
            "Purity below this unit's normal at this flow (sieve ageing or wetting)",
            "Plan service: check the air dryer and the sieve.",
        ),
        "co2-warn": ("CO2 high (poor ventilation)", "Ventilate: open the fresh-air supply."),
        "co2-high": ("CO2 very high (ventilation failed)", "Ventilate now: fresh air, windows."),
        "dew-point-warn": ("Feed-air dew point high (dryer)", "Check the air dryer; purity "
                           "will drop next."),
        "dew-point-high": ("Feed-air dew point too high (dryer failed)", "Check the air dryer "
                           "now; prepare the backup supply."),
        "device-offline": (
            "Device offline",
            "Check the device's power and network; its readings and alarms do not arrive.",
        ),
        "sensor-fault": ("Sensor fault (implausible reading)", "Check the sensor; do not "
                         "trust its readings until fixed."),
        "room-o2-stale": ("No value from the O2 sensor", "Check the O2 sensor and its cable."),
        "purity-stale": ("No value from the purity sensor", "Check the purity sensor and its "
                         "cable."),
    },
}  # fmt: skip

# Everything else a message says, per language.
TEXT: dict[str, dict[str, str]] = {
    "zh": {
        "critical": "严重",
        "alarm": "报警",
        "warning": "警告",
        "info": "提示",
        "raise": "【{sev}】{what}",
        "escalate": "【{sev}】{what}(已 {duration}未确认)",
        "repeat": "【{sev}】仍未确认:{what}",
        "clear": "【已恢复】{what}",
        "ack": "【已确认】{what}({by})",
        "shelve": "【已搁置】{what}({by})",
        "unshelve": "【取消搁置】{what}",
        "target_failing": "【通知故障】通知通道 {target} 自 {since} 起发送失败",
        "target_recovered": "【通知恢复】通知通道 {target} 已恢复(故障始于 {since})",
        "target_detail": "{attempts} 次尝试,最后错误:{error}。该通道的报警通知可能未送达。",
        "where": "地点:{site} · {unit}",
        "room": "房间 {room}",
        "unit": "设备 {device}",
        "value": "当前值 {value},报警限 {threshold}",
        "value_only": "当前值 {value}",
        "first": "请先:{action}",
        "fallback_action": "检查该设备。",
        "time": "时间:{time}",
        "link": "查看并确认(需操作员登录):{url}",
        "link_label": "查看并确认",
        "login": "需操作员登录",
        "over": "报警已解除,无需处理。",
        "offline_value": "已 {seconds} 秒无数据",
    },
    "en": {
        "critical": "CRITICAL",
        "alarm": "ALARM",
        "warning": "WARNING",
        "info": "INFO",
        "raise": "[{sev}] {what}",
        "escalate": "[{sev}] {what} (unacknowledged for {duration})",
        "repeat": "[{sev}] Still unacknowledged: {what}",
        "clear": "[CLEARED] {what}",
        "ack": "[ACKNOWLEDGED] {what} ({by})",
        "shelve": "[SHELVED] {what} ({by})",
        "unshelve": "[UNSHELVED] {what}",
        "target_failing": "[NOTIFICATION FAILURE] notification target {target} failing "
                          "since {since}",
        "target_recovered": "[NOTIFICATION RESTORED] notification target {target} works again "
                            "(failing since {since})",
        "target_detail": "{attempts} attempts, last error: {error}. Alarm notifications through "
                         "it may not have arrived.",
        "where": "Where: {site} · {unit}",
        "room": "room {room}",
        "unit": "unit {device}",
        "value": "Now {value}, limit {threshold}",
        "value_only": "Now {value}",
        "first": "First: {action}",
        "fallback_action": "Check the device.",
        "time": "Time: {time}",
        "link": "View and acknowledge (operator login required): {url}",
        "link_label": "View and acknowledge",
        "login": "operator login required",
        "over": "The alarm is over; nothing to do.",
        "offline_value": "no data for {seconds} s",
    },
}  # fmt: skip

# Plain names and units of the fields alarm rules watch.
FIELDS: dict[str, tuple[str, str, str]] = {  # field: (zh, en, unit)
    "o2_pct": ("氧浓度", "O2", "%"),
    "purity_pct": ("氧纯度", "purity", "%"),
    "co2_ppm": ("二氧化碳", "CO2", "ppm"),
    "dew_point_c": ("露点", "dew point", "°C"),
    "flow_lpm": ("流量", "flow", "L/min"),
    "outlet_kpa": ("出口压力", "outlet pressure", "kPa"),
    "pressure_kpa": ("压力", "pressure", "kPa"),
    "rh_pct": ("湿度", "humidity", "%"),
    "temp_c": ("温度", "temperature", "°C"),
}
LANGUAGES = ("zh", "en")


@dataclass(frozen=True)
class Message:
    """One notification in the forms the targets need."""

    subject: str  # one line, both languages (e-mail subject, robot title)
    text: str  # plain text, Chinese block then English block
    markdown: str  # WeCom / DingTalk markdown
    short: str  # SMS: one short line per language
    data: dict[str, Any] = field(default_factory=dict)  # webhook JSON


def _num(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"


def _local_time(ts_ms: int, tz: str) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")


def alarm_link(config: GatewayConfig, site: str, device: str, rule: str) -> str:
    return f"{config.gateway.live_page_url()}/#alarm/{site}/{device}/{rule}"


def compose(
    kind: str, payload: dict[str, Any], config: GatewayConfig, target: NotifyTarget, ref: str
) -> Message:
    """The message for a queued row of ``kind`` (see gateway/notify/queue.py) and its payload;
    ``ref`` (the idempotency key) is shown so duplicates can be recognised."""
    if kind in ("target_failing", "target_recovered"):
        return _target_message(kind, payload, target, ref)
    alarm: dict[str, Any] = payload["alarm"]
    site_id, device_id, rule = str(alarm["site"]), str(alarm["device"]), str(alarm["rule"])
    site_name = next((s.name for s in config.site if s.id == site_id), "")
    dev = config.find_device(site_id, device_id)
    room = (dev.room or dev.id) if dev is not None and dev.kind is DeviceKind.ROOM else None
    severity = str(alarm.get("severity", "alarm"))
    fld = alarm.get("field")
    zh_name, en_name, unit = FIELDS.get(str(fld), (str(fld or ""), str(fld or ""), ""))
    value, threshold = _num(alarm.get("value")), _num(alarm.get("threshold"))
    url = alarm_link(config, site_id, device_id, rule)
    ts_ms = int(payload.get("ts_ms") or alarm.get("raised_ms") or 0)
    when = _local_time(ts_ms, target.timezone)
    raised_ms = int(alarm.get("raised_ms") or ts_ms)
    delay_s = target.unacked_after_s
    offline = alarm.get("kind") == "offline"
    blocks: dict[str, list[str]] = {}
    titles: dict[str, str] = {}
    actions: dict[str, str] = {}
    for lang in LANGUAGES:
        t = TEXT[lang]
        what, action = RULES[lang].get(rule, ("", ""))
        if not what:  # a rule of the site's own config: its message, or the field
            what = str(alarm.get("message") or f"{rule}: {zh_name if lang == 'zh' else en_name}")
            action = t["fallback_action"]
        by = payload.get("by") or ""
        duration = (
            (f"{delay_s / 60:.0f} 分钟" if lang == "zh" else f"{delay_s / 60:.0f} min")
            if delay_s >= 60
            else (f"{delay_s:.0f} 秒" if lang == "zh" else f"{delay_s:.0f} s")
        )
        title = t[kind].format(sev=t.get(severity, severity), what=what, duration=duration, by=by)
        site_text = f"{site_name} ({site_id})" if site_name else site_id
        unit_text = t["room"].format(room=room) if room else ""
        unit_text = f"{unit_text} ({device_id})" if room else t["unit"].format(device=device_id)
        lines = [title, t["where"].format(site=site_text, unit=unit_text)]
        if offline and value is not None:
            seconds = f"{float(alarm['value']):.0f}"
            lines.append(t["value_only"].format(value=t["offline_value"].format(seconds=seconds)))
        elif value is not None and threshold is not None:
            shown = (zh_name if lang == "zh" else en_name) + " " if fld else ""
            lines.append(t["value"].format(value=f"{shown}{value} {unit}".strip(),
                                           threshold=f"{threshold} {unit}".strip()))  # fmt: skip
        if kind == "clear":
            lines.append(t["over"])
        else:
            lines.append(t["first"].format(action=action))
        lines.append(t["time"].format(time=when))
        blocks[lang] = lines
        titles[lang] = title
        actions[lang] = action
    link_lines = [TEXT["zh"]["link"].format(url=url), TEXT["en"]["link"].format(url=url)]
    text = "\n".join([*blocks["zh"], "", *blocks["en"], "", *link_lines, f"ref {ref}"])
    md_lines = []
    for lang in LANGUAGES:
        head, *rest = blocks[lang]
        md_lines += [f"### {head}", *(f"> {line}" for line in rest), ""]
    zh, en = TEXT["zh"], TEXT["en"]
    md_lines += [f"[{zh['link_label']} / {en['link_label']}]({url})",
                 f"({zh['login']} / {en['login']})", f"ref {ref}"]  # fmt: skip
    place = f"{site_name or site_id} / {device_id}"
    subject = f"{titles['zh']} / {titles['en']} - {place}"
    reading = f" {value} {unit}".rstrip() if value is not None and not offline else ""
    short = f"{titles['zh']} {place}{reading} | {titles['en']} {place}{reading} {url}"
    data = {
        "v": 1,
        "id": ref,
        "event": kind,
        "gateway": config.gateway.id,
        "site": site_id,
        "site_name": site_name,
        "device": device_id,
        "room": room,
        "rule": rule,
        "severity": severity,
        "field": fld,
        "value": alarm.get("value"),
        "threshold": alarm.get("threshold"),
        "unit": unit,
        "title": titles,
        "action": actions,
        "text": text,
        "url": url,
        "ts_ms": ts_ms,
        "raised_ms": raised_ms,
        "alarm": alarm,
    }
    return Message(subject, text, "\n".join(md_lines), short, data)


def _target_message(kind: str, payload: dict[str, Any], target: NotifyTarget, ref: str) -> Message:
    since = _local_time(int(payload["since_ms"]), target.timezone)
    lines: dict[str, list[str]] = {}
    for lang in LANGUAGES:
        t = TEXT[lang]
        lines[lang] = [t[kind].format(target=payload["target"], since=since)]
        if kind == "target_failing":
            lines[lang].append(t["target_detail"].format(
                attempts=payload.get("attempts", 0), error=payload.get("error", "")))  # fmt: skip
    text = "\n".join([*lines["zh"], "", *lines["en"], "", f"ref {ref}"])
    subject = f"{lines['zh'][0]} / {lines['en'][0]}"
    markdown = "\n".join(
        [f"### {lines['zh'][0]}", *lines["zh"][1:], "", f"### {lines['en'][0]}", *lines["en"][1:]]
    )
    data = {"v": 1, "id": ref, "event": kind, "target": payload["target"],
            "since_ms": payload["since_ms"], "text": text, "title": subject}  # fmt: skip
    return Message(subject, text, markdown, subject, data)
