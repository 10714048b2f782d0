"""``o2chain firmware``: build the board firmware, run it on a laptop as an emulated board.

o2chain firmware build [--out build/firmware]
o2chain firmware run --config FILE [--heap 220K] [--o2-pct 24.5] [--duration S]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from o2chain.firmware_runner import BoardRunner, FirmwareError, build_firmware


def register(sub: Any) -> None:
    """Add the ``firmware`` command and its subcommands to the ``o2chain`` parser."""
    parser = sub.add_parser("firmware", help="build and run the ESP32 board firmware")
    commands = parser.add_subparsers(dest="firmware_command", required=True, metavar="COMMAND")

    build = commands.add_parser("build", help="compile firmware/lib with mpy-cross")
    build.add_argument("--out", type=Path, default=Path("build/firmware"), help="output dir")
    build.set_defaults(handler=_build)

    run = commands.add_parser(
        "run", help="run the firmware on micropython with simulated sensors (emulated board)"
    )
    run.add_argument("--config", type=Path, required=True, help="board config.json")
    run.add_argument("--heap", default="220K", help="micropython heap (110K ~ a bare ESP32)")
    run.add_argument("--o2-pct", type=float, default=24.5, help="what the simulated ZE03 reads")
    run.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    run.add_argument(
        "--work-dir", type=Path, default=None, help="board dir to keep (default: a temp dir)"
    )
    run.add_argument("--build", type=Path, default=None, help="use this build, do not rebuild")
    run.set_defaults(handler=_run)


def _build(args: argparse.Namespace) -> int:
    try:
        files = build_firmware(args.out)
    except FirmwareError as e:
        print(f"firmware build: {e}", file=sys.stderr)
        return 1
    for rel in files:
        print(args.out / rel)
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        config = json.loads(args.config.read_text())
    except (OSError, ValueError) as e:
        print(f"firmware run: {args.config}: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="o2chain-board-") as tmp:
        work_dir = args.work_dir or Path(tmp)
        board = BoardRunner(config, work_dir, args.heap, args.o2_pct, build_dir=args.build)
        return _run_board(board, args.duration)


def _run_board(board: BoardRunner, duration_s: float | None) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        board.start()
        print(f"board {board.pid}: fs {board.board_dir}, console {board.log_path}", flush=True)
        deadline = None if duration_s is None else time.monotonic() + duration_s
        shown = 0
        while not stop.is_set() and board.running:
            text = board.log_text()  # follow the console, like a serial monitor
            sys.stdout.write(text[shown:])
            sys.stdout.flush()
            shown = len(text)
            if deadline is not None and time.monotonic() >= deadline:
                break
            stop.wait(0.2)
        board.stop()
        sys.stdout.write(board.log_text()[shown:])
        return 0 if board.returncode in (0, 130, None) or stop.is_set() else 1
    except FirmwareError as e:
        print(f"firmware run: {e}", file=sys.stderr)
        return 1
    finally:
        board.kill()
        for s, handler in previous.items():
            signal.signal(s, handler)
