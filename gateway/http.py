"""The gateway's HTTP server: the operator live page, its JSON API, health and metrics.

Standard library only (asyncio streams, HTTP/1.1, one request per connection): the routes are
few and small, and a web framework would be the gateway's largest dependency. Binds to
``[gateway] http_listen`` (default ``127.0.0.1:8470``; port 0 picks a free port) and logs
``HTTP listening on http://HOST:PORT``. Who may do what is decided by gateway/auth.py:

- every request: the Host header must be an allowed name (DNS rebinding), a foreign
  ``Origin`` or a cross-site ``Sec-Fetch-Site`` is refused (403);
- reading (page data, alarms, metrics): anonymous when listening on loopback
  (``[http] anonymous_read = "loopback"``), otherwise a logged-in viewer at least (401);
- alarm actions: an operator or admin, by session cookie plus the session's CSRF token in
  ``X-CSRF-Token``, or by ``Authorization: Bearer`` API token; body ``application/json``.
  The action is recorded under the authenticated user, never a name from the body.

Routes (JSON shapes in gateway/README.md, "HTTP endpoints"):

- ``GET /healthz``: 200 ``{"status": "ok", ...}`` or 503 ``{"status": "unhealthy", ...}``
- ``GET /metrics``: Prometheus text format 0.0.4
- ``GET /api/session``: who is logged in, the CSRF token, the shelve limits
- ``POST /api/login`` ``{"name", "password"}``, ``POST /api/logout``
- ``GET /api/status``: sites -> devices (last values, ages, link), active alarms
- ``GET /api/alarms``, ``GET /api/alarms/log?limit=N``, ``GET /api/rules``
- ``POST /api/alarms/{site}/{device}/{rule}/ack`` ``{}``
- ``POST /api/alarms/{site}/{device}/{rule}/shelve`` ``{"duration_s": 3600, "reason": "..."}``
- ``POST /api/alarms/{site}/{device}/{rule}/unshelve`` ``{}``
- ``GET /api/events``: server-sent events, an ``event: status`` (the /api/status document) every
  ``EVENT_INTERVAL_S`` and at once on every alarm transition; bounded per client and in total
  (the oldest stream is evicted with ``event: evicted``; the page then polls /api/status)
- ``GET /api/history``: recent values of the trend fields per device (the page's sparklines)
- ``GET /`` and ``GET /static/{name}``: the live page (gateway/static, no external assets),
  its texts in ``GET /static/i18n/{lang}.json`` (one catalogue per language)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gateway.alarms import AlarmEngine, AlarmError
from gateway.auth import (
    CSRF_HEADER,
    SESSION_COOKIE,
    SESSION_COOKIE_TLS,
    Authenticator,
    AuthError,
    Permission,
    Principal,
    RateLimitedLog,
    allows,
    cross_origin_problem,
    csrf_ok,
    default_allowed_hosts,
    host_allowed,
    is_json,
    is_loopback,
    load_users,
    parse_cookies,
    parse_listen,
)
from gateway.config import AlarmEngineSection, HttpSection
from gateway.observe import Observer

__all__ = ["EventHub", "HttpError", "HttpPolicy", "StatusServer", "parse_listen", "sse_frame"]

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
# The largest legitimate body is a login or a shelve reason (< 1 KiB); 16 KiB leaves room and
# bounds what a client can make the server buffer.
MAX_BODY_BYTES = 16 * 1024
MAX_REASON_CHARS = 200
READ_TIMEOUT_S = 10.0
# Requests being read or answered at once (event streams not counted: they have their own
# bounds); beyond, a new connection gets 503 at once instead of a slot.
MAX_PENDING_REQUESTS = 64
BUSY_READ_TIMEOUT_S = 1.0
# Password checks at once: scrypt takes ~16 MiB and tens of ms each (gateway/passwords.py).
MAX_CONCURRENT_LOGINS = 2
REFUSAL_LOG_INTERVAL_S = 10.0
# Live updates: one status document per interval to every stream; a stream whose client does
# not take a frame within the write timeout is dropped (the browser reconnects by itself).
EVENT_INTERVAL_S = 1.5
EVENT_WRITE_TIMEOUT_S = 10.0
EVENT_RETRY_MS = 2000  # EventSource reconnect delay the page's browser uses
MAX_EVENT_CLIENTS = 16  # each costs one status serialisation per interval
MAX_EVENT_CLIENTS_PER_CLIENT = 4
# The page's files (no paths), and its text catalogues, one per language: i18n/{BCP 47 tag}.json.
STATIC_NAME = re.compile(
    r"^(?:[a-z0-9][a-z0-9_-]*\.(html|css|js|svg)|i18n/[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})?\.(json))$"
)
ALARM_ACTION_KEYS = {"ack": set(), "unshelve": set(), "shelve": {"duration_s", "reason"}}
CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "svg": "image/svg+xml",
    "json": "application/json",
}
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
# On every answer. The page loads only its own files and runs no inline script or style;
# nobody may frame it (clickjacking an "Acknowledge" button); browsers must not guess types
# or send the gateway's URLs to other sites; other origins may not embed its responses.
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
# Headers whose second copy would let a front end and this server disagree about a request.
SINGLE_HEADERS = {
    "host", "origin", "content-length", "content-type", "cookie", "authorization",
    CSRF_HEADER, "sec-fetch-site", "transfer-encoding",
}  # fmt: skip
FORWARDED_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
REFUSALS_LOGGED = {400, 401, 403, 405, 411, 413, 415, 429}


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.headers = headers


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    client: str  # peer address
    path: str = ""
    query: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        url = urlsplit(self.target)
        self.path = url.path.rstrip("/") or "/"
        self.query = parse_qs(url.query)

    @property
    def tls(self) -> bool:
        """Served over TLS as the browser sees it (the gateway itself speaks plain HTTP; a
        TLS-terminating proxy says so in X-Forwarded-Proto)."""
        return self.headers.get("x-forwarded-proto", "").lower() == "https"

    @property
    def forwarded(self) -> bool:
        return any(h in self.headers for h in FORWARDED_HEADERS)


@dataclass
class HttpPolicy:
    """What the server lets through; built once from ``[http]`` and the listen address."""

    allowed_hosts: tuple[str, ...]
    anonymous_read: bool
    auth: Authenticator | None  # None: no users file, nobody can log in or act
    max_event_streams: int = MAX_EVENT_CLIENTS
    max_event_streams_per_client: int = MAX_EVENT_CLIENTS_PER_CLIENT
    shelve_max_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls,
        http: HttpSection,
        listen: str,
        alarm_engine: AlarmEngineSection | None = None,
        clock_s: Callable[[], float] | None = None,
    ) -> HttpPolicy:
        host, _ = parse_listen(listen)
        auth = None
        if http.users_file is not None:
            kwargs: dict[str, Any] = {} if clock_s is None else {"clock_s": clock_s}
            auth = Authenticator(
                load_users(http.users_file),
                session_ttl_s=http.session_ttl_s,
                max_failures=http.login_max_failures,
                window_s=http.login_window_s,
                **kwargs,
            )
        # The loopback names are always allowed: only a page on loopback itself can send them.
        hosts = dict.fromkeys([*http.allowed_hosts, *default_allowed_hosts(host)])
        ae = alarm_engine or AlarmEngineSection()
        return cls(
            allowed_hosts=tuple(hosts),
            anonymous_read=http.anonymous_read == "loopback" and is_loopback(host),
            auth=auth,
            max_event_streams=http.max_event_streams,
            max_event_streams_per_client=http.max_event_streams_per_client,
            shelve_max_s={sev.value: min(ae.max_shelve_s, s) for sev, s in ae.shelve_max_s.items()},
        )


# ---------------------------------------------------------------------- live events
EVICTED_FRAME = b'event: evicted\ndata: {"reason":"too many live streams; poll /api/status"}\n\n'


@dataclass(frozen=True)
class _Slot:
    client: str  # client address (and user, when logged in)
    seq: int  # join order: the lowest is the oldest


class EventHub:
    """Fans one status document out to every server-sent-events stream.

    One producer task renders ``snapshot()`` (in a worker thread) every ``interval_s`` while at
    least one client listens, and at once after :meth:`notify` (thread-safe: the alarm engine
    calls it from the pipeline's threads). Each client has a queue of one frame: a slow client
    skips to the newest document instead of queueing old ones.

    Bounded without locking anybody out: a client at ``max_per_client`` streams, or a
    newcomer when ``max_clients`` are open, evicts the oldest stream of whoever holds the most
    (it gets ``event: evicted`` and its page polls /api/status instead).
    """

    def __init__(
        self,
        snapshot: Callable[[], Any],
        interval_s: float = EVENT_INTERVAL_S,
        max_clients: int = MAX_EVENT_CLIENTS,
        max_per_client: int = MAX_EVENT_CLIENTS_PER_CLIENT,
    ):
        self.snapshot = snapshot
        self.interval_s = interval_s
        self.max_clients = max_clients
        self.max_per_client = max_per_client
        self.clients: dict[asyncio.Queue[bytes | None], _Slot] = {}
        self.frames = 0
        self.evictions = 0
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._membership = asyncio.Event()  # set (and replaced) on every join and leave
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._produce(), name="http-events")

    async def stop(self) -> None:
        """End every stream (each gets ``None``) and the producer."""
        for queue in list(self.clients):
            _offer(queue, None)
        self._stopping = True
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

    def join(self, client: str = "") -> asyncio.Queue[bytes | None]:
        """A queue for a new stream of ``client``; may evict an older stream to make room."""
        mine = [q for q, slot in self.clients.items() if slot.client == client]
        if len(mine) >= self.max_per_client:
            self._evict(min(mine, key=lambda q: self.clients[q].seq))
        elif len(self.clients) >= self.max_clients:
            self._evict(self._victim())
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)
        self._seq += 1
        self.clients[queue] = _Slot(client, self._seq)
        self._wake.set()  # the newcomer gets a document at once
        self._members_changed()
        return queue

    def _victim(self) -> asyncio.Queue[bytes | None]:
        """The oldest stream of the client holding the most streams."""
        counts: dict[str, int] = {}
        for slot in self.clients.values():
            counts[slot.client] = counts.get(slot.client, 0) + 1
        return min(
            self.clients, key=lambda q: (-counts[self.clients[q].client], self.clients[q].seq)
        )

    def _evict(self, queue: asyncio.Queue[bytes | None]) -> None:
        self.clients.pop(queue, None)
        _offer(queue, EVICTED_FRAME)
        self.evictions += 1

    def leave(self, queue: asyncio.Queue[bytes | None]) -> None:
        self.clients.pop(queue, None)
        self._members_changed()

    def _members_changed(self) -> None:
        self._membership.set()
        self._membership = asyncio.Event()

    async def wait_for_clients(self, count: int) -> None:
        """Return once exactly ``count`` streams are open (an event to await in tests)."""
        while len(self.clients) != count:
            await self._membership.wait()

    async def _produce(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            # Python 3.11's wait_for drops a cancellation that arrives as the wait completes
            # (a join's wake-up right before stop()): the flag ends the loop regardless.
            if self._stopping:
                return
            self._wake.clear()
            while not self.clients and not self._stopping:
                # Idle until a client joins: an alarm event wakes this too, and a document
                # built for nobody costs the gateway the whole site's status (10,000 boards
                # going offline at once would build 10,000 of them).
                await self._wake.wait()
                self._wake.clear()
            if self._stopping:
                return
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

    Names are matched against :data:`STATIC_NAME` (no paths but ``i18n/``, no ``..``), so
    nothing outside the package's static folder can be served.
    """
    match = STATIC_NAME.match(name)
    if match is None:
        raise HttpError(404, f"no static file {name!r}")
    try:
        body = resources.files("gateway").joinpath("static", *name.split("/")).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise HttpError(404, f"no static file {name!r}") from None
    return CONTENT_TYPES[match.group(1) or match.group(2)], body


# ---------------------------------------------------------------------- the server
Answer = tuple[int, str, bytes, tuple[tuple[str, str], ...]]


class StatusServer:
    """``await StatusServer(listen, observer, engine, policy=...).start()`` -> the bound URL."""

    def __init__(
        self,
        listen: str,
        observer: Observer,
        engine: AlarmEngine | None = None,
        after_action: Callable[[], None] = lambda: None,
        policy: HttpPolicy | None = None,
    ):
        """``after_action`` runs after an alarm action (the app passes its pipeline tick, so
        the ack/shelve event is committed to the outbox at once). ``policy`` defaults to
        ``[http]``'s defaults: anonymous reading on loopback, nobody can log in."""
        self.host, self.port = parse_listen(listen)
        self.observer = observer
        self.engine = engine
        self.after_action = after_action
        self.policy = policy or HttpPolicy.from_config(HttpSection(), listen)
        self.url = ""
        self.requests = 0
        self.refused: dict[int, int] = {}  # status -> count of refused requests
        self._refusal_log = RateLimitedLog(log, REFUSAL_LOG_INTERVAL_S)
        self._pending = 0
        self._logins = asyncio.Semaphore(MAX_CONCURRENT_LOGINS)
        self._server: asyncio.Server | None = None
        self.events = EventHub(
            observer.status,
            max_clients=self.policy.max_event_streams,
            max_per_client=self.policy.max_event_streams_per_client,
        )
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
        auth = self.policy.auth
        log.info(
            "HTTP listening on %s (reading: %s; %s; hosts %s)",
            self.url,
            "anonymous" if self.policy.anonymous_read else "login required",
            f"{len(auth.users)} users can log in" if auth else "no users file: no alarm actions",
            ", ".join(self.policy.allowed_hosts),
        )
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self.events.stop()  # ends the open event streams
            await self._server.wait_closed()

    # ------------------------------------------------------------------ connection
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else "?"
        streaming = False
        self._pending += 1
        try:
            if self._pending > MAX_PENDING_REQUESTS:
                # Read the head first (briefly): closing with unread data resets the
                # connection, and the client would never see the 503.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BUSY_READ_TIMEOUT_S)
                await self._respond(writer, 503, _json({"error": "server busy"}))
                return
            req: Request | None = None
            try:
                req = await asyncio.wait_for(self._read_request(reader, client), READ_TIMEOUT_S)
                self.requests += 1
                principal = self._admit(req)
                if req.path == "/api/events":
                    _only(req.method, "GET")
                    self._need(req, principal, Permission.READ)
                    streaming = True
                    self._pending -= 1
                    await self._stream_events(reader, writer, req, principal)
                    return
                status, ctype, body, headers = await self._route(req, principal)
            except HttpError as exc:
                self._refusal(req, client, exc)
                status, ctype, headers = exc.status, "application/json", exc.headers
                body = _json({"error": str(exc)})
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            except Exception:
                log.exception("HTTP handler failed")
                status, ctype, headers = 500, "application/json", ()
                body = _json({"error": "internal error (see the gateway log)"})
            await self._respond(writer, status, body, ctype, headers)
        finally:
            if not streaming:
                self._pending -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        ctype: str = "application/json",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, '')}"]
        lines += [f"Content-Type: {ctype}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (*SECURITY_HEADERS, *headers)]
        lines.append("Connection: close")
        with contextlib.suppress(ConnectionError):
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()

    def _refusal(self, req: Request | None, client: str, exc: HttpError) -> None:
        if exc.status not in REFUSALS_LOGGED:
            return
        self.refused[exc.status] = self.refused.get(exc.status, 0) + 1
        what = f"{req.method} {req.path}" if req is not None else "request"
        self._refusal_log.warning(
            str(exc.status), "HTTP %d refused %s from %s: %s", exc.status, what, client, exc
        )

    async def _read_request(self, reader: asyncio.StreamReader, client: str) -> Request:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise HttpError(413, "request head too large") from exc
        if len(head) > MAX_HEADER_BYTES:
            raise HttpError(413, "request head too large")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[1].startswith("/"):
            raise HttpError(400, "bad request line (expected METHOD /path HTTP/1.1)")
        method, target, _ = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            name = name.strip().lower()
            if not sep or not name:
                raise HttpError(400, "bad header line")
            if name in headers and name in SINGLE_HEADERS:
                raise HttpError(400, f"header {name!r} given twice")
            headers[name] = value.strip()
        if "transfer-encoding" in headers:
            raise HttpError(411, "chunked bodies are not accepted: send Content-Length")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise HttpError(400, "bad Content-Length")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            raise HttpError(413, f"body larger than {MAX_BODY_BYTES} bytes")
        body = await reader.readexactly(length) if length else b""
        return Request(method.upper(), target, headers, body, client)

    # ------------------------------------------------------------------ who and whence
    def _admit(self, req: Request) -> Principal | None:
        """Host and origin checks for every request, then who sent it (``None``: nobody
        logged in). Raises :class:`HttpError` 400/401/403/429."""
        host = req.headers.get("host")
        if not host:
            raise HttpError(400, "no Host header")
        if not host_allowed(host, self.policy.allowed_hosts):
            raise HttpError(403, f"Host {host!r} is not one of [http] allowed_hosts")
        problem = cross_origin_problem(req.method, req.path, req.headers, host)
        if problem:
            raise HttpError(403, problem)
        if req.method == "OPTIONS":  # a CORS preflight: never approved
            raise HttpError(405, "cross-origin requests are not served")
        auth = self.policy.auth
        bearer = req.headers.get("authorization")
        if bearer is not None:
            scheme, _, token = bearer.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise HttpError(401, "Authorization: expected Bearer <token>")
            if auth is None:
                raise HttpError(401, "no users file configured ([http] users_file)")
            try:
                return auth.from_bearer(token.strip(), req.client)
            except AuthError as exc:
                raise _auth_http_error(exc) from None
        if auth is None:
            return None
        return auth.from_session(_session_token(req))

    def _need(self, req: Request, who: Principal | None, permission: Permission) -> None:
        if who is None:
            if permission is Permission.READ and self.policy.anonymous_read and not req.forwarded:
                return
            if self.policy.auth is None:
                raise HttpError(
                    401, "log in first; no users file is configured ([http] users_file)"
                )
            raise HttpError(401, "log in first")
        if not allows(who.role, permission):
            raise HttpError(403, f"user {who.user} ({who.role.value}) may not {permission.value}")
        session = who.session
        if req.method != "GET" and session and not csrf_ok(session, req.headers.get(CSRF_HEADER)):
            raise HttpError(403, f"missing or wrong {CSRF_HEADER} header (see /api/session)")

    # ------------------------------------------------------------------ routes
    async def _route(self, req: Request, who: Principal | None) -> Answer:
        path, method = req.path, req.method
        if path == "/" or path.startswith("/static/"):
            _only(method, "GET")
            ctype, data = static_file("index.html" if path == "/" else path[len("/static/") :])
            return 200, ctype, data, ()
        if path == "/healthz":  # for load balancers and systemd: no login, little detail
            _only(method, "GET")
            doc = await asyncio.to_thread(self.observer.health)
            doc = {"status": "ok" if doc["ok"] else "unhealthy", **doc}
            return (200 if doc["ok"] else 503), "application/json", _json(doc), ()
        if path == "/api/session":
            _only(method, "GET")
            return 200, "application/json", _json(self._session_doc(req, who)), ()
        if path == "/api/login":
            _only(method, "POST")
            return await self._login(req)
        if path == "/api/logout":
            _only(method, "POST")
            return self._logout(req, who)
        obs = self.observer
        gets: dict[str, Callable[[], Any]] = {
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
                "events": engine.log(_int(req.query.get("limit", ["100"])[0], "limit", 1, 10_000))
            }
        if path == "/metrics":
            _only(method, "GET")
            self._need(req, who, Permission.READ)
            text = await asyncio.to_thread(obs.prometheus) + self._prometheus()
            return 200, "text/plain; version=0.0.4; charset=utf-8", text.encode(), ()
        if path in gets:
            _only(method, "GET")
            self._need(req, who, Permission.READ)
            doc = await asyncio.to_thread(gets[path])
            return 200, "application/json", _json(doc), ()
        parts = path.strip("/").split("/")
        if len(parts) == 6 and parts[:2] == ["api", "alarms"] and self.engine is not None:
            _only(method, "POST")
            self._need(req, who, Permission.ACT)
            if who is None:  # _need refuses anonymous actions; this narrows the type
                raise HttpError(401, "log in first")
            site, device, rule, action = parts[2:]
            return await self._action(self.engine, who, site, device, rule, action, req)
        raise HttpError(404, f"no route {path}")

    def _prometheus(self) -> str:
        """The server's own counters: refused requests show probing or a misconfigured
        client; sessions and streams show load."""
        auth = self.policy.auth
        lines = [
            "# HELP o2chain_http_refused_total HTTP requests refused (4xx other than 404/409)",
            "# TYPE o2chain_http_refused_total counter",
            *(
                f'o2chain_http_refused_total{{status="{k}"}} {v}'
                for k, v in sorted(self.refused.items())
            ),
            "# HELP o2chain_http_sessions Operator sessions open",
            "# TYPE o2chain_http_sessions gauge",
            f"o2chain_http_sessions {len(auth.sessions) if auth else 0}",
            "# HELP o2chain_http_event_streams Live event streams open",
            "# TYPE o2chain_http_event_streams gauge",
            f"o2chain_http_event_streams {len(self.events.clients)}",
            "# HELP o2chain_http_event_evictions_total Live streams evicted to admit newer ones",
            "# TYPE o2chain_http_event_evictions_total counter",
            f"o2chain_http_event_evictions_total {self.events.evictions}",
        ]
        return "\n".join(lines) + "\n"

    def _session_doc(self, req: Request, who: Principal | None) -> dict[str, Any]:
        can_read = (self.policy.anonymous_read and not req.forwarded) or who is not None
        return {
            "user": who.user if who else None,
            "role": who.role.value if who else None,
            "csrf": who.session.csrf if who and who.session else None,
            "login": self.policy.auth is not None,
            "can_read": can_read,
            "can_act": who is not None and allows(who.role, Permission.ACT),
            "shelve_max_s": self.policy.shelve_max_s,
        }

    async def _login(self, req: Request) -> Answer:
        doc = _json_body(req, {"name", "password"})
        name, password = doc.get("name"), doc.get("password")
        if not isinstance(name, str) or not isinstance(password, str) or not name:
            raise HttpError(400, 'expected {"name": "...", "password": "..."}')
        auth = self.policy.auth
        if auth is None:
            raise HttpError(401, "no users file configured ([http] users_file)")
        async with self._logins:
            try:
                session = await asyncio.to_thread(auth.login, name, password, req.client)
            except AuthError as exc:
                raise _auth_http_error(exc) from None
        log.info("HTTP login: %s (%s) from %s", session.user, session.role.value, req.client)
        # round, not int: (now + ttl) - now is 43199.99999... for about one clock value in nine
        ttl = round(session.expires_s - session.created_s)
        cookie = _cookie(req, session.token, ttl)
        who = Principal(session.user, session.role, session)
        return (
            200,
            "application/json",
            _json(self._session_doc(req, who)),
            (("Set-Cookie", cookie),),
        )

    def _logout(self, req: Request, who: Principal | None) -> Answer:
        _json_body(req, set())
        if who is not None and who.session is not None:
            if not csrf_ok(who.session, req.headers.get(CSRF_HEADER)):
                raise HttpError(403, f"missing or wrong {CSRF_HEADER} header (see /api/session)")
            if self.policy.auth is not None:
                self.policy.auth.sessions.delete(who.session.token)
            log.info("HTTP logout: %s from %s", who.user, req.client)
        doc = self._session_doc(req, None)
        return 200, "application/json", _json(doc), (("Set-Cookie", _cookie(req, "", 0)),)

    async def _action(
        self,
        engine: AlarmEngine,
        who: Principal,
        site: str,
        device: str,
        rule: str,
        action: str,
        req: Request,
    ) -> Answer:
        if action not in ALARM_ACTION_KEYS:
            raise HttpError(404, f"no alarm action {action!r} (ack, shelve, unshelve)")
        doc = _json_body(req, ALARM_ACTION_KEYS[action])
        by = who.user  # the authenticated user, never a name from the body
        try:
            if action == "ack":
                alarm = await asyncio.to_thread(engine.acknowledge, site, device, rule, by)
            elif action == "shelve":
                duration = doc.get("duration_s")
                reason = doc.get("reason", "")
                if isinstance(duration, bool) or not isinstance(duration, int | float):
                    raise HttpError(400, "duration_s: expected a number of seconds")
                if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
                    raise HttpError(
                        400, f"reason: expected text of at most {MAX_REASON_CHARS} characters"
                    )
                alarm = await asyncio.to_thread(
                    engine.shelve, site, device, rule, float(duration), by, reason
                )
            else:
                alarm = await asyncio.to_thread(engine.unshelve, site, device, rule, by)
        except AlarmError as exc:
            raise HttpError(exc.status, str(exc)) from None
        log.info("alarm %s by %s: %s", action, by, alarm["key"])
        await asyncio.to_thread(self.after_action)
        return 200, "application/json", _json({"alarm": alarm}), ()

    # ------------------------------------------------------------------ live events
    async def _stream_events(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        req: Request,
        who: Principal | None,
    ) -> None:
        """``GET /api/events``: status documents as server-sent events until the client goes,
        the session that opened it ends, or a newer stream evicts it.

        A disconnect shows as end-of-file on the reader (the client sends nothing more after
        its request) or as a failed write; either ends the stream and frees its slot.
        """
        client = req.client if who is None else f"{req.client}/{who.user}"
        queue = self.events.join(client)
        eof = asyncio.create_task(reader.read(1))
        auth = self.policy.auth
        try:
            head = [
                "HTTP/1.1 200 OK",
                "Content-Type: text/event-stream",
                *(f"{k}: {v}" for k, v in SECURITY_HEADERS),
                "X-Accel-Buffering: no",
                "Connection: close",
            ]
            writer.write(
                ("\r\n".join(head) + "\r\n\r\n").encode() + f"retry: {EVENT_RETRY_MS}\n\n".encode()
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
                session = who.session if who is not None else None
                if session and auth and not auth.sessions.get(session.token):
                    break  # logged out or expired: no more data on this session
                writer.write(frame)
                await asyncio.wait_for(writer.drain(), EVENT_WRITE_TIMEOUT_S)
                if frame is EVICTED_FRAME:
                    break
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading: its slot is freed below
        except Exception:
            log.exception("event stream failed")
        finally:
            self.events.leave(queue)
            eof.cancel()


def _auth_http_error(exc: AuthError) -> HttpError:
    headers: tuple[tuple[str, str], ...] = ()
    if exc.retry_after_s > 0:
        headers = (("Retry-After", str(math.ceil(exc.retry_after_s))),)
    return HttpError(exc.status, str(exc), headers)


def _session_token(req: Request) -> str | None:
    cookies = parse_cookies(req.headers.get("cookie"))
    return cookies.get(SESSION_COOKIE_TLS) or cookies.get(SESSION_COOKIE)


def _cookie(req: Request, token: str, max_age_s: int) -> str:
    """The session cookie: script cannot read it (HttpOnly), no other site's request carries
    it (SameSite=Strict), and over TLS it is Secure with the ``__Host-`` prefix."""
    name = SESSION_COOKIE_TLS if req.tls else SESSION_COOKIE
    attrs = f"{name}={token}; Path=/; Max-Age={max_age_s}; HttpOnly; SameSite=Strict"
    return attrs + ("; Secure" if req.tls else "")


def _json_body(req: Request, allowed: set[str]) -> dict[str, Any]:
    """The request's JSON object body; only ``allowed`` keys. Raises :class:`HttpError`.

    Requiring ``application/json`` keeps cross-site HTML forms out: a form can only send
    ``application/x-www-form-urlencoded``, ``multipart/form-data`` or ``text/plain``.
    """
    if not is_json(req.headers.get("content-type")):
        raise HttpError(415, "Content-Type: expected application/json")
    try:
        doc = json.loads(req.body)
    except ValueError as exc:
        raise HttpError(400, f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise HttpError(400, "body: expected a JSON object")
    extra = set(doc) - allowed
    if "by" in extra:
        raise HttpError(400, "by: not accepted; actions are recorded under the logged-in user")
    if extra:
        raise HttpError(400, f"unknown key(s) {sorted(extra)}; expected {sorted(allowed)}")
    return doc


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
