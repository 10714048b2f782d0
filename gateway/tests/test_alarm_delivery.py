"""Alarm events under the delivery guarantee: an alarm's state commits in the transaction that
holds its point, it is announced only after that commit, and a full outbox never drops it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.alarms import AlarmEvent
from gateway.app import Gateway
from gateway.config import parse_config
from gateway.outbox import FullPolicy, Outbox, OutboxFullError
from gateway.readings import Reading
from gateway.state_store import StateStore

TAGS = {"site": "lhasa", "device": "room-1", "room": "1"}


def config(tmp_path: Path, **gateway: Any) -> Any:
    return parse_config(
        {
            "gateway": {"state_dir": str(tmp_path / "state"), "http_listen": "127.0.0.1:0"}
            | gateway,
            "mqtt": {"url": "mqtt://127.0.0.1:1"},
            "influx": {"url": "http://127.0.0.1:1", "database": "t"},
            "site": [{"id": "lhasa", "altitude_m": 3650}],
            "device": [{"id": "room-1", "site": "lhasa", "kind": "room", "transport": "mqtt"}],
            "alarm": [
                {"id": "o2-high", "field": "o2_pct", "op": ">", "value": 27.0,
                 "severity": "critical"},
            ],
            "alarm_engine": {"builtin": False},
        }
    )  # fmt: skip


def queued_lines(outbox: Outbox) -> list[str]:
    return outbox.peek_batch(100_000).lines


def test_keep_lines_pass_the_bound_and_drop_oldest_never_takes_them(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", max_bytes=400, policy=FullPolicy.DROP_OLDEST)
    outbox.commit([], keep_lines=['alarm,rule=a state="raise" 1'])
    for n in range(20):
        outbox.commit([f"room o2_pct={n} {n}" + " " * 40])
    lines = queued_lines(outbox)
    assert lines[0].startswith("alarm,rule=a")  # the oldest row, and still there
    assert outbox.stats.dropped_oldest > 0
    blocking = Outbox(tmp_path / "b.sqlite", max_bytes=100, policy=FullPolicy.BLOCK)
    blocking.commit(["room o2_pct=1 1" + " " * 100])
    with pytest.raises(OutboxFullError):
        blocking.commit(["room o2_pct=2 2"])
    blocking.commit([], keep_lines=['alarm state="raise" 2'])  # past the bound
    assert queued_lines(blocking)[-1] == 'alarm state="raise" 2'


def test_state_and_point_commit_together_or_not_at_all(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    store = StateStore.sharing(outbox.db, outbox.lock)
    event = AlarmEvent(1, "raise", {"rule": "r"}, None, "lhasa/room-1/r", {"active": True})

    def failing_after_state(db: sqlite3.Connection) -> None:
        store.writer([event])(db)
        raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(sqlite3.OperationalError):
        outbox.commit([], keep_lines=['alarm state="raise" 1'], also=failing_after_state)
    assert store.load_states() == {} and queued_lines(outbox) == []
    outbox.commit([], keep_lines=['alarm state="raise" 1'], also=store.writer([event]))
    assert store.load_states() == {"lhasa/room-1/r": {"active": True}}
    assert queued_lines(outbox) == ['alarm state="raise" 1']
    assert [e["event"] for e in store.recent_log()] == ["raise"]


def test_an_alarm_is_announced_after_its_commit_and_kept_at_a_full_outbox(
    tmp_path: Path,
) -> None:
    gw = Gateway(config(tmp_path, outbox_max_mb=0.0005, outbox_full_policy="block"))
    try:
        announced: list[tuple[AlarmEvent, bool]] = []

        def listener(event: AlarmEvent) -> None:
            stored = any(line.startswith("alarm,") for line in queued_lines(gw.outbox))
            announced.append((event, stored))

        gw.alarms.listeners.append(listener)
        gw.outbox.commit(["room,device=filler o2_pct=1 1" + " " * 600])  # at the bound
        gw._emit(Reading("room", TAGS, {"o2_pct": 29.5}, 1_000))
        # The reading that raised it was refused (counted); the alarm is stored and announced.
        assert gw.modbus_dropped == 1
        assert [(e.state, stored) for e, stored in announced] == [("raise", True)]
        assert "lhasa/room-1/o2-high" in gw.state_store.load_states()
        lines = queued_lines(gw.outbox)
        assert sum(line.startswith("alarm,") for line in lines) == 1
        assert not any(line.startswith("room,device=room-1") for line in lines)
    finally:
        gw.outbox.close()


def test_state_of_an_earlier_release_is_taken_over_once(tmp_path: Path) -> None:
    old = StateStore(tmp_path / "state" / "alarms.sqlite")
    state = {"site": "lhasa", "device": "room-1", "rule": "o2-high", "kind": "threshold",
             "severity": "critical", "active": True, "raised_ms": 5}  # fmt: skip
    old.write([AlarmEvent(5, "raise", {}, None, "lhasa/room-1/o2-high", state)])
    old.put_kv("enrich:producers", {"lhasa/conc-1": {"total_l": 12.5}})
    old.close()
    gw = Gateway(config(tmp_path))
    try:
        assert [a["key"] for a in gw.alarms.active()] == ["lhasa/room-1/o2-high"]
        assert gw.state_store.get_kv("enrich:producers") == {"lhasa/conc-1": {"total_l": 12.5}}
        assert not (tmp_path / "state" / "alarms.sqlite").exists()
    finally:
        gw.outbox.close()
