"""``o2chain provision``: every secret and access rule of one site, from its board inventory.

    o2chain provision -i INVENTORY -o DIR [--rotate NAME ...]

The inventory is the one ``o2chain firmware config`` reads (firmware/inventory.example.toml);
two optional tables of its own are read here::

    [broker]
    hosts = ["mqtt.lhasa-hotel.local"]   # more names/addresses for the broker certificate
    port = 8883                          # boards', operator's, dashboard's TLS listener
    bind = ""                            # its address ("" = every interface)
    gateway_port = 8884                  # the gateway's own TLS listener ...
    gateway_bind = "127.0.0.1"           # ... on the broker's host by default
    [gateway]
    id = "gw-1"                          # [gateway] id of the gateway config: its alarm topics
    group = "lhasa-gws"                  # optional: [mqtt] shared_group of a group of gateways
                                         # (they share the account; docs/scaling.md)
    [region]
    bundle = "region/facilities/lhasa-hotel"   # from `o2chain region provision`: the bridge
                                               # to the central broker (broker/bridge.conf)

What ``DIR`` holds afterwards (directories 0700, files 0600)::

    ca/ca.key, ca/ca.pem                 the site's private CA (ECDSA P-256, 10 years)
    broker/server.key, server.pem        the broker's certificate (SANs: 127.0.0.1, localhost,
                                         every broker host of the inventory and [broker] hosts)
    broker/devices.passwd, devices.acl   boards + operator + dashboard (Mosquitto $7$ hashes)
    broker/gateway.passwd, gateway.acl   the gateway account
    broker/o2chain.conf                  the listeners that use them (include it in Mosquitto)
    boards/{device}/config.json, ca.pem  one per board: its own MQTT account and command key
    gateway/mqtt-password, ca.pem, users.toml, gateway.toml (the [mqtt]/[http] lines to use)

``--broker-path``/``--gateway-path`` name where the broker's and the gateway's files will be
read on their hosts (the paths written into o2chain.conf and gateway.toml; default: in DIR).
    operator/command_keys.json, mqtt-password, mqtt.toml, ca.pem, initial-passwords.txt
    dashboard/mqtt-password, mqtt.toml, ca.pem

Re-running keeps every existing secret (passwords, command keys, CA and server keys, web users)
and rewrites only what changed; ``--rotate NAME`` replaces one: a device id, ``gateway``,
``operator``, ``dashboard``, ``web`` (both web logins), ``server`` (the broker key) or ``ca``
(the CA, hence the server certificate and every board's ca.pem: re-flash the boards).
A board removed from the inventory loses its broker account at the next run.
docs/security.md holds the threat model and the steps on site.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import pwd
import re
import secrets
import string
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.passwords import hash_password
from o2base.services import broker_conf
from o2base.tomlfile import read_toml
from o2chain.firmware_cli import merge_tables

GATEWAY_USER = "gateway"
OPERATOR_USER = "operator"
DASHBOARD_USER = "dashboard"
WEB_USERS = (("admin", "admin"), ("operator", "operator"))  # (name, role) in users.toml
ROLE_TARGETS = ("gateway", "operator", "dashboard", "web", "server", "ca")
DEFAULT_DEVICE_PORT = 8883  # IANA "secure-mqtt"
DEFAULT_GATEWAY_PORT = 8884
# What the gateway may read of $SYS: the broker's count of messages dropped at its queue limits
# (gateway/mqtt_ingest.py BROKER_DROPPED_TOPIC).
BROKER_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
DEFAULT_NAME = "o2chain-broker"  # certificate name for boards whose inventory names none
CA_DAYS = 3650
SERVER_DAYS = 825  # the longest server-certificate life browsers and most TLS stacks accept
RENEW_BEFORE_DAYS = 30  # a re-run reissues a server certificate this close to its end
# Mosquitto 2.0's password hash ("$7$"): PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte key, 101
# iterations by default (mosquitto_passwd(1)). The passwords are 32 random characters (~190
# bits), so more iterations would only cost the broker CPU at every reconnect storm.
PBKDF2_ITERATIONS = 101
_SALT_BYTES = 12
_KEY_BYTES = 64
_DIR_MODE = 0o700
_FILE_MODE = 0o600


class ProvisionError(ValueError):
    """The inventory or the output directory is unusable; the message names what and where."""


# -- Mosquitto password file ------------------------------------------------------------------


def mosquitto_hash(password: str, *, salt: bytes | None = None) -> str:
    """A Mosquitto 2.0 password-file hash (``$7$101$SALT$KEY``, base64) of ``password``."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS, _KEY_BYTES)
    b64 = base64.b64encode
    return f"$7${PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(key).decode()}"


def mosquitto_verify(password: str, stored: str) -> bool:
    """True if ``stored`` (a ``$7$`` hash) is ``password``'s; False for anything malformed."""
    parts = stored.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    iterations = int(parts[2])
    if not 1 <= iterations <= 1_000_000:
        return False
    try:
        salt, key = base64.b64decode(parts[3], validate=True), base64.b64decode(parts[4])
    except ValueError:
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, len(key))
    return hmac.compare_digest(got, key)


# -- small file helpers -----------------------------------------------------------------------


def _mkdir(path: Path) -> None:
    path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    path.chmod(_DIR_MODE)


def _write(path: Path, data: str | bytes) -> bool:
    """Write ``data`` to ``path`` (mode 0600, atomically) unless it holds it already.
    Returns True if the file changed."""
    raw = data.encode() if isinstance(data, str) else data
    _mkdir(path.parent)
    try:
        if path.read_bytes() == raw:
            path.chmod(_FILE_MODE)
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return True


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _new_password() -> str:
    # URL-safe characters only: no quoting trouble in JSON, TOML, shells or the passwd file.
    return secrets.token_urlsafe(24)


def _new_web_password() -> str:
    # Typed by a person once: 16 letters and digits without look-alikes (~90 bits).
    alphabet = "".join(c for c in string.ascii_letters + string.digits if c not in "0O1lI")
    return "".join(secrets.choice(alphabet) for _ in range(16))


# -- the inventory ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker listens and which names its certificate carries."""

    hosts: tuple[str, ...]  # extra certificate names, in addition to the boards' hosts
    port: int
    bind: str
    gateway_port: int
    gateway_bind: str
    gateway_id: str
    topic_prefix: str
    gateway_group: str | None = None
    region_bundle: Path | None = None  # [region] bundle: bridge to the central broker


@dataclass(frozen=True)
class Board:
    site: str
    device: str
    config: dict[str, Any]  # validated firmware config from the inventory (no secrets yet)

    @property
    def key(self) -> str:
        return f"{self.site}/{self.device}"

    @property
    def username(self) -> str:
        # "site/device": unique per broker and never equal to a service account's name (no "/").
        return self.key


def _table(doc: dict[str, Any], name: str, inventory: Path) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ProvisionError(f"{inventory}: [{name}]: expected a table")
    return value


def _port(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ProvisionError(f"{where}: expected a TCP port 1..65535, got {value!r}")
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    """The TOML document at ``path``; raises ProvisionError naming the file and the fault."""
    return read_toml(path, ProvisionError)


def load_inventory(inventory: Path) -> tuple[list[Board], BrokerSettings]:
    """The inventory's boards (each validated by the firmware's config schema) and broker
    settings. Raises ProvisionError naming the file, the device and the key."""
    from o2chain.firmware_runner import load_firmware_file

    doc = _read_toml(inventory)
    devices = _table(doc, "devices", inventory)
    if not devices:
        raise ProvisionError(f"{inventory}: no [devices.<id>] tables: nothing to provision")
    broker = _table(doc, "broker", inventory)
    gateway = _table(doc, "gateway", inventory)
    region = _table(doc, "region", inventory)
    if set(region) - {"bundle"}:
        raise ProvisionError(
            f"{inventory}: [region] {sorted(set(region) - {'bundle'})[0]}: "
            "unknown key (expected bundle)"
        )
    bundle = region.get("bundle")
    if bundle is not None and (not isinstance(bundle, str) or not bundle):
        raise ProvisionError(f"{inventory}: [region] bundle: expected a folder path")
    unknown = sorted(set(broker) - {"hosts", "port", "bind", "gateway_port", "gateway_bind"})
    if unknown:
        raise ProvisionError(f"{inventory}: [broker] {unknown[0]}: unknown key")
    defaults_mqtt = _table(doc, "defaults", inventory).get("mqtt", {})
    port = _port(
        broker.get("port", defaults_mqtt.get("port", DEFAULT_DEVICE_PORT)),
        f"{inventory}: [broker] port",
    )
    gateway_port = _port(
        broker.get("gateway_port", DEFAULT_GATEWAY_PORT), f"{inventory}: [broker] gateway_port"
    )
    if gateway_port == port:
        raise ProvisionError(
            f"{inventory}: [broker] gateway_port: expected a port other than the boards' {port}"
        )
    hosts = broker.get("hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
        raise ProvisionError(f"{inventory}: [broker] hosts: expected a list of host names")
    gateway_id = gateway.get("id", "gw-1")
    if not isinstance(gateway_id, str) or not _is_name(gateway_id):
        raise ProvisionError(
            f"{inventory}: [gateway] id: expected a name of 1..32 characters [a-z0-9-], "
            f"got {gateway_id!r}"
        )
    group = gateway.get("group")
    if group is not None and not (
        isinstance(group, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", group)
    ):
        raise ProvisionError(
            f"{inventory}: [gateway] group: expected a name of 1..64 characters "
            f"[A-Za-z0-9_-] (the gateways' [mqtt] shared_group), got {group!r}"
        )
    boards: list[Board] = []
    prefixes = set()
    schema = load_firmware_file("config")
    for device in devices:
        cfg = merge_tables(_table(doc, "defaults", inventory), _table(devices, device, inventory))
        cfg["device"] = device
        # What `o2chain firmware config` does per device, with the file parsed once for all.
        try:
            schema.validate(json.loads(json.dumps(cfg)))
        except schema.ConfigError as e:
            raise ProvisionError(f"{inventory}: device {device}: {e}") from e
        if device == "gateway":
            raise ProvisionError(
                f"{inventory}: device gateway: the name is taken by the gateway's topics "
                f"(o2/{{site}}/gateway/...): choose another device id"
            )
        if device in ROLE_TARGETS:
            raise ProvisionError(
                f"{inventory}: device {device}: the name is reserved for `--rotate {device}`: "
                f"choose another device id"
            )
        mqtt = cfg.setdefault("mqtt", {})
        board_port = mqtt.setdefault("port", port)  # not given: the broker's TLS listener
        if board_port != port:
            raise ProvisionError(
                f"{inventory}: device {device}: mqtt.port: expected {port} (the broker's TLS "
                f"listener, [broker] port), got {board_port}"
            )
        prefixes.add(mqtt.get("topic_prefix", "o2"))
        tls = mqtt.setdefault("tls", {})
        if not tls.get("server_hostname"):
            # The name the board checks in the broker's certificate. Without one the firmware
            # checks mqtt.host, and an IP address is not matched by every TLS stack (older
            # Mbed TLS compares DNS names only): use a DNS name the certificate carries.
            tls["server_hostname"] = next((h for h in hosts if not _is_ip(h)), DEFAULT_NAME)
        boards.append(Board(cfg["site"], device, cfg))
    if len(prefixes) != 1:
        raise ProvisionError(
            f"{inventory}: mqtt.topic_prefix: expected one prefix for every board, got "
            f"{sorted(prefixes)}"
        )
    settings = BrokerSettings(
        hosts=tuple(hosts),
        port=port,
        bind=str(broker.get("bind", "")),
        gateway_port=gateway_port,
        gateway_bind=str(broker.get("gateway_bind", "127.0.0.1")),
        gateway_id=gateway_id,
        gateway_group=group,
        topic_prefix=prefixes.pop(),
        region_bundle=(inventory.parent / bundle).resolve() if bundle else None,
    )
    return boards, settings


def _is_name(v: str) -> bool:
    return 1 <= len(v) <= 32 and all(c in "abcdefghijklmnopqrstuvwxyz0123456789-" for c in v)


# -- certificates -----------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise ProvisionError(f"{path}: not a PEM private key ({e}); remove it or --rotate") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisionError(f"{path}: expected an EC private key; remove it or --rotate")
    return key


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # damaged: issued again


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    # A CA signs certificates (and CRLs); an ECDSA server key only signs the TLS handshake.
    flags = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
         "encipher_only", "decipher_only"),
        False,
    )  # fmt: skip
    return x509.KeyUsage(
        digital_signature=not cert_sign, key_cert_sign=cert_sign, crl_sign=cert_sign, **flags
    )


def _make_ca(key: ec.EllipticCurvePrivateKey, sites: Sequence[str]) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "o2chain"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"o2chain site CA {' '.join(sites)}"[:64]),
        ]
    )
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _san_entries(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in sorted(set(names)):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _cert_names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName)
    )


def _make_server_cert(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    names: set[str],
) -> x509.Certificate:
    dns = sorted(n for n in names if not _is_ip(n))
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else "broker")])
        )
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_san_entries(names)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# -- the run ----------------------------------------------------------------------------------


@dataclass
class ProvisionResult:
    """What one run did; ``web_passwords`` is filled only when web logins were created."""

    out_dir: Path
    boards: list[str]
    settings: BrokerSettings
    changed: list[Path] = field(default_factory=list)
    rotated: list[str] = field(default_factory=list)
    web_passwords: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def initial_passwords_file(self) -> Path:
        return self.out_dir / "operator" / "initial-passwords.txt"

    @property
    def users_file(self) -> Path:
        return self.out_dir / "gateway" / "users.toml"


class _Run:
    def __init__(
        self, out: Path, rotate: set[str], broker_path: Path | None, gateway_path: Path | None
    ) -> None:
        self.out = out
        self.rotate = rotate
        self.broker_path = broker_path or out / "broker"
        self.gateway_path = gateway_path or out / "gateway"
        self.changed: list[Path] = []

    def write(self, rel: str, data: str | bytes) -> Path:
        path = self.out / rel
        for parent in reversed(Path(rel).parents[:-1]):  # each level 0700, not just the last
            _mkdir(self.out / parent)
        if _write(path, data):
            self.changed.append(path)
        return path

    def secret(self, rel: str, target: str) -> str:
        """The password kept in file ``rel``, or a new one (missing, or ``target`` rotated)."""
        old = _read_text(self.out / rel)
        if old is not None and old.strip() and target not in self.rotate:
            return old.strip()
        password = _new_password()
        self.write(rel, password + "\n")
        return password


def provision(
    inventory: Path,
    out: Path,
    rotate: Iterable[str] = (),
    *,
    broker_path: Path | None = None,
    gateway_path: Path | None = None,
    gateway_user: str | None = None,
    broker_user: str | None = None,
) -> ProvisionResult:
    """Generate (or bring up to date) everything ``out`` holds for the boards of
    ``inventory`` (see the module doc). Raises ProvisionError on bad input."""
    boards, settings = load_inventory(inventory)
    known = {b.device for b in boards}
    wanted = set(rotate)
    unknown = sorted(wanted - known - set(ROLE_TARGETS))
    if unknown:
        raise ProvisionError(
            f"--rotate {unknown[0]}: expected a device id of {inventory} or one of "
            f"{', '.join(ROLE_TARGETS)}"
        )
    owners = {d: _uid_gid(u) for d, u in (("gateway", gateway_user), ("broker", broker_user)) if u}
    out = out.resolve()
    _mkdir(out)
    run = _Run(
        out,
        wanted,
        broker_path.resolve() if broker_path else None,
        gateway_path.resolve() if gateway_path else None,
    )
    result = ProvisionResult(out, [b.key for b in boards], settings, rotated=sorted(wanted))

    ca_key, ca_pem = _ca(run, boards)
    server_names = {"127.0.0.1", "localhost", *settings.hosts}
    for b in boards:
        mqtt = b.config["mqtt"]
        server_names.add(mqtt["host"])
        hostname = mqtt.get("tls", {}).get("server_hostname")
        if hostname:
            server_names.add(hostname)
    _server_cert(run, ca_key, ca_pem, server_names)

    # Accounts: (username, password, ACL lines) for the boards' listener.
    prefix = settings.topic_prefix
    device_accounts: list[tuple[str, str, list[str]]] = []
    command_keys = _load_command_keys(out / "operator" / "command_keys.json")
    for b in boards:
        password, command_key = _board(run, b, ca_pem, command_keys.get(b.key))
        command_keys[b.key] = command_key
        base = f"{prefix}/{b.site}/{b.device}"
        device_accounts.append(
            (
                b.username,
                password,
                [
                    f"topic write {base}/{leaf}"
                    for leaf in ("telemetry", "status", "alarm", "cmd/ack")
                ]
                + [f"topic read {base}/cmd"],
            )
        )
    command_keys = {k: v for k, v in command_keys.items() if k in result.boards}
    run.write(
        "operator/command_keys.json", json.dumps(command_keys, indent=2, sort_keys=True) + "\n"
    )

    operator_pw = run.secret("operator/mqtt-password", "operator")
    device_accounts.append(
        (
            OPERATOR_USER,
            operator_pw,
            [f"topic write {prefix}/+/+/cmd", f"topic read {prefix}/+/+/cmd/ack"],
        )
    )
    dashboard_pw = run.secret("dashboard/mqtt-password", "dashboard")
    device_accounts.append((DASHBOARD_USER, dashboard_pw, [f"topic read {prefix}/#"]))
    gateway_pw = run.secret("gateway/mqtt-password", "gateway")
    gateway_accounts = [
        (
            GATEWAY_USER,
            gateway_pw,
            [
                f"topic read {prefix}/#",
                # What the broker dropped at its queue limits: the gateway's metrics show it.
                f"topic read {BROKER_DROPPED_TOPIC}",
                f"topic write {prefix}/+/gateway/{settings.gateway_id}/alarm/#",
            ]
            # A group: its alarms, its members' presence and markers (gateway/ha.py).
            + (
                [
                    f"topic write {prefix}/+/gateway/{settings.gateway_group}/alarm/#",
                    f"topic write {prefix}/_group/{settings.gateway_group}/#",
                ]
                if settings.gateway_group
                else []
            ),
        )
    ]
    _passwd(run, "broker/devices.passwd", device_accounts)
    _passwd(run, "broker/gateway.passwd", gateway_accounts)
    run.write("broker/devices.acl", _acl(device_accounts))
    run.write("broker/gateway.acl", _acl(gateway_accounts))
    conf = broker_conf(
        run.broker_path,
        port=settings.port,
        bind=settings.bind,
        gateway_port=settings.gateway_port,
        gateway_bind=settings.gateway_bind,
    )
    if settings.region_bundle is not None:
        from o2chain.region_provision import bridge_conf

        bundle = settings.region_bundle
        try:
            region_ca = (bundle / "region-ca.pem").read_bytes()
        except OSError as e:
            raise ProvisionError(f"[region] bundle: cannot read {bundle / 'region-ca.pem'}") from e
        run.write("broker/region-ca.pem", region_ca)
        bridge = bridge_conf(bundle, topic_prefix=prefix, ca_path=run.broker_path / "region-ca.pem")
        run.write("broker/bridge.conf", bridge)
        conf += "\n" + bridge
    elif (out / "broker" / "bridge.conf").exists():
        (out / "broker" / "bridge.conf").unlink()  # [region] taken out of the inventory
        result.notes.append("no [region] bundle any more: the bridge to the central broker is gone")
    run.write("broker/o2chain.conf", conf)

    for who in ("gateway", "operator", "dashboard"):
        run.write(f"{who}/ca.pem", ca_pem)
    _client_files(run, settings, boards)
    result.web_passwords = _web_users(run)
    if result.web_passwords:
        lines = [
            "# o2chain operator web page: initial logins, shown once by `o2chain provision`.",
            f"# Users file: {result.users_file} (scrypt hashes). Change them after first login.",
            *(f"{name} {pw}" for name, pw in result.web_passwords.items()),
        ]
        run.write("operator/initial-passwords.txt", "\n".join(lines) + "\n")

    stale = sorted(p.name for p in (out / "boards").iterdir() if p.is_dir() and p.name not in known)
    if stale:
        result.notes.append(
            f"boards no longer in the inventory (no broker account any more; their files are "
            f"kept in {out / 'boards'}): {', '.join(stale)}"
        )
    if "ca" in wanted:
        result.notes.append(
            "new CA: copy the new broker files, restart the broker and re-flash every board "
            "(its ca.pem changed)"
        )
    for sub_dir, (uid, gid) in owners.items():
        _chown_tree(out / sub_dir, uid, gid)
    result.changed = run.changed
    return result


def _uid_gid(name: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError as e:
        raise ProvisionError(f"user {name!r}: no such user on this machine") from e
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise ProvisionError(f"user {name!r}: giving files to another user needs root")
    return entry.pw_uid, entry.pw_gid


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for child in path.iterdir():
        os.chown(child, uid, gid)


def _ca(run: _Run, boards: list[Board]) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    return _ca_for(run, sorted({b.site for b in boards}))


def _ca_for(run: _Run, names: Sequence[str]) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """The CA key and certificate under ``run.out/ca``: kept while they match each other (a
    new one for ``--rotate ca`` or when missing), named after ``names``; also copied for the
    broker. A site and a region (``o2chain.region_provision``) make theirs alike."""
    key_path, cert_path = run.out / "ca" / "ca.key", run.out / "ca" / "ca.pem"
    key = None if "ca" in run.rotate else _load_key(key_path)
    cert = None if key is None else _load_cert(cert_path)
    if key is not None and cert is not None and not _same_key(cert, key):
        raise ProvisionError(
            f"{cert_path} does not belong to {key_path}: restore the pair or use --rotate ca"
        )
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = None
    if cert is None:
        cert = _make_ca(key, names)
    run.write("ca/ca.key", _key_pem(key))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    run.write("ca/ca.pem", pem)
    run.write("broker/ca.pem", pem)
    return key, pem


def _server_cert(
    run: _Run, ca_key: ec.EllipticCurvePrivateKey, ca_pem: bytes, names: set[str]
) -> None:
    ca = x509.load_pem_x509_certificate(ca_pem)
    key_path, cert_path = run.out / "broker" / "server.key", run.out / "broker" / "server.pem"
    rotated = "server" in run.rotate or "ca" in run.rotate
    key = None if "server" in run.rotate else _load_key(key_path)
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
    cert = _load_cert(cert_path)
    fresh = (
        cert is not None
        and not rotated
        and _same_key(cert, key)
        and _signed_by(cert, ca)
        and _cert_names(cert) == names
        and cert.not_valid_after_utc - _now() > dt.timedelta(days=RENEW_BEFORE_DAYS)
    )
    if not fresh or cert is None:
        cert = _make_server_cert(key, ca_key, ca, names)
    run.write("broker/server.key", _key_pem(key))
    run.write("broker/server.pem", cert.public_bytes(serialization.Encoding.PEM))


def _load_command_keys(path: Path) -> dict[str, str]:
    text = _read_text(path)
    if text is None:
        return {}
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ProvisionError(f"{path}: not valid JSON ({e}); restore it or remove it") from e
    if not isinstance(doc, dict):
        raise ProvisionError(f'{path}: expected {{"site/device": "<64 hex>"}}')
    return {k: v for k, v in doc.items() if isinstance(v, str) and _is_command_key(v)}


def _is_command_key(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _board(run: _Run, b: Board, ca_pem: bytes, known_key: str | None) -> tuple[str, str]:
    """Write the board's config.json and CA; return (MQTT password, command key)."""
    rel = f"boards/{b.device}/config.json"
    old: dict[str, Any] = {}
    text = _read_text(run.out / rel)
    if text is not None:
        try:
            old = json.loads(text)
        except ValueError:
            old = {}
    rotated = b.device in run.rotate
    old_mqtt = old.get("mqtt", {}) if isinstance(old.get("mqtt"), dict) else {}
    password = old_mqtt.get("password")
    if (
        rotated
        or old_mqtt.get("username") != b.username
        or not isinstance(password, str)
        or len(password) < 24
    ):
        password = _new_password()
    command_key = old.get("command_key", known_key)
    if rotated or not isinstance(command_key, str) or not _is_command_key(command_key):
        command_key = secrets.token_hex(32)
    cfg = json.loads(json.dumps(b.config))
    mqtt = cfg["mqtt"]
    mqtt["username"] = b.username
    mqtt["password"] = password
    tls = mqtt.setdefault("tls", {})
    ca_file = tls.get("ca_file") or "/ca.pem"
    tls["ca_file"] = ca_file
    cfg["command_key"] = command_key
    run.write(rel, json.dumps(cfg, indent=2) + "\n")
    run.write(f"boards/{b.device}/{ca_file.rsplit('/', 1)[-1]}", ca_pem)
    return password, command_key


def _passwd(run: _Run, rel: str, accounts: list[tuple[str, str, list[str]]]) -> None:
    # Keep an existing line whose hash still matches: re-runs leave the file as it is.
    old: dict[str, str] = {}
    for line in (_read_text(run.out / rel) or "").splitlines():
        user, sep, stored = line.rpartition(":")
        if sep:
            old[user] = stored
    lines = []
    for user, password, _ in accounts:
        stored = old.get(user, "")
        if not mosquitto_verify(password, stored):
            stored = mosquitto_hash(password)
        lines.append(f"{user}:{stored}")
    run.write(rel, "\n".join(lines) + "\n")


def _acl(accounts: list[tuple[str, str, list[str]]]) -> str:
    out = ["# Written by `o2chain provision`; a topic not listed here is refused."]
    for user, _, rules in accounts:
        out += ["", f"user {user}", *rules]
    return "\n".join(out) + "\n"


def _broker_host(settings: BrokerSettings, boards: list[Board]) -> tuple[str, str | None]:
    mqtt = boards[0].config["mqtt"]
    return mqtt["host"], mqtt.get("tls", {}).get("server_hostname")


def _client_files(run: _Run, settings: BrokerSettings, boards: list[Board]) -> None:
    gw_host = settings.gateway_bind or "127.0.0.1"
    gateway_doc: dict[str, Any] = {
        "gateway": {"id": settings.gateway_id},
        "mqtt": {
            "url": f"mqtts://{gw_host}:{settings.gateway_port}",
            "username": GATEWAY_USER,
            "password_file": str(run.gateway_path / "mqtt-password"),
            "ca_file": str(run.gateway_path / "ca.pem"),
            "topic_prefix": settings.topic_prefix,
        },
        "http": {"users_file": str(run.gateway_path / "users.toml")},
    }
    if settings.gateway_group:
        gateway_doc["mqtt"]["shared_group"] = settings.gateway_group
    head = (
        "# The gateway's [mqtt] and [http] lines for this site, written by `o2chain provision`:\n"
        "# merge them into the gateway config (gateway/README.md).\n"
    )
    run.write("gateway/gateway.toml", head + tomli_w.dumps(gateway_doc))
    host, hostname = _broker_host(settings, boards)
    for who, user in (("operator", OPERATOR_USER), ("dashboard", DASHBOARD_USER)):
        doc = {
            "url": f"mqtts://{host}:{settings.port}",
            "username": user,
            "password_file": str(run.out / who / "mqtt-password"),
            "ca_file": str(run.out / who / "ca.pem"),
            "topic_prefix": settings.topic_prefix,
        }
        if hostname:
            doc["server_hostname"] = hostname
        head = f"# MQTT account {user!r} of this site, written by `o2chain provision`.\n"
        run.write(f"{who}/mqtt.toml", head + tomli_w.dumps(doc))


def _web_users(run: _Run) -> dict[str, str]:
    """Create users.toml with the admin and operator logins if missing (or ``web`` rotated);
    returns the new plain passwords ({} when the file was kept)."""
    path = run.out / "gateway" / "users.toml"
    text = _read_text(path)
    if text is not None and "web" not in run.rotate:
        try:
            users = tomllib.loads(text).get("user", [])
        except tomllib.TOMLDecodeError as e:
            raise ProvisionError(f"{path}: not valid TOML ({e}); fix it or --rotate web") from e
        names = {u.get("name") for u in users if isinstance(u, dict)}
        if all(name in names for name, _ in WEB_USERS):
            path.chmod(_FILE_MODE)
            return {}
    passwords = {name: _new_web_password() for name, _ in WEB_USERS}
    doc = {
        "user": [
            {"name": name, "role": role, "password_hash": hash_password(passwords[name])}
            for name, role in WEB_USERS
        ]
    }
    run.write(
        "gateway/users.toml", "# Operator web users (`o2chain provision`).\n" + tomli_w.dumps(doc)
    )
    return passwords


# -- command line -----------------------------------------------------------------------------


def register(sub: Any) -> None:
    """Add ``o2chain provision`` to the ``o2chain`` parser."""
    p = sub.add_parser(
        "provision",
        help="generate a site's CA, broker accounts/ACLs, board configs and gateway credentials",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("-i", "--inventory", type=Path, required=True, help="board inventory TOML")
    p.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--rotate", action="append", default=[], metavar="NAME",
        help="replace a secret: a device id, gateway, operator, dashboard, web, server or ca "
        "(repeat or separate with commas)",
    )  # fmt: skip
    p.add_argument(
        "--broker-path", type=Path, default=None,
        help="where the broker will read DIR/broker's files (written into o2chain.conf; "
        "default: DIR/broker itself)",
    )  # fmt: skip
    p.add_argument(
        "--gateway-path", type=Path, default=None,
        help="where the gateway will read DIR/gateway's files (written into gateway.toml; "
        "default: DIR/gateway itself)",
    )  # fmt: skip
    p.add_argument("--gateway-user", default=None, help="give DIR/gateway to this user (root)")
    p.add_argument("--broker-user", default=None, help="give DIR/broker to this user (root)")
    p.set_defaults(handler=_main)


def _main(args: argparse.Namespace) -> int:
    rotate = [n.strip() for arg in args.rotate for n in arg.split(",") if n.strip()]
    try:
        result = provision(
            args.inventory,
            args.out,
            rotate,
            broker_path=args.broker_path,
            gateway_path=args.gateway_path,
            gateway_user=args.gateway_user,
            broker_user=args.broker_user,
        )
    except (ProvisionError, OSError) as e:
        print(f"o2chain provision: {e}", file=sys.stderr)
        return 2
    print(report(result))
    return 0


def report(result: ProvisionResult) -> str:
    """What a person needs after a run: where things are, the web logins if new."""
    out = result.out_dir
    s = result.settings
    rotated = f", rotated {', '.join(result.rotated)}" if result.rotated else ""
    lines = [
        f"o2chain provision: {len(result.boards)} boards in {out} "
        f"({len(result.changed)} files written{rotated})",
        f"  broker      include {out / 'broker' / 'o2chain.conf'} (TLS {s.port} for boards, "
        f"{s.gateway_port} for the gateway)",
        f"  boards      {out / 'boards'}/<device>/config.json + ca.pem (flash both)",
        f"  gateway     merge {out / 'gateway' / 'gateway.toml'} into the gateway config",
        f"  operator    {out / 'operator'} (command_keys.json, mqtt.toml)",
    ]
    if result.web_passwords:
        lines.append("  web logins  (shown once; also in " + f"{result.initial_passwords_file})")
        lines += [f"    {name:<9} {pw}" for name, pw in result.web_passwords.items()]
    else:
        lines.append(f"  web logins  unchanged ({result.users_file})")
    lines += [f"  note: {n}" for n in result.notes]
    return "\n".join(lines)
