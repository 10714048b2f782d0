"""The outbox's bound, measured in the file (gateway/README.md, "Outbox bound"): the bytes the
outbox believes it holds are the bytes a fresh connection finds, so ``drop_oldest`` keeps the
file within ``outbox_max_mb`` and ``block`` refuses at the right moment, alarm rows included
(they pass the bound and are never dropped, but they take room); and the gateway's own outbox
has the ``outbox_sync``, bound and policy of its config.

Each test kills a mutant of ``scripts/mutants.py`` that the older tests let live."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.outbox import FullPolicy, Outbox, OutboxFullError


def in_file(path: Path) -> tuple[int, int, int]:
    """(bytes of line protocol, points, alarm rows) as a second connection sees them."""
    with closing(sqlite3.connect(path)) as db:
        size, points, keep = db.execute(
            "SELECT TOTAL(LENGTH(line)), TOTAL(points), TOTAL(keep) FROM outbox"
        ).fetchone()
    return int(size), int(points), int(keep)


def alarm(n: int) -> str:
    return f'alarm,rule=r{n} state="raise",message="{"x" * 60}" {n}'


def test_drop_oldest_keeps_the_file_within_the_bound_with_alarm_rows_in_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_bytes=2_000, policy=FullPolicy.DROP_OLDEST)
    for n in range(60):
        if n % 10 == 0:
            box.commit([], keep_lines=[alarm(n)])  # an alarm now and then, past the bound
        box.commit([f"room,device=d o2_pct={n} {n}" + " " * 30])
        size, points, _alarms = in_file(path)
        assert (box.queued_bytes, box.depth()) == (size, points), n
        assert size <= box.max_bytes, n  # the alarm rows are small: room is made around them
    assert in_file(path)[2] == 6  # every alarm row is still there
    assert box.stats.dropped_oldest > 0


def test_alarm_rows_count_towards_a_blocking_bound(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_bytes=1_000, policy=FullPolicy.BLOCK)
    box.commit(["room o2_pct=1 1"])
    for n in range(12):  # alarms alone pass the bound ...
        box.commit([], keep_lines=[alarm(n)])
    assert box.queued_bytes == in_file(path)[0] > box.max_bytes
    with pytest.raises(OutboxFullError):  # ... and readings then wait for room
        box.commit(["room o2_pct=2 2"])
    box.remove_through(box.peek_batch(100).ids[-1])
    assert box.queued_bytes == in_file(path)[0] == 0 and box.has_room()


@pytest.mark.parametrize(
    ("sync", "pragma", "policy"), [("full", 2, "block"), ("normal", 1, "drop_oldest")]
)
def test_the_gateway_outbox_has_the_configured_sync_bound_and_policy(
    tmp_path: Path, sync: str, pragma: int, policy: str
) -> None:
    config = parse_config({
        "gateway": {"state_dir": str(tmp_path / "state"), "http_listen": "127.0.0.1:0",
                    "outbox_sync": sync, "outbox_max_mb": 2, "outbox_full_policy": policy},
        "mqtt": {"url": "mqtt://127.0.0.1:1"},
        "influx": {"url": "http://127.0.0.1:1", "database": "t"},
        "site": [{"id": "lhasa", "altitude_m": 3650}],
    })  # fmt: skip
    gw = Gateway(config)
    try:
        # SQLite's numbers: 1 NORMAL, 2 FULL (https://sqlite.org/pragma.html#pragma_synchronous)
        assert gw.outbox.db.execute("PRAGMA synchronous").fetchone() == (pragma,)
        assert (gw.outbox.max_bytes, gw.outbox.policy) == (2 << 20, FullPolicy(policy))
    finally:
        gw.outbox.close()


def test_a_failed_commit_that_dropped_rows_leaves_the_counts_true(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_bytes=600, policy=FullPolicy.DROP_OLDEST)
    for n in range(10):
        box.commit([f"room o2_pct={n} {n}" + " " * 40])

    def disk_error(db: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    assert box.stats.dropped_oldest == 0 and in_file(path)[1] == 10
    with pytest.raises(sqlite3.OperationalError):  # drop_oldest ran, then it rolled back
        box.commit(["room o2_pct=99 99" + " " * 300], also=disk_error)
    size, points, _alarms = in_file(path)
    assert points == 10 and (box.queued_bytes, box.depth()) == (size, points)
    # Nothing was lost, so none is reported lost (o2chain_outbox_dropped_total).
    assert box.stats.dropped_oldest == 0
