# Launcher for the emulated board (test only): micropython run_board.py BOARD_DIR
# boardfs (compiled, beside this file) mounts the board directory as the root filesystem, then
# /boot.py and /main.py run like the board's boot sequence. Kept tiny: its code stays in the
# emulated board's heap for the whole run.
import sys

import boardfs  # noqa: F401

del sys.modules["boardfs"]
for name in ("/boot.py", "/main.py"):
    execfile(name, {"__name__": "__main__"})  # noqa: F821 -- a MicroPython builtin
