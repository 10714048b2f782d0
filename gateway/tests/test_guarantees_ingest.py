"""The MQTT side of the delivery guarantee (gateway/README.md, "What happens to a message"),
in process on a real SQLite outbox, with the paho client's acknowledgement calls recorded:

- a message is acknowledged only once its reading (or dead letter) and the duplicate
  tracker's state are committed, as *another* SQLite connection sees them (what survives the
  gateway being killed right after the acknowledgement);
- while commits fail nothing is acknowledged, and a stop then leaves everything to the broker;
- a packet id is acknowledged only on the connection it arrived on;
- an alarm a message raises is announced only once its point and state are committed, also
  at a full outbox, where the alarm goes out and the message stays unacknowledged.

Each test kills a mutant of ``scripts/mutants.py`` that the older tests let live."""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.alarms import AlarmEngine, AlarmEvent
from gateway.config import GatewayConfig, parse_config
from gateway.mqtt_ingest import MqttIngest, _Abandoned, _Queued
from gateway.outbox import FullPolicy, Outbox
from gateway.state_store import StateStore

NOW_MS = 1_795_000_000_000


def config() -> GatewayConfig:
    return parse_config({
        "site": [{"id": "lhasa", "altitude_m": 3650}],
        "device": [{"id": "room-0", "site": "lhasa", "kind": "room", "transport": "mqtt"}],
        "alarm": [{"id": "o2-high", "field": "o2_pct", "op": ">", "value": 27.0,
                   "severity": "critical"}],
        "alarm_engine": {"builtin": False},
    })  # fmt: skip


def message(mid: int, seq: int, connection: int = 0, o2_pct: float = 24.0) -> _Queued:
    body = {"v": 1, "boot": 1, "seq": seq, "ts": NOW_MS - 1000 + seq, "o2_pct": o2_pct}
    return _Queued(connection, mid, 1, "o2/lhasa/room-0/telemetry", json.dumps(body).encode())


class Committed:
    """What a fresh connection to the outbox file sees: committed data only."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> tuple[list[str], list[bytes], list[tuple[str, int, int]]]:
        with closing(sqlite3.connect(self.path)) as db:
            rows = db.execute("SELECT line FROM outbox").fetchall()
            letters = [bytes(p) for (p,) in db.execute("SELECT payload FROM deadletter")]
            seq = db.execute("SELECT device, boot, max_seq FROM seqstate").fetchall()
        lines = [line for (text,) in rows for line in json.loads(text)]
        return lines, letters, [(str(d), int(b), int(m)) for d, b, m in seq]


class Recorder:
    """Stands in for the broker end of paho's ``ack``/``ack_many``: each call records the
    packet ids and what was committed at that moment."""

    def __init__(self, committed: Committed):
        self.committed = committed
        self.acks: list[tuple[list[int], tuple[list[str], list[bytes], list[Any]]]] = []

    def ack_many(self, mids: list[int]) -> None:
        self.acks.append((list(mids), self.committed.read()))

    def ack(self, mid: int, qos: int) -> int:  # the stock paho client's path
        self.acks.append(([mid], self.committed.read()))
        return mqtt.MQTT_ERR_SUCCESS

    def mids(self) -> list[int]:
        return [mid for mids, _ in self.acks for mid in mids]


def rig(tmp_path: Path) -> tuple[MqttIngest, Outbox, Recorder]:
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path)
    ingest = MqttIngest(config(), outbox, wall_clock_ms=lambda: NOW_MS)
    recorder = Recorder(Committed(path))
    client: Any = ingest.client
    client.ack_many, client.ack = recorder.ack_many, recorder.ack
    return ingest, outbox, recorder


def seq_in(lines: list[str], seq: int) -> bool:
    return any(f"seq={seq}i" in line for line in lines)


def test_acknowledged_only_when_a_second_connection_sees_the_commit(tmp_path: Path) -> None:
    ingest, _outbox, recorder = rig(tmp_path)
    batch = [message(n + 1, n) for n in range(5)]
    batch.append(_Queued(0, 6, 1, "o2/lhasa/room-0/telemetry", b"not json"))
    ingest._commit_batch(batch)
    assert recorder.mids() == [1, 2, 3, 4, 5, 6]  # each once, in arrival order
    for mids, (lines, letters, seq) in recorder.acks:
        for mid in mids:
            if mid == 6:
                assert letters == [b"not json"]
            else:
                assert seq_in(lines, mid - 1), (mid, lines)
        # The tracker's state came with them: a redelivery after a crash is a duplicate.
        assert seq == [("lhasa/room-0", 1, 4)]
    assert ingest.stats.acked == 6


def test_nothing_is_acknowledged_while_the_commit_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest, outbox, recorder = rig(tmp_path)
    commit = outbox.commit
    failures = [sqlite3.OperationalError("disk I/O error")] * 2

    def failing(*args: Any, **kwargs: Any) -> int:
        if failures:
            raise failures.pop()
        return commit(*args, **kwargs)

    monkeypatch.setattr(outbox, "commit", failing)
    ingest._commit_batch([message(n + 1, n) for n in range(3)])
    assert ingest.stats.commit_failures == 2
    assert recorder.mids() == [1, 2, 3]  # once each, after the third try
    for _mids, (lines, _, _) in recorder.acks:
        assert all(seq_in(lines, n) for n in range(3))


def test_a_stop_while_the_commit_fails_leaves_everything_to_the_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest, outbox, recorder = rig(tmp_path)

    def failing(*args: Any, **kwargs: Any) -> int:
        ingest._stopping = True  # SIGTERM arrives while the disk fails
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(outbox, "commit", failing)
    with pytest.raises(_Abandoned):
        ingest._commit_batch([message(1, 0)])
    assert recorder.acks == [] and ingest.stats.acked == 0
    assert Committed(tmp_path / "outbox.sqlite").read() == ([], [], [])


def test_packet_ids_of_an_earlier_connection_are_never_acknowledged(tmp_path: Path) -> None:
    ingest, _outbox, recorder = rig(tmp_path)
    old = [message(mid, seq, ingest._connection) for mid, seq in ((1, 0), (2, 1), (3, 2))]
    ingest._on_disconnect(
        ingest.client,
        None,
        mqtt.DisconnectFlags(False),
        ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection"),
        None,
    )
    # The broker reuses packet ids on the new connection: 1 and 2 are other messages now.
    new = [message(mid, seq, ingest._connection) for mid, seq in ((1, 3), (2, 4))]
    ingest._commit_batch(old + new)
    assert recorder.mids() == [1, 2]  # once each: the new connection's
    assert ingest.stats.unacked_stale == 3 and ingest.stats.acked == 2
    for _mids, (lines, _, _) in recorder.acks:
        assert all(seq_in(lines, n) for n in range(5))  # all committed; the old come again


class AlarmRig:
    """The gateway's wiring of ingest, alarm engine and state store (gateway/app.py), with a
    listener that records, when it hears of an event, what a second connection finds."""

    def __init__(self, path: Path, outbox: Outbox):
        self.path = path
        store = StateStore.sharing(outbox.db, outbox.lock)
        self.engine = AlarmEngine(config(), store, clock_ms=lambda: NOW_MS)
        self.ingest = MqttIngest(
            config(),
            outbox,
            process=self.engine,
            wall_clock_ms=lambda: NOW_MS,
            alarm_writer=store.writer,
            announce=self.engine.notify,
        )
        self.recorder = Recorder(Committed(path))
        client: Any = self.ingest.client
        client.ack_many, client.ack = self.recorder.ack_many, self.recorder.ack
        self.heard: list[tuple[str, bool, bool]] = []
        self.announced = threading.Event()
        self.engine.listeners.append(self.listener)

    def listener(self, event: AlarmEvent) -> None:
        lines, _, _ = Committed(self.path).read()
        with closing(sqlite3.connect(self.path)) as db:
            states = db.execute("SELECT key FROM alarm_state").fetchall()
        point = any(line.startswith("alarm,") and "rule=o2-high" in line for line in lines)
        self.heard.append((event.state, point, states == [("lhasa/room-0/o2-high",)]))
        self.announced.set()


def test_an_alarm_is_announced_only_after_its_point_and_state_are_committed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite"
    rig = AlarmRig(path, Outbox(path))
    rig.ingest._commit_batch([message(1, 0, o2_pct=29.0)])
    assert rig.heard == [("raise", True, True)]
    assert rig.recorder.mids() == [1]


def test_at_a_full_outbox_the_alarm_goes_out_and_its_message_waits(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path, max_bytes=500, policy=FullPolicy.BLOCK)
    outbox.commit(["room,device=filler o2_pct=1 1" + " " * 600])  # at the bound
    rig = AlarmRig(path, outbox)
    abandoned = threading.Event()

    def committer() -> None:
        try:
            rig.ingest._commit_batch([message(1, 0, o2_pct=29.0)])
        except _Abandoned:
            abandoned.set()

    thread = threading.Thread(target=committer)
    thread.start()
    assert rig.announced.wait(30), "the alarm must not wait for room"
    with rig.ingest._queue_cond:  # stop: the reading was never committed
        rig.ingest._stopping = True
        rig.ingest._queue_cond.notify_all()
    thread.join(30)
    assert abandoned.is_set() and rig.recorder.acks == []  # the broker keeps the message
    assert rig.heard == [("raise", True, True)]
    lines, _, _ = Committed(path).read()
    assert not any(line.startswith("room,device=room-0") for line in lines)
