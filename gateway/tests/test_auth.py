"""Operator login and browser checks as pure logic: users file, roles, sessions, CSRF, login
limits, Host / Origin / Sec-Fetch-Site / Content-Type rules, the config that exposes the
server, and the rate-limited refusal log. The same rules over real HTTP: test_http.py."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from gateway.auth import (
    Authenticator,
    AuthError,
    LoginLimiter,
    Permission,
    RateLimitedLog,
    Role,
    SessionStore,
    User,
    UsersFileError,
    allows,
    cross_origin_problem,
    csrf_ok,
    default_allowed_hosts,
    hash_token,
    host_allowed,
    is_json,
    is_loopback,
    load_users,
    main,
    parse_cookies,
)
from gateway.config import ConfigError, parse_config
from gateway.passwords import hash_password
from o2base.procs import o2chain_argv

PASSWORD = "correct horse battery staple"
HASH = hash_password(PASSWORD)  # once: scrypt costs tens of ms


class Clock:
    def __init__(self) -> None:
        self.t_s = 1000.0

    def __call__(self) -> float:
        return self.t_s


def users_file(path: Path, body: str | None = None, mode: int = 0o600) -> Path:
    if body is None:
        body = (
            f'[[user]]\nname = "dolma"\nrole = "operator"\npassword_hash = "{HASH}"\n'
            f'token_hash = "{hash_token("tok-dolma")}"\n\n'
            f'[[user]]\nname = "tenzin"\nrole = "viewer"\npassword_hash = "{HASH}"\n'
        )
    path.write_text(body)
    path.chmod(mode)
    return path


# ---------------------------------------------------------------------- users file
def test_users_file_is_read_with_roles_and_token_hashes(tmp_path: Path) -> None:
    users = load_users(users_file(tmp_path / "users.toml"))
    assert set(users) == {"dolma", "tenzin"}
    assert users["dolma"].role is Role.OPERATOR and users["tenzin"].role is Role.VIEWER
    assert users["dolma"].token_hash == hash_token("tok-dolma")
    assert "scrypt" not in repr(users["dolma"])  # hashes stay out of logs


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_users_file_open_to_group_or_others_is_refused_in_one_line(
    tmp_path: Path, mode: int
) -> None:
    path = users_file(tmp_path / "users.toml", mode=mode)
    with pytest.raises(UsersFileError) as err:
        load_users(path)
    message = str(err.value)
    assert "\n" not in message
    assert f"mode {mode:04o}" in message and f"chmod 600 {path}" in message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("", "no [[user]] entries"),
        ("[[user]]\nname = 'a'\nrole = 'root'\npassword_hash = '{h}'\n", "user[0].role"),
        ("[[user]]\nname = 'a'\nrole = 'admin'\npassword_hash = 'plain'\n", "password_hash"),
        ("[[user]]\nname = 'a b'\nrole = 'admin'\npassword_hash = '{h}'\n", "user[0].name"),
        ("[[user]]\nname = 'a'\nrole = 'admin'\npassword_hash = '{h}'\npassword = 'x'\n",
         "unknown key(s) ['password']"),
        ("[[user]]\nname = 'a'\nrole = 'admin'\npassword_hash = '{h}'\ntoken_hash = 'abc'\n",
         "token_hash"),
        ("[[user]]\nname = 'a'\nrole = 'admin'\npassword_hash = '{h}'\n" * 2,
         "user[1].name: duplicate user 'a'"),
        ("[[users]]\nname = 'a'\n", "unknown top-level key(s) ['users']"),
        ("[[user]\n", "not valid TOML"),
    ],
)  # fmt: skip
def test_bad_users_files_name_the_entry_and_key(tmp_path: Path, body: str, expected: str) -> None:
    path = users_file(tmp_path / "users.toml", body.replace("{h}", HASH))
    with pytest.raises(UsersFileError) as err:
        load_users(path)
    assert expected in str(err.value) and str(path) in str(err.value)


def test_missing_users_file(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="cannot read the users file"):
        load_users(tmp_path / "nope.toml")


def test_roles_are_ranked() -> None:
    table = {(r, p): allows(r, p) for r in Role for p in Permission}
    assert table == {
        (Role.VIEWER, Permission.READ): True,
        (Role.VIEWER, Permission.ACT): False,
        (Role.VIEWER, Permission.ADMIN): False,
        (Role.OPERATOR, Permission.READ): True,
        (Role.OPERATOR, Permission.ACT): True,
        (Role.OPERATOR, Permission.ADMIN): False,
        (Role.ADMIN, Permission.READ): True,
        (Role.ADMIN, Permission.ACT): True,
        (Role.ADMIN, Permission.ADMIN): True,
    }


# ---------------------------------------------------------------------- sessions and CSRF
def test_sessions_are_random_expire_server_side_and_are_bounded() -> None:
    clock = Clock()
    store = SessionStore(ttl_s=600, clock_s=clock, max_sessions=3)
    user = User("dolma", Role.OPERATOR, HASH)
    a, b = store.create(user), store.create(user)
    assert a.token != b.token and a.csrf != b.csrf and a.token != a.csrf
    assert len(a.token) >= 43 and len(a.csrf) >= 43  # 32 random bytes each
    assert store.get(a.token) is a and store.get("forged") is None and store.get(None) is None
    clock.t_s += 599
    assert store.get(a.token) is a
    clock.t_s += 1  # the expiry is the server's, whatever the cookie's Max-Age says
    assert store.get(a.token) is None and store.get(b.token) is None
    s1, s2, s3 = (store.create(user) for _ in range(3))
    s4 = store.create(user)  # the fourth pushes the oldest out
    assert store.get(s1.token) is None and store.get(s4.token) is s4 and len(store) == 3
    store.delete(s4.token)
    assert store.get(s4.token) is None
    assert csrf_ok(s2, s2.csrf)
    assert not csrf_ok(s2, s3.csrf) and not csrf_ok(s2, "") and not csrf_ok(s2, None)


def test_login_limiter_per_address_and_user() -> None:
    clock = Clock()
    limiter = LoginLimiter(max_failures=3, window_s=60, clock_s=clock, max_keys=4)
    keys = ("addr:192.0.2.7", "user:dolma")
    for _ in range(3):
        assert limiter.retry_after_s(keys) == 0
        limiter.failed(keys)
        clock.t_s += 10
    assert limiter.retry_after_s(keys) == pytest.approx(30)  # first failure + 60 s
    assert limiter.retry_after_s(["user:dolma"]) > 0  # another address, same user: limited
    assert limiter.retry_after_s(["addr:192.0.2.8", "user:tenzin"]) == 0
    clock.t_s += 30
    assert limiter.retry_after_s(keys) == 0  # the window slid past the first failure
    limiter.failed(keys)
    limiter.succeeded(["user:dolma"])
    assert limiter.retry_after_s(["user:dolma"]) == 0
    for n in range(10):  # bookkeeping stays bounded whatever names an attacker tries
        limiter.failed([f"user:guess-{n}"])
    assert len(limiter._failures) == 4


def test_authenticator_login_tokens_and_lockout(tmp_path: Path) -> None:
    clock = Clock()
    users = load_users(users_file(tmp_path / "users.toml"))
    auth = Authenticator(users, session_ttl_s=3600, clock_s=clock, max_failures=3, window_s=300)
    session = auth.login("dolma", PASSWORD, "192.0.2.7")
    who = auth.from_session(session.token)
    assert who is not None and (who.user, who.role, who.session) == (
        "dolma",
        Role.OPERATOR,
        session,
    )
    assert auth.from_session("nope") is None
    with pytest.raises(AuthError) as err:
        auth.login("dolma", "wrong", "192.0.2.7")
    assert err.value.status == 401 and "wrong user name or password" in str(err.value)
    with pytest.raises(AuthError) as err:
        auth.login("nobody", PASSWORD, "192.0.2.7")
    assert err.value.status == 401 and "wrong user name or password" in str(err.value)
    with pytest.raises(AuthError):
        auth.login("tenzin", "wrong", "192.0.2.7")
    # Three failures from this address: even the right password waits now.
    with pytest.raises(AuthError) as err:
        auth.login("dolma", PASSWORD, "192.0.2.7")
    assert err.value.status == 429 and err.value.retry_after_s == pytest.approx(300)
    assert auth.login("dolma", PASSWORD, "192.0.2.8").user == "dolma"  # another address
    clock.t_s += 300
    assert auth.login("dolma", PASSWORD, "192.0.2.7").user == "dolma"
    # API tokens: only the hash is stored; an unknown token counts as a failed login.
    bearer = auth.from_bearer("tok-dolma", "192.0.2.9")
    assert (bearer.user, bearer.role, bearer.session) == ("dolma", Role.OPERATOR, None)
    for _ in range(3):
        with pytest.raises(AuthError) as err:
            auth.from_bearer("guess", "192.0.2.9")
        assert err.value.status == 401
    with pytest.raises(AuthError) as err:
        auth.from_bearer("tok-dolma", "192.0.2.9")
    assert err.value.status == 429
    clock.t_s += 3600
    assert auth.from_session(session.token) is None  # expired


# ---------------------------------------------------------------------- browser checks
ALLOWED = default_allowed_hosts("127.0.0.1")


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1:8470", True),
        ("127.0.0.1", True),
        ("localhost:8470", True),
        ("LOCALHOST:8470", True),
        ("[::1]:8470", True),
        ("evil.example:8470", False),  # DNS rebinding: the attacker's name, our address
        ("127.0.0.1.evil.example", False),
        ("127.0.0.1:x", False),
        ("[::1]x", False),
        ("", False),
        (None, False),
    ],
)
def test_host_header_must_name_this_server(host: str | None, ok: bool) -> None:
    assert host_allowed(host, ALLOWED) is ok


def test_default_allowed_hosts_and_loopback() -> None:
    assert default_allowed_hosts("127.0.0.1") == ("localhost", "127.0.0.1", "::1")
    assert default_allowed_hosts("192.0.2.10") == ("192.0.2.10", "localhost", "127.0.0.1", "::1")
    assert default_allowed_hosts("0.0.0.0") == ("localhost", "127.0.0.1", "::1")
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.0.2.10", "gw.example"))


HOST = "127.0.0.1:8470"
SAME = {"origin": f"http://{HOST}", "sec-fetch-site": "same-origin"}


@pytest.mark.parametrize(
    ("method", "path", "headers", "refused"),
    [
        ("POST", "/api/alarms/s/d/r/ack", SAME, None),
        ("POST", "/api/login", {"origin": f"http://{HOST}"}, None),  # older browser
        ("GET", "/api/status", {}, None),  # curl, scripts: no browser headers
        ("GET", "/", {"sec-fetch-site": "none", "sec-fetch-mode": "navigate"}, None),
        ("GET", "/", {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}, None),
        ("POST", "/api/alarms/s/d/r/ack", {"origin": "http://evil.example"}, "Origin"),
        ("POST", "/api/alarms/s/d/r/ack", {"origin": "http://127.0.0.1:9999"}, "Origin"),
        ("POST", "/api/alarms/s/d/r/ack", {"origin": "null"}, "Origin"),
        ("POST", "/api/alarms/s/d/r/ack", {"origin": f"http://{HOST}/x"}, "Origin"),
        ("POST", "/api/alarms/s/d/r/ack", {"sec-fetch-site": "cross-site"}, "Sec-Fetch-Site"),
        ("POST", "/api/alarms/s/d/r/ack", {"sec-fetch-site": "same-site"}, "Sec-Fetch-Site"),
        ("GET", "/api/status", {"sec-fetch-site": "cross-site"}, "Sec-Fetch-Site"),
        # A cross-site form POST is a navigation too, but never to be let through.
        ("POST", "/", {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"},
         "Sec-Fetch-Site"),
        ("GET", "/api/status", {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"},
         "Sec-Fetch-Site"),
        ("GET", "/", {"sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors",
                      "sec-fetch-dest": "script"}, "Sec-Fetch-Site"),
    ],
)  # fmt: skip
def test_cross_origin_requests_are_refused(
    method: str, path: str, headers: dict[str, str], refused: str | None
) -> None:
    problem = cross_origin_problem(method, path, headers, HOST)
    if refused is None:
        assert problem is None
    else:
        assert problem is not None and refused in problem


@pytest.mark.parametrize(
    ("ctype", "ok"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("text/plain", False),  # what a cross-site form can send without a preflight
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("application/jsonp", False),
        ("", False),
        (None, False),
    ],
)
def test_state_changes_must_be_json(ctype: str | None, ok: bool) -> None:
    assert is_json(ctype) is ok


def test_parse_cookies() -> None:
    assert parse_cookies('a=1; o2chain_session=abc; b="q"; a=2') == {
        "a": "1",
        "o2chain_session": "abc",
        "b": "q",
    }
    assert parse_cookies(None) == {} and parse_cookies("junk") == {}


def test_refusal_log_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("test.refusals"), interval_s=10, clock_s=clock)
    with caplog.at_level("WARNING", logger="test.refusals"):
        for n in range(50):  # a burst of 50 refusals of one kind
            limited.warning("403", "refused %d", n)
            clock.t_s += 0.1
        clock.t_s += 10
        limited.warning("403", "refused %d", 99)
        limited.warning("401", "other kind")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused 0",
        "refused 99 (49 similar held back in the last 10 s)",
        "other kind",
    ]


def test_token_command_prints_a_token_and_its_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token"]) == 0
    out = capsys.readouterr().out
    token = out.split("Bearer ")[1].split(")")[0]
    assert f'token_hash = "{hash_token(token)}"' in out and len(token) >= 43


# ---------------------------------------------------------------------- config
def test_listening_beyond_loopback_needs_a_users_file(tmp_path: Path) -> None:
    for listen in ("0.0.0.0:8470", "192.0.2.10:8470", "[::]:8470", "gw.example:8470"):
        with pytest.raises(ConfigError) as err:
            parse_config({"gateway": {"http_listen": listen}})
        assert "gateway.http_listen" in str(err.value) and "http.users_file" in str(err.value)
    for listen in ("127.0.0.1:8470", "127.0.0.2:0", "[::1]:8470", "localhost:8470"):
        assert parse_config({"gateway": {"http_listen": listen}}).http.users_file is None
    path = users_file(tmp_path / "users.toml")
    cfg = parse_config(
        {"gateway": {"http_listen": "192.0.2.10:8470"}, "http": {"users_file": str(path)}}
    )
    assert cfg.http.users_file == path
    # Every address: the names operators use must be listed (Host check).
    with pytest.raises(ConfigError, match=r"http\.allowed_hosts"):
        parse_config(
            {"gateway": {"http_listen": "0.0.0.0:8470"}, "http": {"users_file": str(path)}}
        )
    cfg = parse_config({
        "gateway": {"http_listen": "0.0.0.0:8470"},
        "http": {"users_file": str(path), "allowed_hosts": ["GW.example", "[2001:db8::1]"]},
    })  # fmt: skip
    assert cfg.http.allowed_hosts == ["gw.example", "2001:db8::1"]
    with pytest.raises(
        ConfigError, match=r"http\.allowed_hosts\[0\]: Value error|expected a host name"
    ):
        parse_config({"http": {"allowed_hosts": ["http://gw.example:8470"]}})
    with pytest.raises(ConfigError, match=r"gateway\.http_listen: expected HOST:PORT"):
        parse_config({"gateway": {"http_listen": "8470"}})


def test_config_refuses_an_open_users_file_in_one_line(tmp_path: Path) -> None:
    path = users_file(tmp_path / "users.toml", mode=0o644)
    with pytest.raises(ConfigError) as err:
        parse_config({"http": {"users_file": str(path)}})
    (line,) = str(err.value).splitlines()
    assert "invalid configuration: http.users_file:" in line and "chmod 600" in line


def test_gateway_check_reports_the_exposed_listen_address(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('[gateway]\nhttp_listen = "0.0.0.0:8470"\n')
    run = subprocess.run(
        o2chain_argv("gateway", "check", "-c", str(cfg)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "gateway.http_listen" in run.stderr and "http.users_file" in run.stderr
