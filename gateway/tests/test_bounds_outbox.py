"""Dead letters are bounded: payloads cut at DEADLETTER_PAYLOAD_MAX (length and SHA-256 of the
whole kept), the oldest dropped beyond the count and byte bounds (counted), and a cut one is
never replayed as data."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from gateway.config import parse_config
from gateway.deadletters import replay
from gateway.outbox import DEADLETTER_PAYLOAD_MAX, DEADLETTER_TOPIC_MAX, NewDeadLetter, Outbox

TOPIC = "o2/lhasa/room-1/telemetry"


def test_a_big_payload_is_kept_cut_with_its_length_and_hash(tmp_path: Path) -> None:
    payload = b'{"pad":"' + b"x" * (5 << 20) + b'"}'
    outbox = Outbox(tmp_path / "o.sqlite")
    outbox.add_dead_letter("mqtt", TOPIC + "x" * 70_000, "oversize", "d" * 10_000, payload)
    (dl,) = outbox.dead_letters()
    assert dl.payload == payload[:DEADLETTER_PAYLOAD_MAX]
    assert dl.payload_len == len(payload) and dl.truncated
    assert dl.payload_sha256 == hashlib.sha256(payload).hexdigest()
    assert len(dl.topic) == DEADLETTER_TOPIC_MAX and len(dl.detail) <= 1024
    assert outbox.stats.dead_letters_truncated == 1
    outbox.close()
    # The file holds the cut payload, not 5 MiB (was: the whole payload, 5.2 MB per letter).
    size = sum(p.stat().st_size for p in tmp_path.glob("o.sqlite*"))
    assert size < 1 << 20, size


def test_a_small_payload_is_kept_whole(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    outbox.add_dead_letter("mqtt", TOPIC, "not_json", "x", b"nan")
    (dl,) = outbox.dead_letters()
    assert (dl.payload, dl.payload_len, dl.truncated) == (b"nan", 3, False)


def test_count_bound_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", deadletter_max_count=10)
    for n in range(25):
        outbox.add_dead_letter("mqtt", TOPIC, "not_json", f"#{n}", b"bad %d" % n)
    left = outbox.dead_letters()
    assert [dl.detail for dl in left] == [f"#{n}" for n in range(15, 25)]
    assert outbox.stats.dead_letters_dropped == 15
    assert sum(outbox.dead_letter_counts().values()) == 10


def test_byte_bound_drops_the_oldest(tmp_path: Path) -> None:
    bound = 10 * DEADLETTER_PAYLOAD_MAX
    outbox = Outbox(tmp_path / "o.sqlite", deadletter_max_bytes=bound)
    for n in range(30):
        outbox.add_dead_letter("mqtt", TOPIC, "oversize", f"#{n}", bytes([n]) * 100_000)
    assert outbox.dead_letter_bytes <= bound
    left = outbox.dead_letters()
    assert 5 <= len(left) < 10 and left[-1].detail == "#29"
    assert outbox.stats.dead_letters_dropped == 30 - len(left)
    # Many in one commit (one batch of a flood): the bound holds after that commit too.
    outbox.deadletter_max_count = 10
    outbox.commit([], [NewDeadLetter("mqtt", TOPIC, "not_json", "", b"x")] * 50)
    assert len(outbox.dead_letters()) == 10


def test_lowered_bounds_apply_at_the_next_start(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    for n in range(20):
        outbox.add_dead_letter("mqtt", TOPIC, "not_json", f"#{n}", b"bad")
    outbox.close()
    outbox = Outbox(tmp_path / "o.sqlite", deadletter_max_count=12)
    assert outbox.dead_letters()[0].detail == "#8"
    assert outbox.stats.dead_letters_dropped == 8


def test_dead_letters_of_an_older_release_are_read_and_bounded(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "o.sqlite")
    db.execute(
        "CREATE TABLE deadletter (id INTEGER PRIMARY KEY AUTOINCREMENT, received_ms INTEGER "
        "NOT NULL, source TEXT NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL, detail "
        "TEXT NOT NULL, payload BLOB NOT NULL)"
    )
    for _ in range(3):
        db.execute(
            "INSERT INTO deadletter (received_ms, source, topic, reason, detail, payload) "
            "VALUES (1, 'mqtt', ?, 'oversize', '', ?)",
            (TOPIC, b"y" * 1_000_000),
        )
    db.commit()
    db.close()
    outbox = Outbox(tmp_path / "o.sqlite", deadletter_max_bytes=2_500_000)
    left = outbox.dead_letters()
    assert len(left) == 2 and not left[0].truncated and left[0].payload_len == 1_000_000
    assert outbox.stats.dead_letters_dropped == 1


def test_a_cut_dead_letter_is_not_replayed(tmp_path: Path) -> None:
    config = parse_config(
        {
            "site": [{"id": "lhasa", "altitude_m": 3650}],
            "device": [{"id": "room-1", "site": "lhasa", "kind": "room", "transport": "mqtt"}],
        }
    )
    outbox = Outbox(tmp_path / "o.sqlite")
    # A valid reading padded past the cut: its start is JSON no more.
    big = b'{"v":1,"boot":1,"seq":1,"o2_pct":21.0,"pad":"' + b"x" * 8000 + b'"}'
    outbox.add_dead_letter("mqtt", TOPIC, "oversize", "too big", big)
    result = replay(config, outbox)
    (dl,) = outbox.dead_letters()
    assert result.replayed == [] and result.truncated == [dl.id]
    assert "cannot be replayed" in result.still_rejected[dl.id]
    line = result.truncated_line()
    assert line is not None and "\n" not in line and f"ids {dl.id}" in line
    assert outbox.depth() == 0
