"""The gateway's HTTP status server: health, metrics, status JSON and alarm actions.

Standard library only (asyncio streams, HTTP/1.1, one request per connection): the routes are
few and small, and a web framework would be the gateway's largest dependency. Binds to
``[gateway] http_listen`` (default ``127.0.0.1:8470``; port 0 picks a free port) and logs
``HTTP listening on http://HOST:PORT``. There is no authentication: keep it on loopback or
behind a reverse proxy that authenticates operators.

Routes (JSON shapes in gateway/README.md, "HTTP endpoints"):

- ``GET /healthz``: 200 ``{"status": "ok", ...}`` or 503 ``{"status": "unhealthy", ...}``
- ``GET /metrics``: Prometheus text format 0.0.4
- ``GET /api/status``: sites -> devices (last values, ages, link), active alarms
- ``GET /api/alarms``, ``GET /api/alarms/log?limit=N``, ``GET /api/rules``
- ``POST /api/alarms/{site}/{device}/{rule}/ack`` ``{"by": "name"}``
- ``POST /api/alarms/{site}/{device}/{rule}/shelve`` ``{"duration_s": 3600, "by", "reason"}``
- ``POST /api/alarms/{site}/{device}/{rule}/unshelve`` ``{"by": "name"}``
- ``GET /api/events``: server-sent events, an ``event: status`` (the /api/status document) every
  ``EVENT_INTERVAL_S`` and at once on every alarm transition; at most ``MAX_EVENT_CLIENTS``
  streams (503 beyond: the page falls back to polling /api/status)
- ``GET /api/history``: recent values of the trend fields per device (the page's sparklines)
- ``GET /`` and ``GET /static/{name}``: the live page (gateway/static, no external assets)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gateway.alarms import AlarmEngine, AlarmError
from gateway.observe import Observer

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
READ_TIMEOUT_S = 10.0
# Live updates: one status document per interval to every stream; a stream whose client does
# not take a frame within the write timeout is dropped (the browser reconnects by itself).
EVENT_INTERVAL_S = 1.5
EVENT_WRITE_TIMEOUT_S = 10.0
EVENT_RETRY_MS = 2000  # EventSource reconnect delay the page's browser uses
MAX_EVENT_CLIENTS = 16  # each costs one status serialisation per interval
STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(html|css|js|svg)$")
CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "svg": "image/svg+xml",
}
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8470"`` -> (host, port); raises ``ValueError``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"gateway.http_listen {listen!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


class EventHub:
    """Fans one status document out to every server-sent-events stream.

    One producer task renders ``snapshot()`` (in a worker thread) every ``interval_s`` while at
    least one client listens, and at once after :meth:`notify` (thread-safe: the alarm engine
    calls it from the pipeline's threads). Each client has a queue of one frame: a slow client
    skips to the newest document instead of queueing old ones.
    """

    def __init__(
        self,
        snapshot: Callable[[], Any],
        interval_s: float = EVENT_INTERVAL_S,
        max_clients: int = MAX_EVENT_CLIENTS,
    ):
        self.snapshot = snapshot
        self.interval_s = interval_s
        self.max_clients = max_clients
        self.clients: set[asyncio.Queue[bytes | None]] = set()
        self.frames = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._membership = asyncio.Event()  # set (and replaced) on every join and leave
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._produce(), name="http-events")

    async def stop(self) -> None:
        """End every stream (each gets ``None``) and the producer."""
        for queue in list(self.clients):
            _offer(queue, None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def notify(self, *_: object) -> None:
        """Push a fresh document now (alarm raised, acknowledged, cleared...). Any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody listens
            loop.call_soon_threadsafe(self._wake.set)

    def join(self) -> asyncio.Queue[bytes | None] | None:
        """A queue for a new client, or ``None`` when ``max_clients`` streams are open."""
        if len(self.clients) >= self.max_clients:
            return None
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)
        self.clients.add(queue)
        self._wake.set()  # the newcomer gets a document at once
        self._members_changed()
        return queue

    def leave(self, queue: asyncio.Queue[bytes | None]) -> None:
        self.clients.discard(queue)
        self._members_changed()

    def _members_changed(self) -> None:
        self._membership.set()
        self._membership = asyncio.Event()

    async def wait_for_clients(self, count: int) -> None:
        """Return once exactly ``count`` streams are open (an event to await in tests)."""
        while len(self.clients) != count:
            await self._membership.wait()

    async def _produce(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            if not self.clients:
                await self._wake.wait()  # idle until a client joins
                self._wake.clear()
            try:
                doc = await asyncio.to_thread(self.snapshot)
            except Exception:
                log.exception("live status snapshot failed")
                continue
            frame = sse_frame("status", _json(doc), doc.get("gateway", {}).get("now_ms"))
            self.frames += 1
            for queue in list(self.clients):
                _offer(queue, frame)


def _offer(queue: asyncio.Queue[bytes | None], item: bytes | None) -> None:
    """Replace whatever the queue holds with ``item`` (newest wins)."""
    with contextlib.suppress(asyncio.QueueEmpty):
        queue.get_nowait()
    queue.put_nowait(item)


def sse_frame(event: str, data: bytes, event_id: object = None) -> bytes:
    """One server-sent-events frame; ``data`` must be a single line (compact JSON is)."""
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head.encode() + b"data: " + data + b"\n\n"


def static_file(name: str) -> tuple[str, bytes]:
    """(content type, bytes) of ``gateway/static/<name>``; raises :class:`HttpError` 404.

    Names are matched against :data:`STATIC_NAME` (no paths), so nothing outside the package's
    static folder can be served.
    """
    match = STATIC_NAME.match(name)
    if match is None:
        raise HttpError(404, f"no static file {name!r}")
    try:
        body = resources.files("gateway").joinpath("static", name).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise HttpError(404, f"no static file {name!r}") from None
    return CONTENT_TYPES[match.group(1)], body


class StatusServer:
    """``await StatusServer(listen, observer, engine).start()`` -> the bound URL."""

    def __init__(
        self,
        listen: str,
        observer: Observer,
        engine: AlarmEngine | None = None,
        after_action: Callable[[], None] = lambda: None,
    ):
        """``after_action`` runs after an alarm action (the app passes its pipeline tick, so
        the ack/shelve event is committed to the outbox at once)."""
        self.host, self.port = parse_listen(listen)
        self.observer = observer
        self.engine = engine
        self.after_action = after_action
        self.url = ""
        self.requests = 0
        self._server: asyncio.Server | None = None
        self.events = EventHub(observer.status)
        if engine is not None:
            engine.listeners.append(self.events.notify)

    async def start(self, required: bool = False) -> str:
        """Bind and serve; returns the URL. A port in use is logged and the gateway runs on
        without its status server (``""`` returned) unless ``required``: readings and alarms
        matter more than the page that shows them."""
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            if required:
                raise
            log.error(
                "HTTP status server not started: cannot listen on %s:%d (%s); "
                "set [gateway] http_listen",
                self.host,
                self.port,
                exc.strerror or exc,
            )
            return ""
        self.events.start()
        port = self._server.sockets[0].getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{port}"
        log.info("HTTP listening on %s", self.url)
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self.events.stop()  # ends the open event streams
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        status, ctype, body = 500, "application/json", b""
        try:
            method, target, payload = await asyncio.wait_for(
                self._read_request(reader), READ_TIMEOUT_S
            )
            self.requests += 1
            if urlsplit(target).path == "/api/events":
                _only(method, "GET")
                await self._stream_events(reader, writer)
                return
            status, ctype, body = await self._route(method, target, payload)
        except HttpError as exc:
            status, body = exc.status, _json({"error": str(exc)})
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        except Exception:
            log.exception("HTTP handler failed")
            status, body = 500, _json({"error": "internal error (see the gateway log)"})
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode() + body)
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _stream_events(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """``GET /api/events``: status documents as server-sent events until the client goes.

        A disconnect shows as end-of-file on the reader (the client sends nothing more after
        its request) or as a failed write; either ends the stream and frees its slot.
        """
        queue = self.events.join()
        if queue is None:
            raise HttpError(503, f"{self.events.max_clients} live streams open; poll /api/status")
        eof = asyncio.create_task(reader.read(1))
        try:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-store\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\n"
                + f"retry: {EVENT_RETRY_MS}\n\n".encode()
            )
            while True:
                frame_task = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({frame_task, eof}, return_when=asyncio.FIRST_COMPLETED)
                if frame_task not in done:
                    frame_task.cancel()
                    break  # the client closed the connection
                frame = frame_task.result()
                if frame is None:
                    break  # the server stops
                writer.write(frame)
                await asyncio.wait_for(writer.drain(), EVENT_WRITE_TIMEOUT_S)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading: its slot is freed below
        except Exception:
            log.exception("event stream failed")
        finally:
            self.events.leave(queue)
            eof.cancel()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise HttpError(413, "request head too large") from exc
        if len(head) > MAX_HEADER_BYTES:
            raise HttpError(413, "request head too large")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            raise HttpError(400, "bad request line")
        method, target, _ = parts
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                if not value.strip().isdigit():
                    raise HttpError(400, "bad Content-Length")
                length = int(value.strip())
        if length > MAX_BODY_BYTES:
            raise HttpError(413, f"body larger than {MAX_BODY_BYTES} bytes")
        body = await reader.readexactly(length) if length else b""
        return method.upper(), target, body

    async def _route(self, method: str, target: str, body: bytes) -> tuple[int, str, bytes]:
        url = urlsplit(target)
        path = url.path.rstrip("/") or "/"
        query = parse_qs(url.query)
        obs = self.observer
        gets: dict[str, Callable[[], Any]] = {
            "/healthz": obs.health,
            "/api/status": obs.status,
            "/api/history": obs.history,
        }
        if self.engine is not None:
            engine = self.engine
            gets["/api/alarms"] = lambda: {
                "alarms": engine.active(),
                "shelved": engine.shelved(),
                "counts": engine.counts(),
            }
            gets["/api/rules"] = lambda: {"rules": engine.rules_json()}
            gets["/api/alarms/log"] = lambda: {
                "events": engine.log(_int(query.get("limit", ["100"])[0], "limit", 1, 10_000))
            }
        if path == "/" or path.startswith("/static/"):
            _only(method, "GET")
            ctype, data = static_file("index.html" if path == "/" else path[len("/static/") :])
            return 200, ctype, data
        if path == "/metrics":
            _only(method, "GET")
            text = await asyncio.to_thread(obs.prometheus)
            return 200, "text/plain; version=0.0.4; charset=utf-8", text.encode()
        if path in gets:
            _only(method, "GET")
            doc = await asyncio.to_thread(gets[path])
            if path == "/healthz":
                doc = {"status": "ok" if doc["ok"] else "unhealthy", **doc}
                return (200 if doc["ok"] else 503), "application/json", _json(doc)
            return 200, "application/json", _json(doc)
        parts = path.strip("/").split("/")
        if len(parts) == 6 and parts[:2] == ["api", "alarms"] and self.engine is not None:
            _only(method, "POST")
            site, device, rule, action = parts[2:]
            return await self._action(self.engine, site, device, rule, action, body)
        raise HttpError(404, f"no route {path}")

    async def _action(
        self, engine: AlarmEngine, site: str, device: str, rule: str, action: str, body: bytes
    ) -> tuple[int, str, bytes]:
        try:
            doc = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            raise HttpError(400, f"body is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise HttpError(400, "body: expected a JSON object")
        by = doc.get("by", "")
        if not isinstance(by, str) or len(by) > 64:
            raise HttpError(400, "by: expected a name (string, at most 64 characters)")
        try:
            if action == "ack":
                alarm = await asyncio.to_thread(engine.acknowledge, site, device, rule, by)
            elif action == "shelve":
                duration = doc.get("duration_s")
                reason = doc.get("reason", "")
                if isinstance(duration, bool) or not isinstance(duration, int | float):
                    raise HttpError(400, "duration_s: expected a number of seconds")
                if not isinstance(reason, str):
                    raise HttpError(400, "reason: expected a string")
                alarm = await asyncio.to_thread(
                    engine.shelve, site, device, rule, float(duration), by, reason[:200]
                )
            elif action == "unshelve":
                alarm = await asyncio.to_thread(engine.unshelve, site, device, rule, by)
            else:
                raise HttpError(404, f"no alarm action {action!r} (ack, shelve, unshelve)")
        except AlarmError as exc:
            raise HttpError(exc.status, str(exc)) from None
        await asyncio.to_thread(self.after_action)
        return 200, "application/json", _json({"alarm": alarm})


def _only(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(405, f"method {method} not allowed here (use {allowed})")


def _int(text: str, name: str, lo: int, hi: int) -> int:
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise HttpError(400, f"{name}: expected an integer {lo}..{hi}")
    return int(text)


def _finite(doc: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, dict):
        return {k: _finite(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [_finite(v) for v in doc]
    return doc


def _json(doc: Any) -> bytes:
    return json.dumps(_finite(doc), separators=(",", ":"), allow_nan=False, default=str).encode()
