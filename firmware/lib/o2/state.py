"""Small persisted board state: the boot counter (telemetry ``boot`` field).

Written to a temporary file and renamed over the old one, so a power loss mid-write leaves
either the old or the new value (rename is atomic on LittleFS and POSIX).
"""

import os

BOOT_FILE = "/boot_count"


def read_boot(path: str = BOOT_FILE) -> int:
    """Stored boot counter, 0 if none."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def next_boot(path: str = BOOT_FILE) -> int:
    """Increment and persist the boot counter; returns the new value (first boot = 1)."""
    n = read_boot(path) + 1
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % n)
    os.rename(tmp, path)
    return n
