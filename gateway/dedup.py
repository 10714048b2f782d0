"""Duplicate and gap detection on (device, boot, seq). Pure: no I/O, no clock.

A board numbers its readings ``seq`` = 0, 1, 2, ... per ``boot`` (contract, payload v1). Per
device the tracker keeps, for the last :data:`BOOTS_KEPT` boots, the highest ``seq`` seen and a
bitmap of the :data:`WINDOW` sequence numbers below it, so memory is bounded by
``devices x BOOTS_KEPT x WINDOW / 8`` bytes whatever the traffic.

- a ``seq`` already marked in the window is a **duplicate** (dropped, counted);
- a jump above the highest ``seq`` opens a **gap** (counted as missing, logged by the caller);
  a reading that later fills it is counted as ``late`` and no longer missing;
- a reading older than the window, or of a boot older than those kept, cannot be checked: it is
  accepted and counted ``unverified`` - harmless, because points are idempotent in InfluxDB
  (the same device, time and values overwrite the same point).

The state is saved with every outbox commit (same SQLite transaction, see ``Outbox.commit``), so
after a crash a redelivered message is recognised as the duplicate it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

WINDOW = 4096  # seqs remembered below the highest: > a board's RAM ring of unsent readings
BOOTS_KEPT = 4  # a board replaying its flash spool after a reboot sends the previous boot's seqs
_FULL = (1 << WINDOW) - 1


class Verdict(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    LATE = "late"  # new, filled a gap reported earlier
    UNVERIFIED = "unverified"  # older than the window: accepted, cannot be checked


@dataclass
class BootState:
    max_seq: int
    window: int  # bit i set: seq (max_seq - i) was seen; bit 0 is max_seq itself


@dataclass
class DeviceCounters:
    duplicates: int = 0
    gaps: int = 0  # gap events (a jump in seq)
    missing: int = 0  # seqs skipped by gaps and not (yet) filled
    late: int = 0
    unverified: int = 0


@dataclass(frozen=True)
class Check:
    verdict: Verdict
    gap_from: int = 0  # first missing seq when the reading opened a gap
    gap_to: int = -1  # last missing seq (inclusive); gap_to < gap_from: no gap

    @property
    def gap(self) -> int:
        return max(0, self.gap_to - self.gap_from + 1)


# Answers without a gap are the same every time: one instance each (frozen, so shareable).
_NEW, _LATE = Check(Verdict.NEW), Check(Verdict.LATE)
_DUPLICATE, _UNVERIFIED = Check(Verdict.DUPLICATE), Check(Verdict.UNVERIFIED)
# The answer for a reading next in sequence (new, no gap): always this one instance, so the
# usual case is told by identity.
IN_SEQUENCE = _NEW


@dataclass
class SeqTracker:
    """Duplicate / gap tracker for all devices; ``dirty`` names states to persist."""

    boots: dict[str, dict[int, BootState]] = field(default_factory=dict)
    counters: dict[str, DeviceCounters] = field(default_factory=dict)
    dirty: set[tuple[str, int]] = field(default_factory=set)

    def check(self, device: str, boot: int, seq: int) -> Check:
        """Classify one reading of ``device`` (``site/device``) and record it as seen."""
        counters = self.counters.get(device)
        if counters is None:
            counters = self.counters[device] = DeviceCounters()
        per_boot = self.boots.get(device)
        if per_boot is None:
            per_boot = self.boots[device] = {}
        state = per_boot.get(boot)
        if state is None:
            if len(per_boot) >= BOOTS_KEPT and boot < min(per_boot):
                counters.unverified += 1
                return _UNVERIFIED
            per_boot[boot] = BootState(seq, 1)
            while len(per_boot) > BOOTS_KEPT:
                del per_boot[min(per_boot)]
            self.dirty.add((device, boot))
            return _NEW  # first sight of a boot: nothing to compare with
        if seq > state.max_seq:
            shift = seq - state.max_seq
            check = _NEW
            if shift > 1:
                check = Check(Verdict.NEW, state.max_seq + 1, seq - 1)
                counters.gaps += 1
                counters.missing += shift - 1
            state.window = ((state.window << shift) | 1) & _FULL if shift < WINDOW else 1
            state.max_seq = seq
            self.dirty.add((device, boot))
            return check
        age = state.max_seq - seq
        if age >= WINDOW:
            counters.unverified += 1
            return _UNVERIFIED
        bit = 1 << age
        if state.window & bit:
            counters.duplicates += 1
            return _DUPLICATE
        state.window |= bit
        self.dirty.add((device, boot))
        counters.late += 1
        counters.missing = max(0, counters.missing - 1)
        return _LATE

    def take_dirty(self) -> list[tuple[str, int, int, bytes]]:
        """Rows ``(device, boot, max_seq, window bytes)`` changed since the last call."""
        rows = []
        for device, boot in self.dirty:
            state = self.boots.get(device, {}).get(boot)
            if state is not None:
                rows.append((device, boot, state.max_seq, state.window.to_bytes(WINDOW // 8)))
        self.dirty.clear()
        return rows

    @classmethod
    def from_rows(cls, rows: list[tuple[str, int, int, bytes]]) -> SeqTracker:
        """Rebuild from saved rows (keeps the newest :data:`BOOTS_KEPT` boots per device)."""
        tracker = cls()
        for device, boot, max_seq, window in rows:
            per_boot = tracker.boots.setdefault(device, {})
            per_boot[boot] = BootState(max_seq, int.from_bytes(window) & _FULL)
            while len(per_boot) > BOOTS_KEPT:
                del per_boot[min(per_boot)]
        return tracker
