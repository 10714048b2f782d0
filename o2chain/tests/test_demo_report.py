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


class _Log:
    """A stand-in for the gateway's alarm log (``AlarmsClient.log``), newest first."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events

    def log(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(reversed(self.events))


def test_a_reused_data_dir_does_not_replay_earlier_runs(capsys: Any) -> None:
    """The gateway keeps its alarm log across runs on one data dir: only this run's events are
    news, and floods of one rule print as one line."""
    from o2chain.demo import Narrator

    old = {**_alarm("conc-4", "device-offline", "alarm"), "event": "raise", "ts": 1000}
    flood = [
        {**_alarm(f"room-{n}", "device-offline", "alarm"), "event": "raise", "ts": 5000 + n}
        for n in range(101, 106)
    ]
    narrator = Narrator("http://127.0.0.1:1", None, auto_ack=False, since_ms=2000)
    narrator.client = _Log([old, *flood])  # type: ignore[assignment]
    narrator.poll()
    narrator.poll()  # nothing twice
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1, out
    assert "alarm RAISED       alarm    device-offline on 5 devices: room-101; room-102" in out[0]
    assert "conc-4" not in out[0]


def test_log_tail_from_end_skips_what_earlier_runs_wrote(tmp_path: Any) -> None:
    from o2base.procs import LogTail

    log = tmp_path / "scenario.log"
    log.write_text('{"broker_restart": true, "t_s": 1200.0}\n')  # the previous run's
    tail = LogTail(log, from_end=True)
    with log.open("a") as f:
        f.write("--- start o2chain sim run\npartial")
    assert tail.lines() == ["--- start o2chain sim run"]
    with log.open("a") as f:
        f.write(" line\n")
    assert tail.lines() == ["partial line"]


def test_auto_ack_skips_an_alarm_that_cleared_before_it_was_due(monkeypatch: Any) -> None:
    """The demo acknowledges the first serious alarm still standing, not one that cleared
    while the demo waited (the gateway answers 409 to that)."""
    from o2chain import demo

    monkeypatch.setattr(demo, "AUTO_ACK_AFTER_S", 0.0)
    brief = _alarm("conc-1", "device-offline", "alarm")
    lasting = _alarm("conc-4", "device-offline", "alarm")
    log = _Log(
        [
            {**brief, "event": "raise", "ts": 1000},
            {**brief, "event": "clear", "ts": 1001},
            {**lasting, "event": "raise", "ts": 1002},
        ]
    )
    acked: list[str] = []
    log.ack = acked.append  # type: ignore[attr-defined]
    log.user = "operator"  # type: ignore[attr-defined]
    narrator = demo.Narrator("http://127.0.0.1:1", ("operator", "pw"), auto_ack=True)
    narrator.client = log  # type: ignore[assignment]
    narrator.poll()
    narrator.poll()
    assert acked == ["lhasa-hotel/conc-4/device-offline"]
    assert narrator.acked == acked


def test_summary_tells_the_oxygen_chain_and_leaves_out_what_is_unknown() -> None:
    from o2chain.demo import format_chain

    status = _status()
    status["sites"][0]["chain"] = {
        "produced_o2_lpm": 1154.2, "stored_o2_l": 2113488.0, "stored_change_o2_lpm": -662.5,
        "delivered_metered_o2_lpm": 1758.9, "used_o2_lpm": 1106.4, "loss_o2_lpm": 38.2,
        "days_left": 2.24,
    }  # fmt: skip
    (line,) = [x for x in format_status(status) if x.strip().startswith("O2 chain")]
    assert line.split(None, 2)[2] == (
        "produced 1154 L/min, stored 2113 m3, stored change -662 L/min, delivered (metered) "
        "1759 L/min, used (rooms) 1106 L/min, loss 38 L/min, days of O2 left 2.2"
    )
    assert format_chain({"produced_o2_lpm": 10.0}) == "produced 10 L/min"
