"""Small persisted board state: the boot counter (telemetry ``boot``) and the reset history.

The boot counter identifies readings together with ``seq``: restarting it at 1 would make the
gateway drop fresh readings as duplicates of old ones. So it is kept in two copies
(``/boot_count`` and ``/boot_count.bak``), each ``"<n> <crc32>"`` and each written to a
temporary file renamed over the old one (atomic on LittleFS and POSIX). The larger valid copy
wins. If both are damaged, the counter is recovered from the newest reading in the spool
(``recover`` callable) and, failing that, set to a random value above 2**24 -- never silently
back to 1. The recovery is reported (``Boot.recovered``) in the status message.
"""

import os
from binascii import crc32

try:
    from micropython import const
except ImportError:  # CPython (tests): const() is the identity

    def const(x):  # type: ignore[misc]
        return x


_BOOT_FILE = const("/boot_count")
_RESETS_FILE = const("/resets")
RANDOM_BOOT_BASE = 1 << 24


def encode_counter(n: int) -> str:
    """``"<n> <crc32 of the decimal n>"``: a line that a torn or flipped write cannot fake."""
    text = "%d" % n
    return "%s %d\n" % (text, crc32(text.encode()) & 0xFFFFFFFF)


def decode_counter(text):
    """The counter from ``encode_counter`` text, or None if damaged."""
    parts = text.split()
    if len(parts) != 2:
        return None
    try:
        n, crc = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    if n < 0 or crc32(parts[0].encode()) & 0xFFFFFFFF != crc:
        return None
    return n


def _read(path: str):
    # (value or None, file existed)
    try:
        with open(path) as f:
            return decode_counter(f.read()), True
    except OSError:
        return None, False
    except ValueError:  # undecodable bytes
        return None, True


def _write(path: str, n: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(encode_counter(n))
    os.rename(tmp, path)


class Boot:
    """Result of ``next_boot``: ``number`` and ``recovered`` ("" or how it was recovered)."""

    def __init__(self, number: int, recovered: str) -> None:
        self.number = number
        self.recovered = recovered


def next_boot(path: str = _BOOT_FILE, recover=None, rand=None) -> Boot:
    """Increment and persist the boot counter (first boot of a fresh board = 1).

    ``recover()`` returns the newest boot number found in the spool (0 if none); ``rand()``
    returns a random 31-bit int (``os.urandom`` by default). Raises OSError if the flash
    cannot be written at all.
    """
    a, a_exists = _read(path)
    b, b_exists = _read(path + ".bak")
    found = -1
    for v in (a, b):
        if v is not None and v > found:
            found = v
    recovered = ""
    spool_boot = recover() if recover is not None else 0
    if found < 0:
        if spool_boot > 0:
            found = spool_boot
            recovered = "spool"
        elif a_exists or b_exists:
            found = RANDOM_BOOT_BASE + (rand() if rand is not None else _urandom31()) % (1 << 30)
            recovered = "random"
        else:
            found = 0  # a fresh board
    elif spool_boot > found:
        # Both copies were rolled back (e.g. restored from an old backup): the spool knows.
        found = spool_boot
        recovered = "spool"
    n = found + 1
    _write(path, n)
    _write(path + ".bak", n)
    return Boot(n, recovered)


def _urandom31() -> int:
    r = os.urandom(4)
    return (r[0] | (r[1] << 8) | (r[2] << 16) | (r[3] << 24)) & 0x7FFFFFFF


def rapid_resets(path: str = _RESETS_FILE) -> int:
    """Count this boot as a (so far) unstable one; returns the number of unstable boots in a
    row, this one included. ``mark_stable()`` resets it after a healthy run."""
    n, _ = _read(path)
    n = (n or 0) + 1
    try:
        _write(path, n)
    except OSError:
        pass
    return n


def mark_stable(path: str = _RESETS_FILE) -> None:
    """The board ran long enough: the next reset does not count as part of a crash loop."""
    try:
        _write(path, 0)
    except OSError:
        pass
