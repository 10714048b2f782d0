# Stand-in for `ntptime` (test only): the host's clock is already UTC, so settime() only
# succeeds, like a reachable NTP server would.
import time

host = "pool.ntp.org"
timeout = 1


def time_s():
    return time.time()


def settime():
    return None
