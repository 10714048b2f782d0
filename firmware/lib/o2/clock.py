"""Wall clock for telemetry ``ts``: ms since the Unix epoch (UTC), 0 until SNTP has set it.

Embedded ports count from 2000-01-01 (``time.gmtime(0)[0] == 2000``), the unix port from
1970: the offset is taken from the port, never assumed. The clock keeps an offset to the
local RTC instead of setting the RTC, so setting it needs no ``machine.RTC`` and a bad NTP
answer can be corrected by the next one.
"""

import time

try:
    from micropython import const
except ImportError:  # CPython (tests): const() is the identity

    def const(x):  # type: ignore[misc]
        return x


_UNIX_TO_2000_S = const(946684800)  # seconds from 1970-01-01 to 2000-01-01 UTC
EPOCH_OFFSET_MS = _UNIX_TO_2000_S * 1000 if time.gmtime(0)[0] == 2000 else 0


def local_ms() -> int:
    """The RTC as Unix ms (meaningless until set, but monotonic enough between NTP syncs)."""
    return time.time_ns() // 1000000 + EPOCH_OFFSET_MS


class Clock:
    """``synced`` once ``set_unix_ms`` got a time from NTP."""

    def __init__(self) -> None:
        self.synced = False
        self.offset_ms = 0

    def set_unix_ms(self, unix_ms: int) -> None:
        self.offset_ms = unix_ms - local_ms()
        self.synced = True

    def epoch_ms(self) -> int:
        """Unix ms (UTC), or 0 when the clock has never been set."""
        if not self.synced:
            return 0
        return local_ms() + self.offset_ms
