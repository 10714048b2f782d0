"""Delivery to one kind of target: a blocking ``send()`` that says whether the target accepted.

Accepted means: HTTP 2xx; for WeCom and DingTalk robots also ``errcode == 0`` in the JSON
answer (they answer 200 with an error code, e.g. 45009 / 130101 when sent too fast); for
e-mail, the SMTP server accepted the message. Everything else is a failure to retry.

The idempotency key travels with every message: webhook header ``Idempotency-Key`` and JSON
field ``id``; e-mail ``Message-ID``; SMS placeholder ``{id}``. Robots have no such field: the
key is printed at the end of the text (``ref ...``) so a duplicate can be recognised.

No secret is ever logged: URLs are shown without their query string (:func:`redact`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Protocol

from gateway.config import NotifyKind, NotifyTarget
from gateway.notify.messages import Message

# WeCom robot limits (its documentation): text 2048 bytes, markdown 4096 bytes, UTF-8.
WECOM_TEXT_BYTES, WECOM_MARKDOWN_BYTES = 2048, 4096


@dataclass(frozen=True)
class Outcome:
    """``result``: ok | http_error | rejected | timeout | connect_error | error."""

    result: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.result == "ok"


class Sender(Protocol):
    def send(self, message: Message, recipient: str, idem: str) -> Outcome: ...


def redact(url: str) -> str:
    """``scheme://host[:port]/path`` of a URL: robot keys and tokens live in the query."""
    u = urllib.parse.urlsplit(url)
    return f"{u.scheme}://{u.netloc.rsplit('@', 1)[-1]}{u.path}"


def _truncate_utf8(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "..."


def _ssl_context(target: NotifyTarget) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if target.ca_file is not None:
        ctx.load_verify_locations(cafile=str(target.ca_file))
    return ctx


def dingtalk_signed_url(url: str, secret: str, now_ms: int) -> str:
    """DingTalk custom robot with "加签" (signing): append ``timestamp`` (ms) and ``sign`` =
    URL-encoded base64 of HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}")."""
    string_to_sign = f"{now_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), string_to_sign, hashlib.sha256).digest()
    sign = urllib.parse.quote_plus(base64.b64encode(digest))
    sep = "&" if urllib.parse.urlsplit(url).query else "?"
    return f"{url}{sep}timestamp={now_ms}&sign={sign}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: urllib would follow a 302 to a POST as a GET without the body,
    and a login page's 200 would count as delivered."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class HttpSender:
    """webhook, wecom, dingtalk and sms targets."""

    def __init__(self, target: NotifyTarget, clock_ms: object = None):
        self.target = target
        self.url = target.read_url().get_secret_value()
        secret = target.secret()
        self.secret = secret.get_secret_value() if secret is not None else None
        token = target.token()
        self.token = token.get_secret_value() if token is not None else ""
        self.ctx = _ssl_context(target)
        self.opener = urllib.request.build_opener(
            _NoRedirect(), urllib.request.HTTPSHandler(context=self.ctx)
        )

    def _fill(self, template: str, values: dict[str, str], encoding: str | None) -> str:
        out = template
        for name, value in values.items():
            if encoding == "json":
                value = json.dumps(value, ensure_ascii=False)[1:-1]
            elif encoding == "form":
                value = urllib.parse.quote_plus(value)
            elif encoding == "url":
                value = urllib.parse.quote(value, safe="")
            out = out.replace("{" + name + "}", value)
        return out

    def request(self, message: Message, recipient: str, idem: str) -> urllib.request.Request:
        t = self.target
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "o2chain"}
        url, method = self.url, "POST"
        if t.kind is NotifyKind.WEBHOOK:
            headers["Idempotency-Key"] = idem
            body = json.dumps(message.data, ensure_ascii=False).encode()
            url = self._fill(url, {"token": self.token}, "url")
            method = t.method
        elif t.kind is NotifyKind.WECOM:
            if t.msgtype == "markdown":
                content = _truncate_utf8(message.markdown, WECOM_MARKDOWN_BYTES)
                doc: dict[str, object] = {"msgtype": "markdown", "markdown": {"content": content}}
            else:
                content = _truncate_utf8(message.text, WECOM_TEXT_BYTES)
                doc = {"msgtype": "text", "text": {"content": content}}
            body = json.dumps(doc, ensure_ascii=False).encode()
        elif t.kind is NotifyKind.DINGTALK:
            if t.msgtype == "markdown":
                doc = {
                    "msgtype": "markdown",
                    "markdown": {"title": message.subject[:64], "text": message.markdown},
                }
            else:
                doc = {"msgtype": "text", "text": {"content": message.text}}
            body = json.dumps(doc, ensure_ascii=False).encode()
            if self.secret:  # signed per request: DingTalk refuses a timestamp over 1 h old
                url = dingtalk_signed_url(url, self.secret, int(time.time() * 1000))
        else:  # sms
            values = {"phone": recipient, "text": message.short, "id": idem, "token": self.token}
            body = self._fill(t.body_template or "", values, t.body_encoding).encode()
            url = self._fill(url, values, "url")
            method = t.method
            if t.body_encoding == "form":
                headers["Content-Type"] = "application/x-www-form-urlencoded"
        if t.kind in (NotifyKind.WEBHOOK, NotifyKind.SMS):
            for name, value in t.headers.items():
                headers[name] = self._fill(value, {"token": self.token, "id": idem}, None)
        data = None if method == "GET" else body
        return urllib.request.Request(url, data=data, headers=headers, method=method)

    def send(self, message: Message, recipient: str, idem: str) -> Outcome:
        req = self.request(message, recipient, idem)
        try:
            with self.opener.open(req, timeout=self.target.timeout_s) as r:
                answer = r.read(65536)
                status = r.status
        except urllib.error.HTTPError as exc:
            return Outcome("http_error", f"HTTP {exc.code} from {redact(self.url)}")
        except TimeoutError:
            return Outcome(
                "timeout", f"no answer from {redact(self.url)} in {self.target.timeout_s:g} s"
            )
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError | socket.timeout):
                return Outcome("timeout", f"no answer from {redact(self.url)}")
            return Outcome("connect_error", f"{redact(self.url)}: {reason}")
        except (OSError, ValueError) as exc:
            return Outcome("connect_error", f"{redact(self.url)}: {exc}")
        if not 200 <= status < 300:
            return Outcome("http_error", f"HTTP {status} from {redact(self.url)}")
        if self.target.kind in (NotifyKind.WECOM, NotifyKind.DINGTALK):
            try:
                doc = json.loads(answer)
                errcode = int(doc.get("errcode", -1))
            except (ValueError, TypeError, AttributeError):
                return Outcome("rejected", f"{redact(self.url)}: answer is not the robot's JSON")
            if errcode != 0:
                return Outcome("rejected", f"errcode {errcode}: {str(doc.get('errmsg', ''))[:200]}")
        elif self.target.accept_json:
            try:
                doc = json.loads(answer)
                got = {k: doc.get(k) for k in self.target.accept_json}
            except (ValueError, TypeError, AttributeError):
                return Outcome("rejected", f"{redact(self.url)}: answer is not JSON")
            if got != self.target.accept_json:
                return Outcome("rejected", f"{redact(self.url)}: answered {json.dumps(got)[:200]}")
        return Outcome("ok")


class EmailSender:
    """SMTP; with ``starttls = true`` the message is sent only over TLS (a server that does not
    offer STARTTLS is a failure, never a fallback to plain text)."""

    def __init__(self, target: NotifyTarget):
        self.target = target
        pw = target.password()
        self.password = pw.get_secret_value() if pw is not None else None
        self.ctx = _ssl_context(target)

    def build(self, message: Message, idem: str) -> EmailMessage:
        t = self.target
        mail = EmailMessage()
        mail["Subject"] = message.subject
        mail["From"] = t.from_ or ""
        mail["To"] = ", ".join(t.to)
        mail["Date"] = formatdate(localtime=False)
        domain = (t.from_ or "o2chain").rsplit("@", 1)[-1]
        mail["Message-ID"] = f"<{idem}@{domain}>"
        mail["X-O2chain-Id"] = idem
        mail.set_content(message.text, charset="utf-8")
        return mail

    def send(self, message: Message, recipient: str, idem: str) -> Outcome:
        t = self.target
        host = t.smtp_host or ""
        try:
            with smtplib.SMTP(host, t.smtp_port, timeout=t.timeout_s) as smtp:
                smtp.ehlo()
                if t.starttls:
                    smtp.starttls(context=self.ctx)
                    smtp.ehlo()
                if t.username and self.password is not None:
                    smtp.login(t.username, self.password)
                refused = smtp.send_message(self.build(message, idem))
        except TimeoutError:
            return Outcome("timeout", f"smtp {host}:{t.smtp_port}: no answer")
        except smtplib.SMTPResponseException as exc:
            return Outcome("rejected", f"smtp {host}: {exc.smtp_code} {exc.smtp_error!r}"[:300])
        except smtplib.SMTPException as exc:
            return Outcome("rejected", f"smtp {host}: {exc}"[:300])
        except (OSError, ssl.SSLError) as exc:
            return Outcome("connect_error", f"smtp {host}:{t.smtp_port}: {exc}")
        if refused:  # accepted for some: a retry would duplicate it for the others
            return Outcome("ok", f"refused recipients: {', '.join(sorted(refused))}")
        return Outcome("ok")


def make_sender(target: NotifyTarget) -> Sender:
    """The sender for a target; raises ConfigError when its secret files cannot be read."""
    if target.kind is NotifyKind.EMAIL:
        return EmailSender(target)
    return HttpSender(target)
