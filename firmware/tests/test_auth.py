"""The firmware's HMAC-SHA256 (o2.auth, also run under MicroPython by test_pure.py with the RFC
4231 vectors) against CPython's own ``hmac`` on random keys and messages of every length
around the 64-byte block size."""

from __future__ import annotations

import hashlib
import hmac
import random

from .conftest import load_firmware_module

auth = load_firmware_module("o2.auth")


def test_hmac_matches_cpython() -> None:
    rng = random.Random(5)
    for key_len in (0, 1, 31, 32, 63, 64, 65, 200):
        for msg_len in (0, 1, 55, 56, 63, 64, 65, 1000):
            key = rng.randbytes(key_len)
            msg = rng.randbytes(msg_len)
            assert auth.hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()
