"""MQTT ingest under a flood: reject log lines rate-limited per reason (counters exact), and
the link state of devices nobody configured bounded."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.config import GatewayConfig, parse_config
from gateway.links import LINK, LinkReport
from gateway.mqtt_ingest import MAX_UNKNOWN_DEVICES, MqttIngest, _Queued
from gateway.outbox import NewDeadLetter, Outbox
from gateway.pipeline import Output
from gateway.ratelog import RateLimitedLog

NOW_MS = 1_790_000_000_000


def config() -> GatewayConfig:
    return parse_config(
        {
            "site": [{"id": "lhasa", "altitude_m": 3650}],
            "device": [{"id": "room-1", "site": "lhasa", "kind": "room", "transport": "mqtt"}],
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_rate_limited_log_first_in_full_then_summaries(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rl = RateLimitedLog(logging.getLogger("t.ratelog"), "rejected", 60.0, clock_s=clock)
    with caplog.at_level(logging.WARNING, "t.ratelog"):
        for n in range(1000):
            rl.log("not_json", "bad message %d", n)
        rl.log("bad_shape", "odd shape")
        assert [r.getMessage() for r in caplog.records] == ["bad message 0", "odd shape"]
        rl.flush()  # the interval is not over: nothing yet
        assert len(caplog.records) == 2 and rl.pending()
        clock.now_s += 45.0
        assert rl.due_in_s() == 15.0
        clock.now_s += 15.0
        rl.flush()
        assert caplog.records[2].getMessage() == (
            "rejected (not_json): 999 more since the last line (one line per 60 s at most); "
            "the latest: bad message 999"
        )
        assert not rl.pending() and rl.held_back == 999
        clock.now_s += 61.0  # quiet for an interval: the next one is written in full again
        rl.log("not_json", "bad message again")
        assert caplog.records[-1].getMessage() == "bad message again"
        rl.log("not_json", "and again")
        rl.flush(force=True)
        assert "1 more since the last line" in caplog.records[-1].getMessage()


def queued(topic: str, payload: bytes, mid: int = 1) -> _Queued:
    return _Queued(0, mid, 1, topic, payload)


def test_a_flood_of_bad_messages_logs_a_line_per_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    ingest = MqttIngest(config(), outbox)
    out, dead = Output(), list[NewDeadLetter]()
    flood = [queued("o2/lhasa/room-1/telemetry", b"garbage %d" % n, n) for n in range(2000)]
    flood += [queued("o2/lhasa/room-1/telemetry", b"[]", n) for n in range(2000, 2500)]
    with caplog.at_level(logging.WARNING, "gateway.mqtt_ingest"):
        for start in range(0, len(flood), 100):
            ingest._process_chunk(flood[start : start + 100], NOW_MS, out, dead)
    rejected = [r for r in caplog.records if "rejected MQTT message" in r.getMessage()]
    assert len(rejected) == 2  # was: 2,500 WARNING lines
    assert ingest.stats.rejects == {"not_json": 2000, "bad_shape": 500}  # exact
    assert len(dead) == 2500
    ingest.reject_log.flush(force=True)
    summaries = [
        r.getMessage() for r in caplog.records if "more since the last line" in r.getMessage()
    ]
    assert len(summaries) == 2 and any(": 1999 more" in s for s in summaries)
    outbox.close()


def status(site: str, device: str, online: bool) -> _Queued:
    state = b'{"state":"online"}' if online else b'{"state":"offline"}'
    return queued(f"o2/{site}/{device}/status", state)


def test_link_state_only_for_configured_devices_plus_a_bounded_few(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    ingest = MqttIngest(config(), outbox)
    room = ingest._status(status("lhasa", "room-1", True), NOW_MS)
    assert room is not None and room.meta[LINK] == LinkReport(True)  # to the pipeline
    for n in range(MAX_UNKNOWN_DEVICES + 500):
        assert ingest._status(status("nowhere", f"dev-{n}", n % 2 == 0), NOW_MS + n) is None
    stats = ingest.stats
    assert len(stats.unknown_devices) == MAX_UNKNOWN_DEVICES
    assert stats.unknown_evicted == 500
    assert next(iter(stats.unknown_devices)) == "nowhere/dev-500"  # the oldest went first
    # One seen again is the newest, and kept when others are evicted.
    ingest._status(status("nowhere", "dev-500", True), NOW_MS + 10_000)
    ingest._status(status("nowhere", "dev-new", True), NOW_MS + 10_001)
    assert "nowhere/dev-500" in stats.unknown_devices
    assert "nowhere/dev-501" not in stats.unknown_devices
    assert stats.unknown_devices["nowhere/dev-500"] == ("online", NOW_MS + 10_000)
    # A configured device never counts against the bound.
    room = ingest._status(status("lhasa", "room-1", False), NOW_MS + 20_000)
    assert room is not None and room.meta[LINK] == LinkReport(False)
    assert "lhasa/room-1" not in stats.unknown_devices
    outbox.close()
