"""Wall clock for telemetry ``ts``: ms since the Unix epoch (UTC), 0 until NTP has set it.

Embedded ports count from 2000-01-01 (``time.gmtime(0)[0] == 2000``), the unix port from
1970: the offset is taken from the port, never assumed.
"""

import time

UNIX_TO_2000_S = 946684800  # seconds from 1970-01-01 to 2000-01-01 UTC
EPOCH_OFFSET_MS = UNIX_TO_2000_S * 1000 if time.gmtime(0)[0] == 2000 else 0


class Clock:
    """``synced`` is set by the network layer once NTP succeeded."""

    def __init__(self) -> None:
        self.synced = False

    def epoch_ms(self) -> int:
        """Unix ms (UTC), or 0 when the clock has never been set."""
        if not self.synced:
            return 0
        return time.time_ns() // 1000000 + EPOCH_OFFSET_MS
