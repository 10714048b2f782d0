"""Command authentication (pure but for the counter file): HMAC-SHA256 (RFC 2104) over the exact
bytes of a command body, a per-board monotonic counter, and the envelope format.

A command on ``o2/{site}/{device}/cmd`` is the JSON envelope::

    {"body": "<command JSON, as a string>", "mac": "<64 lowercase hex>"}

``mac = HMAC-SHA256(bytes.fromhex(command_key), body.encode("utf-8"))``: the MAC covers the body
string byte for byte, so neither side ever re-serialises JSON. The body is a JSON object with
``id`` (str), ``ctr`` (int, larger than every counter this board accepted before), ``site`` and
``device`` (this board's), ``cmd`` and optionally ``args`` (an object). firmware/README.md
"Commands" documents it; ``o2chain board cmd`` writes it. Loaded on demand.
"""

import hashlib
import json

try:
    from micropython import const
except ImportError:  # CPython (tests): const() is the identity

    def const(x):  # type: ignore[misc]
        return x


# Module constants are const(): no global name, no qstr (the board's qstr pool is tight).
_BLOCK = const(64)  # SHA-256 block size (RFC 2104: B)
_COUNTER_FILE = const("/cmd_counter")


class Refused(ValueError):
    """A command that is not executed; the message is the reason sent in the ack."""


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256 of ``msg`` under ``key`` (RFC 2104 / FIPS 198-1)."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key + bytes(_BLOCK - len(key))
    inner = hashlib.sha256(bytes([b ^ 0x36 for b in key]))
    inner.update(msg)
    outer = hashlib.sha256(bytes([b ^ 0x5C for b in key]))
    outer.update(inner.digest())
    return outer.digest()


def key_bytes(v) -> bytes:
    """The 32-byte key from the config's 64 hex characters ``v``; Refused if unusable."""
    # (Parameter names are qstrs: ``v`` is one the config schema already interned.)
    if not isinstance(v, str) or len(v) != 64:
        raise Refused("commands disabled: no command_key in config.json")
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise Refused("commands disabled: command_key is not 64 hex characters")


def verify(key: bytes, payload, site: str, device: str, last_ctr: int) -> dict:
    """The command body (a dict) if ``payload`` is an authentic, fresh command for this board.

    Raises Refused with the reason: not an envelope, bad MAC, another board, old counter.
    """
    try:
        env = json.loads(payload)
        body_text = env["body"]
        mac = bytes.fromhex(env["mac"])
    except Exception:  # noqa: BLE001 -- ValueError, KeyError, TypeError: all the same answer
        raise Refused('expected {"body": "<command JSON>", "mac": "<64 hex>"}')
    good = hmac_sha256(key, body_text.encode()) if isinstance(body_text, str) else b""
    # Constant time: how long the comparison takes does not say how much of the MAC matched.
    diff = len(good) ^ len(mac)
    for i in range(min(len(good), len(mac))):
        diff |= good[i] ^ mac[i]
    if diff:
        raise Refused("bad mac")
    try:
        body = json.loads(body_text)
        ctr = body["ctr"]
    except Exception:  # noqa: BLE001
        raise Refused("body: expected a JSON object with ctr")
    if body.get("site") != site or body.get("device") != device:
        raise Refused("command for %s/%s, not this board" % (body.get("site"), body.get("device")))
    if not isinstance(ctr, int) or isinstance(ctr, bool) or ctr <= last_ctr:
        raise Refused("replayed or old counter %r (last accepted %d)" % (ctr, last_ctr))
    args = body.get("args", {})
    if not isinstance(args, dict):
        raise Refused("args: expected an object")
    return body


def counter(ctr=None, path: str = _COUNTER_FILE) -> int:
    """Without ``ctr``: the highest counter accepted so far (0 if none). With ``ctr``: persist
    it (write-then-rename) before the command runs, so a replay is refused also after a reboot
    or power loss; returns it.

    A damaged file refuses every command (Refused) rather than reopen old counters; it is
    written by rename, so only damaged flash can do that (fix: replace /cmd_counter over USB).
    """
    if ctr is not None:
        import os

        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d" % ctr)
        os.rename(tmp, path)
        return ctr
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return 0
    try:
        return int(text)
    except ValueError:
        raise Refused("/cmd_counter damaged: replace it over USB")
