"""The power supply of a board behind a serial port (test only): runs ``micropython -i
serial_board.py BOARD_DIR`` again each time it exits (``machine.reset()`` exits with 75, a
soft reset at the REPL with 0), on the terminal socat gave it, until SIGTERM.

Usage: python serial_board_power.py MICROPYTHON STANDINS_DIR BOARD_DIR PIDFILE
"""

import os
import signal
import subprocess
import sys

micropython, standins, board, pidfile = sys.argv[1:5]
child: subprocess.Popen[bytes] | None = None
stopping = False


def on_term(signum: int, frame: object) -> None:
    global stopping
    stopping = True
    if child is not None and child.poll() is None:
        child.kill()


signal.signal(signal.SIGTERM, on_term)
# Ctrl-C on the terminal reaches the whole foreground group: the board's interpreter handles
# it, this loop must not die of it (a handler, not SIG_IGN, so the child gets the default).
signal.signal(signal.SIGINT, lambda signum, frame: None)
with open(pidfile, "w") as f:
    f.write(f"{os.getpid()}\n")
while not stopping:
    child = subprocess.Popen(
        [
            micropython,
            "-X",
            "heapsize=220K",
            "-i",
            os.path.join(standins, "serial_board.py"),
            board,
        ],
        cwd=standins,
    )
    child.wait()
