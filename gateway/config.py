"""Gateway configuration (contract keys, docs/contracts.md): typed, validated once.

Errors name the key and what was expected, e.g. ``device[2].url: expected tcp://host:port``.
Secrets come only from files or the environment and never appear in ``repr`` or logs.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import SplitResult, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.auth import (
    WILDCARD_HOSTS,
    UsersFileError,
    is_loopback,
    load_users,
    normalise_host_name,
    parse_listen,
)
from o2base.tomlfile import read_toml

ID_PATTERN = r"^[a-z0-9-]{1,32}$"  # contract: {site} and {device} in MQTT topics
_ID = Annotated[str, Field(pattern=ID_PATTERN)]


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every bad key with what was expected."""


def redact_url(url: str) -> str:
    """``url`` without the password of ``scheme://user:password@host``: what every log line,
    status page and CLI output prints. The user name stays (it says which account); a URL
    that does not even split is shown as its scheme only, never as it came."""
    try:
        u = urlsplit(url)
    except ValueError:
        return url.split(":", 1)[0] + "://(unparsable URL)" if "://" in url else "(unparsable URL)"
    if "@" not in u.netloc:
        return url
    userinfo, host = u.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    return u._replace(netloc=netloc).geturl()


def _checked_url(v: str, schemes: tuple[str, ...], expected: str) -> SplitResult:
    """``urlsplit(v)`` with a scheme of ``schemes``, a host, and a port in 1..65535 if given;
    raises ValueError naming what was expected (never echoing a password)."""
    u = urlsplit(v)
    if u.scheme not in schemes or not u.hostname:
        raise ValueError(f"expected {expected}")
    try:
        port = u.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        shown = u.netloc.rsplit("@", 1)[-1]
        raise ValueError(f"port of {shown!r} out of range: expected 1..65535 ({expected})")
    return u


# One rule for every file holding a secret (the same as [http] users_file's in gateway/auth.py):
# no permission bit for group or others. Such a file is readable by every account on the host
# (or in the group), and a password read once is a password known for good.
_OPEN_TO_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def secret_file_problem(key: str, path: Path) -> str | None:
    """One line if the secret file ``path`` (config key ``key``) cannot be read or is open to
    group/others, else None."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"{key}: cannot read {path}: {exc.strerror}"
    if not stat.S_ISREG(mode):
        return f"{key}: {path} is not a regular file"
    if mode & _OPEN_TO_OTHERS:
        return (
            f"{key}: {path} holds a secret and is open to group/others "
            f"(mode {stat.S_IMODE(mode):04o}): chmod 600 {path}"
        )
    if not os.access(path, os.R_OK):
        return f"{key}: cannot read {path}: permission denied for this user"
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret(path: Path | None, env: str | None, what: str) -> SecretStr | None:
    if env and os.environ.get(env):
        return SecretStr(os.environ[env])
    if path is None:
        return None
    try:
        return SecretStr(path.read_text().strip())
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from exc


class GatewaySection(_Strict):
    id: _ID = "gw-1"
    state_dir: Path = Path("/var/lib/o2chain")
    # Live page, API, /healthz, /metrics. Beyond loopback it needs [http] users_file.
    http_listen: str = "127.0.0.1:8470"
    # Self-metrics (measurement `gateway`) and /healthz (gateway/http.py, gateway/observe.py).
    metrics_interval_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    health_outbox_age_s: Annotated[float, Field(gt=0)] = 300.0  # oldest queued point, then 503
    # Outbox bound (bytes of queued line protocol) and what happens at it (gateway/README.md).
    outbox_max_mb: Annotated[float, Field(gt=0, le=1_000_000)] = 1024.0
    outbox_full_policy: Literal["block", "drop_oldest"] = "block"
    # SQLite synchronous: "full" also survives power loss (one fsync per group commit).
    outbox_sync: Literal["normal", "full"] = "full"
    # Dead letters kept (gateway/README.md "Dead letters"): beyond either bound the oldest go,
    # counted (o2chain_deadletters_dropped_total). Payloads are cut at DEADLETTER_PAYLOAD_MAX.
    deadletter_max_count: Annotated[int, Field(ge=10, le=10_000_000)] = 10_000
    deadletter_max_mb: Annotated[float, Field(gt=0, le=100_000)] = 50.0
    # The live page as people outside this host reach it: the link in notifications
    # (default http://{http_listen}).
    public_url: str | None = None

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        _checked_url(v, ("http", "https"), "http://host[:port][/path] or https://...")
        return v.rstrip("/")

    def live_page_url(self) -> str:
        return self.public_url or f"http://{self.http_listen}"

    @field_validator("http_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        try:
            parse_listen(v)
        except ValueError:
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8470") from None
        return v


class HttpSection(_Strict):
    """Operator web page and API: who may log in and which requests are served
    (gateway/http.py, gateway/auth.py, gateway/README.md "HTTP endpoints")."""

    # TOML [[user]] name/role/password_hash[/token_hash], mode 0600. Needed beyond loopback.
    users_file: Path | None = None
    # Host header names the server answers to (DNS rebinding defence). Default: the listen
    # address and the loopback names.
    allowed_hosts: list[str] = []
    # Reading without login: "loopback" = when listening on loopback only; "never" = always
    # log in (use it behind a reverse proxy, which connects from loopback for everybody).
    anonymous_read: Literal["loopback", "never"] = "loopback"
    session_ttl_s: Annotated[float, Field(ge=60, le=7 * 86400)] = 12 * 3600.0  # one shift
    login_max_failures: Annotated[int, Field(ge=1, le=1000)] = 5  # per address and per user
    login_window_s: Annotated[float, Field(gt=0, le=86400)] = 300.0
    max_event_streams: Annotated[int, Field(ge=1, le=10_000)] = 16  # beyond: oldest evicted
    max_event_streams_per_client: Annotated[int, Field(ge=1, le=10_000)] = 4

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        return [normalise_host_name(h) for h in v]

    @field_validator("users_file")
    @classmethod
    def _users(cls, v: Path | None) -> Path | None:
        if v is not None:
            try:
                load_users(v)
            except UsersFileError as exc:
                raise ValueError(str(exc)) from None
        return v


class MqttSection(_Strict):
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")] = "o2"
    shared_group: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    client_id: str | None = None  # default: o2chain-{gateway.id}
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    session_expiry_s: Annotated[int, Field(ge=60)] = 7 * 86400
    # MQTT 5 Receive Maximum: unacknowledged QoS 1 messages the broker may have in flight to us.
    receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 10000
    # Group commit at light load: a commit that would carry few messages waits up to this long
    # for more, so one fsync and one InfluxDB write serve many readings (0: commit at once).
    commit_linger_ms: Annotated[int, Field(ge=0, le=1000)] = 200

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        _checked_url(v, ("mqtt", "mqtts"), "mqtt://host[:port] or mqtts://host[:port]")
        return v

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        u = urlsplit(self.url)
        return u.port or (8883 if u.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    def password(self) -> SecretStr | None:
        return _read_secret(self.password_file, "O2CHAIN_MQTT_PASSWORD", "mqtt.password_file")


class InfluxSection(_Strict):
    url: str = "http://127.0.0.1:8086"
    api: Literal["v1", "v2", "v3"] = "v1"
    database: str = "o2chain"  # v1 / v3
    bucket: str | None = None  # v2
    org: str | None = None  # v2
    token_file: Path | None = None  # v2 / v3
    batch_size: Annotated[int, Field(ge=1, le=50_000)] = 5000
    flush_interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    max_backoff_s: Annotated[float, Field(gt=0, le=600)] = 10.0  # retry delay ceiling

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        _checked_url(v, ("http", "https"), "http://host:port or https://host:port")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _api_keys(self) -> InfluxSection:
        if self.api == "v2" and not (self.bucket and self.org):
            raise ValueError("api = 'v2' needs bucket and org")
        return self

    def token(self) -> SecretStr | None:
        return _read_secret(self.token_file, "O2CHAIN_INFLUX_TOKEN", "influx.token_file")


class CentralSection(InfluxSection):
    """``[central]``: the region's time-series database, fed from this gateway's outbox through
    a second cursor (gateway/forward.py, gateway/README.md "Central forwarding"). The keys of
    ``[influx]`` mean the same here; the defaults suit a WAN link (bigger batches, longer
    timeouts and back-off)."""

    url: str  # no default: the central tier is never on this host by accident
    database: str = "o2region"
    batch_size: Annotated[int, Field(ge=1, le=50_000)] = 10_000
    flush_interval_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 30.0
    max_backoff_s: Annotated[float, Field(gt=0, le=600)] = 60.0
    # v1 with authentication: HTTP basic auth (InfluxDB 1.x `auth-enabled`).
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None  # a private CA for https://
    # Measurements forwarded (empty: all of them).
    measurements: list[Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,63}$")]] = []
    # At the outbox bound while the central tier lags: "release" = the central cursor skips
    # the oldest points the local InfluxDB already has (counted), ingest goes on; "hold" = the
    # central cursor holds rows like the local drain, and [gateway] outbox_full_policy applies.
    at_bound: Literal["release", "hold"] = "release"
    # Redo what a release skipped: once caught up, the forwarder reads the released span from
    # the local InfluxDB ([influx], api v1) and writes it to the central database.
    backfill: bool = True

    @model_validator(mode="after")
    def _credentials(self) -> CentralSection:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together")
        return self

    def token(self) -> SecretStr | None:
        return _read_secret(self.token_file, "O2CHAIN_CENTRAL_TOKEN", "central.token_file")

    def password(self) -> SecretStr | None:
        return _read_secret(self.password_file, "O2CHAIN_CENTRAL_PASSWORD", "central.password_file")


class Site(_Strict):
    id: _ID
    altitude_m: Annotated[float, Field(ge=-500, le=9000)]
    name: str = ""


class DeviceKind(StrEnum):
    CONCENTRATOR = "concentrator"
    PLANT = "plant"
    ROOM = "room"
    SUPPLY = "supply"


class Transport(StrEnum):
    MQTT = "mqtt"
    MODBUS = "modbus"


class Device(_Strict):
    id: _ID
    site: _ID
    kind: DeviceKind
    transport: Transport
    room: str | None = None  # `room` tag for room boards (default: the device id)
    # `point` tag of supply devices: where in the supply they measure, e.g. "lox-tank",
    # "zone-2" (docs/contracts.md; default: the device id).
    point: str | None = None

    def tags(self, source: str) -> dict[str, str]:
        """The InfluxDB tags of this device's readings (docs/contracts.md, InfluxDB schema)."""
        tags = {"site": self.site, "device": self.id}
        if self.kind is DeviceKind.ROOM:
            tags["room"] = self.room or self.id
            return tags
        tags["source"] = source
        if self.kind is DeviceKind.SUPPLY:
            tags["point"] = self.point or self.id
        return tags

    # Room boards: outdoor-air ventilation, for the chain balance's O2 demand estimate.
    ventilation_m3h: Annotated[float, Field(ge=0, le=100_000)] | None = None
    # Supply devices: the devices of the same site whose gas this one receives (a plant, a
    # buffer tank, a manifold, ...): the chain balance's topology (gateway/README.md,
    # "Enrichment"). Empty: fed from outside the configuration (a bought stock, the pipeline).
    fed_from: Annotated[list[_ID], Field(max_length=16)] = []
    url: str | None = None  # Modbus: tcp://host:port or rtu:///dev/ttyX?baudrate=..
    unit: Annotated[int, Field(ge=0, le=247)] = 1
    profile: str | None = None
    interval_s: Annotated[float, Field(gt=0, le=86400)] = 10.0
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    retries: Annotated[int, Field(ge=0, le=10)] = 1

    @model_validator(mode="after")
    def _transport_keys(self) -> Device:
        if self.transport is Transport.MODBUS:
            if not self.url:
                raise ValueError("transport 'modbus' needs url (tcp://host:port or rtu:///dev/..)")
            u = urlsplit(self.url)
            if u.scheme == "tcp":
                _checked_url(self.url, ("tcp",), "tcp://host:port")
                if not u.port:
                    raise ValueError(f"url {redact_url(self.url)!r}: expected tcp://host:port")
            elif u.scheme == "rtu":
                if not u.path:
                    raise ValueError(f"url {self.url!r}: expected rtu:///dev/ttyX?baudrate=9600")
            else:
                raise ValueError(f"url {self.url!r}: expected tcp://host:port or rtu:///dev/ttyX")
            if not self.profile:
                raise ValueError("transport 'modbus' needs profile (see `o2chain sim profiles`)")
        return self


class EnrichSection(_Strict):
    """Enrichment stage (gateway/enrich.py)."""

    eq_alt_definition: Literal["west", "ambient"] = "west"  # docs/domain.md "Formulas"
    chain_interval_s: Annotated[float, Field(gt=0, le=86400)] = 60.0  # `chain` points per site
    max_gap_s: Annotated[float, Field(gt=0)] = 300.0  # O2 totals: no integration across gaps
    # Trend window of the stored oxygen's rate of change and of the loss in the chain balance.
    stock_window_s: Annotated[float, Field(ge=60, le=7 * 86400)] = 1800.0
    # Simulated seconds per second of the gateway's clock, for demos whose simulators run
    # faster than real time: totals, rates and forecasts are then in simulated time. 1 = real.
    speed: Annotated[float, Field(gt=0, le=100_000)] = 1.0


class ForecastSection(_Strict):
    """Days of supply left (gateway/supply_forecast.py)."""

    window_s: Annotated[float, Field(gt=0, le=90 * 86400)] = 6 * 3600.0  # consumption trend
    min_span_s: Annotated[float, Field(gt=0, le=90 * 86400)] = 1800.0  # history before a claim

    @model_validator(mode="after")
    def _span_within_window(self) -> ForecastSection:
        if self.min_span_s > self.window_s:
            raise ValueError(
                f"min_span_s = {self.min_span_s:g} must not exceed window_s = {self.window_s:g}"
            )
        return self


class AlarmKind(StrEnum):
    THRESHOLD = "threshold"  # field op value, with hysteresis and delays
    OFFLINE = "offline"  # last will / Modbus poller / silence > silence_intervals x interval_s
    STALE = "stale"  # field not received for `value` s while the device reports
    RATE = "rate"  # change of field per minute over window_s, op value
    RESIDUAL = "residual"  # purity minus the unit's purity-flow baseline, op value
    FLAGGED = "flagged"  # the device's readings carry `field` (a flag such as `invalid`)


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ALARM = "alarm"
    CRITICAL = "critical"


class AlarmRule(_Strict):
    """One `[[alarm]]` rule; a rule with a built-in's id replaces that built-in."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,64}$")]
    kind: AlarmKind = AlarmKind.THRESHOLD
    enabled: bool = True
    site: _ID | None = None  # selector: one site (default all)
    device: str | None = None  # selector: glob over device ids, e.g. "room-*"
    device_kind: list[DeviceKind] = []  # selector: device kinds (default all)
    field: str | None = None
    op: Literal["<", "<=", ">", ">="] = ">"
    value: float | None = None
    hysteresis: Annotated[float, Field(ge=0)] = 0.0
    on_delay_s: Annotated[float, Field(ge=0)] = 0.0
    off_delay_s: Annotated[float, Field(ge=0)] = 0.0
    severity: Severity = Severity.WARNING
    message: str = ""
    silence_intervals: Annotated[float, Field(gt=0)] = 3.0  # offline
    window_s: Annotated[float, Field(gt=0)] = 300.0  # rate
    learn_s: Annotated[float, Field(gt=0)] = 86400.0  # residual: baseline learning period
    baseline: list[tuple[float, float]] = []  # residual: (flow_lpm, purity_pct) points
    flow_field: str = "flow_lpm"  # residual

    @model_validator(mode="after")
    def _kind_keys(self) -> AlarmRule:
        if not self.enabled:
            return self
        needs_field = self.kind in (AlarmKind.THRESHOLD, AlarmKind.RATE, AlarmKind.RESIDUAL)
        if needs_field and not self.field:
            raise ValueError(f"kind {self.kind.value!r} needs field")
        if self.kind is AlarmKind.FLAGGED and not self.field:
            raise ValueError("kind 'flagged' needs field (the flag, e.g. invalid)")
        if self.kind not in (AlarmKind.OFFLINE, AlarmKind.FLAGGED) and self.value is None:
            raise ValueError(f"kind {self.kind.value!r} needs value")
        return self


class AlarmEngineSection(_Strict):
    """Alarm engine settings (gateway/alarms.py)."""

    builtin: bool = True  # docs/domain.md defaults (gateway/README.md, "Alarm defaults")
    offline_intervals: Annotated[float, Field(gt=0)] = 3.0  # built-in offline: silence
    max_shelve_s: Annotated[float, Field(gt=0)] = 86400.0  # ISA-18.2: shelving is time-limited
    # Longest shelve per severity (gateway/README.md "Shelving"): the worse the hazard, the
    # sooner a person must look again. Capped by max_shelve_s as well.
    shelve_max_s: dict[Severity, Annotated[float, Field(gt=0)]] = {
        Severity.CRITICAL: 3600.0,
        Severity.ALARM: 8 * 3600.0,
        Severity.WARNING: 24 * 3600.0,
        Severity.INFO: 24 * 3600.0,
    }
    log_keep: Annotated[int, Field(ge=10)] = 10_000  # alarm events kept in outbox.sqlite


class NotifyKind(StrEnum):
    """How a ``[[notify]]`` target is reached (gateway/notify/targets.py)."""

    WEBHOOK = "webhook"  # generic JSON POST
    WECOM = "wecom"  # WeCom group robot webhook
    DINGTALK = "dingtalk"  # DingTalk custom robot webhook (optionally signed)
    EMAIL = "email"  # SMTP with STARTTLS
    SMS = "sms"  # a provider's HTTP API, described by a request template


NotifyEvent = Literal["raise", "clear", "ack", "shelve", "unshelve"]
_HTTP_KINDS = (NotifyKind.WEBHOOK, NotifyKind.WECOM, NotifyKind.DINGTALK, NotifyKind.SMS)
_EMAIL = r"^[^@\s<>]+@[^@\s<>]+$"
_PHONE = r"^\+?[0-9]{5,20}$"


class NotifyTarget(_Strict):
    """One ``[[notify]]`` target: where alarm notifications go and which ones (gateway/README.md,
    "Notifications"). Secrets (a robot's key inside its URL, a signing secret, an SMTP password,
    an API token) come from files, never from this table."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    id: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,64}$")]
    kind: NotifyKind
    enabled: bool = True
    # HTTP kinds: the URL inline, or from a file (a WeCom `key=` or DingTalk `access_token=` in
    # the URL is a secret: prefer url_file).
    url: str | None = None
    url_file: Path | None = None
    secret_file: Path | None = None  # dingtalk: the robot's signing secret (SEC...)
    token_file: Path | None = None  # webhook / sms: replaces {token} in url, headers and body
    ca_file: Path | None = None  # a private CA for https:// or the SMTP server's certificate
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    # Which alarms: at least this severity, optionally one site and a glob over device ids.
    min_severity: Severity = Severity.ALARM
    site: _ID | None = None
    device: str | None = None
    events: list[NotifyEvent] = ["raise", "clear"]
    # Escalation: > 0 notifies only alarms still unacknowledged (and active) after this long.
    unacked_after_s: Annotated[float, Field(ge=0, le=7 * 86400)] = 0.0
    # Re-notify an active, unacknowledged alarm this often (0: never).
    repeat_s: Annotated[float, Field(ge=0, le=7 * 86400)] = 0.0
    quiet_hours: (
        Annotated[
            str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$")
        ]
        | None
    ) = None  # "22:00-07:00" in `timezone`; never holds back critical alarms
    timezone: str = "Asia/Shanghai"
    # WeCom and DingTalk robots accept 20 messages a minute each; the excess waits, critical first.
    rate_limit_per_min: Annotated[int, Field(ge=1, le=600)] = 20
    fail_alarm_after_s: Annotated[float, Field(gt=0)] = 600.0
    retry_initial_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    retry_max_s: Annotated[float, Field(gt=0, le=86400)] = 300.0
    # wecom / dingtalk message type
    msgtype: Literal["text", "markdown"] = "markdown"
    # email
    smtp_host: str | None = None
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 587
    from_: str | None = Field(default=None, alias="from")
    to: list[str] = []  # email addresses (email) or phone numbers (sms)
    username: str | None = None
    password_file: Path | None = None
    starttls: bool = True
    # sms (and webhook extras): the provider's request
    method: Literal["POST", "PUT", "GET"] = "POST"
    headers: dict[str, str] = {}
    body_template: str | None = None  # placeholders {phone} {text} {id} {token}
    body_encoding: Literal["json", "form"] = "json"  # how placeholder values are escaped
    # webhook / sms: a 2xx answer counts only if its JSON has these top-level values (providers
    # that answer 200 with an error code, e.g. {"Code": "OK"}).
    accept_json: dict[str, str | int | bool] = {}

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (expected e.g. Asia/Shanghai)") from None
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None:
            _checked_url(v, ("http", "https"), "http://host[:port]/path or https://...")
        return v

    @model_validator(mode="after")
    def _kind_keys(self) -> NotifyTarget:
        k = self.kind.value
        if self.kind in _HTTP_KINDS:
            if (self.url is None) == (self.url_file is None):
                raise ValueError(f"kind {k!r} needs exactly one of url or url_file")
        elif self.url is not None or self.url_file is not None:
            raise ValueError(f"kind {k!r} takes no url (smtp_host, from, to)")
        if self.accept_json and self.kind not in (NotifyKind.WEBHOOK, NotifyKind.SMS):
            raise ValueError(f"accept_json is for kinds 'webhook' and 'sms' (not {k!r})")
        if self.secret_file is not None and self.kind is not NotifyKind.DINGTALK:
            raise ValueError("secret_file is for kind 'dingtalk' (signed robot URL)")
        if self.kind is NotifyKind.EMAIL:
            if not self.smtp_host or not self.from_ or not self.to:
                raise ValueError("kind 'email' needs smtp_host, from and to (a list of addresses)")
            if not re.match(_EMAIL, self.from_):
                raise ValueError(f"from: {self.from_!r} is not an e-mail address")
            for i, addr in enumerate(self.to):
                if not re.match(_EMAIL, addr):
                    raise ValueError(f"to[{i}]: {addr!r} is not an e-mail address")
            if (self.username is None) != (self.password_file is None):
                raise ValueError("username and password_file go together")
        if self.kind is NotifyKind.SMS:
            if not self.body_template or not self.to:
                raise ValueError("kind 'sms' needs body_template and to (a list of phone numbers)")
            for i, phone in enumerate(self.to):
                if not re.match(_PHONE, phone):
                    raise ValueError(f"to[{i}]: {phone!r} is not a phone number (+8613800000000)")
        elif self.kind is not NotifyKind.EMAIL and self.to:
            raise ValueError(f"kind {k!r} takes no to (the URL says where)")
        for name in ("url_file", "secret_file", "token_file", "password_file", "ca_file"):
            path = getattr(self, name)
            if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
                raise ValueError(f"{name}: cannot read {path} (a file holding the secret)")
        if self.repeat_s and self.repeat_s < 10:
            raise ValueError("repeat_s: expected 0 (never) or at least 10 s")
        return self

    def read_url(self) -> SecretStr:
        """The target URL (inline or from ``url_file``); raises :class:`ConfigError`."""
        if self.url is not None:
            return SecretStr(self.url)
        secret = _read_secret(self.url_file, None, f"notify {self.id}: url_file")
        if secret is None or not secret.get_secret_value():
            raise ConfigError(f"notify {self.id}: url_file {self.url_file} is empty")
        u = urlsplit(secret.get_secret_value())
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ConfigError(f"notify {self.id}: url_file: expected an http(s):// URL")
        return secret

    def secret(self) -> SecretStr | None:
        return _read_secret(self.secret_file, None, f"notify {self.id}: secret_file")

    def token(self) -> SecretStr | None:
        return _read_secret(self.token_file, None, f"notify {self.id}: token_file")

    def password(self) -> SecretStr | None:
        return _read_secret(self.password_file, None, f"notify {self.id}: password_file")


class _SiteSelected(Protocol):
    id: str
    site: str | None


def _unique_ids_of_known_sites(
    section: str, what: str, items: Sequence[_SiteSelected], sites: Sequence[Site]
) -> None:
    """``[[notify]]`` targets and ``[[alarm]]`` rules: ids unique, a ``site`` selector names a
    configured ``[[site]]``."""
    ids: set[str] = set()
    known = {s.id for s in sites}
    for i, item in enumerate(items):
        if item.id in ids:
            raise ValueError(f"{section}[{i}].id: duplicate {what} id {item.id!r}")
        ids.add(item.id)
        if item.site is not None and item.site not in known:
            raise ValueError(f"{section}[{i}] ({item.id}).site: {item.site!r} is not a [[site]]")


class GatewayConfig(_Strict):
    gateway: GatewaySection = GatewaySection()
    http: HttpSection = HttpSection()
    mqtt: MqttSection = MqttSection()
    influx: InfluxSection = InfluxSection()
    central: CentralSection | None = None
    site: list[Site] = []
    device: list[Device] = []
    alarm: list[AlarmRule] = []
    alarm_engine: AlarmEngineSection = AlarmEngineSection()
    enrich: EnrichSection = EnrichSection()
    forecast: ForecastSection = ForecastSection()
    notify: list[NotifyTarget] = []

    @model_validator(mode="after")
    def _notify_references(self) -> GatewayConfig:
        _unique_ids_of_known_sites("notify", "target", self.notify, self.site)
        return self

    @model_validator(mode="after")
    def _alarm_references(self) -> GatewayConfig:
        _unique_ids_of_known_sites("alarm", "rule", self.alarm, self.site)
        return self

    @model_validator(mode="after")
    def _http_exposure(self) -> GatewayConfig:
        listen = self.gateway.http_listen
        host, _ = parse_listen(listen)
        if not is_loopback(host) and self.http.users_file is None:
            raise ValueError(
                f"gateway.http_listen = {listen!r} listens beyond loopback (127.0.0.0/8, ::1), "
                "where operators must log in: set http.users_file, or listen on 127.0.0.1"
            )
        if host.lower() in WILDCARD_HOSTS and not self.http.allowed_hosts:
            raise ValueError(
                f"http.allowed_hosts: gateway.http_listen = {listen!r} listens on every "
                "address; list the names operators use to reach it, e.g. "
                '["gw-lhasa.example", "192.0.2.10"]'
            )
        return self

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        sites = {s.id for s in self.site}
        if len(sites) != len(self.site):
            raise ValueError("site ids must be unique")
        seen: set[tuple[str, str]] = set()
        for i, dev in enumerate(self.device):
            if dev.site not in sites:
                raise ValueError(
                    f"device[{i}] ({dev.id}).site: {dev.site!r} is not a configured [[site]] "
                    f"(known: {', '.join(sorted(sites)) or 'none'})"
                )
            if (dev.site, dev.id) in seen:
                raise ValueError(f"device[{i}]: duplicate device {dev.site}/{dev.id}")
            seen.add((dev.site, dev.id))
        self._check_fed_from()
        return self

    def _check_fed_from(self) -> None:
        """``fed_from`` names supply devices, plants or concentrators of the device's own site,
        and the supply never loops back on itself."""
        kinds = {(d.site, d.id): d.kind for d in self.device}
        feeding = (DeviceKind.SUPPLY, DeviceKind.PLANT, DeviceKind.CONCENTRATOR)
        for i, dev in enumerate(self.device):
            if dev.fed_from and dev.kind is not DeviceKind.SUPPLY:
                raise ValueError(
                    f"device[{i}] ({dev.id}).fed_from: only supply devices have one (kind "
                    f"is {dev.kind.value!r})"
                )
            for up in dev.fed_from:
                kind = kinds.get((dev.site, up))
                if kind not in feeding:
                    what = "not a device of its site" if kind is None else f"a {kind.value}"
                    raise ValueError(
                        f"device[{i}] ({dev.id}).fed_from: {up!r} is {what}; expected a "
                        "supply device, plant or concentrator of the same site"
                    )
        upstream = {(d.site, d.id): d.fed_from for d in self.device}
        for i, dev in enumerate(self.device):
            todo = list(dev.fed_from)
            seen_ids: set[str] = set()
            while todo:
                up = todo.pop()
                if up == dev.id:
                    raise ValueError(
                        f"device[{i}] ({dev.id}).fed_from: the supply loops back to {dev.id}"
                    )
                if up in seen_ids:
                    continue
                seen_ids.add(up)
                todo += upstream.get((dev.site, up), [])

    def site_by_id(self, site_id: str) -> Site:
        for s in self.site:
            if s.id == site_id:
                return s
        raise KeyError(site_id)

    def find_device(self, site_id: str, device_id: str) -> Device | None:
        return self._device_index.get((site_id, device_id))

    @cached_property
    def _device_index(self) -> dict[tuple[str, str], Device]:
        # Looked up for every status message: a scan of 10,000 devices each time was a
        # gateway's largest cost while a region's fleet came online.
        return {(d.site, d.id): d for d in self.device}


def _state_dir_problem(state_dir: Path) -> str | None:
    """What keeps the gateway from keeping its outbox in ``state_dir`` (created at start)."""
    key = "gateway.state_dir"
    existing = state_dir
    while not existing.exists():
        if existing.is_symlink():
            return f"{key}: {existing} is a dangling symbolic link"
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        what = "is" if existing == state_dir else f"cannot be created: {existing} is"
        return f"{key}: {state_dir} {what} a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == state_dir:
            return f"{key}: {state_dir} is not writable for this user"
        return f"{key}: {state_dir} cannot be created: {existing} is not writable for this user"
    return None


def preflight(config: GatewayConfig) -> list[str]:
    """What ``run`` would trip on that the schema cannot see (the file system), one line per
    problem naming the key: the state directory, TLS CA files, secret files (readable, and
    open to nobody else). ``o2chain gateway check`` and ``run`` refuse a config with any."""
    problems: list[str] = []
    state = _state_dir_problem(config.gateway.state_dir)
    if state:
        problems.append(state)
    secrets: list[tuple[str, Path | None]] = [
        ("mqtt.password_file", config.mqtt.password_file),
        ("influx.token_file", config.influx.token_file),
        ("http.users_file", config.http.users_file),
    ]
    if config.central is not None:
        secrets += [
            ("central.token_file", config.central.token_file),
            ("central.password_file", config.central.password_file),
        ]
    for i, target in enumerate(config.notify):
        for name in ("url_file", "secret_file", "token_file", "password_file"):
            secrets.append((f"notify[{i}] ({target.id}).{name}", getattr(target, name)))
    for key, path in secrets:
        problem = secret_file_problem(key, path) if path is not None else None
        if problem:
            problems.append(problem)
    ca_files = [("mqtt.ca_file", config.mqtt.ca_file)]
    if config.central is not None:
        ca_files.append(("central.ca_file", config.central.ca_file))
    ca_files += [(f"notify[{i}] ({t.id}).ca_file", t.ca_file) for i, t in enumerate(config.notify)]
    for key, path in ca_files:
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            problems.append(f"{key}: cannot read the CA certificate {path}")
    return problems


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"])
        loc = re.sub(r"\.\[", "[", loc)
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        if isinstance(got, str) and "@" in got:
            got = redact_url(got)  # a URL with a password: the error goes to logs and terminals
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"{loc or '(top level)'}: {msg}{shown}")
    # One line, every problem in it (a terminal, a log line, a CI annotation).
    return f"{source}: invalid configuration: " + "; ".join(lines)


def parse_config(data: dict[str, Any], source: str = "<config>") -> GatewayConfig:
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_config(path: Path) -> GatewayConfig:
    """Read and validate a TOML config file; raises :class:`ConfigError`."""
    return parse_config(read_toml(path, ConfigError), str(path))
