# A board behind a serial port (test only): `micropython -i serial_board.py BOARD_DIR`, run
# from the stand-ins directory, on the far side of a socat PTY. Like an ESP32 at power-on it
# runs /boot.py and /main.py when they are there, and leaves the REPL to whoever is on the
# port (mpremote, o2chain firmware flash) when main.py ends (Ctrl-C) or is missing.
import os
import sys

import boardfs  # noqa: F401 -- mounts BOARD_DIR at /, the stand-ins at /standins

del sys.modules["boardfs"]
for name in ("/boot.py", "/main.py"):
    try:
        os.stat(name)
    except OSError:
        continue
    execfile(name, {"__name__": "__main__"})  # noqa: F821 -- a MicroPython builtin
