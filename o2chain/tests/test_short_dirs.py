"""A board runner's short dir outlives a runner killed with SIGKILL; the next runner removes it."""

import subprocess
import sys
from pathlib import Path

from o2base.procs import process_state, wait_until
from o2chain.firmware_runner import OWNER_FILE, SHORT_DIR_PREFIX, sweep_short_dirs


def _short_dir(base: Path, name: str, owner: str | None) -> Path:
    short = base / f"{SHORT_DIR_PREFIX}{name}"
    (short / "s").mkdir(parents=True)
    if owner is not None:
        (short / OWNER_FILE).write_text(owner)
    return short


def test_sweep_removes_only_dirs_of_runners_that_are_gone(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its PID names no process now
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    zombie_dir = _short_dir(tmp_path, "zombie", f"{zombie.pid}\n")
    gone = _short_dir(tmp_path, "gone", f"{dead.pid}\n")
    mine = _short_dir(tmp_path, "mine", "1\n")  # init: always running
    unowned = _short_dir(tmp_path, "unowned", None)  # a runner between mkdtemp and its file
    garbled = _short_dir(tmp_path, "garbled", "not a pid")
    other = tmp_path / "other-dir"
    other.mkdir()
    (other / OWNER_FILE).write_text(f"{dead.pid}\n")
    try:
        # Dead but not reaped until wait(): no event tells when it exited, so poll.
        wait_until(lambda: process_state(zombie.pid) == "Z", 10, "the child to exit")
        removed = sweep_short_dirs(tmp_path)
    finally:
        zombie.wait()
    assert sorted(removed) == sorted([gone, zombie_dir])
    assert not gone.exists() and not zombie_dir.exists()
    assert mine.is_dir() and unowned.is_dir() and garbled.is_dir() and other.is_dir()
