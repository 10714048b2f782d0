"""Central backfill without servers (gateway/backfill.py): lines rebuilt from InfluxDB's JSON
answer with the schema's types and the gateway's escaping, and the step's windows (bounded,
progress stored, resumed by a new instance). The reader is a twin over a list of points; the
real InfluxDB round trip is gateway/tests/test_backfill_central.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.backfill import Backfill, BackfillSchemaError, LocalReader, rebuild
from gateway.config import InfluxSection
from gateway.lineproto import LineEncoder
from gateway.outbox import LOCAL, FullPolicy, Outbox
from gateway.readings import Reading

TYPES = {"o2_pct": "float", "seq": "integer", "ok": "boolean", "note": "string"}


def line_of(tags: dict[str, str], columns: list[str], row: list[object]) -> str:
    return LineEncoder().encode(rebuild("room", tags, columns, row, TYPES))


def test_a_whole_float_stays_a_float_and_an_integer_an_integer() -> None:
    # InfluxDB's JSON gives 24.0 as 24: only the schema tells the float from the integer.
    got = line_of({"site": "s"}, ["time", "o2_pct", "seq"], [1_700_000_000_123, 24, 24])
    assert got == "room,site=s o2_pct=24,seq=24i 1700000000123"
    reading = rebuild("room", {"site": "s"}, ["time", "o2_pct", "seq"], [1, 24, 24], TYPES)
    assert type(reading.fields["o2_pct"]) is float and type(reading.fields["seq"]) is int
    assert line_of({}, ["time", "o2_pct"], [5, 20.95]) == "room o2_pct=20.95 5"


def test_booleans_and_strings_with_quotes_commas_spaces_backslashes() -> None:
    note = 'valve "B", bay 2\\3 = ok'
    got = line_of({"site": "s"}, ["time", "note", "ok"], [7, note, False])
    assert got == 'room,site=s note="valve \\"B\\", bay 2\\\\3 = ok",ok=false 7'
    assert got == Reading("room", {"site": "s"}, {"note": note, "ok": False}, 7).to_line()


def test_tags_are_escaped_and_a_tag_the_series_lacks_is_left_out() -> None:
    tags = {"site": "north wing,b=2", "device": "", "room": "a\\b"}
    got = line_of(tags, ["time", "seq", "o2_pct"], [9, -3, None])  # null: field not in point
    # A backslash not before a special character stays as it is (InfluxDB reads it so).
    assert got == "room,room=a\\b,site=north\\ wing\\,b\\=2 seq=-3i 9"
    assert (
        got == Reading("room", {"site": "north wing,b=2", "room": "a\\b"}, {"seq": -3}, 9).to_line()
    )


def test_a_field_of_a_type_line_protocol_cannot_write_back_is_named() -> None:
    with pytest.raises(BackfillSchemaError, match=r"room\.count: field type 'unsigned'"):
        rebuild("room", {}, ["time", "count"], [1, 3], {"count": "unsigned"})
    with pytest.raises(BackfillSchemaError, match=r"room\.extra: field type 'unknown'"):
        rebuild("room", {}, ["time", "extra"], [1, 3], TYPES)


BASE_MS = 1_700_000_000_000


class TwinReader(LocalReader):
    """The local InfluxDB as a list of points (``measurement`` ``room`` and ``gateway``)."""

    def __init__(self, points: list[Reading]):
        self.stored = points
        self.queries: list[tuple[str, int, int]] = []

    def measurements(self) -> list[str]:
        return sorted({p.measurement for p in self.stored})

    def points(
        self, measurement: str, start_ms: int, stop_ms: int, limit: int | None
    ) -> list[Reading] | None:
        self.queries.append((measurement, start_ms, stop_ms))
        got = [
            p
            for p in self.stored
            if p.measurement == measurement and start_ms <= p.ts_ms <= stop_ms
        ]
        return None if limit is not None and len(got) > limit else got

    def close(self) -> None:
        pass


def outbox_with_gap(path: Path, points: int) -> Outbox:
    """An outbox whose central cursor was released past ``points`` points, 1 ms apart."""
    outbox = Outbox(path, max_bytes=1, policy=FullPolicy.BLOCK)
    outbox.add_cursor("central", holds=False)
    outbox.commit([f"room,site=s seq={i}i {BASE_MS + i}" for i in range(points)])
    outbox.advance(LOCAL, outbox.peek_batch(10**6).ids[-1])
    outbox.commit(["room,site=s seq=0i 1"])  # at the bound: the first rows are released
    (gap,) = outbox.gaps("central")
    assert (gap.first_ms, gap.last_ms, gap.points) == (BASE_MS, BASE_MS + points - 1, points)
    return outbox


def test_steps_are_bounded_store_progress_and_resume_after_a_crash(tmp_path: Path) -> None:
    outbox = outbox_with_gap(tmp_path / "o.sqlite", 3000)
    stored = [Reading("room", {"site": "s"}, {"seq": i}, BASE_MS + i) for i in range(3000)]
    stored += [Reading("gateway", {"gw": "g"}, {"up": 1.0}, BASE_MS + i) for i in range(0, 3000, 7)]
    reader = TwinReader(stored)
    writes: list[list[str]] = []
    backfill = Backfill(outbox, "central", reader, writes.append, ["room"], max_points=100)
    for _ in range(20):  # a few steps, then the "crash": a new instance on the same file
        assert backfill.step()
    (gap,) = outbox.gaps("central")
    assert gap.done_ms is not None and BASE_MS <= gap.done_ms < BASE_MS + 2999
    done, asked = gap.done_ms, len(reader.queries)
    backfill = Backfill(outbox, "central", reader, writes.append, ["room"], max_points=100)
    steps = 0
    while backfill.step():
        steps += 1
        assert steps < 200
    assert outbox.gaps("central") == [] and outbox.gap_totals("central") == (0, 0)
    assert all(len(w) <= 100 for w in writes), "a step writes at most max_points"
    written = [line for w in writes for line in w]
    expected = {f"room,site=s seq={i}i {BASE_MS + i}" for i in range(3000)}
    assert set(written) == expected, "only the chosen measurement, every point of the span"
    # Resumed just after the stored progress: each point written once, none redone.
    assert reader.queries[asked][1] == done + 1
    assert len(written) == 3000
    assert {m for m, _, _ in reader.queries} == {"room"}


def test_every_measurement_when_none_is_chosen(tmp_path: Path) -> None:
    outbox = outbox_with_gap(tmp_path / "o.sqlite", 50)
    stored = [Reading("room", {"site": "s"}, {"seq": i}, BASE_MS + i) for i in range(50)]
    stored += [Reading("chain", {"site": "s"}, {"balance": 1.5}, BASE_MS + 3)]
    stored += [Reading("chain", {"site": "s"}, {"balance": 2.5}, BASE_MS + 50)]  # after the span
    writes: list[list[str]] = []
    backfill = Backfill(outbox, "central", TwinReader(stored), writes.append, [], max_points=1000)
    assert backfill.step() and not backfill.step()
    assert sorted(line for w in writes for line in w) == sorted(
        ["chain,site=s balance=1.5 1700000000003"]
        + [f"room,site=s seq={i}i {BASE_MS + i}" for i in range(50)]
    )
    assert backfill.backfilled == 51


class Sink:
    """The central database's twin: takes every write, or raises ``fail`` once."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.fail: Exception | None = None

    def write(self, lines: list[str]) -> None:
        if self.fail is not None:
            exc, self.fail = self.fail, None
            raise exc
        self.lines += lines

    def close(self) -> None:
        pass


class FailingReader(TwinReader):
    def __init__(self, points: list[Reading], failures: list[Exception]):
        super().__init__(points)
        self.failures = failures

    def points(
        self, measurement: str, start_ms: int, stop_ms: int, limit: int | None
    ) -> list[Reading] | None:
        if self.failures:
            raise self.failures.pop(0)
        return super().points(measurement, start_ms, stop_ms, limit)


def test_a_failing_backfill_waits_its_turn_and_never_stops_forwarding(tmp_path: Path) -> None:
    from gateway.backfill import LocalUnavailable
    from gateway.config import CentralSection
    from gateway.forward import CentralForwarder
    from gateway.influx import InfluxUnavailable

    outbox = outbox_with_gap(tmp_path / "o.sqlite", 20)
    sink = Sink()
    cfg = CentralSection(url="http://central.invalid:8086", max_backoff_s=8.0)
    forwarder = CentralForwarder(outbox, cfg, writer=sink)  # no [influx] given: no backfill
    assert forwarder.backfill is None
    now = [100.0]
    forwarder.clock = lambda: now[0]
    stored = [Reading("room", {"site": "s"}, {"seq": i}, BASE_MS + i) for i in range(20)]
    reader = FailingReader(
        stored, [LocalUnavailable("local InfluxDB: down"), RuntimeError("a bug")]
    )
    forwarder.backfill = Backfill(
        outbox, "central", reader, forwarder._deliver, [], 100, clock=forwarder.clock
    )
    forwarder._wait(0)  # the local database is down: not the central one's failure
    assert forwarder.stats.failures == 0 and forwarder._backfill_after == 100.25
    forwarder._wait(0)  # too early: no query
    assert len(reader.failures) == 1
    now[0] = 101.0
    forwarder._wait(0)  # a bug: logged, retried after max_backoff_s, the thread goes on
    assert forwarder._backfill_after == 109.0 and outbox.gap_totals("central") == (1, 20)
    now[0] = 110.0
    sink.fail = InfluxUnavailable("central down", retry_after_s=3.0)
    forwarder._wait(0)  # the central database is down: counted, its Retry-After honoured
    assert forwarder.stats.failures == 1 and forwarder._backfill_after == 113.0
    assert outbox.gap_totals("central") == (1, 20), "a gap closes only once written"
    now[0] = 113.0
    forwarder._wait(0)
    assert sorted(sink.lines) == sorted(r.to_line() for r in stored)
    assert outbox.gap_totals("central") == (0, 0) and forwarder.backfilled == 20


def test_the_backfill_key_and_what_the_local_database_must_be(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.config import ConfigError, parse_config
    from gateway.forward import CentralForwarder

    base = {"site": [{"id": "s", "altitude_m": 0}]}
    with pytest.raises(ConfigError, match=r"central\.backfill"):
        parse_config({**base, "central": {"url": "http://c:8086", "backfill": "sometimes"}})
    cfg = parse_config({**base, "central": {"url": "http://c:8086"}})
    assert cfg.central is not None and cfg.central.backfill is True
    sink = Sink()
    on = CentralForwarder(Outbox(tmp_path / "a.sqlite"), cfg.central, sink, local=cfg.influx)
    assert on.backfill is not None
    on.close()
    off = parse_config({**base, "central": {"url": "http://c:8086", "backfill": False}}).central
    assert off is not None
    forwarder = CentralForwarder(Outbox(tmp_path / "b.sqlite"), off, sink, local=cfg.influx)
    assert forwarder.backfill is None and forwarder.backfilled == 0
    v2 = InfluxSection(api="v2", bucket="b", org="o")
    forwarder = CentralForwarder(Outbox(tmp_path / "c.sqlite"), cfg.central, sink, local=v2)
    assert forwarder.backfill is None
    assert "api = 'v2': released points stay recorded" in caplog.text
