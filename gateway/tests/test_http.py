"""Status server over real HTTP (stdlib asyncio) with fakes for the delivery side: routes,
shapes, login, CSRF, Origin/Host checks, alarm actions under the authenticated user, limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway import http as gateway_http
from gateway.alarms import AlarmEngine, AlarmError
from gateway.auth import hash_token
from gateway.config import parse_config
from gateway.enrich import Enricher
from gateway.http import HttpPolicy, StatusServer, parse_listen
from gateway.links import LINK, LinkReport, LinkTracker
from gateway.modbus import DeviceHealth, DevicePoller
from gateway.mqtt_ingest import IngestStats
from gateway.observe import Observer
from gateway.outbox import OutboxStats
from gateway.passwords import hash_password
from gateway.pipeline import Pipeline
from gateway.readings import Reading
from gateway.sources import Sources
from gateway.state_store import StateStore
from gateway.tests.fakes import T0, Clock
from gateway.writer import WriterStats
from o2base.registers import load_profile


@dataclass
class FakeOutbox:
    waiting: int = 0
    age_s: float = 0.0
    queued_bytes: int = 0
    stats: OutboxStats = field(default_factory=OutboxStats)

    def depth(self) -> int:
        return self.waiting

    def oldest_age_s(self) -> float:
        return self.age_s

    def dead_letter_counts(self) -> dict[str, int]:
        return {"not_json": 2}


@dataclass
class FakeIngest:
    stats: IngestStats


@dataclass
class FakeDrainer:
    stats: WriterStats


CONFIG = {
    "gateway": {"id": "gw-t", "metrics_interval_s": 60},
    "site": [{"id": "lhasa", "altitude_m": 3650, "name": "Lhasa hotel"}],
    "device": [
        {"id": "room-1", "site": "lhasa", "kind": "room", "transport": "mqtt", "room": "101"},
        {"id": "conc-1", "site": "lhasa", "kind": "concentrator", "transport": "modbus",
         "url": "tcp://127.0.0.1:1502", "profile": "medical-concentrator", "interval_s": 5},
    ],
    "alarm_engine": {"builtin": False},
    "alarm": [{"id": "o2-high", "field": "o2_pct", "op": ">", "value": 27.0,
               "severity": "alarm"}],
}  # fmt: skip


@dataclass
class Rig:
    clock: Clock
    outbox: FakeOutbox
    mqtt: Any
    poller: DevicePoller
    engine: AlarmEngine
    observer: Observer
    pipeline: Pipeline
    ticks: list[int]
    committed: list[Reading] = field(default_factory=list)  # what the ticks sent to the outbox

    def tick(self) -> None:
        """What the gateway's tick does: the action's event through the pipeline, committed."""
        self.ticks.append(1)
        self.committed += self.pipeline.process([])

    def poller_says(self, health: DeviceHealth) -> None:
        """The poller's health is now ``health``: its device_health point (and the link report
        it carries) through the pipeline."""
        self.poller.health = health
        point = self.poller.health_reading(force=True)
        assert point is not None
        self.pipeline.process([point])


def rig(tmp_path: Path) -> Rig:
    config = parse_config(CONFIG)
    clock = Clock()
    outbox = FakeOutbox()
    mqtt = FakeIngest(
        IngestStats(connected=True, messages=5, rejects={"bad_type": 1}, duplicates=3)
    )
    drainer = FakeDrainer(WriterStats(written=40, last_latency_s=0.012))
    device = config.device[1]
    poller = DevicePoller(
        device,
        load_profile(device.profile or ""),
        lambda d: None,  # type: ignore[arg-type,return-value]  # never polls
        lambda r: None,
        wall_clock_ms=clock,
        clock=lambda: clock() / 1000,
    )
    sources = Sources(outbox=outbox, drainer=drainer, mqtt=mqtt, pollers=[poller])
    links = LinkTracker(config, clock)
    store = StateStore(tmp_path / "alarms.sqlite")
    engine = AlarmEngine(config, store, clock_ms=clock, link_state=links.state)
    enricher = Enricher(config, store, clock_ms=clock)
    observer = Observer(config, sources, engine, enricher, links.state, clock_ms=clock)
    pipeline = Pipeline([links, enricher, engine, engine.committed_locally, observer])
    # room-1's retained status, as the MQTT status path hands it to the pipeline
    online = {LINK: LinkReport(True, connection=1)}
    board = {"site": "lhasa", "device": "room-1"}
    pipeline.process([Reading("device_health", board, {"online": True}, clock(), online)])
    return Rig(clock, outbox, mqtt, poller, engine, observer, pipeline, [])


@contextlib.asynccontextmanager
async def serving(r: Rig, **kwargs: Any) -> AsyncIterator[StatusServer]:
    """The rig's status server on a free loopback port (``server.url``), stopped afterwards."""
    server = StatusServer("127.0.0.1:0", r.observer, r.engine, **kwargs)
    await server.start(required=True)
    try:
        yield server
    finally:
        await server.stop()


PASSWORD = "yak butter tea"
PASSWORD_HASH = hash_password(PASSWORD)  # once: scrypt costs tens of ms
TOKEN = "tool-token-for-tests"
ALARM = "/api/alarms/lhasa/room-1/o2-high"


def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.toml"
    path.write_text(
        f'[[user]]\nname = "dolma"\nrole = "operator"\npassword_hash = "{PASSWORD_HASH}"\n'
        f'[[user]]\nname = "tenzin"\nrole = "viewer"\npassword_hash = "{PASSWORD_HASH}"\n'
        f'[[user]]\nname = "script"\nrole = "operator"\npassword_hash = "{PASSWORD_HASH}"\n'
        f'token_hash = "{hash_token(TOKEN)}"\n'
    )
    path.chmod(0o600)
    return path


def policy(tmp_path: Path, clock_s: Callable[[], float] | None = None, **http: Any) -> HttpPolicy:
    config = parse_config({**CONFIG, "http": {"users_file": str(users_file(tmp_path)), **http}})
    return HttpPolicy.from_config(config.http, "127.0.0.1:0", config.alarm_engine, clock_s)


@contextlib.asynccontextmanager
async def guarded(r: Rig, tmp_path: Path) -> AsyncIterator[str]:
    """The rig's status server under :func:`policy` (users, API token, limits): its url."""
    async with serving(r, policy=policy(tmp_path)) as server:
        yield server.url


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        return str(self.json()["error"])


async def request(
    url: str,
    path: str,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Answer:
    """One HTTP/1.1 exchange over a plain socket (every header under the test's control).
    A JSON ``body`` is sent as application/json; ``raw`` is sent as it is."""
    authority = url.removeprefix("http://")
    host, port = authority.rsplit(":", 1)
    sent = {"Host": authority, **(headers or {})}
    data = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
    if body is not None and raw is None:
        sent.setdefault("Content-Type", "application/json")
    if method != "GET" or data:
        sent["Content-Length"] = str(len(data))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent.items())
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.encode() + b"\r\n" + data)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    top, _, payload = answer.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    parsed: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return Answer(int(lines[0].split()[1]), parsed, payload)


@dataclass
class Login:
    cookie: str  # the Cookie header to send
    csrf: str
    set_cookie: str

    def headers(self, csrf: bool = True) -> dict[str, str]:
        return {"Cookie": self.cookie, **({"X-CSRF-Token": self.csrf} if csrf else {})}


async def login(url: str, name: str, password: str = PASSWORD, **headers: str) -> Login:
    sent = {k.replace("_", "-"): v for k, v in headers.items()}
    answer = await request(url, "/api/login", "POST", {"name": name, "password": password}, sent)
    assert answer.status == 200, answer.body
    set_cookie = answer.headers["set-cookie"]
    return Login(set_cookie.split(";", 1)[0], answer.json()["csrf"], set_cookie)


def raise_o2_high(r: Rig) -> None:
    tags = {"site": "lhasa", "device": "room-1", "room": "101"}
    r.pipeline.process([Reading("room", tags, {"o2_pct": 28.0, "baro_kpa": 65.0}, r.clock())])


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8470") == ("::1", 8470)
    for bad in ("8470", "host:", "host:99999", ":80"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)


def test_routes_status_metrics_and_alarm_actions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig(tmp_path)
    raise_o2_high(r)
    r.poller_says(DeviceHealth(polls=3, ok=3, online=True, last_ok_monotonic=T0 / 1000))
    modbus_tags = {"site": "lhasa", "device": "conc-1", "source": "modbus"}
    r.pipeline.process([Reading("concentrator", modbus_tags, {"purity_pct": 93.0}, T0)])
    r.clock.t_ms += 2000

    async def scenario() -> None:
        server = StatusServer(
            "127.0.0.1:0",
            r.observer,
            r.engine,
            after_action=r.tick,
            policy=policy(tmp_path),
        )
        with caplog.at_level("INFO", logger="gateway.http"):
            url = await server.start()
        assert f"HTTP listening on {url} (reading: anonymous; 3 users can log in" in caplog.text
        try:
            answer = await request(url, "/healthz")
            assert answer.status == 200 and answer.headers["content-type"] == "application/json"
            assert answer.json()["status"] == "ok"

            # Reading on loopback needs no login (the demo's page stays visible).
            r.mqtt.stats.unknown_devices["lhasa/ghost-1"] = ("online", T0)
            answer = await request(url, "/api/status")
            doc = answer.json()
            # A board the config does not know is listed, so someone can add it.
            assert doc["unknown_devices"] == [
                {"key": "lhasa/ghost-1", "state": "online", "seen_ms": T0}
            ]
            assert answer.status == 200 and doc["gateway"]["id"] == "gw-t"
            (site,) = doc["sites"]
            assert site["id"] == "lhasa" and site["limits"]["o2_high_alarm_pct"] == 27.89
            room, conc = site["devices"]
            assert room["id"] == "room-1" and room["room"] == "101" and room["link"] == "online"
            assert room["values"]["o2_pct"] == {"value": 28.0, "ts_ms": T0, "age_s": 2.0}
            assert room["values"]["eq_alt_m"]["value"] < 1500  # enriched before it is shown
            assert room["alarms"][0]["rule"] == "o2-high"
            assert conc["link"] == "online" and conc["values"]["purity_pct"]["value"] == 93.0
            assert [a["key"] for a in doc["alarms"]] == ["lhasa/room-1/o2-high"]

            answer = await request(url, "/metrics")
            text = answer.body.decode()
            assert answer.status == 200
            assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert 'o2chain_readings_total{source="mqtt"} 1' in text
            assert 'o2chain_readings_total{source="modbus"} 1' in text
            assert 'o2chain_rejects_total{reason="bad_type"} 1' in text
            assert "o2chain_duplicates_total 3" in text
            assert 'o2chain_alarms_active{severity="alarm"} 1' in text
            assert 'o2chain_device_online{site="lhasa",device="room-1",transport="mqtt"} 1' in text
            assert 'o2chain_deadletters{reason="not_json"} 2' in text
            assert "o2chain_influx_write_latency_seconds 0.012" in text

            # Actions: as the logged-in operator, whatever anybody would like to be called.
            dolma = await login(url, "dolma")
            answer = await request(url, ALARM + "/ack", "POST", {}, dolma.headers())
            assert answer.status == 200, answer.body
            acked = answer.json()["alarm"]
            assert acked["state"] == "acknowledged" and acked["acked_by"] == "dolma"
            assert r.ticks == [1]  # the ack event is flushed to the outbox at once
            answer = await request(url, ALARM + "/ack", "POST", {}, dolma.headers())
            assert answer.status == 409 and "already acknowledged" in answer.error
            answer = await request(
                url, ALARM + "/shelve", "POST", {"duration_s": "long", "reason": "x"},
                dolma.headers(),
            )  # fmt: skip
            assert answer.status == 400 and "duration_s" in answer.error
            answer = await request(
                url, ALARM + "/shelve", "POST", {"duration_s": 3600, "reason": "sensor swap"},
                dolma.headers(),
            )  # fmt: skip
            assert answer.status == 200 and answer.json()["alarm"]["shelved"] is True
            assert answer.json()["alarm"]["shelved_by"] == "dolma"
            answer = await request(url, "/api/alarms")
            assert [a["key"] for a in answer.json()["shelved"]] == ["lhasa/room-1/o2-high"]
            answer = await request(url, ALARM + "/unshelve", "POST", {}, dolma.headers())
            assert answer.status == 200 and answer.json()["alarm"]["shelved"] is False

            # Who and when: the alarm log and the `alarm` points for InfluxDB carry the user.
            answer = await request(url, "/api/alarms/log?limit=3")
            events = answer.json()["events"]
            assert [(e["event"], e["by"]) for e in events] == [
                ("unshelve", "dolma"), ("shelve", "dolma"), ("ack", "dolma"),
            ]  # fmt: skip
            assert all(isinstance(e["ts"], int) for e in events)
            points = [p for p in r.committed if p.measurement == "alarm" and "by" in p.fields]
            assert [(p.fields["state"], p.fields["by"]) for p in points] == [
                ("ack", "dolma"), ("shelve", "dolma"), ("unshelve", "dolma"),
            ]  # fmt: skip
            assert all(p.ts_ms == r.clock() for p in points)
            assert points[1].fields["reason"] == "sensor swap"  # why it was hidden, on record

            assert (await request(url, "/api/alarms/log?limit=x")).status == 400
            answer = await request(url, "/api/rules")
            assert [x["id"] for x in answer.json()["rules"]] == ["o2-high"]
            # Errors: unknown alarm, route, method.
            answer = await request(url, "/api/alarms/lhasa/room-9/o2-high/ack", "POST", {},
                                   dolma.headers())  # fmt: skip
            assert answer.status == 404
            assert (await request(url, "/nope")).status == 404
            assert (await request(url, "/api/status", "POST", {})).status == 405
            assert (await request(url, ALARM + "/ack")).status == 405
            answer = await request(url, ALARM + "/frobnicate", "POST", {}, dolma.headers())
            assert answer.status == 404
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_actions_need_an_operator_with_the_session_csrf_token_or_an_api_token(
    tmp_path: Path,
) -> None:
    r = rig(tmp_path)
    raise_o2_high(r)

    async def scenario() -> None:
        async with guarded(r, tmp_path) as url:
            ack = ALARM + "/ack"
            # Nobody logged in: the old server acknowledged this "as nobody".
            answer = await request(url, ack, "POST", {})
            assert answer.status == 401 and "log in" in answer.error
            answer = await request(url, ack, "POST", raw=b"")  # empty body, no type
            assert answer.status == 401
            tenzin = await login(url, "tenzin")  # a viewer reads, does not act
            answer = await request(url, ack, "POST", {}, tenzin.headers())
            assert answer.status == 403 and "tenzin (viewer) may not act" in answer.error
            dolma = await login(url, "dolma")
            answer = await request(url, ack, "POST", {}, dolma.headers(csrf=False))
            assert answer.status == 403 and "x-csrf-token" in answer.error
            answer = await request(
                url, ack, "POST", {}, {**dolma.headers(), "X-CSRF-Token": tenzin.csrf}
            )
            assert answer.status == 403  # another session's token does not do
            # Forms can only send these types; JSON is required.
            for ctype, raw in (
                ("text/plain", b'{"x": "="}'),
                ("application/x-www-form-urlencoded", b"by=mallory"),
                ("multipart/form-data; boundary=b", b"--b--"),
            ):
                answer = await request(
                    url, ack, "POST", headers={**dolma.headers(), "Content-Type": ctype}, raw=raw
                )
                assert answer.status == 415 and "application/json" in answer.error, ctype
            answer = await request(url, ack, "POST", {"by": "mallory"}, dolma.headers())
            assert answer.status == 400 and "logged-in user" in answer.error
            answer = await request(url, ack, "POST", raw=b"[]", headers={
                **dolma.headers(), "Content-Type": "application/json"})  # fmt: skip
            assert answer.status == 400 and "JSON object" in answer.error
            assert r.engine.active()[0]["acked"] is False  # nothing above got through

            # A tool with an API token: no cookie, no CSRF token needed (a browser never
            # attaches an Authorization header by itself).
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            answer = await request(url, ack, "POST", {}, bearer)
            assert answer.status == 200 and answer.json()["alarm"]["acked_by"] == "script"
            answer = await request(url, ack, "POST", {}, {"Authorization": "Bearer wrong"})
            assert answer.status == 401 and "unknown API token" in answer.error
            answer = await request(url, ack, "POST", {}, {"Authorization": "Basic eDp5"})
            assert answer.status == 401 and "Bearer" in answer.error

            # Logging out ends the session on the server, whatever the browser keeps.
            answer = await request(url, "/api/logout", "POST", {}, dolma.headers())
            assert answer.status == 200 and "Max-Age=0" in answer.headers["set-cookie"]
            answer = await request(url, "/api/session", headers=dolma.headers())
            assert answer.json()["user"] is None
            answer = await request(url, ALARM + "/unshelve", "POST", {}, dolma.headers())
            assert answer.status == 401

    asyncio.run(scenario())


def test_foreign_origins_hosts_and_preflights_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig(tmp_path)
    raise_o2_high(r)

    async def scenario() -> None:
        async with serving(r, policy=policy(tmp_path)) as server:
            url = server.url
            authority = url.removeprefix("http://")
            dolma = await login(url, "dolma")
            ack = ALARM + "/ack"
            # Even with a valid session and CSRF token: another origin's request is refused.
            for extra in (
                {"Origin": "http://evil.example"},
                {"Origin": f"http://127.0.0.1:{int(authority.rsplit(':')[1]) + 1}"},
                {"Origin": "null"},
                {"Sec-Fetch-Site": "cross-site"},
                {"Sec-Fetch-Site": "same-site"},
            ):
                answer = await request(url, ack, "POST", {}, {**dolma.headers(), **extra})
                assert answer.status == 403, extra
            answer = await request(url, "/api/status", headers={"Sec-Fetch-Site": "cross-site"})
            assert answer.status == 403
            # The page's own origin is fine.
            same = {"Origin": url, "Sec-Fetch-Site": "same-origin"}
            answer = await request(url, "/api/session", headers={**dolma.headers(), **same})
            assert answer.status == 200 and answer.json()["user"] == "dolma"
            # DNS rebinding: evil.example resolves to 127.0.0.1, the Host header gives it away.
            port = authority.rsplit(":", 1)[1]
            answer = await request(url, "/api/status", headers={"Host": f"evil.example:{port}"})
            assert answer.status == 403 and "allowed_hosts" in answer.error
            answer = await request(url, "/api/status", headers={"Host": f"localhost:{port}"})
            assert answer.status == 200
            # A CORS preflight is never approved.
            preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
            answer = await request(url, ack, "OPTIONS", headers=preflight)
            assert answer.status == 403
            assert not any(h.startswith("access-control-") for h in answer.headers)
            answer = await request(url, ack, "OPTIONS")
            assert answer.status == 405
            assert r.engine.active()[0]["acked"] is False
            assert server.refused[403] >= 8

    with caplog.at_level("WARNING", logger="gateway.http"):
        asyncio.run(scenario())
    refusals = [m for m in caplog.messages if m.startswith("HTTP 403 refused")]
    # Rate-limited: the burst of 403s above is one line (more in the next interval).
    assert refusals[0].startswith("HTTP 403 refused POST /api/alarms/lhasa/room-1/o2-high/ack")
    assert "Origin 'http://evil.example'" in refusals[0]
    assert len(refusals) == 1


def test_security_headers_on_every_answer(tmp_path: Path) -> None:
    r = rig(tmp_path)

    async def scenario() -> None:
        async with guarded(r, tmp_path) as url:
            for path, method, status in (
                ("/", "GET", 200), ("/static/app.js", "GET", 200), ("/api/status", "GET", 200),
                ("/nope", "GET", 404), (ALARM + "/ack", "POST", 401),
            ):  # fmt: skip
                answer = await request(url, path, method, {} if method == "POST" else None)
                assert answer.status == status, path
                h = answer.headers
                csp = h["content-security-policy"]
                assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp, path
                assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
                assert h["x-frame-options"] == "DENY"
                assert h["x-content-type-options"] == "nosniff"
                assert h["referrer-policy"] == "no-referrer"
                assert h["cache-control"] == "no-store"
                assert "access-control-allow-origin" not in h

    asyncio.run(scenario())


def test_login_cookie_session_document_and_failed_login_limit(tmp_path: Path) -> None:
    r = rig(tmp_path)

    async def scenario() -> None:
        # A clock where (now + 43200) - now is 43199.99999999999: the cookie said Max-Age=43199.
        clock_s = lambda: 22336.002004108428  # noqa: E731
        async with serving(r, policy=policy(tmp_path, clock_s, login_max_failures=3)) as server:
            url = server.url
            answer = await request(url, "/api/session")
            assert answer.json() == {
                "user": None, "role": None, "csrf": None, "login": True, "can_read": True,
                "can_act": False,
                "shelve_max_s": {"critical": 3600.0, "alarm": 28800.0, "warning": 86400.0,
                                 "info": 86400.0},
            }  # fmt: skip
            dolma = await login(url, "dolma")
            flags = [f.strip() for f in dolma.set_cookie.split(";")]
            assert flags[0].startswith("o2chain_session=") and len(flags[0]) > 50
            assert {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"} <= set(flags)
            assert "Secure" not in flags  # plain HTTP: the browser would drop a Secure cookie
            answer = await request(url, "/api/session", headers=dolma.headers(csrf=False))
            doc = answer.json()
            assert (doc["user"], doc["role"], doc["csrf"], doc["can_act"]) == (
                "dolma", "operator", dolma.csrf, True,
            )  # fmt: skip
            # Behind a TLS proxy: Secure, and the __Host- prefix that pins it to this host.
            tls = await login(url, "dolma", X_Forwarded_Proto="https")
            assert tls.set_cookie.startswith("__Host-o2chain_session=")
            assert "; Secure" in tls.set_cookie
            answer = await request(url, "/api/session", headers=tls.headers())
            assert answer.json()["user"] == "dolma"
            # Failed logins: the limit holds even for the right password, with Retry-After.
            for _ in range(3):
                answer = await request(
                    url, "/api/login", "POST", {"name": "dolma", "password": "x"}
                )
                assert answer.status == 401 and "set-cookie" not in answer.headers
            answer = await request(
                url, "/api/login", "POST", {"name": "dolma", "password": PASSWORD}
            )
            assert answer.status == 429 and int(answer.headers["retry-after"]) == 300
            answer = await request(url, "/api/login", "POST", {"name": "dolma"})
            assert answer.status == 400
            answer = await request(url, "/api/login", "POST",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"},
                                   raw=b"name=dolma&password=x")  # fmt: skip
            assert answer.status == 415

    asyncio.run(scenario())


def test_reading_needs_a_viewer_unless_anonymous_reading_is_allowed(tmp_path: Path) -> None:
    r = rig(tmp_path)

    async def scenario() -> None:
        # As when listening beyond loopback (the test itself stays on 127.0.0.1).
        async with serving(r, policy=policy(tmp_path, anonymous_read="never")) as server:
            url = server.url
            for path in ("/api/status", "/api/alarms", "/api/history", "/metrics",
                         "/api/events", "/api/alarms/log", "/api/rules"):  # fmt: skip
                answer = await request(url, path)
                assert answer.status == 401, path
            for path in ("/", "/static/app.js", "/healthz", "/api/session"):
                assert (await request(url, path)).status == 200, path
            assert (await request(url, "/api/session")).json()["can_read"] is False
            tenzin = await login(url, "tenzin")
            answer = await request(url, "/api/status", headers=tenzin.headers(csrf=False))
            assert answer.status == 200 and answer.json()["gateway"]["id"] == "gw-t"
            answer = await request(url, "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            assert answer.status == 200  # Prometheus with a bearer token
        # Anonymous reading on loopback, except what a reverse proxy forwards from elsewhere.
        async with guarded(r, tmp_path) as url:
            assert (await request(url, "/api/status")).status == 200
            answer = await request(url, "/api/status", headers={"X-Forwarded-For": "192.0.2.7"})
            assert answer.status == 401

    asyncio.run(scenario())


def test_shelving_needs_a_reason_an_active_alarm_and_stays_within_the_severity_cap(
    tmp_path: Path,
) -> None:
    r = rig(tmp_path)
    raise_o2_high(r)  # severity "alarm": 8 h at most

    async def scenario() -> None:
        async with guarded(r, tmp_path) as url:
            dolma = await login(url, "dolma")
            shelve = ALARM + "/shelve"

            async def try_shelve(body: dict[str, Any], path: str = shelve) -> Answer:
                return await request(url, path, "POST", body, dolma.headers())

            answer = await try_shelve({"duration_s": 3600})
            assert answer.status == 400 and "reason" in answer.error
            answer = await try_shelve({"duration_s": 3600, "reason": "   "})
            assert answer.status == 400 and "reason" in answer.error
            answer = await try_shelve({"duration_s": 3600, "reason": "x" * 201})
            assert answer.status == 400 and "at most 200" in answer.error
            answer = await try_shelve({"duration_s": 8 * 3600 + 1, "reason": "night"})
            assert answer.status == 400 and "alarm alarm may be shelved for at most 28800" in (
                answer.error
            )
            answer = await try_shelve({"duration_s": 3600, "reason": "x", "extra": 1})
            assert answer.status == 400 and "unknown key(s) ['extra']" in answer.error
            # conc-1's o2-high is not active: nothing to hide.
            answer = await try_shelve({"duration_s": 60, "reason": "x"},
                                      "/api/alarms/lhasa/conc-1/o2-high/shelve")  # fmt: skip
            assert answer.status == 409 and "not active" in answer.error
            answer = await request(url, "/api/alarms/lhasa/conc-1/o2-high/ack", "POST", {},
                                   dolma.headers())  # fmt: skip
            assert answer.status == 409 and "not active" in answer.error
            answer = await try_shelve({"duration_s": 8 * 3600, "reason": "sensor swap"})
            assert answer.status == 200
            assert answer.json()["alarm"]["shelved_until_ms"] == r.clock() + 8 * 3600 * 1000
            # A body larger than the limit, and a chunked body, are refused before parsing.
            answer = await try_shelve({"duration_s": 60, "reason": "x" * 20_000})
            assert answer.status == 413
            answer = await request(url, shelve, "POST", headers={
                **dolma.headers(), "Transfer-Encoding": "chunked",
                "Content-Type": "application/json"}, raw=b"0\r\n\r\n")  # fmt: skip
            assert answer.status == 411
            answer = await request(url, shelve, "POST", {}, {**dolma.headers(), "host": url[7:]})
            assert answer.status == 400 and "given twice" in answer.error

    asyncio.run(scenario())


def test_healthz_fails_on_a_stuck_outbox_or_pipeline(tmp_path: Path) -> None:
    r = rig(tmp_path)
    r.outbox.age_s = 301.0  # default limit 300 s
    health = r.observer.health()
    assert not health["ok"] and "outbox: oldest point waits 301 s" in health["reasons"][0]
    r.outbox.age_s = 0.0
    r.clock.t_ms += 11_000  # no pipeline pass (the tick runs every second)
    assert "pipeline: no pass for 11 s" in r.observer.health()["reasons"]
    r.pipeline.process([])
    assert r.observer.health()["ok"]
    r.mqtt.stats.connected = False
    assert r.observer.health() == {
        "ok": True,
        "reasons": [],
        "warnings": ["mqtt: not connected to the broker"],
    }


def test_gateway_self_metric_points_and_modbus_link(tmp_path: Path) -> None:
    r = rig(tmp_path)
    tags = {"site": "lhasa", "device": "room-1", "room": "101"}
    for _ in range(30):
        r.pipeline.process([Reading("room", tags, {"o2_pct": 25.0}, r.clock())])
        r.clock.t_ms += 2000
    points = [p for p in r.pipeline.process([]) if p.measurement == "gateway"]
    assert len(points) == 1
    (point,) = points
    assert point.tags == {"gw": "gw-t"}
    assert point.fields["rate_mqtt_per_s"] == pytest.approx(0.5)
    assert point.fields["readings_mqtt"] == 30 and point.fields["duplicates"] == 3
    assert point.fields["devices_online"] == 1  # room-1; conc-1 never polled: unknown
    # A Modbus device that stops answering: offline after two intervals, and alarmed.
    r.poller_says(DeviceHealth(polls=9, ok=8, online=False, last_ok_monotonic=r.clock() / 1000))
    r.clock.t_ms += 9000
    assert r.observer.link_state("lhasa", "conc-1") is True  # one lost poll is not offline
    r.clock.t_ms += 2000
    assert r.observer.link_state("lhasa", "conc-1") is False


def test_shelve_caps_come_from_config_per_severity(tmp_path: Path) -> None:
    engine_cfg: dict[str, Any] = {"builtin": False, "max_shelve_s": 3000}
    engine_cfg["shelve_max_s"] = {"alarm": 600, "critical": 300}
    data = {**CONFIG, "alarm_engine": engine_cfg}
    config = parse_config(data)
    clock = Clock()
    engine = AlarmEngine(config, StateStore(tmp_path / "alarms.sqlite"), clock_ms=clock)
    tags = {"site": "lhasa", "device": "room-1", "room": "101"}
    engine([Reading("room", tags, {"o2_pct": 28.0}, clock())])  # severity "alarm"
    with pytest.raises(AlarmError) as err:
        engine.shelve("lhasa", "room-1", "o2-high", 601, by="dolma", reason="swap")
    assert err.value.status == 400 and "at most 600 s" in str(err.value)
    with pytest.raises(AlarmError) as err:
        engine.shelve("lhasa", "room-1", "o2-high", 60, by="", reason="swap")
    assert err.value.status == 400 and "by" in str(err.value)
    assert engine.shelve("lhasa", "room-1", "o2-high", 600, by="dolma", reason="swap")["shelved"]
    caps = HttpPolicy.from_config(config.http, "127.0.0.1:0", config.alarm_engine).shelve_max_s
    assert caps == {"alarm": 600, "critical": 300}  # a severity left out: max_shelve_s
    defaults = HttpPolicy.from_config(config.http, "127.0.0.1:0").shelve_max_s
    assert defaults["critical"] == 3600 and defaults["warning"] == 86400


def test_anonymous_reading_only_when_listening_on_loopback(tmp_path: Path) -> None:
    users = str(users_file(tmp_path))
    cases = {
        ("127.0.0.1:8470", "loopback"): True,
        ("[::1]:8470", "loopback"): True,
        ("127.0.0.1:8470", "never"): False,
        ("192.0.2.10:8470", "loopback"): False,
        ("0.0.0.0:8470", "loopback"): False,
    }
    for (listen, mode), anonymous in cases.items():
        http = {"users_file": users, "anonymous_read": mode, "allowed_hosts": ["gw.example"]}
        config = parse_config({**CONFIG, "gateway": {"http_listen": listen}, "http": http})
        policy = HttpPolicy.from_config(config.http, listen)
        assert policy.anonymous_read is anonymous, (listen, mode)
        assert policy.auth is not None and set(policy.auth.users) == {"dolma", "tenzin", "script"}
        assert {"gw.example", "localhost", "127.0.0.1", "::1"} <= set(policy.allowed_hosts)


def test_requests_in_progress_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = rig(tmp_path)
    monkeypatch.setattr(gateway_http, "MAX_PENDING_REQUESTS", 1)

    async def scenario() -> None:
        async with serving(r) as server:
            url = server.url
            host, port = url.removeprefix("http://").split(":")
            # A client that connects and sends nothing yet holds the only slot (connections
            # are accepted, and their handlers started, in order) ...
            slow_reader, slow = await asyncio.open_connection(host, int(port))
            answer = await request(url, "/api/status")
            assert answer.status == 503 and answer.error == "server busy"
            # ... until its request is answered (the slot is free before the connection closes).
            slow.write(f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            assert (await slow_reader.read()).startswith(b"HTTP/1.1 200 OK")
            slow.close()
            assert (await request(url, "/api/status")).status == 200

    asyncio.run(scenario())
