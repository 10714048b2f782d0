"""Unit tests of the group's parts (gateway/ha.py) without a broker: the acknowledgement gate,
the election's decisions, and alarms rebuilt from their retained messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from gateway.alarms import AlarmEvent
from gateway.config import GatewayConfig
from gateway.ha import AckGate, GroupMember, Member, RestoredAlarms, Role
from gateway.lineproto import LineEncoder
from gateway.outbox import Outbox


def test_acks_wait_until_influxdb_has_the_batchs_rows(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    outbox.commit(["m v=0 0"])  # left by an earlier run: it goes out before ours
    gate = AckGate(outbox)
    acked: list[list[Any]] = []
    outbox.commit(["m v=1 1"])
    gate.hold(["a"], acked.append)
    outbox.commit(["m v=2 2"])
    gate.hold(["b"], acked.append)
    assert acked == []
    batch = outbox.peek_batch(10)
    gate.drained(batch.ids[0])  # only the old row went out
    assert acked == []
    gate.drained(batch.ids[1])
    assert acked == [["a"]]
    gate.drained(batch.ids[2])
    assert acked == [["a"], ["b"]]
    # A batch that added nothing (duplicates only) once everything is written: acked at once.
    gate.hold(["c"], acked.append)
    assert acked[-1] == ["c"] and gate.waiting == 0


def test_a_batch_behind_a_held_one_waits_its_turn(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    gate = AckGate(outbox)
    acked: list[list[Any]] = []
    outbox.commit(["m v=1 1"])
    gate.hold(["a"], acked.append)
    gate.hold(["dup-only"], acked.append)  # nothing new, but acks keep their order
    assert acked == []
    gate.drained(outbox.peek_batch(10).ids[-1])
    assert acked == [["a"], ["dup-only"]]


def member(me: str, tmp_path: Path) -> GroupMember:
    cfg = GatewayConfig.model_validate(
        {
            "gateway": {"id": me, "state_dir": str(tmp_path)},
            "mqtt": {"shared_group": "gws", "keepalive_s": 6},
        }
    )
    m = GroupMember(cfg, clock=lambda: 100.0)
    m._synced = True  # as after the marker came back
    return m


def test_the_first_live_standby_in_id_order_claims(tmp_path: Path) -> None:
    b = member("gw-b", tmp_path)
    b.members = {"gw-a": Member(Role.STANDBY, 1, 99.0), "gw-c": Member(Role.STANDBY, 1, 99.0)}
    assert not b._decide(100.0) and b.role is Role.STANDBY  # gw-a comes first
    b.members["gw-a"] = Member(Role.OFFLINE, 1, 99.5)  # its will
    assert not b._decide(100.0) and b.role is Role.CLAIM and b.epoch == 2
    assert not b._decide(100.1)  # waits for its claim to come back through the broker
    b._claim_echoed = True
    assert b._decide(100.2)


def test_a_silent_member_is_not_live_and_an_active_one_is_left_alone(tmp_path: Path) -> None:
    b = member("gw-b", tmp_path)
    b.members = {"gw-a": Member(Role.ACTIVE, 3, 100.0)}
    assert not b._decide(100.0) and b.role is Role.STANDBY
    # Not heard for three heartbeats (2 s each): a retained "active" of a dead member.
    assert not b._decide(100.0 + 3 * b.heartbeat_s + 0.1) and b.role is Role.CLAIM
    assert b.epoch == 4


def record(m: GroupMember, sender: GroupMember) -> None:
    """``sender``'s current record as the broker passes it on to ``m`` (not retained)."""
    msg = mqtt.MQTTMessage(topic=sender.topic.encode())
    msg.payload = sender._payload(sender.role)
    m._on_message(m.client, None, msg)


@pytest.mark.parametrize("first", ["gw-a", "gw-b"])
def test_of_two_claims_the_one_the_broker_passed_on_first_proceeds(
    tmp_path: Path, first: str
) -> None:
    # Both saw nobody busy and claimed term 1 at once. The broker passes both claims to both
    # members in one order: the member whose claim came first proceeds, whatever its id (a
    # rank by id let both proceed when the first-ranked claim came back last: seen under load).
    a, b = member("gw-a", tmp_path), member("gw-b", tmp_path)
    a.members = {"gw-b": Member(Role.STANDBY, 0, 99.0)}
    b.members = {}  # gw-b has not heard of gw-a yet (it just joined)
    for m in (a, b):
        assert not m._decide(100.0) and m.role is Role.CLAIM and m.epoch == 1
    order = [a, b] if first == "gw-a" else [b, a]
    for sender in order:  # what every member receives, in the broker's order
        for m in (a, b):
            record(m, sender)
    won = {m.me for m in (a, b) if m._decide(100.1)}
    assert won == {first}
    loser = b if first == "gw-a" else a
    assert loser.role is Role.STANDBY
    # and the loser may not claim again at once after backing off
    loser.members = {}
    assert not loser._decide(100.2) and loser.role is Role.STANDBY


def test_a_claim_that_comes_after_ours_came_back_is_not_a_rival(tmp_path: Path) -> None:
    b = member("gw-b", tmp_path)
    a = member("gw-a", tmp_path)
    assert not b._decide(100.0) and b.role is Role.CLAIM
    record(b, b)  # our claim is back: nothing came before it
    a.role, a.epoch = Role.CLAIM, b.epoch  # a slow member that claimed on old news
    record(b, a)
    assert b._decide(100.1)  # gw-a saw ours before its own came back: it backs off
    a.role = Role.ACTIVE  # an active member is always a rival
    record(b, a)
    assert not b._decide(100.2) and b.role is Role.STANDBY


def test_a_retained_alarm_rebuilds_the_very_point_its_raise_wrote() -> None:
    alarm: dict[str, Any] = {
        "key": "lhasa/room-104/room-o2-high", "site": "lhasa", "device": "room-104",
        "rule": "room-o2-high", "kind": "threshold", "severity": "alarm", "field": "o2_pct",
        "state": "raised", "active": True, "acked": False, "acked_ms": None, "acked_by": None,
        "raised_ms": 1_700_000_000_123, "cleared_ms": None, "shelved": False,
        "shelved_until_ms": None, "shelved_by": None, "shelve_reason": None, "value": 27.4,
        "threshold": 26.5, "message": "room-104: o2_pct 27.40 > 26.50 (room-o2-high)",
    }  # fmt: skip
    event = AlarmEvent(1_700_000_000_123, "raise", alarm, None, alarm["key"])
    payload = json.dumps(event.to_json(), separators=(",", ":")).encode()
    restored = RestoredAlarms({"o2/lhasa/gateway/gws/alarm/room-104/room-o2-high": payload})
    assert restored.points() == [LineEncoder().encode(event.to_reading())]
    state = restored.states()["lhasa/room-104/room-o2-high"]
    assert state["active"] and state["raised_ms"] == 1_700_000_000_123
    assert state["message"] == alarm["message"]


def test_a_group_member_needs_a_group(tmp_path: Path) -> None:
    cfg = GatewayConfig.model_validate({"gateway": {"id": "gw-a", "state_dir": str(tmp_path)}})
    with pytest.raises(ValueError, match="shared_group"):
        GroupMember(cfg)
