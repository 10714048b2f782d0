"""InfluxDB writers. Errors are sorted by what the caller should do (STYLE.md): retry later
(connection errors, 429, 5xx), or dead-letter the points (other 4xx: their content is bad).
"""

from __future__ import annotations

import requests

from gateway.config import InfluxSection


class InfluxWriteError(Exception):
    """Base of the writer's errors."""


class InfluxUnavailable(InfluxWriteError):
    """Try again later: InfluxDB is down, overloaded (429) or failing (5xx)."""

    def __init__(self, detail: str, retry_after_s: float | None = None):
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class InfluxRejected(InfluxWriteError):
    """InfluxDB refused the points for their content (4xx): retrying cannot help."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class InfluxV1Writer:
    """InfluxDB 1.x ``/write`` (also answered by 2.x/3.x compatibility endpoints)."""

    def __init__(self, cfg: InfluxSection):
        self.cfg = cfg
        self._session = requests.Session()
        token = cfg.token()
        if token is not None:
            self._session.headers["Authorization"] = f"Token {token.get_secret_value()}"
        self._database_ready = False

    def ensure_database(self) -> None:
        """Create the database when missing (idempotent in InfluxDB 1.x)."""
        try:
            r = self._session.post(
                f"{self.cfg.url}/query",
                data={"q": f'CREATE DATABASE "{self.cfg.database}"'},
                timeout=self.cfg.timeout_s,
            )
        except requests.RequestException as exc:
            raise InfluxUnavailable(f"{self.cfg.url}: {exc.__class__.__name__}: {exc}") from exc
        self._raise_for(r)
        self._database_ready = True

    def write(self, lines: list[str]) -> None:
        """Write a batch of line-protocol points with ms precision; raises on failure."""
        if not self._database_ready:
            self.ensure_database()
        try:
            r = self._session.post(
                f"{self.cfg.url}/write",
                params={"db": self.cfg.database, "precision": "ms"},
                data="\n".join(lines).encode(),
                timeout=self.cfg.timeout_s,
            )
        except requests.RequestException as exc:
            raise InfluxUnavailable(f"{self.cfg.url}: {exc.__class__.__name__}: {exc}") from exc
        self._raise_for(r)

    @staticmethod
    def _raise_for(r: requests.Response) -> None:
        if r.status_code < 300:
            return
        body = r.text.strip()[:500]
        if r.status_code == 429 or r.status_code >= 500:
            retry = r.headers.get("Retry-After")
            raise InfluxUnavailable(
                f"HTTP {r.status_code}: {body}",
                float(retry) if retry and retry.isdigit() else None,
            )
        raise InfluxRejected(r.status_code, body)

    def close(self) -> None:
        self._session.close()
