"""Log lines that a flood must not multiply: per key (e.g. a reject reason) the first one in
full, then, while more keep coming, one summary line per interval with how many were held back.

Counters elsewhere stay exact; this only decides what reaches the log. A flood of bad
messages from one broken (or hostile) board would otherwise write one WARNING per message:
gigabytes of journal, and the one line that matters scrolled away.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

REJECT_LOG_INTERVAL_S = 60.0
MAX_KEYS = 256  # distinct keys remembered (reject reasons are a closed set of ~15)


@dataclass
class _Window:
    started_s: float
    held: int = 0
    example: str = ""


class RateLimitedLog:
    """``log(key, msg, *args)``: the first line per key in full, then one summary per
    ``interval_s`` with the count held back (written by :meth:`flush` or the next call)."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        interval_s: float = REJECT_LOG_INTERVAL_S,
        level: int = logging.WARNING,
        clock_s: Callable[[], float] = time.monotonic,
    ):
        self.logger = logger
        self.what = what  # "rejected MQTT messages"
        self.interval_s = interval_s
        self.level = level
        self.clock_s = clock_s
        self.held_back = 0  # lines not written one by one since start
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def log(self, key: str, msg: str, *args: object) -> None:
        now = self.clock_s()
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window.started_s < self.interval_s:
                window.held += 1
                self.held_back += 1
                window.example = msg % args if args else msg
                return
            if window is not None and window.held:
                self._summary(key, window)
            if len(self._windows) >= MAX_KEYS and key not in self._windows:
                self._windows.clear()
            self._windows[key] = _Window(now)
        self.logger.log(self.level, msg, *args)

    def pending(self) -> bool:
        """Lines held back that a summary has not reported yet."""
        return self.due_in_s() is not None

    def due_in_s(self) -> float | None:
        """Seconds until the next summary is due (0 if overdue), None if nothing is held back."""
        now = self.clock_s()
        with self._lock:
            due = [w.started_s + self.interval_s - now for w in self._windows.values() if w.held]
        return max(0.0, min(due)) if due else None

    def flush(self, force: bool = False) -> None:
        """Write the summary of every key whose interval is over (all of them if ``force``)."""
        now = self.clock_s()
        with self._lock:
            for key, window in list(self._windows.items()):
                if window.held and (force or now - window.started_s >= self.interval_s):
                    self._summary(key, window)
                    window.started_s = now

    def _summary(self, key: str, window: _Window) -> None:
        self.logger.log(
            self.level,
            "%s (%s): %d more since the last line (one line per %.0f s at most); the latest: %s",
            self.what,
            key,
            window.held,
            self.interval_s,
            window.example,
        )
        window.held = 0
