"""Winsen's 9-byte UART frames, shared by its modules (ZE03-O2, MH-Z19 CO2): ``FF`` start byte,
``(~(b1 + ... + b7) + 1) & 0xFF`` checksum (docs/domain.md, Sensor wire protocols).

Written independently of the firmware's ``o2core.winsen`` on purpose: the simulated sensors are
the oracle of the board's drivers, and both are tested against ``o2core/vectors.json``."""

from __future__ import annotations

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
