"""Winsen's 9-byte UART frames, shared by its modules (ZE03-O2, MH-Z19 CO2): ``FF`` start byte,
``(~(b1 + ... + b7) + 1) & 0xFF`` checksum (docs/domain.md, Sensor wire protocols), and their
common question-and-answer behaviour on the line (:class:`QueryWire`).

Written independently of the firmware's ``o2core.winsen`` on purpose: the simulated sensors are
the oracle of the board's drivers, and both are tested against ``o2core/vectors.json``."""

from __future__ import annotations

from simulators.wire.faults import SensorWire

FRAME_LEN = 9
READ_CMD = 0x86  # "read the gas concentration"


def checksum(frame: bytes | bytearray) -> int:
    """Checksum of bytes 1..7: ``(~sum + 1) & 0xFF``."""
    return (~sum(frame[1:8]) + 1) & 0xFF


def take_commands(buf: bytearray) -> tuple[list[bytes], int]:
    """Cut the complete host commands (``FF 01 CMD ... CS``) off the head of ``buf``, resyncing
    on the start byte past garbage; returns the valid frames and how many bad ones were
    skipped. An incomplete command stays in ``buf`` for the next bytes."""
    frames: list[bytes] = []
    bad = 0
    while len(buf) >= FRAME_LEN:
        start = buf.find(b"\xff")
        if start < 0:
            buf.clear()
            break
        del buf[:start]
        if len(buf) < FRAME_LEN:
            break
        frame = bytes(buf[:FRAME_LEN])
        if frame[1] != 0x01 or frame[8] != checksum(frame):
            bad += 1
            del buf[:1]
            continue
        del buf[:FRAME_LEN]
        frames.append(frame)
    return frames, bad


class QueryWire(SensorWire):
    """A Winsen module in Q&A mode on its line (a ``faults.Wire``): it answers each valid read
    command with :meth:`frame`, accepts its other commands without a reply, as the modules do,
    and never speaks unasked. ``queries`` counts the answered reads (tests may watch it)."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.queries = 0
        self.bad_frames = 0

    def frame(self, now_s: float) -> bytes:
        """The answer to a read as the line carries it (faults applied)."""
        raise NotImplementedError

    def receive(self, data: bytes, now_s: float) -> bytes:
        """Bytes from the host; returns the answers to any complete read commands."""
        if self.faults.disconnected:
            return b""
        self._buf += data
        out = b""
        frames, bad = take_commands(self._buf)
        self.bad_frames += bad
        for frame in frames:
            if frame[2] == READ_CMD:
                self.queries += 1
                out += self.frame(now_s)
        return out

    def tick(self, now_s: float) -> bytes:
        return b""

    def next_due(self, now_s: float) -> float | None:
        return None
