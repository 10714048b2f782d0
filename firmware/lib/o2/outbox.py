"""Bounded RAM ring of encoded readings waiting for the broker's PUBACK (pure, no I/O).

Oldest first. A reading leaves the ring only when its PUBACK arrived (``ack``); on a
connection loss every in-flight reading becomes unsent again (``requeue``) and is published
once more -- duplicates are harmless because the gateway deduplicates on (boot, seq).
When the ring is full the oldest reading is dropped and counted; the flash spool (issue 5)
will hook in at ``_overflow`` and refill through ``next_unsent`` instead.
"""

UNSENT = 0
ACKED = -1


class Outbox:
    """``capacity`` readings; each slot holds ``bytes`` and a state (UNSENT, ACKED or a mid)."""

    def __init__(self, capacity: int = 32) -> None:
        if capacity < 1:
            raise ValueError("outbox capacity %d" % capacity)
        self._payloads: list = [None] * capacity
        self._state = [UNSENT] * capacity
        self._head = 0
        self._count = 0
        self.dropped = 0  # readings lost because the ring was full (since boot)

    def __len__(self) -> int:
        """Readings not yet acknowledged (sent or not)."""
        return self._count

    @property
    def capacity(self) -> int:
        return len(self._payloads)

    def put(self, payload: bytes) -> None:
        """Append a reading; if full, the oldest one is dropped first (and counted)."""
        cap = len(self._payloads)
        if self._count == cap:
            self._overflow(self._payloads[self._head])
            self._payloads[self._head] = None
            self._head = (self._head + 1) % cap
            self._count -= 1
        i = (self._head + self._count) % cap
        self._payloads[i] = payload
        self._state[i] = UNSENT
        self._count += 1

    def next_unsent(self) -> int:
        """Slot index of the oldest unsent reading, or -1."""
        cap = len(self._payloads)
        for k in range(self._count):
            i = (self._head + k) % cap
            if self._state[i] == UNSENT:
                return i
        return -1

    def payload(self, slot: int) -> bytes:
        return self._payloads[slot]

    def mark_sent(self, slot: int, mid: int) -> None:
        """Record that ``slot`` went out as message id ``mid`` (before awaiting the write)."""
        self._state[slot] = mid

    def ack(self, mid: int) -> bool:
        """Release the reading sent as ``mid``; False if unknown (e.g. dropped meanwhile)."""
        cap = len(self._payloads)
        found = False
        for k in range(self._count):
            i = (self._head + k) % cap
            if self._state[i] == mid:
                self._state[i] = ACKED
                self._payloads[i] = None
                found = True
                break
        # Acks normally arrive in order; release every acknowledged slot at the head.
        while self._count and self._state[self._head] == ACKED:
            self._state[self._head] = UNSENT
            self._head = (self._head + 1) % cap
            self._count -= 1
        return found

    def requeue(self) -> None:
        """Connection lost: every in-flight reading is unsent again."""
        cap = len(self._payloads)
        for k in range(self._count):
            i = (self._head + k) % cap
            if self._state[i] > 0:
                self._state[i] = UNSENT

    def _overflow(self, payload) -> None:
        # Flash spool goes here (issue 5, item 6); for now the reading is lost and counted.
        self.dropped += 1
