"""Helpers of the notification tests: configs and alarm events, and real local receivers: an
HTTP endpoint (127.0.0.1, a free port) that records every request and answers from a script
(500 for the first N, a robot's errcode, a slow answer, or holding the answer until released),
and an SMTP server (aiosmtpd) with STARTTLS and login on a test certificate made by openssl."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gateway.alarms import AlarmEvent
from gateway.config import GatewayConfig, parse_config

SITE, DEV, RULE = "lhasa-hotel", "room-101", "room-o2-high"


def base_config(notify: list[dict[str, Any]], **gateway: Any) -> GatewayConfig:
    return parse_config({
        "gateway": {"id": "gw-test", "http_listen": "127.0.0.1:8470", **gateway},
        "site": [{"id": SITE, "altitude_m": 3650, "name": "Lhasa Hotel"},
                 {"id": "nagqu", "altitude_m": 4500}],
        "device": [{"id": DEV, "site": SITE, "kind": "room", "transport": "mqtt", "room": "101"},
                   {"id": "conc-1", "site": SITE, "kind": "concentrator", "transport": "mqtt"}],
        "notify": notify,
    })  # fmt: skip


def hook(id: str = "ops", **kw: Any) -> dict[str, Any]:
    return {"id": id, "kind": "webhook", "url": "http://127.0.0.1:9/hook", **kw}


def event(state: str, ts_ms: int, *, severity: str = "critical", device: str = DEV,
          rule: str = RULE, raised_ms: int | None = None, shelved: bool = False,
          value: float = 29.5, by: str | None = None) -> AlarmEvent:  # fmt: skip
    """An alarm event as the engine emits it (its public JSON after the transition)."""
    active = state != "clear"
    alarm = {
        "key": f"{SITE}/{device}/{rule}", "site": SITE, "device": device, "rule": rule,
        "kind": "threshold", "severity": severity, "field": "o2_pct",
        "state": "raised" if active else "normal", "active": active, "acked": state == "ack",
        "acked_ms": None, "acked_by": by, "raised_ms": raised_ms if raised_ms else ts_ms,
        "cleared_ms": ts_ms if state == "clear" else None, "shelved": shelved,
        "shelved_until_ms": None, "shelved_by": None, "value": value, "threshold": 27.9,
        "message": f"{device}: o2_pct {value} > 27.90 ({rule})",
    }  # fmt: skip
    return AlarmEvent(ts_ms, state, alarm, by, f"{SITE}/{device}/{rule}", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # monotonic, when it arrived
    status: int = 0

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Script:
    """How the receiver answers: ``statuses`` for the first requests (then 200), the JSON
    ``answers`` likewise (then ``{"errcode": 0}``), ``delay_s`` before the first answer,
    ``hold`` (answer only once set; ``held`` is set when a request waits)."""

    statuses: list[int] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    delay_s: list[float] = field(default_factory=list)
    hold: threading.Event | None = None
    held: threading.Event = field(default_factory=threading.Event)
    check: Callable[[Request], int | None] | None = None  # a status to answer instead


class Receiver:
    """A local HTTP receiver of notifications."""

    def __init__(self, script: Script | None = None, port: int = 0):
        self.script = script or Script()
        self.requests: list[Request] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                req = Request(self.command, self.path, dict(self.headers.items()),
                              self.rfile.read(n), time.monotonic())  # fmt: skip
                s = receiver.script
                with receiver.changed:
                    index = len(receiver.requests)
                    receiver.requests.append(req)
                    status = s.statuses[index] if index < len(s.statuses) else 200
                    answer = s.answers[index] if index < len(s.answers) else {"errcode": 0}
                    delay = s.delay_s[index] if index < len(s.delay_s) else 0.0
                    receiver.changed.notify_all()
                if s.check is not None:
                    status = s.check(req) or status
                if s.hold is not None:
                    s.held.set()
                    s.hold.wait(60)
                if delay:
                    time.sleep(delay)  # the slow target under test
                body = json.dumps(answer).encode()
                req.status = status
                try:
                    self.send_response(status)
                    if 300 <= status < 400:
                        self.send_header("Location", "/elsewhere")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client is gone (killed, or timed out)
                with receiver.changed:
                    receiver.changed.notify_all()

            do_POST = do_PUT = do_GET = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def wait_for(self, predicate: Callable[[list[Request]], bool], timeout_s: float,
                 what: str) -> list[Request]:  # fmt: skip
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.requests), timeout_s):
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}: "
                                     f"{len(self.requests)} requests")  # fmt: skip
            return list(self.requests)

    def accepted(self) -> list[Request]:
        with self.changed:
            return [r for r in self.requests if 200 <= r.status < 300]

    def close(self) -> None:
        if self.script.hold is not None:
            self.script.hold.set()
        self.server.shutdown()
        self.server.server_close()


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA), made with the openssl CLI."""
    cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: bytes | None


class SmtpServer:
    """aiosmtpd on 127.0.0.1 (a free port) requiring STARTTLS and, with ``credentials``, a
    login; ``mails`` are the messages it accepted."""

    def __init__(self, tmp: Path, credentials: tuple[str, str] | None = None, tls: bool = True):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.cert, key = make_certificate(tmp)
        self.mails: list[Mail] = []
        self.changed = threading.Condition()
        server = self

        class Handler:
            async def handle_DATA(self, srv: Any, session: Any, envelope: Any) -> str:
                mail = Mail(envelope.mail_from, list(envelope.rcpt_tos),
                            message_from_bytes(envelope.original_content or envelope.content,
                                               policy=policy.default),
                            session.ssl is not None,
                            getattr(session, "login_data", None))  # fmt: skip
                with server.changed:
                    server.mails.append(mail)
                    server.changed.notify_all()
                return "250 OK"

        def authenticate(srv: Any, session: Any, envelope: Any, mechanism: str,
                         auth_data: Any) -> AuthResult:  # fmt: skip
            ok = (
                credentials is not None
                and isinstance(auth_data, LoginPassword)
                and (auth_data.login.decode(), auth_data.password.decode()) == credentials
            )
            return AuthResult(success=ok, handled=False)

        kwargs: dict[str, Any] = {}
        if tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(self.cert), str(key))
            kwargs.update(tls_context=ctx, require_starttls=True)
        if credentials is not None:
            kwargs.update(authenticator=authenticate, auth_require_tls=True, auth_required=True)
        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()

    def wait_for(self, n: int, timeout_s: float) -> list[Mail]:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.mails) >= n, timeout_s):
                raise AssertionError(f"timed out waiting for {n} mails ({len(self.mails)})")
            return list(self.mails)

    def close(self) -> None:
        self.controller.stop()
