"""InfluxDB writers. Errors are sorted by what the caller should do: retry later (connection
errors, timeouts, 429, 5xx - honouring ``Retry-After``), retry and shout (401/403, 404, 3xx:
the gateway's own configuration is wrong, no point is at fault), send smaller parts (413), or
dead-letter the points (other 4xx: their content is bad). Redirects are not followed: a
``POST`` redirected to a login page would answer 200 and lose the points.

- ``v1``: ``POST /write?db=..&precision=ms`` (InfluxDB 1.x; 2.x and 3.x answer it too).
- ``v2``: ``/api/v2/write`` through ``influxdb-client`` (bucket, org, token).
- ``v3``: InfluxDB 3 takes the v2 write API with the database as bucket (org is ignored), so it
  is the v2 writer with ``bucket = database``; the v1 ``/write`` of InfluxDB 3 also works.

Only v1 can be tested against a real server here (Debian ships InfluxDB 1.6); v2/v3 are tested
against in-process HTTP twins that answer like the documented APIs.
"""

from __future__ import annotations

import email.utils
import http.client
import time
from typing import Any, Protocol
from urllib.parse import quote, urlencode, urlsplit

import requests

from gateway.config import InfluxSection, redact_url


class InfluxWriteError(Exception):
    """Base of the writer's errors."""


class InfluxUnavailable(InfluxWriteError):
    """Try again later: InfluxDB is down, overloaded (429), failing (5xx) or timed out."""

    def __init__(self, detail: str, retry_after_s: float | None = None):
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class InfluxMisconfigured(InfluxUnavailable):
    """InfluxDB refuses the gateway itself: credentials (401/403), a database or bucket that
    does not exist (404) or a redirect (3xx, e.g. http -> https). Retried until the config is
    fixed, loudly; never a reason to dead-letter points."""


class InfluxTooLarge(InfluxWriteError):
    """HTTP 413: the request body is over the server's limit; send the points in smaller parts."""

    status = 413

    def __init__(self, detail: str):
        super().__init__(f"HTTP 413: {detail}")


class InfluxRejected(InfluxWriteError):
    """InfluxDB refused the points for their content (4xx): retrying cannot help."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class LineWriter(Protocol):
    """What the outbox drainer writes line protocol through (gateway/writer.py): one of the
    writers below, or a test's twin."""

    def write(self, lines: list[str]) -> None: ...


def parse_retry_after(value: str | None, now_s: float | None = None) -> float | None:
    """``Retry-After`` (RFC 9110 10.2.3): delay-seconds or an HTTP-date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now_s is None else now_s))


def raise_for_status(status: int, body: str, retry_after: str | None) -> None:
    """Map an HTTP answer to the error the drainer acts on; returns for 2xx."""
    if status < 300:
        return
    body = body.strip()[:500]
    if 300 <= status < 400 or status in (401, 403, 404):
        hint = "redirected: check [influx] url" if status < 400 else "check [influx] settings"
        raise InfluxMisconfigured(f"HTTP {status} ({hint}): {body}")
    if status == 429 or status >= 500:
        raise InfluxUnavailable(f"HTTP {status}: {body}", parse_retry_after(retry_after))
    if status == 413:
        raise InfluxTooLarge(body)
    raise InfluxRejected(status, body)


class _PlainPost:
    """``POST`` over one kept-alive ``http.client`` connection: a write through ``requests``
    costs several times the CPU (its environment, proxy and hook handling per request), and
    at light load the writes are a good part of the gateway's work. Plain ``http://`` URLs
    without credentials in them only; anything else goes through ``requests``."""

    def __init__(self, url: str, timeout_s: float, headers: dict[str, str]):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": "text/plain; charset=utf-8", **headers}
        self._conn: http.client.HTTPConnection | None = None

    @staticmethod
    def usable(url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme == "http" and not parts.username and not parts.query

    def post(
        self, endpoint: str, params: dict[str, str], body: bytes
    ) -> tuple[int, str, str | None]:
        """(status, body text, Retry-After); raises OSError / HTTPException on transport."""
        target = f"{self.prefix}/{quote(endpoint)}?{urlencode(params)}"
        fresh = self._conn is None
        try:
            return self._post(target, body)
        except (OSError, http.client.HTTPException):
            self.close()
            if fresh:
                raise
        # A kept-alive connection the server had closed meanwhile: once more on a new one
        # (a write is idempotent: the same points again are the same points).
        return self._post(target, body)

    def _post(self, target: str, body: bytes) -> tuple[int, str, str | None]:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        conn = self._conn
        conn.request("POST", target, body=body, headers=self.headers)
        response = conn.getresponse()
        text = response.read().decode("utf-8", "replace")
        if response.will_close:
            self.close()
        return response.status, text, response.getheader("Retry-After")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class InfluxV1Writer:
    """InfluxDB 1.x ``/write`` (also answered by 2.x/3.x compatibility endpoints)."""

    def __init__(self, cfg: InfluxSection):
        self.cfg = cfg
        self._session = requests.Session()
        token = cfg.token()
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Token {token.get_secret_value()}"
            self._session.headers["Authorization"] = headers["Authorization"]
        self._plain = (
            _PlainPost(cfg.url, cfg.timeout_s, headers) if _PlainPost.usable(cfg.url) else None
        )
        self._database_ready = False

    def _post(self, endpoint: str, **kwargs: Any) -> requests.Response:
        try:
            return self._session.post(
                f"{self.cfg.url}/{endpoint}",
                timeout=self.cfg.timeout_s,
                allow_redirects=False,
                **kwargs,
            )
        except requests.RequestException as exc:
            # A pooled connection may be stale after a server restart: drop the pool.
            self._session.close()
            raise InfluxUnavailable(
                f"{redact_url(self.cfg.url)}: {exc.__class__.__name__}: {exc}"
            ) from exc

    def ensure_database(self) -> None:
        """Create the database when missing (idempotent in InfluxDB 1.x)."""
        name = self.cfg.database.replace("\\", "\\\\").replace('"', '\\"')
        r = self._post("query", data={"q": f'CREATE DATABASE "{name}"'})
        raise_for_status(r.status_code, r.text, r.headers.get("Retry-After"))
        self._database_ready = True

    def write(self, lines: list[str]) -> None:
        """Write a batch of line-protocol points with ms precision; raises on failure."""
        if not self._database_ready:
            self.ensure_database()
        params = {"db": self.cfg.database, "precision": "ms"}
        body = "\n".join(lines).encode()
        if self._plain is None:
            r = self._post("write", params=params, data=body)
            raise_for_status(r.status_code, r.text, r.headers.get("Retry-After"))
            return
        try:
            status, text, retry_after = self._plain.post("write", params, body)
        except (OSError, http.client.HTTPException) as exc:
            raise InfluxUnavailable(
                f"{redact_url(self.cfg.url)}: {exc.__class__.__name__}: {exc}"
            ) from exc
        raise_for_status(status, text, retry_after)

    def close(self) -> None:
        self._session.close()
        if self._plain is not None:
            self._plain.close()


class InfluxV2Writer:
    """InfluxDB 2.x ``/api/v2/write`` through ``influxdb-client`` (synchronous, no own retries:
    the drainer retries, so the outbox - not a client buffer in RAM - holds what waits)."""

    def __init__(self, cfg: InfluxSection, bucket: str | None = None, org: str | None = None):
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.cfg = cfg
        self.bucket = bucket or cfg.bucket or cfg.database
        self.org = org if org is not None else (cfg.org or "")
        token = cfg.token()
        self._client = InfluxDBClient(
            url=cfg.url,
            token=token.get_secret_value() if token else "",
            org=self.org,
            timeout=int(cfg.timeout_s * 1000),
            retries=False,
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: list[str]) -> None:
        from influxdb_client import WritePrecision
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            self._write_api.write(
                bucket=self.bucket,
                org=self.org,
                record="\n".join(lines),
                write_precision=WritePrecision.MS,  # type: ignore[arg-type]
            )
        except ApiException as exc:
            headers: Any = exc.headers or {}
            body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else exc.body
            raise_for_status(
                int(exc.status or 0), str(body or exc.reason), headers.get("Retry-After")
            )
            raise InfluxUnavailable(f"HTTP {exc.status}: {exc.reason}") from exc
        except (HTTPError, OSError) as exc:
            raise InfluxUnavailable(
                f"{redact_url(self.cfg.url)}: {exc.__class__.__name__}: {exc}"
            ) from exc

    def close(self) -> None:
        self._write_api.close()
        self._client.close()


def make_writer(cfg: InfluxSection) -> InfluxV1Writer | InfluxV2Writer:
    """The writer for ``[influx] api``."""
    if cfg.api == "v2":
        return InfluxV2Writer(cfg)
    if cfg.api == "v3":
        # InfluxDB 3: v2-compatible write, database as bucket, org ignored by the server.
        return InfluxV2Writer(cfg, bucket=cfg.database, org=cfg.org or "")
    return InfluxV1Writer(cfg)
