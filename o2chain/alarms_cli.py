"""`o2chain alarms list|ack|shelve|unshelve`: an operator's alarm actions against a running gateway.

Talks to the gateway's HTTP API (gateway/README.md, "HTTP endpoints"): with ``--token-file`` as
a tool does (``Authorization: Bearer``), with ``--user``/``--password-file`` as the page does
(``POST /api/login`` gives a session cookie; every action carries the session's CSRF token).
Reading needs no login on loopback; acknowledging and shelving need an operator.

    o2chain alarms list --url http://127.0.0.1:8470
    o2chain alarms ack lhasa-hotel/room-104/room-o2-high --user operator --password-file pw
    o2chain alarms shelve lhasa-hotel/conc-4/device-offline --for 3600 --reason "cable swap" ...
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from o2base.errors import RunError, UsageError

DEFAULT_URL = "http://127.0.0.1:8470"
TIMEOUT_S = 10.0


class AlarmsClient:
    """The gateway's alarm API: read, acknowledge, shelve; raises RunError with its answer."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = TIMEOUT_S):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--url {url!r}: expected http://HOST:PORT (the gateway's page)")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.http = requests.Session()
        self.csrf: str | None = None
        self.user: str | None = None
        if token is not None:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def login(self, user: str, password: str) -> str:
        """Log in as the page does; returns the role. Raises RunError on refusal."""
        doc = self._call("POST", "/api/login", {"name": user, "password": password})
        self.csrf, self.user = doc.get("csrf"), doc.get("user")
        return str(doc.get("role"))

    def session(self) -> dict[str, Any]:
        return self._call("GET", "/api/session")

    def alarms(self) -> dict[str, Any]:
        """``{"alarms": [...], "shelved": [...], "counts": {...}}``."""
        return self._call("GET", "/api/alarms")

    def log(self, limit: int = 100) -> list[dict[str, Any]]:
        """Alarm events, newest first."""
        events = self._call("GET", f"/api/alarms/log?limit={int(limit)}").get("events", [])
        return list(events)

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/api/status")

    def ack(self, key: str) -> dict[str, Any]:
        return dict(self._call("POST", _action_path(key, "ack"), {}).get("alarm", {}))

    def shelve(self, key: str, duration_s: float, reason: str) -> dict[str, Any]:
        body = {"duration_s": duration_s, "reason": reason}
        return dict(self._call("POST", _action_path(key, "shelve"), body).get("alarm", {}))

    def unshelve(self, key: str) -> dict[str, Any]:
        return dict(self._call("POST", _action_path(key, "unshelve"), {}).get("alarm", {}))

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"X-CSRF-Token": self.csrf} if self.csrf and method != "GET" else {}
        try:
            answer = self.http.request(
                method, self.url + path, json=body, headers=headers, timeout=self.timeout_s
            )
        except requests.ConnectionError:
            raise RunError(
                f"no gateway answers at {self.url} (is it running? its log says "
                "'HTTP listening on ...')"
            ) from None
        except requests.RequestException as exc:
            raise RunError(f"{method} {self.url}{path}: {exc}") from None
        try:
            doc: Any = answer.json()
        except ValueError:
            doc = {}
        if not answer.ok:
            reason = doc.get("error") if isinstance(doc, dict) else None
            raise RunError(
                f"{method} {path}: the gateway answered {answer.status_code}: "
                f"{reason or answer.reason}"
            )
        if not isinstance(doc, dict):
            raise RunError(f"{method} {path}: expected a JSON object, got {answer.text[:80]!r}")
        return doc


def _action_path(key: str, action: str) -> str:
    parts = key.split("/")
    if len(parts) != 3 or not all(parts):
        raise UsageError(f"alarm {key!r}: expected SITE/DEVICE/RULE (the KEY column of `list`)")
    return "/api/alarms/" + "/".join(quote(p, safe="") for p in parts) + f"/{action}"


def _read_secret(path: Path, what: str) -> str:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror or exc}") from None
    if not text:
        raise UsageError(f"{what} {path}: the file is empty")
    return text.splitlines()[0].strip()


def register(sub: Any) -> None:
    alarms = sub.add_parser(
        "alarms", help="list, acknowledge or shelve alarms of a running gateway (its HTTP API)"
    )
    alarms_sub = alarms.add_subparsers(dest="alarms_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--url",
            default=os.environ.get("O2CHAIN_GATEWAY_URL", DEFAULT_URL),
            help=f"the gateway's page (default $O2CHAIN_GATEWAY_URL or {DEFAULT_URL})",
        )
        p.add_argument("--user", default=None, help="log in as this user (with --password-file)")
        p.add_argument("--password-file", type=Path, default=None, help="the user's password")
        p.add_argument(
            "--token-file", type=Path, default=None, help="API token (Authorization: Bearer)"
        )

    listing = alarms_sub.add_parser("list", help="active and shelved alarms, one table row each")
    common(listing)
    listing.add_argument("--log", type=int, default=0, metavar="N", help="also the last N events")
    listing.set_defaults(handler=_list)
    ack = alarms_sub.add_parser("ack", help="acknowledge alarms (KEY = SITE/DEVICE/RULE)")
    common(ack)
    ack.add_argument("keys", nargs="+", metavar="KEY")
    ack.set_defaults(handler=_ack)
    shelve = alarms_sub.add_parser("shelve", help="hide active alarms for a while, with a reason")
    common(shelve)
    shelve.add_argument("keys", nargs="+", metavar="KEY")
    shelve.add_argument(
        "--for", dest="duration_s", type=float, default=3600.0, metavar="SECONDS",
        help="how long (default 3600; capped by severity: critical 1 h, alarm 8 h)",
    )  # fmt: skip
    shelve.add_argument("--reason", required=True, help="why (1-200 characters, kept in the log)")
    shelve.set_defaults(handler=_shelve)
    unshelve = alarms_sub.add_parser("unshelve", help="show shelved alarms again")
    common(unshelve)
    unshelve.add_argument("keys", nargs="+", metavar="KEY")
    unshelve.set_defaults(handler=_unshelve)


def client_from_args(args: argparse.Namespace, *, act: bool) -> AlarmsClient:
    """A client logged in as the options say; ``act``: an operator is needed."""
    if args.token_file is not None and (args.user or args.password_file):
        raise UsageError("give --token-file or --user with --password-file, not both")
    if (args.user is None) != (args.password_file is None):
        raise UsageError("--user and --password-file go together")
    token = _read_secret(args.token_file, "--token-file") if args.token_file else None
    client = AlarmsClient(args.url, token=token)
    if args.user is not None:
        client.login(args.user, _read_secret(args.password_file, "--password-file"))
    elif act and token is None:
        raise UsageError(
            "acknowledging and shelving need an operator: --user NAME --password-file FILE "
            "or --token-file FILE"
        )
    return client


def _age(ms: int | None, now_ms: float) -> str:
    if not ms:
        return "-"
    s = max(0.0, now_ms / 1000.0 - ms / 1000.0)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


def alarm_state(alarm: dict[str, Any]) -> str:
    """``raised``, ``acked by NAME``, ``shelved by NAME``, ``cleared``."""
    if alarm.get("shelved"):
        return f"shelved by {alarm.get('shelved_by') or '?'}"
    if alarm.get("acked"):
        return f"acked by {alarm.get('acked_by') or '?'}"
    return "raised" if alarm.get("active") else "cleared"


def _list(args: argparse.Namespace) -> int:
    client = client_from_args(args, act=False)
    doc = client.alarms()
    rows = [*doc.get("alarms", []), *doc.get("shelved", [])]
    now_ms = time.time() * 1000
    if not rows:
        print(f"no active alarms on {client.url}")
    else:
        table = [("SEVERITY", "STATE", "SINCE", "KEY", "MESSAGE")]
        for a in rows:
            table.append(
                (
                    str(a.get("severity", "")),
                    alarm_state(a),
                    _age(a.get("raised_ms"), now_ms),
                    str(a.get("key", "")),
                    str(a.get("message", "")),
                )
            )
        widths = [max(len(r[i]) for r in table) for i in range(4)]
        for r in table:
            print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    if args.log:
        for e in client.log(args.log):
            stamp = time.strftime("%H:%M:%S", time.localtime(int(e.get("ts", 0)) / 1000))
            by = f" by {e['by']}" if e.get("by") else ""
            print(f"{stamp} {e.get('event', ''):<9} {e.get('key', '')}{by}")
    return 0


def _act(args: argparse.Namespace, verb: str, do: Any) -> int:
    client = client_from_args(args, act=True)
    failed = 0
    for key in args.keys:
        try:
            alarm = do(client, key)
        except RunError as exc:
            print(f"{key}: not {verb}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{key}: {verb} ({alarm.get('severity', '?')}, {alarm_state(alarm)})")
    return 1 if failed else 0


def _ack(args: argparse.Namespace) -> int:
    return _act(args, "acknowledged", lambda c, k: c.ack(k))


def _shelve(args: argparse.Namespace) -> int:
    if args.duration_s <= 0:
        raise UsageError(f"--for {args.duration_s:g}: expected a number of seconds > 0")
    if not 1 <= len(args.reason) <= 200:
        raise UsageError("--reason: expected 1-200 characters")
    return _act(args, "shelved", lambda c, k: c.shelve(k, args.duration_s, args.reason))


def _unshelve(args: argparse.Namespace) -> int:
    return _act(args, "unshelved", lambda c, k: c.unshelve(k))
