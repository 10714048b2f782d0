"""Operator password hashes (scrypt, from the standard library), one format for every writer.

A hash reads ``scrypt$N$r$p$SALT$KEY`` (SALT and KEY urlsafe base64 without padding). scrypt's
cost parameters travel with the hash, so raising them later keeps old hashes verifiable.
Defaults N=2**14, r=8, p=1: the interactive-login parameters of RFC 7914 section 2 and
Python's ``hashlib.scrypt`` documentation, about 16 MiB and a few tens of ms per check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SCHEME = "scrypt"
_N, _R, _P = 1 << 14, 8, 1
_KEY_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r, dklen=_KEY_BYTES
    )


def hash_password(password: str) -> str:
    """A new salted hash of ``password`` in the format above."""
    salt = secrets.token_bytes(16)
    key = _derive(password, salt, _N, _R, _P)
    return f"{SCHEME}${_N}${_R}${_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; False for a wrong password or a malformed hash
    (never raises on bad input, compares in constant time)."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        return False
    if not (1 < n <= 1 << 20 and n & (n - 1) == 0 and 0 < r <= 32 and 0 < p <= 16):
        return False  # refuse costs that would let a crafted file exhaust memory or CPU
    return hmac.compare_digest(_derive(password, salt, n, r, p), key)
