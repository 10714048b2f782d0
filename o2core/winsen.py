"""Winsen's 9-byte UART frames, shared by its gas modules (ZE03-O2 oxygen, MH-Z19B/C CO2).

Winsen ZE03-O2 and MH-Z19B manuals, "communication protocol": UART 9600 8N1, frames of 9 bytes
from the start byte 0xFF, the last byte a checksum of bytes 1..7:
``CS = (~(b1 + ... + b7) + 1) & 0xFF``. The firmware's drivers (o2/ze03.py, o2/mhz19.py) use it;
the simulators' sensor models keep an independent copy on purpose (simulators/wire/winsen.py, the
oracle), and both are tested against ``o2core/vectors.json``.
"""


def checksum(frame: bytes | bytearray | memoryview) -> int:
    """Checksum of bytes 1..7 of a 9-byte frame (byte 0 is the 0xFF start byte)."""
    total = 0
    for i in range(1, 8):
        total += frame[i]
    return (~total + 1) & 0xFF
