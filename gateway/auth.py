"""Who may use the operator web page and API, and which requests a browser may send it.

Pure policy, no sockets: gateway/http.py asks these classes and functions and turns their
answers into HTTP statuses. Everything takes its clock as an argument so tests advance time.

- **Users** come from the users file (``[http] users_file``, TOML, mode 0600)::

      [[user]]
      name = "dolma"
      role = "operator"                       # viewer | operator | admin
      password_hash = "scrypt$16384$8$1$...$..."  # gateway.passwords.hash_password
      token_hash = "sha256$<64 hex>"          # optional: API token (python -m gateway.auth token)

  Roles are ranked: a viewer reads, an operator also acknowledges and (un)shelves alarms, an
  admin may do everything.
- **Sessions** (the page): a random token in an HttpOnly, SameSite=Strict cookie, kept
  server-side with an absolute expiry; each session has its own CSRF token that every
  state-changing request must echo in the ``X-CSRF-Token`` header (a custom header, which a
  cross-site form cannot send and a cross-site ``fetch`` can only send after a CORS preflight
  that the server never approves).
- **API tokens** (tools): ``Authorization: Bearer <token>``; the users file stores only the
  token's SHA-256. A token is 32 random bytes, so a fast hash is enough (no dictionary to
  guess from); passwords are people-chosen and get scrypt.
- **Failed logins** are limited per client address and per user name.
- **Browser checks**: the Host header must be one of ``[http] allowed_hosts`` (DNS rebinding),
  a request with a foreign ``Origin`` or a cross-site ``Sec-Fetch-Site`` is refused, and
  state-changing requests must be ``application/json``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import stat
import sys
import time
import tomllib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from gateway.passwords import hash_password, verify_password

USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TOKEN_HASH = re.compile(r"^sha256\$[0-9a-f]{64}$")
HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$"
)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
CSRF_HEADER = "x-csrf-token"
SESSION_COOKIE = "o2chain_session"
# With TLS the cookie takes the __Host- prefix: the browser then refuses it unless it is
# Secure, has Path=/ and no Domain, so a sibling host cannot plant or shadow it (RFC 6265bis
# section 4.1.3.2).
SESSION_COOKIE_TLS = "__Host-o2chain_session"
MAX_SESSIONS = 1000  # oldest evicted beyond; a facility has a handful of operators
MAX_LIMITER_KEYS = 10_000  # failed-login bookkeeping is bounded whatever an attacker sends


def _monotonic_s() -> float:
    return time.monotonic()


# ---------------------------------------------------------------------- users and roles
class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


class Permission(StrEnum):
    READ = "read"  # live page data, alarm lists and log, metrics
    ACT = "act"  # acknowledge, shelve, unshelve alarms
    ADMIN = "admin"  # everything


_GRANTS = {
    Role.VIEWER: {Permission.READ},
    Role.OPERATOR: {Permission.READ, Permission.ACT},
    Role.ADMIN: {Permission.READ, Permission.ACT, Permission.ADMIN},
}


def allows(role: Role, permission: Permission) -> bool:
    return permission in _GRANTS[role]


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    password_hash: str = field(repr=False)
    token_hash: str | None = field(default=None, repr=False)


class UsersFileError(ValueError):
    """The users file is missing, too open, or malformed; the message is one line."""


def load_users(path: Path) -> dict[str, User]:
    """Users by name from the TOML users file; raises :class:`UsersFileError`.

    A file that group or others may read or write is refused: it holds password hashes, and
    scrypt slows an offline guesser down, it does not stop one.
    """
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UsersFileError(f"{path}: cannot read the users file: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsersFileError(
            f"{path}: users file is open to group/others (mode {stat.S_IMODE(mode):04o}); "
            f"it holds password hashes: chmod 600 {path}"
        )
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise UsersFileError(f"{path}: cannot read the users file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsersFileError(f"{path}: not valid TOML: {exc}") from None
    extra = set(doc) - {"user"}
    if extra:
        raise UsersFileError(f"{path}: unknown top-level key(s) {sorted(extra)}; expected [[user]]")
    entries = doc.get("user")
    if not isinstance(entries, list) or not entries:
        raise UsersFileError(f"{path}: no [[user]] entries")
    users: dict[str, User] = {}
    for i, entry in enumerate(entries):
        users_entry = _user(entry, f"{path}: user[{i}]")
        if users_entry.name in users:
            raise UsersFileError(f"{path}: user[{i}].name: duplicate user {users_entry.name!r}")
        users[users_entry.name] = users_entry
    return users


def _user(entry: object, where: str) -> User:
    if not isinstance(entry, dict):
        raise UsersFileError(f"{where}: expected a table")
    extra = set(entry) - {"name", "role", "password_hash", "token_hash"}
    if extra:
        raise UsersFileError(f"{where}: unknown key(s) {sorted(extra)}")
    name = entry.get("name")
    if not isinstance(name, str) or not USER_NAME.match(name):
        raise UsersFileError(f"{where}.name: expected 1-64 of A-Z a-z 0-9 . _ - (got {name!r})")
    role = entry.get("role")
    if role not in {r.value for r in Role}:
        raise UsersFileError(f"{where}.role: expected viewer, operator or admin (got {role!r})")
    pw = entry.get("password_hash")
    if not isinstance(pw, str) or len(pw.split("$")) != 6 or not pw.startswith("scrypt$"):
        raise UsersFileError(
            f"{where}.password_hash: expected scrypt$N$r$p$SALT$KEY (gateway.passwords)"
        )
    token = entry.get("token_hash")
    if token is not None and (not isinstance(token, str) or not TOKEN_HASH.match(token)):
        raise UsersFileError(f"{where}.token_hash: expected sha256$<64 lowercase hex>")
    return User(name, Role(role), pw, token)


def new_token() -> str:
    """A fresh API token: 32 random bytes, URL-safe base64."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return "sha256$" + hashlib.sha256(token.encode()).hexdigest()


# ---------------------------------------------------------------------- listen addresses
def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8470"`` -> (host, port); raises ``ValueError``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"gateway.http_listen {listen!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``; names are not resolved
    (no network calls while validating config), so any other name counts as beyond loopback."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(listen_host: str) -> tuple[str, ...]:
    """The listen address (unless a wildcard) and the names of loopback."""
    host = listen_host.strip("[]").lower()
    extra = () if host in WILDCARD_HOSTS or host in LOOPBACK_NAMES else (host,)
    return (*extra, *LOOPBACK_NAMES)


def normalise_host_name(name: str) -> str:
    """An ``allowed_hosts`` entry, lower case, IPv6 without brackets; raises ``ValueError``."""
    host = name.strip().lower().strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not HOST_NAME.match(host):
        raise ValueError(f"{name!r}: expected a host name or IP address (no scheme, no port)")
    return host


def host_of(header: str) -> str | None:
    """The host part of a Host/Origin authority ``name[:port]`` / ``[v6][:port]``, lower case;
    ``None`` when it is malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        host, _, port = header[1:].partition("]")
        if port and not re.fullmatch(r":\d{1,5}", port):
            return None
    else:
        host, _, port = header.partition(":")
        if port and not port.isdigit():
            return None
    try:
        return normalise_host_name(host)
    except ValueError:
        return None


def host_allowed(header: str | None, allowed: Iterable[str]) -> bool:
    """The request's Host header names this server (a DNS-rebinding page sends its own name)."""
    if not header:
        return False
    host = host_of(header)
    return host is not None and host in set(allowed)


# ---------------------------------------------------------------------- browser checks
def cross_origin_problem(
    method: str, path: str, headers: Mapping[str, str], host_header: str
) -> str | None:
    """Why a request that a page of another origin made must be refused, or ``None``.

    - ``Origin`` (sent by browsers on every cross-origin request and on same-origin POSTs) must
      name this server: ``scheme://`` + the request's own Host. ``null`` (sandboxed frames,
      ``file:``) is foreign.
    - ``Sec-Fetch-Site`` (Fetch Metadata, sent by current browsers) must be ``same-origin`` or
      ``none`` (typed URL, bookmark). ``same-site`` is refused too: another port of the same
      host is the same *site* and gets SameSite=Strict cookies.
    - One exception: a top-level GET navigation to the page itself (a link from a wiki to the
      live page) is let through; it changes nothing and carries no SameSite=Strict cookie.
    """
    origin = headers.get("origin")
    site = headers.get("sec-fetch-site")
    navigation = (
        method == "GET"
        and path == "/"
        and headers.get("sec-fetch-mode") == "navigate"
        and headers.get("sec-fetch-dest", "document") == "document"
    )
    if navigation:
        return None
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site {site!r}: only same-origin requests are served"
    if origin is not None:
        scheme, sep, authority = origin.partition("://")
        if not sep or scheme not in ("http", "https") or "/" in authority:
            return f"Origin {origin!r} is not this server"
        if authority.lower() != host_header.strip().lower():
            return f"Origin {origin!r} is not this server ({host_header})"
    return None


def is_json(content_type: str | None) -> bool:
    """``application/json`` with optional parameters (``; charset=utf-8``)."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def parse_cookies(header: str | None) -> dict[str, str]:
    """Cookie header -> {name: value}; the first of duplicate names wins (RFC 6265 5.4 orders
    the more specific path first)."""
    cookies: dict[str, str] = {}
    for part in (header or "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = value.strip().strip('"')
    return cookies


# ---------------------------------------------------------------------- sessions
@dataclass
class Session:
    token: str = field(repr=False)
    csrf: str = field(repr=False)
    user: str
    role: Role
    created_s: float
    expires_s: float


class SessionStore:
    """Server-side sessions: random tokens, absolute expiry, bounded in number.

    Kept in memory: a gateway restart logs everybody out, which is the safe direction.
    """

    def __init__(
        self,
        ttl_s: float,
        clock_s: Callable[[], float] = _monotonic_s,
        max_sessions: int = MAX_SESSIONS,
    ):
        self.ttl_s = ttl_s
        self.clock_s = clock_s
        self.max_sessions = max_sessions
        self._by_token: OrderedDict[str, Session] = OrderedDict()

    def create(self, user: User) -> Session:
        now = self.clock_s()
        self._purge(now)
        while len(self._by_token) >= self.max_sessions:
            self._by_token.popitem(last=False)
        s = Session(
            token=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            user=user.name,
            role=user.role,
            created_s=now,
            expires_s=now + self.ttl_s,
        )
        self._by_token[s.token] = s
        return s

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        s = self._by_token.get(token)
        if s is None:
            return None
        if self.clock_s() >= s.expires_s:
            del self._by_token[token]
            return None
        return s

    def delete(self, token: str) -> None:
        self._by_token.pop(token, None)

    def drop_user(self, name: str) -> None:
        for token in [t for t, s in self._by_token.items() if s.user == name]:
            del self._by_token[token]

    def __len__(self) -> int:
        return len(self._by_token)

    def _purge(self, now: float) -> None:
        for token in [t for t, s in self._by_token.items() if now >= s.expires_s]:
            del self._by_token[token]


def csrf_ok(session: Session, header: str | None) -> bool:
    return bool(header) and hmac.compare_digest(session.csrf.encode(), (header or "").encode())


# ---------------------------------------------------------------------- login limits
class LoginLimiter:
    """At most ``max_failures`` failed logins per key (client address, user name) in any
    ``window_s``; beyond, logins from that key wait. Bounded memory."""

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 300.0,
        clock_s: Callable[[], float] = _monotonic_s,
        max_keys: int = MAX_LIMITER_KEYS,
    ):
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock_s = clock_s
        self.max_keys = max_keys
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def retry_after_s(self, keys: Iterable[str]) -> float:
        """0 when a login may be tried now, else seconds until it may."""
        now = self.clock_s()
        wait = 0.0
        for key in keys:
            times = self._recent(key, now)
            if len(times) >= self.max_failures:
                wait = max(wait, times[-self.max_failures] + self.window_s - now)
        return wait

    def failed(self, keys: Iterable[str]) -> None:
        now = self.clock_s()
        for key in keys:
            times = self._recent(key, now)
            times.append(now)
            self._failures[key] = times[-self.max_failures :]
            self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._failures.pop(key, None)

    def _recent(self, key: str, now: float) -> list[float]:
        return [t for t in self._failures.get(key, []) if now - t < self.window_s]


# ---------------------------------------------------------------------- the authenticator
class AuthError(Exception):
    def __init__(self, status: int, message: str, retry_after_s: float = 0.0):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Principal:
    """Who sent a request: a user through a session (``session`` set) or an API token."""

    user: str
    role: Role
    session: Session | None = None


class Authenticator:
    """Users, sessions, API tokens and the login limiter of one server."""

    def __init__(
        self,
        users: Mapping[str, User],
        session_ttl_s: float = 12 * 3600.0,
        clock_s: Callable[[], float] = _monotonic_s,
        max_failures: int = 5,
        window_s: float = 300.0,
    ):
        self.users = dict(users)
        self.sessions = SessionStore(session_ttl_s, clock_s)
        self.limiter = LoginLimiter(max_failures, window_s, clock_s)
        self._tokens = {u.token_hash: u for u in self.users.values() if u.token_hash}
        # An unknown name costs the same scrypt work as a known one (no user enumeration by
        # timing): it is checked against this hash of nothing anybody knows.
        self._dummy_hash = hash_password(secrets.token_urlsafe(16))

    def login(self, name: str, password: str, client: str) -> Session:
        """Check a password (slow: scrypt; call from a worker thread) and open a session;
        raises :class:`AuthError` 429 while limited, 401 on a wrong name or password."""
        keys = (f"addr:{client}", f"user:{name}")
        wait = self.limiter.retry_after_s(keys)
        if wait > 0:
            raise AuthError(429, f"too many failed logins; try again in {wait:.0f} s", wait)
        user = self.users.get(name)
        if user is None:
            verify_password(password, self._dummy_hash)
            ok = False
        else:
            ok = verify_password(password, user.password_hash)
        if not ok or user is None:
            self.limiter.failed(keys)
            raise AuthError(401, "wrong user name or password")
        self.limiter.succeeded(keys)
        return self.sessions.create(user)

    def from_bearer(self, token: str, client: str) -> Principal:
        """The user of an API token; raises :class:`AuthError` 401 / 429."""
        keys = (f"addr:{client}",)
        wait = self.limiter.retry_after_s(keys)
        if wait > 0:
            raise AuthError(429, f"too many failed logins; try again in {wait:.0f} s", wait)
        user = self._tokens.get(hash_token(token))
        if user is None:
            self.limiter.failed(keys)
            raise AuthError(401, "unknown API token")
        return Principal(user.name, user.role)

    def from_session(self, token: str | None) -> Principal | None:
        s = self.sessions.get(token)
        if s is None or s.user not in self.users:
            return None
        return Principal(s.user, s.role, s)


# ---------------------------------------------------------------------- rate-limited logging
class RateLimitedLog:
    """At most one line per key per ``interval_s``; the next line says how many were held back.

    Refused requests are worth seeing (someone probes the gateway) but must not let a client
    fill the disk through the log.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        clock_s: Callable[[], float] = _monotonic_s,
        max_keys: int = 256,
    ):
        self.logger = logger
        self.interval_s = interval_s
        self.clock_s = clock_s
        self.max_keys = max_keys
        self._last: OrderedDict[str, float] = OrderedDict()
        self._held: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """Log now (True) or count it for the next line of this key (False)."""
        now = self.clock_s()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        held = self._held.pop(key, 0)
        suffix = f" ({held} similar held back in the last {self.interval_s:g} s)" if held else ""
        self.logger.warning(msg + suffix, *args)
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            old, _ = self._last.popitem(last=False)
            self._held.pop(old, None)
        return True


# ---------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.auth password|token``: lines to paste into a users file."""
    parser = argparse.ArgumentParser(prog="python -m gateway.auth", description=main.__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("password", help="hash a password read from stdin (one line)")
    sub.add_parser("token", help="make a new API token and print it with its hash")
    args = parser.parse_args(argv)
    if args.what == "password":
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            print("no password on stdin", file=sys.stderr)
            return 2
        print(f'password_hash = "{hash_password(password)}"')
    else:
        token = new_token()
        print(f"# the token (give it to the tool, e.g. Authorization: Bearer {token})")
        print(f'token_hash = "{hash_token(token)}"')
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
