"""The outbox's second cursor (gateway/outbox.py, "Readers keep cursors"): the local drain and the
central forwarder read the same committed rows, a row goes only when both passed it, the bound
counts what the slowest reader still needs, and a lagging forwarder gives way (counted) or holds
(``at_bound``) as configured. Real SQLite files; no InfluxDB."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.outbox import LOCAL, FullPolicy, Outbox, OutboxFullError


def lines(start: int, n: int) -> list[str]:
    return [f"room,site=s,device=d seq={i}i {1_700_000_000_000 + i}" for i in range(start, n)]


def rows_left(outbox: Outbox) -> int:
    with outbox.lock:
        (n,) = outbox.db.execute("SELECT COUNT(*) FROM outbox").fetchone()
    return int(n)


def drain(outbox: Outbox, cursor: str) -> list[str]:
    got: list[str] = []
    while True:
        batch = outbox.peek_batch(10, cursor=cursor)
        if not batch:
            return got
        got += batch.lines
        outbox.advance(cursor, batch.ids[-1])


def test_rows_stay_until_both_cursors_passed_them(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    outbox.add_cursor("central")
    for i in range(5):
        outbox.commit(lines(i * 10, i * 10 + 10))
    assert drain(outbox, LOCAL) == lines(0, 50)
    assert rows_left(outbox) == 5, "the central cursor still needs every row"
    assert outbox.depth() == 0 and outbox.oldest_age_s() == 0.0  # local health unaffected
    assert outbox.lag("central")[0] == 50
    assert drain(outbox, "central") == lines(0, 50)
    assert rows_left(outbox) == 0 and outbox.queued_bytes == 0


def test_the_slow_reader_gets_the_same_rows_in_the_same_order(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    outbox.add_cursor("central")
    outbox.commit(lines(0, 30))
    first = outbox.peek_batch(10, cursor="central")
    outbox.advance("central", first.ids[-1])
    outbox.commit(lines(30, 40))
    assert drain(outbox, LOCAL) == lines(0, 40)
    assert first.lines + drain(outbox, "central") == lines(0, 40)


def test_cursors_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    outbox = Outbox(path)
    outbox.add_cursor("central")
    outbox.commit(lines(0, 10))
    outbox.commit(lines(10, 20))
    drain(outbox, LOCAL)
    batch = outbox.peek_batch(1, cursor="central")
    outbox.advance("central", batch.ids[-1])
    outbox.close()

    outbox = Outbox(path)
    outbox.add_cursor("central")
    assert outbox.peek_batch(100).lines == [], "the local drain does not redo its rows"
    assert drain(outbox, "central") == lines(10, 20)
    assert rows_left(outbox) == 0


def test_a_new_cursor_starts_at_the_oldest_row_still_held(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    outbox.commit(lines(0, 10))
    drain(outbox, LOCAL)  # gone: in the local InfluxDB, not to be forwarded
    outbox.commit(lines(10, 20))  # waiting for the local drain: not anywhere yet
    outbox.add_cursor("central")
    assert drain(outbox, "central") == lines(10, 20)
    assert drain(outbox, LOCAL) == lines(10, 20)


def test_a_cursor_taken_out_of_the_config_releases_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    outbox = Outbox(path)
    outbox.add_cursor("central")
    outbox.commit(lines(0, 10))
    drain(outbox, LOCAL)
    outbox.close()
    outbox = Outbox(path)
    assert rows_left(outbox) == 1
    assert outbox.keep_cursors([]) == ["central"]
    assert rows_left(outbox) == 0 and outbox.queued_bytes == 0
    assert outbox.cursors().keys() == {LOCAL}


def test_at_the_bound_a_lagging_forwarder_gives_way_counted(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", max_bytes=10_000, policy=FullPolicy.BLOCK)
    outbox.add_cursor("central", holds=False)
    committed = 0
    for i in range(10):  # ~5 KB per commit: the central cursor's backlog passes the bound
        outbox.commit(lines(i * 100, i * 100 + 100))
        committed += 100
        drain(outbox, LOCAL)
    assert outbox.queued_bytes <= 10_000
    released = outbox.stats.released["central"]
    assert released > 0 and outbox.stats.full_refusals == 0
    forwarded = drain(outbox, "central")
    assert released + len(forwarded) == committed  # every point: forwarded or counted
    assert forwarded == lines(released, committed), "the newest are kept, in order"


def test_at_the_bound_a_holding_forwarder_blocks_ingest(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", max_bytes=10_000, policy=FullPolicy.BLOCK)
    outbox.add_cursor("central", holds=True)
    with pytest.raises(OutboxFullError):
        for i in range(10):
            outbox.commit(lines(i * 100, i * 100 + 100))
            drain(outbox, LOCAL)
    assert "central" not in outbox.stats.released
    drain(outbox, "central")
    outbox.commit(lines(5000, 5100))  # room again once the forwarder caught up


def test_release_never_passes_the_local_drain(tmp_path: Path) -> None:
    """Rows the local InfluxDB does not have yet are never released for the forwarder's sake:
    the outbox's own policy applies to them."""
    outbox = Outbox(tmp_path / "o.sqlite", max_bytes=10_000, policy=FullPolicy.BLOCK)
    outbox.add_cursor("central", holds=False)
    with pytest.raises(OutboxFullError):
        for i in range(10):
            outbox.commit(lines(i * 100, i * 100 + 100))  # nobody drains
    assert "central" not in outbox.stats.released
    assert drain(outbox, LOCAL) == drain(outbox, "central")


def test_central_config_keys_are_checked() -> None:
    from gateway.config import ConfigError, parse_config

    base = {"site": [{"id": "s", "altitude_m": 0}]}
    with pytest.raises(ConfigError, match=r"central\.url.*Field required"):
        parse_config({**base, "central": {"database": "x"}})
    with pytest.raises(ConfigError, match="username and password_file go together"):
        parse_config({**base, "central": {"url": "http://c:8086", "username": "lhasa"}})
    with pytest.raises(ConfigError, match=r"central\.at_bound"):
        parse_config({**base, "central": {"url": "http://c:8086", "at_bound": "drop"}})
    cfg = parse_config({**base, "central": {"url": "https://c:8086/"}})
    assert cfg.central is not None and cfg.central.url == "https://c:8086"
    assert cfg.central.database == "o2region" and cfg.central.at_bound == "release"


def test_only_the_chosen_measurements_are_forwarded() -> None:
    from gateway.forward import _Filtered

    got: list[list[str]] = []

    class Sink:
        def write(self, lines: list[str]) -> None:
            got.append(lines)

        def close(self) -> None:
            pass

    f = _Filtered(Sink(), ["room", "alarm"])
    f.write(["room,site=s x=1 1", "roomy,site=s x=1 1", "gateway,gw=g x=1 1", "alarm x=1 1"])
    f.write(["gateway,gw=g x=2 2"])  # nothing chosen: no request at all
    assert got == [["room,site=s x=1 1", "alarm x=1 1"]]


def test_the_central_login_reaches_the_server(tmp_path: Path) -> None:
    """Basic auth for a v1 central database with auth-enabled, over plain http:// too."""
    import base64

    from gateway.config import parse_config
    from gateway.forward import central_writer
    from gateway.influx import InfluxV1Writer
    from gateway.tests.http_helpers import QuietHandler, serving

    seen: list[tuple[str, str]] = []

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append((self.path.split("?")[0], self.headers.get("Authorization", "")))
            self.reply(204)

    with serving(Handler) as url:
        (tmp_path / "pw").write_text("s3cret\n")
        (tmp_path / "pw").chmod(0o600)
        cfg = parse_config(
            {
                "site": [{"id": "s", "altitude_m": 0}],
                "central": {
                    "url": url,
                    "username": "lhasa-hotel",
                    "password_file": str(tmp_path / "pw"),
                },
            }
        ).central
        assert cfg is not None
        writer = central_writer(cfg)
        writer.write(["room,site=s o2_pct=24.0 1"])
        assert isinstance(writer, InfluxV1Writer)
        writer.close()
    basic = "Basic " + base64.b64encode(b"lhasa-hotel:s3cret").decode()
    # A facility's login only writes: no CREATE DATABASE first (the region's admin made it).
    assert seen == [("/write", basic)]
