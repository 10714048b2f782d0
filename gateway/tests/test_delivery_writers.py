"""InfluxDB writers v1/v2/v3 against an in-process HTTP twin (real InfluxDB 2.x/3.x cannot be
installed here), and the drainer's reactions: retry honouring Retry-After, split on 413,
dead-letter other 4xx."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.config import InfluxSection
from gateway.influx import (
    InfluxMisconfigured,
    InfluxRejected,
    InfluxTooLarge,
    InfluxUnavailable,
    InfluxV1Writer,
    InfluxV2Writer,
    make_writer,
    parse_retry_after,
)
from gateway.outbox import Outbox
from gateway.tests.http_helpers import QuietHandler, serving
from gateway.writer import MAX_RETRY_AFTER_S, OutboxDrainer


@dataclass
class Request:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: str
    at: float
    accepted: bool = False


@dataclass
class Twin:
    """Answers like InfluxDB's write endpoints; ``script`` holds (status, headers) to answer
    next (then 204); ``max_lines`` answers 413 to bigger bodies."""

    requests: list[Request] = field(default_factory=list)
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    max_lines: int = 0
    reject_marker: str = ""
    url: str = ""

    @property
    def written(self) -> list[str]:
        return [
            line
            for r in self.requests
            if r.path.endswith("write") and r.accepted
            for line in r.body.splitlines()
        ]


@pytest.fixture
def twin() -> Iterator[Twin]:
    state = Twin()
    lock = threading.Lock()

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length).decode()
            u = urlsplit(self.path)
            req = Request(u.path, parse_qs(u.query), dict(self.headers), body, time.monotonic())
            with lock:
                state.requests.append(req)
                status, headers = state.script.pop(0) if state.script else (204, {})
            if status == 204 and u.path.endswith("write"):
                if state.max_lines and len(body.splitlines()) > state.max_lines:
                    status = 413
                elif state.reject_marker and state.reject_marker in body:
                    status = 400
            if status == 204 and u.path.endswith("write"):
                req.accepted = True
            self.reply(status, b'{"error":"scripted"}' if status >= 300 else b"", headers)

    with serving(Handler) as state.url:
        yield state


def section(twin: Twin, tmp_path: Path, **kw: object) -> InfluxSection:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    return InfluxSection.model_validate({"url": twin.url, "token_file": token, **kw})


def test_v1_writes_ms_precision_and_creates_the_database(twin: Twin, tmp_path: Path) -> None:
    writer = InfluxV1Writer(section(twin, tmp_path, database="plant"))
    writer.write(["m v=1 1", "m v=2 2"])
    query, write = twin.requests
    assert query.path == "/query" and "CREATE DATABASE" in parse_qs(query.body)["q"][0]
    assert write.path == "/write" and write.query == {"db": ["plant"], "precision": ["ms"]}
    assert write.body == "m v=1 1\nm v=2 2"
    assert write.headers["Authorization"] == "Token s3cret"


def test_v2_writes_through_influxdb_client(twin: Twin, tmp_path: Path) -> None:
    cfg = section(twin, tmp_path, api="v2", bucket="o2", org="hospital")
    writer = make_writer(cfg)
    assert isinstance(writer, InfluxV2Writer)
    writer.write(["m v=1 1"])
    (req,) = twin.requests
    assert req.path == "/api/v2/write"
    assert req.query["bucket"] == ["o2"] and req.query["org"] == ["hospital"]
    assert req.query["precision"] == ["ms"]
    assert req.headers["Authorization"] == "Token s3cret" and req.body == "m v=1 1"
    writer.close()


def test_v3_uses_the_v2_compatible_write_with_the_database_as_bucket(
    twin: Twin, tmp_path: Path
) -> None:
    writer = make_writer(section(twin, tmp_path, api="v3", database="o2db"))
    writer.write(["m v=1 1"])
    (req,) = twin.requests
    assert req.path == "/api/v2/write" and req.query["bucket"] == ["o2db"]
    writer.close()


@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize(
    ("status", "headers", "error", "retry_after"),
    [
        (429, {"Retry-After": "7"}, InfluxUnavailable, 7.0),
        (503, {}, InfluxUnavailable, None),
        (500, {"Retry-After": "0.5"}, InfluxUnavailable, 0.5),
        (413, {}, InfluxTooLarge, None),
        (400, {}, InfluxRejected, None),
        (422, {}, InfluxRejected, None),
        # The gateway's own configuration, not a point's content: retried, never dead-lettered.
        (401, {}, InfluxMisconfigured, None),
        (403, {}, InfluxMisconfigured, None),
        (404, {}, InfluxMisconfigured, None),
        (307, {"Location": "https://elsewhere/write"}, InfluxMisconfigured, None),
    ],
)
def test_errors_are_sorted_by_what_to_do(
    twin: Twin,
    tmp_path: Path,
    api: str,
    status: int,
    headers: dict[str, str],
    error: type[Exception],
    retry_after: float | None,
) -> None:
    extra = {"bucket": "b", "org": "o"} if api == "v2" else {}
    writer = make_writer(section(twin, tmp_path, api=api, **extra))
    if api == "v1":
        twin.script.append((204, {}))  # CREATE DATABASE
    twin.script.append((status, headers))
    with pytest.raises(error) as caught:
        writer.write(["m v=1 1"])
    if isinstance(caught.value, InfluxUnavailable):
        assert caught.value.retry_after_s == retry_after
    writer.close()


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_connection_refused_and_timeouts_are_retryable(tmp_path: Path, api: str) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = InfluxSection.model_validate(
        {"url": f"http://127.0.0.1:{port}", "api": api, "bucket": "b", "org": "o"}
    )
    with pytest.raises(InfluxUnavailable):
        make_writer(cfg).write(["m v=1 1"])
    with socket.socket() as silent:  # accepts, never answers: a hung server
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        cfg = InfluxSection.model_validate(
            {
                "url": f"http://127.0.0.1:{silent.getsockname()[1]}",
                "api": api,
                "bucket": "b",
                "org": "o",
                "timeout_s": 0.3,
            }
        )
        with pytest.raises(InfluxUnavailable):
            make_writer(cfg).write(["m v=1 1"])


def test_retry_after_forms() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now_s=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


async def drain_all(outbox: Outbox, writer: object, batch_size: int, timeout_s: float) -> None:
    drainer = OutboxDrainer(outbox, writer, batch_size, 0.01, max_backoff_s=0.05)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(drainer.run(stop))
    deadline = time.monotonic() + timeout_s
    while outbox.depth() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stop.set()
    await task


def test_drainer_splits_on_413_and_keeps_order(twin: Twin, tmp_path: Path) -> None:
    twin.max_lines = 3
    outbox = Outbox(tmp_path / "o.sqlite")
    lines = [f"m v={i} {i}" for i in range(20)]
    outbox.commit(lines)
    writer = InfluxV1Writer(section(twin, tmp_path))
    asyncio.run(drain_all(outbox, writer, batch_size=16, timeout_s=10))
    assert twin.written == lines and outbox.depth() == 0
    assert outbox.dead_letters() == []


class RecordedWaits:
    """The drainer's pause between attempts, recorded and not waited: the retry delays the
    drainer chose become a list the test reads, in order, instead of seconds measured on a busy
    machine."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def __call__(self, delay_s: float) -> None:
        self.timeouts.append(delay_s)


def test_drainer_honours_retry_after(
    twin: Twin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits = RecordedWaits()
    monkeypatch.setattr(OutboxDrainer, "_pause", lambda drainer, delay_s: waits(delay_s))
    outbox = Outbox(tmp_path / "o.sqlite")
    outbox.commit(["m v=1 1"])
    # CREATE DATABASE, then: asked to wait 30 s; a 503 without a date; asked for a day.
    twin.script += [(204, {}), (429, {"Retry-After": "30"}), (503, {}),
                    (429, {"Retry-After": "86400"})]  # fmt: skip
    writer = InfluxV1Writer(section(twin, tmp_path))
    asyncio.run(drain_all(outbox, writer, batch_size=10, timeout_s=10))
    writes = [r for r in twin.requests if r.path == "/write"]
    assert [r.accepted for r in writes] == [False, False, False, True]
    # One wait after each refusal, before the next attempt: what InfluxDB asked for, not the
    # drainer's own backoff (0.25 s, capped at max_backoff_s = 0.05 here), at most 300 s.
    assert waits.timeouts == [30.0, 0.05, MAX_RETRY_AFTER_S]
    assert twin.written == ["m v=1 1"]


def test_drainer_dead_letters_only_the_rejected_point(twin: Twin, tmp_path: Path) -> None:
    twin.reject_marker = "poison"
    outbox = Outbox(tmp_path / "o.sqlite")
    lines = [f"m v={i} {i}" for i in range(9)]
    lines[6] = "m poison=1 6"
    outbox.commit(lines)
    writer = InfluxV1Writer(section(twin, tmp_path))
    asyncio.run(drain_all(outbox, writer, batch_size=100, timeout_s=10))
    assert twin.written == [line for line in lines if "poison" not in line]
    (letter,) = outbox.dead_letters()
    assert (letter.source, letter.reason, letter.payload) == ("influx", "http_400", b"m poison=1 6")


def test_an_auth_error_keeps_every_point_waiting_and_none_dead_lettered(
    twin: Twin, tmp_path: Path
) -> None:
    """A wrong token must not turn the stream into dead letters point by point: the points
    wait, the error is loud, and they go out once InfluxDB accepts the gateway again."""
    outbox = Outbox(tmp_path / "o.sqlite")
    lines = [f"m v={i} {i}" for i in range(6)]
    outbox.commit(lines)
    twin.script += [(204, {}), (401, {}), (401, {}), (403, {})]  # CREATE DATABASE, then refusals
    writer = InfluxV1Writer(section(twin, tmp_path))
    asyncio.run(drain_all(outbox, writer, batch_size=100, timeout_s=10))
    assert outbox.dead_letters() == [] and twin.written == lines
    refused = [r for r in twin.requests if r.path == "/write" and not r.accepted]
    assert len(refused) == 3 and all(len(r.body.splitlines()) == 6 for r in refused)


def test_a_run_of_rejected_points_logs_one_line_and_a_summary(
    twin: Twin, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    twin.reject_marker = "poison"
    outbox = Outbox(tmp_path / "o.sqlite")
    outbox.commit([f"m poison={i} {i}" for i in range(8)] + ["m v=1 100"])
    writer = InfluxV1Writer(section(twin, tmp_path))
    with caplog.at_level("ERROR", logger="gateway.writer"):
        asyncio.run(drain_all(outbox, writer, batch_size=100, timeout_s=10))
    assert len(outbox.dead_letters()) == 8 and twin.written == ["m v=1 100"]
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.writer"]
    assert len(lines) == 2, lines  # the first in full, then one summary of the 7 held back
    assert "InfluxDB rejected a point" in lines[0] and "7 more" in lines[1]
