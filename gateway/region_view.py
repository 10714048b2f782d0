"""The region view: every facility of a region on one page, served by ``o2chain region serve``.

It reads only the central tier: the central broker (through the ``region-viewer`` account that
``o2chain region provision`` writes) for each facility's active alarms, its bridge link and its
boards' status, all retained there by the facilities' bridges; and the central InfluxDB for each
site's chain balance (the last ``chain`` point) and when its last reading arrived. It keeps no
state of its own: a restart rebuilds everything from the retained messages and the database.

Routes (loopback only, read-only, no login; standard library HTTP like gateway/http.py):

- ``GET /``: the page (gateway/static/region.html, region.js; the live page's stylesheet,
  and its language mechanism lang.js with its text catalogues ``/static/i18n/{lang}.json``, so
  the page is in English or Simplified Chinese as the live page is)
- ``GET /api/region``: ``{"facilities": [...], "broker": {...}, "database": {...}}``, worst
  first: per site its worst active (unshelved) alarm's severity, alarm counts, bridge link,
  boards online/offline, chain balance and the age of its newest reading
- ``GET /api/region/{site}``: one facility: its active alarms, boards offline, chain fields
- ``GET /healthz``: 200 while the broker connection is up and the database answered lately
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from gateway.auth import is_loopback, parse_listen
from gateway.config import ConfigError, redact_url
from gateway.mqtt_callbacks import on_connect
from o2base.tomlfile import read_toml

log = logging.getLogger(__name__)

SEVERITY_RANK = {"info": 1, "warning": 2, "alarm": 3, "critical": 4}
POLL_S = 10.0  # central InfluxDB: chain balance and newest reading per site
_SITE = re.compile(r"^[a-z0-9-]{1,32}$")
_STATIC = {
    "/": ("region.html", "text/html; charset=utf-8"),
    "/static/region.js": ("region.js", "text/javascript; charset=utf-8"),
    "/static/lang.js": ("lang.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
    "/static/region.css": ("region.css", "text/css; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
}


@dataclass(frozen=True)
class RegionViewConfig:
    """``viewer/region.toml`` of ``o2chain region provision`` (plus the listen address)."""

    mqtt_url: str
    username: str
    password: str
    ca_file: Path
    database_url: str
    database: str
    db_username: str | None = None
    db_password: str | None = None
    listen: str = "127.0.0.1:8480"

    @classmethod
    def load(cls, path: Path, listen: str = "127.0.0.1:8480") -> RegionViewConfig:
        doc = read_toml(path, ConfigError)
        try:
            password = Path(doc["password_file"]).read_text().strip()
            db_pw_file = doc.get("influx_password_file")
            db_password = Path(db_pw_file).read_text().strip() if db_pw_file else None
            cfg = cls(
                mqtt_url=str(doc["url"]),
                username=str(doc["username"]),
                password=password,
                ca_file=Path(doc["ca_file"]),
                database_url=str(doc["database_url"]).rstrip("/"),
                database=str(doc["database"]),
                db_username=doc.get("influx_username"),
                db_password=db_password,
                listen=listen,
            )
        except KeyError as e:
            raise ConfigError(
                f"{path}: missing key {e.args[0]!r} (see o2chain region provision)"
            ) from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read {e.filename}: {e.strerror}") from e
        if urlsplit(cfg.mqtt_url).scheme not in ("mqtt", "mqtts"):
            raise ConfigError(f"{path}: url: expected mqtts://host:port, got {cfg.mqtt_url!r}")
        try:
            host, _ = parse_listen(listen)
        except ValueError:
            raise ConfigError(f"--listen {listen!r}: expected HOST:PORT") from None
        if not is_loopback(host):
            raise ConfigError(
                f"--listen {listen!r}: the region view serves without login, so loopback only "
                "(127.0.0.1:PORT); put an authenticating proxy in front to share it"
            )
        return cfg


@dataclass
class _Site:
    alarms: dict[str, dict[str, Any]] = field(default_factory=dict)  # device/rule -> payload
    bridge: bool | None = None  # bridge/state: True up, False its will, None never heard
    boards: dict[str, str] = field(default_factory=dict)  # device -> online / offline
    chain: dict[str, Any] = field(default_factory=dict)
    chain_ms: int | None = None
    last_reading_ms: int | None = None


class RegionState:
    """What the region knows, from the central broker's messages and the database's answers.
    Thread-safe: paho's thread feeds it, the HTTP handlers read it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sites: dict[str, _Site] = {}
        self.broker_connected = False
        self.database_ok_ms: int | None = None
        self.database_error = ""

    def _site(self, site: str) -> _Site:
        return self._sites.setdefault(site, _Site())

    def on_message(self, topic: str, payload: bytes) -> None:
        """Apply one message of ``region/#`` (retained or live, in the broker's order)."""
        parts = topic.split("/")
        if len(parts) < 3 or parts[0] != "region" or not _SITE.match(parts[1]):
            return
        site = parts[1]
        with self._lock:
            if len(parts) == 7 and parts[2] == "gateway" and parts[4] == "alarm":
                key = f"{parts[5]}/{parts[6]}"
                doc = _json(payload)
                alarms = self._site(site).alarms
                if doc is not None and doc.get("active"):
                    alarms[key] = doc
                else:
                    alarms.pop(key, None)
            elif parts[2:] == ["bridge", "state"]:
                self._site(site).bridge = payload.strip() == b"1"
            elif len(parts) == 4 and parts[3] == "status" and parts[2] != "gateway":
                doc = _json(payload)
                if doc is not None and isinstance(doc.get("state"), str):
                    self._site(site).boards[parts[2]] = doc["state"]

    def set_chain(self, site: str, fields: dict[str, Any], at_ms: int | None) -> None:
        with self._lock:
            s = self._site(site)
            s.chain, s.chain_ms = fields, at_ms

    def set_last_reading(self, site: str, at_ms: int | None) -> None:
        with self._lock:
            self._site(site).last_reading_ms = at_ms

    @staticmethod
    def _summary(site: str, s: _Site, now_ms: int) -> dict[str, Any]:
        standing = [a for a in s.alarms.values() if not a.get("shelved")]
        worst = max((str(a.get("severity", "")) for a in standing), key=_rank, default=None)
        counts: dict[str, int] = {}
        for a in standing:
            sev = str(a.get("severity", ""))
            counts[sev] = counts.get(sev, 0) + 1
        return {
            "site": site,
            "worst": worst,
            "alarms": len(standing),
            "unacked": sum(1 for a in standing if not a.get("acked")),
            "shelved": len(s.alarms) - len(standing),
            "by_severity": counts,
            "bridge": s.bridge,
            "boards_online": sum(1 for v in s.boards.values() if v == "online"),
            "boards_offline": sum(1 for v in s.boards.values() if v != "online"),
            "balance_o2_lpm": s.chain.get("balance_o2_lpm"),
            "produced_o2_lpm": s.chain.get("produced_o2_lpm"),
            "delivered_o2_lpm": s.chain.get("delivered_o2_lpm"),
            "chain_age_s": None if s.chain_ms is None else round((now_ms - s.chain_ms) / 1000, 1),
            "last_reading_age_s": (
                None if s.last_reading_ms is None else round((now_ms - s.last_reading_ms) / 1000, 1)
            ),
        }

    def overview(self) -> dict[str, Any]:
        now = int(time.time() * 1000)
        with self._lock:
            rows = [self._summary(site, s, now) for site, s in self._sites.items()]
        rows.sort(key=lambda r: (-_rank(r["worst"]), -r["alarms"], r["site"]))
        return {
            "facilities": rows,
            "broker": {"connected": self.broker_connected},
            "database": {
                "ok_age_s": (
                    None
                    if self.database_ok_ms is None
                    else round((now - self.database_ok_ms) / 1000)
                ),
                "error": self.database_error,
            },
        }

    def facility(self, site: str) -> dict[str, Any] | None:
        now = int(time.time() * 1000)
        with self._lock:
            s = self._sites.get(site)
            if s is None:
                return None
            doc = self._summary(site, s, now)
            doc["active"] = sorted(
                (dict(a, key=k) for k, a in s.alarms.items()),
                key=lambda a: (-_rank(a.get("severity")), str(a.get("key"))),
            )
            doc["offline_boards"] = sorted(d for d, v in s.boards.items() if v != "online")
            doc["chain"] = dict(s.chain)
        return doc


def _rank(severity: object) -> int:
    return SEVERITY_RANK.get(str(severity), 0) if severity else 0


def _json(payload: bytes) -> dict[str, Any] | None:
    if not payload:
        return None
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class RegionView:
    """``await RegionView(cfg).run(stop)``: broker subscription, database polls, HTTP server."""

    def __init__(self, cfg: RegionViewConfig):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.cfg = cfg
        self.state = RegionState()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv311, clean_session=True
        )
        self.client.username_pw_set(cfg.username, cfg.password)
        u = urlsplit(cfg.mqtt_url)
        self._host, self._port = u.hostname or "127.0.0.1", u.port or 8885
        if u.scheme == "mqtts":
            self.client.tls_set(ca_certs=str(cfg.ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.on_connect = on_connect(
            log, "central broker refused the region view", self._on_connect
        )
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda c, u, m: self.state.on_message(m.topic, bytes(m.payload))
        self.client.reconnect_delay_set(1, 30)
        self._session = requests.Session()
        if cfg.db_username and cfg.db_password:
            self._session.auth = (cfg.db_username, cfg.db_password)
        self.port: int | None = None

    def _on_connect(self, client: Any, flags: Any) -> None:
        self.state.broker_connected = True
        client.subscribe("region/#", qos=1)
        log.info("region view subscribed to region/# at %s", redact_url(self.cfg.mqtt_url))

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.state.broker_connected = False

    # -- the central database ------------------------------------------------------------------

    def _query(self, q: str) -> list[dict[str, Any]]:
        r = self._session.get(
            f"{self.cfg.database_url}/query",
            params={"q": q, "db": self.cfg.database, "epoch": "ms"},
            timeout=10,
        )
        r.raise_for_status()
        out = []
        for result in r.json().get("results", []):
            if "error" in result:
                raise ValueError(result["error"])
            for series in result.get("series", []):
                tags = series.get("tags", {})
                for row in series.get("values", []):
                    out.append({**tags, **dict(zip(series["columns"], row, strict=True))})
        return out

    def poll_database(self) -> None:
        """Chain balance (last ``chain`` point) and newest reading per site."""
        try:
            values = self._query("SELECT last(*) FROM chain WHERE time > now() - 1h GROUP BY site")
            times = self._query(
                "SELECT last(balance_o2_lpm) FROM chain WHERE time > now() - 1h GROUP BY site"
            )
            readings = self._query(
                "SELECT last(o2_pct) FROM room WHERE time > now() - 1h GROUP BY site"
            )
        except (requests.RequestException, ValueError) as exc:
            self.state.database_error = f"{redact_url(self.cfg.database_url)}: {exc}"[:300]
            log.warning("central database: %s", self.state.database_error)
            return
        at = {str(r["site"]): r.get("time") for r in times}
        for row in values:
            site = str(row.get("site", ""))
            if _SITE.match(site):
                fields = {
                    k.removeprefix("last_"): v for k, v in row.items() if k.startswith("last_")
                }
                self.state.set_chain(site, fields, at.get(site))
        for row in readings:
            site = str(row.get("site", ""))
            if _SITE.match(site):
                self.state.set_last_reading(site, row.get("time"))
        self.state.database_ok_ms = int(time.time() * 1000)
        self.state.database_error = ""

    async def _poller(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.poll_database)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=POLL_S)

    # -- HTTP ----------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = [*lines[0].split(" "), "", ""][:3]
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            status, ctype, body = self._route(method, urlsplit(target).path, headers)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            writer.close()
            return
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
            "Content-Security-Policy: default-src 'self'\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _route(self, method: str, path: str, headers: dict[str, str]) -> tuple[str, str, bytes]:
        host = headers.get("host", "").rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "localhost", "::1"):
            return "403 Forbidden", "text/plain", b"unexpected Host header\n"
        if method != "GET":
            return "405 Method Not Allowed", "text/plain", b"read-only\n"
        if path in _STATIC:
            name, ctype = _STATIC[path]
            return "200 OK", ctype, (resources.files("gateway") / "static" / name).read_bytes()
        if path.startswith("/static/i18n/"):  # the catalogues: only a file that is there
            folder = resources.files("gateway") / "static" / "i18n"
            name = path.removeprefix("/static/i18n/")
            if name.endswith(".json") and name in {f.name for f in folder.iterdir()}:
                return "200 OK", "application/json", (folder / name).read_bytes()
        if path == "/api/region":
            return _ok(self.state.overview())
        if path.startswith("/api/region/"):
            doc = self.state.facility(path.removeprefix("/api/region/"))
            if doc is None:
                return "404 Not Found", "application/json", b'{"error": "no such facility"}'
            return _ok(doc)
        if path == "/healthz":
            db_age = self.state.overview()["database"]["ok_age_s"]
            healthy = self.state.broker_connected and db_age is not None and db_age < 3 * POLL_S
            doc = {
                "status": "ok" if healthy else "unhealthy",
                "broker": self.state.broker_connected,
            }
            status = "200 OK" if healthy else "503 Service Unavailable"
            return status, "application/json", json.dumps(doc).encode()
        return "404 Not Found", "text/plain", b"not found\n"

    async def run(self, stop: asyncio.Event) -> None:
        host, port = parse_listen(self.cfg.listen)
        server = await asyncio.start_server(self._handle, host, port)
        self.port = int(server.sockets[0].getsockname()[1])
        log.info("region view listening on http://%s:%d", host, self.port)
        self.client.connect_async(self._host, self._port, keepalive=30)
        self.client.loop_start()
        poller = asyncio.create_task(self._poller(stop))
        try:
            await stop.wait()
        finally:
            poller.cancel()
            server.close()
            await server.wait_closed()
            self.client.disconnect()
            self.client.loop_stop()
            self._session.close()


def _ok(doc: dict[str, Any]) -> tuple[str, str, bytes]:
    return "200 OK", "application/json", json.dumps(doc).encode()
