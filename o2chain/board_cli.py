"""``o2chain board cmd``: sign a command for one board, publish it, wait for its ack.

    o2chain board cmd --keys provision/operator/command_keys.json --site lhasa-hotel \\
        --device room-101 --mqtt mqtts://10.0.0.2:8883 --username operator \\
        --password-file operator.pw --ca ca.pem set_interval '{"interval_s": 30}'

The keys file is ``{"site/device": "<64 hex>"}`` (mode 0600, written by provisioning). The
command body ``{"id","ctr","site","device","cmd","args"}`` is signed with HMAC-SHA256 and sent
as ``{"body": "<body JSON>", "mac": "<hex>"}`` (firmware/README.md "Commands") on
``o2/{site}/{device}/cmd``, QoS 1, never retained. The counter is the larger of the last one
used for that board + 1 and the current time in ms, kept in ``command_counters.json`` next to
the keys file (mode 0600, locked while in use), so a lost state file cannot fall behind the
board's counter either. Exit status: 0 accepted, 1 refused (or no ack), 2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import ssl
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

NAME_RE = re.compile(r"^[a-z0-9-]{1,32}$")
COUNTERS_FILE = "command_counters.json"


class UsageError(Exception):
    """A mistake in the command line or the files it names (exit 2)."""


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (exit 2), not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def register(sub: argparse._SubParsersAction) -> None:
    board = sub.add_parser("board", help="signed commands to boards")
    board_sub = board.add_subparsers(
        dest="board_command", required=True, metavar="COMMAND", parser_class=_OneLineParser
    )
    cmd = board_sub.add_parser(
        "cmd",
        help="sign a command, publish it (QoS 1, not retained), wait for the board's ack",
        description=__doc__.split("\n\n")[0],
    )
    cmd.add_argument("--keys", required=True, type=Path, help="command_keys.json (mode 0600)")
    cmd.add_argument("--site", required=True)
    cmd.add_argument("--device", required=True)
    cmd.add_argument("--mqtt", required=True, help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    cmd.add_argument("--username", default=None)
    cmd.add_argument("--password-file", type=Path, default=None)
    cmd.add_argument("--ca", type=Path, default=None, help="CA certificate for mqtts://")
    cmd.add_argument("--topic-prefix", default="o2")
    cmd.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the ack")
    cmd.add_argument(
        "name", metavar="CMD", help="report_config, set_interval, set_thresholds, calibrate, reboot"
    )
    cmd.add_argument(
        "args",
        metavar="JSON-ARGS",
        nargs="?",
        default="{}",
        help="the command's arguments as a JSON object, e.g. '{\"interval_s\": 30}'",
    )
    cmd.set_defaults(handler=_cmd)


def load_key(keys_file: Path, site: str, device: str) -> bytes:
    """The board's 32-byte command key; UsageError naming the file and the problem."""
    try:
        mode = keys_file.stat().st_mode
        doc = json.loads(keys_file.read_text())
    except OSError as exc:
        raise UsageError(f"{keys_file}: cannot read ({exc.strerror})") from exc
    except ValueError as exc:
        raise UsageError(f"{keys_file}: not valid JSON ({exc})") from exc
    if mode & 0o077:
        raise UsageError(f"{keys_file}: mode {mode & 0o777:o}, expected 600 (chmod 600 it)")
    if not isinstance(doc, dict):
        raise UsageError(f'{keys_file}: expected {{"site/device": "<64 hex>"}}')
    name = f"{site}/{device}"
    key = doc.get(name)
    if key is None:
        raise UsageError(f"{keys_file}: no key for {name}")
    if not isinstance(key, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", key):
        raise UsageError(f"{keys_file}: key of {name}: expected 64 hex characters")
    return bytes.fromhex(key)


def next_counter(keys_file: Path, name: str, now_ms: int | None = None) -> int:
    """Take the next counter for board ``name`` and persist it before it is used."""
    path = keys_file.parent / COUNTERS_FILE
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # two operators at once never share a counter
        text = f.read()
        try:
            counters = json.loads(text) if text.strip() else {}
        except ValueError as exc:
            raise UsageError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(counters, dict):
            raise UsageError(f"{path}: expected an object of counters")
        ctr = max(int(counters.get(name, 0)) + 1, now_ms)
        counters[name] = ctr
        f.seek(0)
        f.truncate()
        f.write(json.dumps(counters, indent=1, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return ctr


def sign(key: bytes, body: dict[str, Any]) -> bytes:
    """The envelope ``{"body": "<JSON>", "mac": "<hex>"}`` the board verifies."""
    text = json.dumps(body, separators=(",", ":"))
    mac = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    return json.dumps({"body": text, "mac": mac}).encode()


def _parse_args(args: argparse.Namespace) -> tuple[dict[str, Any], str, int, bool]:
    for what, value in (("--site", args.site), ("--device", args.device)):
        if not NAME_RE.fullmatch(value):
            raise UsageError(f"{what} {value!r}: expected 1..32 characters [a-z0-9-]")
    try:
        cmd_args = json.loads(args.args)
    except ValueError as exc:
        raise UsageError(f"JSON-ARGS {args.args!r}: not valid JSON ({exc})") from exc
    if not isinstance(cmd_args, dict):
        raise UsageError(f"JSON-ARGS {args.args!r}: expected a JSON object")
    url = urlsplit(args.mqtt)
    if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
        raise UsageError(f"--mqtt {args.mqtt!r}: expected mqtt://HOST[:PORT] or mqtts://...")
    try:
        port = url.port or (8883 if url.scheme == "mqtts" else 1883)
    except ValueError as exc:
        raise UsageError(f"--mqtt {args.mqtt!r}: bad port") from exc
    if args.ca is not None and not args.ca.is_file():
        raise UsageError(f"--ca {args.ca}: no such file")
    return cmd_args, url.hostname, port, url.scheme == "mqtts"


def _cmd(args: argparse.Namespace) -> int:
    try:
        cmd_args, host, port, tls = _parse_args(args)
        key = load_key(args.keys, args.site, args.device)
        password = None
        if args.password_file is not None:
            try:
                password = args.password_file.read_text().strip()
            except OSError as exc:
                raise UsageError(f"--password-file {args.password_file}: {exc.strerror}") from exc
    except UsageError as exc:
        print(f"o2chain board cmd: {exc}", file=sys.stderr)
        return 2
    name = f"{args.site}/{args.device}"
    try:
        ctr = next_counter(args.keys, name)
    except UsageError as exc:
        print(f"o2chain board cmd: {exc}", file=sys.stderr)
        return 2
    cmd_id = uuid.uuid4().hex[:12]
    body = {
        "id": cmd_id,
        "ctr": ctr,
        "site": args.site,
        "device": args.device,
        "cmd": args.name,
        "args": cmd_args,
    }
    prefix = f"{args.topic_prefix}/{args.site}/{args.device}/"
    try:
        ack = publish_and_wait(
            host,
            port,
            tls,
            args.ca,
            args.username,
            password,
            prefix,
            sign(key, body),
            cmd_id,
            args.timeout,
        )
    except ConnectionError as exc:
        print(f"o2chain board cmd: {exc}", file=sys.stderr)
        return 1
    if ack is None:
        print(
            f"o2chain board cmd: no ack from {name} within {args.timeout:g} s "
            "(board offline or command lost)",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(ack))
    return 0 if ack.get("ok") is True else 1


def publish_and_wait(
    host: str,
    port: int,
    tls: bool,
    ca: Path | None,
    username: str | None,
    password: str | None,
    prefix: str,
    payload: bytes,
    cmd_id: str,
    timeout_s: float,
) -> dict[str, Any] | None:
    """Subscribe to ``cmd/ack``, publish the command (QoS 1, not retained), return the ack
    with our id (None on timeout). Raises ConnectionError with the broker's reason."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"o2chain-cmd-{uuid.uuid4().hex[:8]}"
    )
    if username is not None:
        client.username_pw_set(username, password)
    if tls:
        client.tls_set(ca_certs=str(ca) if ca else None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    subscribed = threading.Event()
    connected = threading.Event()
    done = threading.Event()
    found: list[dict[str, Any]] = []
    refused: list[str] = []

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            refused.append(str(rc))
        else:
            c.subscribe(prefix + "cmd/ack", qos=1)
        connected.set()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        with contextlib.suppress(ValueError):
            doc = json.loads(msg.payload)
            if isinstance(doc, dict) and doc.get("id") == cmd_id:
                found.append(doc)
                done.set()

    client.on_connect = on_connect
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = on_message
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionError(f"cannot connect to {host}:{port}: {exc}") from exc
    client.loop_start()
    try:
        if not connected.wait(timeout_s) or refused:
            reason = refused[0] if refused else "no CONNACK"
            raise ConnectionError(f"broker {host}:{port} refused the connection: {reason}")
        if not subscribed.wait(timeout_s):
            raise ConnectionError(f"broker {host}:{port}: no SUBACK for {prefix}cmd/ack")
        client.publish(prefix + "cmd", payload, qos=1, retain=False).wait_for_publish(timeout_s)
        done.wait(timeout_s)
    finally:
        client.loop_stop()
        client.disconnect()
    return found[0] if found else None
