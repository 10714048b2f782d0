"""The live page's server side, in process: static files, history, server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.alarms import AlarmEngine
from gateway.config import parse_config
from gateway.http import EVICTED_FRAME, EventHub, StatusServer, sse_frame
from gateway.observe import HISTORY_POINTS, Observer
from gateway.pipeline import Pipeline
from gateway.readings import Reading
from gateway.sources import Sources
from gateway.state_store import StateStore
from gateway.tests.fakes import T0, Clock

TAGS = {"site": "lhasa", "device": "room-1", "room": "101"}
CONFIG = {
    "gateway": {"id": "gw-t"},
    "site": [{"id": "lhasa", "altitude_m": 3650}],
    "device": [
        {"id": "room-1", "site": "lhasa", "kind": "room", "transport": "mqtt", "room": "101"},
        {"id": "conc-1", "site": "lhasa", "kind": "concentrator", "transport": "mqtt"},
    ],
    "alarm": [{"id": "room-o2-high", "field": "o2_pct", "op": ">", "value": 27.89,
               "severity": "critical", "device_kind": ["room"]}],
}  # fmt: skip


def rig(tmp_path: Path) -> tuple[Clock, AlarmEngine, Observer, Pipeline]:
    config = parse_config(CONFIG)
    clock = Clock()
    engine = AlarmEngine(config, StateStore(tmp_path / "alarms.sqlite"), clock_ms=clock)
    observer = Observer(config, Sources(), engine, clock_ms=clock)
    return clock, engine, observer, Pipeline([engine, engine.committed_locally, observer])


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[str]:
    """A status server over a fresh :func:`rig` on a free loopback port: its url; stopped
    afterwards."""
    _, engine, observer, _ = rig(tmp_path)
    server = StatusServer("127.0.0.1:0", observer, engine)
    url = await server.start(required=True)
    try:
        yield url
    finally:
        await server.stop()


async def get(url: str, path: str) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return int(lines[0].split()[1]), headers, body


class Stream:
    """A raw server-sent-events client."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str, headers: str = "") -> tuple[Stream, int, str]:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"GET /api/events HTTP/1.1\r\nHost: {host}:{port}\r\n{headers}"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        return cls(reader, writer), int(head.split()[1]), head

    async def frame(self) -> dict[str, str]:
        """The next frame with data (the ``retry:`` preamble has none)."""
        while True:
            raw = (await asyncio.wait_for(self.reader.readuntil(b"\n\n"), 5)).decode()
            fields = dict(line.split(": ", 1) for line in raw.strip().split("\n"))
            if "data" in fields:
                return fields

    def close(self) -> None:
        self.writer.close()


def test_index_and_static_files_are_served_from_the_package(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path) as url:
            status, headers, body = await get(url, "/")
            assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
            assert b'<script src="/static/app.js"' in body
            assert body.index(b"/static/lang.js") < body.index(b"/static/app.js")
            for name, ctype in (
                ("app.js", "text/javascript"),
                ("lang.js", "text/javascript"),
                ("app.css", "text/css"),
                ("favicon.svg", "image/svg+xml"),
            ):
                status, headers, body = await get(url, f"/static/{name}")
                assert status == 200 and headers["content-type"].startswith(ctype), name
                assert body and int(headers["content-length"]) == len(body)
            for bad in ("/static/../http.py", "/static/%2e%2e/http.py", "/static/nope.js",
                        "/static/app.py", "/static/"):  # fmt: skip
                status, _, _ = await get(url, bad)
                assert status == 404, bad

    asyncio.run(scenario())


def test_history_keeps_trend_fields_in_time_order(tmp_path: Path) -> None:
    clock, _, observer, pipeline = rig(tmp_path)
    for n in range(HISTORY_POINTS + 5):
        ts = T0 + n * 1000
        pipeline.process([Reading("room", TAGS, {"o2_pct": 24.0 + n / 1000, "temp_c": 18.0}, ts)])
    pipeline.process([Reading("room", TAGS, {"o2_pct": 99.0}, T0)])  # a replay: not a new point
    clock.t_ms = T0 + 10 * 60_000
    doc = observer.history()
    series = doc["devices"]["lhasa/room-1"]
    assert list(series) == ["o2_pct"]  # temperature is not a trend field
    points = series["o2_pct"]
    assert len(points) == HISTORY_POINTS
    assert points[0] == [T0 + 5000, 24.005] and points[-1][0] == T0 + (HISTORY_POINTS + 4) * 1000
    assert doc["devices"]["lhasa/conc-1"] == {}


def test_status_carries_the_alarm_engine_thresholds(tmp_path: Path) -> None:
    _, _, observer, _ = rig(tmp_path)
    room, conc = observer.status()["sites"][0]["devices"]
    by_rule = {t["rule"]: t for t in room["thresholds"]}
    assert by_rule["room-o2-high"] == {
        "rule": "room-o2-high", "field": "o2_pct", "op": ">", "value": 27.89,
        "severity": "critical",
    }  # fmt: skip
    assert by_rule["room-o2-deficient"]["value"] == 19.5
    assert {t["rule"]: t["value"] for t in conc["thresholds"]}["purity-low"] == 82.0


def test_events_stream_pushes_status_and_alarm_changes_at_once(tmp_path: Path) -> None:
    clock, engine, observer, pipeline = rig(tmp_path)

    async def scenario() -> None:
        server = StatusServer("127.0.0.1:0", observer, engine)
        server.events.interval_s = 3600.0  # only join and alarm changes can push a frame
        url = await server.start(required=True)
        try:
            stream, status, head = await Stream.open(url)
            assert status == 200 and "Content-Type: text/event-stream" in head
            first = await stream.frame()
            assert first["event"] == "status"
            doc = json.loads(first["data"])
            assert doc["gateway"]["id"] == "gw-t" and doc["alarms"] == []
            assert first["id"] == str(doc["gateway"]["now_ms"])

            # An alarm raised in the pipeline's thread reaches the stream without a poll.
            clock.t_ms += 1000
            reading = Reading("room", TAGS, {"o2_pct": 28.5}, clock.t_ms)
            await asyncio.to_thread(pipeline.process, [reading])
            raised = json.loads((await stream.frame())["data"])
            assert [a["key"] for a in raised["alarms"]] == ["lhasa/room-1/room-o2-high"]
            await asyncio.to_thread(engine.acknowledge, "lhasa", "room-1", "room-o2-high", "pema")
            # Announced once committed: by the next pipeline pass (the gateway ticks after
            # every operator action).
            await asyncio.to_thread(pipeline.process, [])
            acked = json.loads((await stream.frame())["data"])
            assert acked["alarms"][0]["acked_by"] == "pema"
            stream.close()
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_events_streams_are_bounded_evict_the_oldest_and_are_freed_on_disconnect(
    tmp_path: Path,
) -> None:
    """The old server answered the 17th idle stream with 503: 16 idle tabs (or one client
    opening 16) locked everybody else out. Now a newcomer always gets in."""
    _, engine, observer, _ = rig(tmp_path)

    async def scenario() -> None:
        server = StatusServer("127.0.0.1:0", observer, engine)
        server.events.max_clients = 2
        server.events.interval_s = 3600.0  # a disconnect is noticed without writing to it
        url = await server.start(required=True)
        hub = server.events
        try:
            a, status_a, _ = await Stream.open(url)
            b, status_b, _ = await Stream.open(url)
            assert (status_a, status_b) == (200, 200)
            await a.frame()
            await b.frame()
            c, status_c, _ = await Stream.open(url)  # over the cap: the oldest (a) goes
            assert status_c == 200
            await c.frame()
            while (evicted := await a.frame())["event"] != "evicted":
                assert evicted["event"] == "status"  # one sent just before the eviction
            assert "poll /api/status" in evicted["data"]
            await asyncio.wait_for(a.reader.read(), 5)  # then end of file
            assert a.reader.at_eof() and hub.evictions == 1 and len(hub.clients) == 2

            c.close()  # the browser tab goes away
            await asyncio.wait_for(hub.wait_for_clients(1), 5)
            d, status_d, _ = await Stream.open(url)
            assert status_d == 200
            await d.frame()
            assert hub.evictions == 1  # there was room: nobody evicted
            # Stopping the server ends the open streams (end of file for the client).
            await server.stop()
            await asyncio.wait_for(b.reader.read(), 5)  # returns at end of file only
            assert b.reader.at_eof()
            assert hub.clients == {}
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_one_client_cannot_take_every_stream(tmp_path: Path) -> None:
    _, engine, observer, _ = rig(tmp_path)

    async def scenario() -> None:
        server = StatusServer("127.0.0.1:0", observer, engine)
        server.events.max_clients = 4
        server.events.max_per_client = 2
        server.events.interval_s = 3600.0
        url = await server.start(required=True)
        hub = server.events
        try:
            # Every test client is 127.0.0.1: one client address as far as the server knows.
            streams = []
            for _ in range(3):
                stream, status, _ = await Stream.open(url)
                assert status == 200
                await stream.frame()
                streams.append(stream)
            assert len(hub.clients) == 2 and hub.evictions == 1  # the per-client cap is 2
            while (frame := await streams[0].frame())["event"] != "evicted":
                assert frame["event"] == "status"  # one sent before the eviction
            # In the hub: "x" and "y" hold two each, then "z" joins the full hub: the oldest
            # stream of whoever holds the most goes (x1, the oldest of the tie).
            for s in streams:
                s.close()
            await asyncio.wait_for(hub.wait_for_clients(0), 5)
            x1, x2, y1, y2 = hub.join("x"), hub.join("x"), hub.join("y"), hub.join("y")
            z1 = hub.join("z")
            assert x1 not in hub.clients and {x2, y1, y2, z1} == set(hub.clients)
            assert x1.get_nowait() == EVICTED_FRAME
            z2 = hub.join("z")  # x holds 1, y 2, z 1: y's oldest goes
            assert y1 not in hub.clients and {x2, y2, z1, z2} == set(hub.clients)
            hub.join("w")  # now z holds the most
            assert z1 not in hub.clients and len(hub.clients) == 4 and hub.evictions == 4
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_hub_gives_a_slow_client_the_newest_document_only() -> None:
    docs = iter(range(100))

    async def scenario() -> None:
        hub = EventHub(lambda: {"n": next(docs)}, interval_s=3600.0, max_clients=1)
        hub.start()
        queue = hub.join()
        frames: list[Any] = []
        for _ in range(3):
            hub.notify()
            frames.append(await queue.get())
        assert all(f.startswith(b"event: status\ndata: {") for f in frames)
        assert queue.qsize() <= 1
        await hub.stop()

    asyncio.run(scenario())


def test_sse_frame_format() -> None:
    assert sse_frame("status", b'{"a":1}', 5) == b'event: status\nid: 5\ndata: {"a":1}\n\n'
    assert sse_frame("status", b"{}") == b"event: status\ndata: {}\n\n"


@pytest.mark.parametrize("name", ["index.html", "app.js", "app.css"])
def test_page_assets_reference_no_external_hosts(name: str) -> None:
    text = (Path(__file__).parents[1] / "static" / name).read_text()
    assert "https://" not in text and "http://" not in text.replace(
        "http://www.w3.org/2000/svg", ""
    )
