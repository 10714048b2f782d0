"""The demo's periodic summary and event lines, from documents shaped like the gateway's
``/api/status`` and ``/api/alarms/log`` (gateway/README.md, "HTTP endpoints")."""

from __future__ import annotations

from typing import Any

from o2chain.demo import format_event, format_status


def _alarm(device: str, rule: str, severity: str, **state: Any) -> dict[str, Any]:
    return {"key": f"lhasa-hotel/{device}/{rule}", "site": "lhasa-hotel", "device": device,
            "rule": rule, "severity": severity, "active": True, "acked": False,
            "acked_by": None, "shelved": False, **state}  # fmt: skip


def _status() -> dict[str, Any]:
    high = _alarm("room-104", "room-o2-high", "critical", acked=True, acked_by="operator")
    offline = _alarm("conc-4", "device-offline", "alarm")
    limits = [
        {"rule": "room-o2-high", "field": "o2_pct", "op": ">", "value": 27.89,
         "severity": "critical"},
        {"rule": "room-o2-high-warn", "field": "o2_pct", "op": ">", "value": 26.39,
         "severity": "warning"},
        {"rule": "room-o2-low-effect", "field": "o2_pct", "op": "<", "value": 22.0,
         "severity": "warning"},
    ]  # fmt: skip

    def room(device: str, o2: float, alarms: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": device, "kind": "room", "link": "online", "thresholds": limits,
                "values": {"o2_pct": {"value": o2}}, "alarms": alarms}  # fmt: skip

    return {
        "alarm_counts": {"active": 2, "unacked": 1, "shelved": 0,
                         "by_severity": {"critical": 1, "alarm": 1, "warning": 0}},
        "sites": [{"devices": [
            room("room-101", 25.0, []),
            room("room-104", 28.6, [high]),
            room("room-301", 21.5, []),
            {"id": "conc-4", "kind": "concentrator", "link": "offline", "alarms": [offline],
             "values": {"purity_pct": {"value": 90.1}, "flow_lpm": {"value": 3.0}}},
        ]}],
    }  # fmt: skip


def test_summary_names_out_of_band_rooms_and_offline_devices_with_severity_and_ack() -> None:
    lines = format_status(_status())
    text = "\n".join(lines)
    assert "  rooms        3 reporting, O2 21.5-28.6 %" in text
    assert (
        "  out of band  room-104 28.6 % (room-o2-high critical, acked by operator); "
        "room-301 21.5 % (room-o2-low-effect warning, not raised yet)"
    ) in lines
    assert "  offline      conc-4 (device-offline alarm, raised)" in lines
    assert "  alarms       2 active (1 critical, 1 alarm), 1 unacknowledged, 0 shelved" in lines
    assert "room-101" not in text  # inside its band


def test_event_lines_say_who_and_what() -> None:
    ack = {**_alarm("room-104", "room-o2-high", "critical"), "event": "ack", "by": "operator",
           "message": "room-104: o2_pct 28.40 > 27.89 (room-o2-high)"}  # fmt: skip
    line = format_event(ack)
    assert line.endswith(
        "alarm ACKNOWLEDGED critical lhasa-hotel/room-104/room-o2-high by operator: "
        "room-104: o2_pct 28.40 > 27.89 (room-o2-high)"
    )
    clear = format_event({**ack, "event": "clear", "by": None})
    assert clear.endswith(
        "alarm CLEARED      critical lhasa-hotel/room-104/room-o2-high: back to normal"
    )
