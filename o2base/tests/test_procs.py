"""o2base.procs helpers: the bounded wait and the start/stop ``with`` protocol."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from o2base.procs import ChildProcess, ProcessError, StartStop, name_os_thread, wait_until


def test_wait_until_returns_once_the_condition_holds() -> None:
    calls = []

    def third_time() -> bool:
        calls.append(1)
        return len(calls) >= 3

    wait_until(third_time, 30, "the third poll", poll_s=0.001)
    assert len(calls) == 3


def test_wait_until_names_what_it_waited_for() -> None:
    with pytest.raises(ProcessError, match=r"^timed out after 0 s waiting for the moon$"):
        wait_until(lambda: False, 0, "the moon")


def test_wait_until_raises_the_callers_error() -> None:
    with pytest.raises(AssertionError, match="waiting for a marker"):
        wait_until(lambda: False, 0, "a marker", error=AssertionError)


def test_wait_until_ends_when_the_child_dies(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('bye'); raise SystemExit(3)"]
    dying = r"exited with 3 while waiting for a file: .*bye"
    child = ChildProcess(argv, tmp_path / "child.log")
    with child, pytest.raises(ProcessError, match=dying):
        wait_until(lambda: (tmp_path / "never").exists(), 60, "a file", proc=child)


class Recording(StartStop):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def stop(self) -> None:
        self.calls.append("stop")


def test_start_stop_runs_the_block_between_start_and_stop() -> None:
    thing = Recording()
    with pytest.raises(KeyError), thing as entered:
        assert entered is thing and thing.calls == ["start"]
        raise KeyError("the block fails")
    assert thing.calls == ["start", "stop"]


def test_a_thread_named_for_the_kernel_shows_in_proc() -> None:
    seen: list[str] = []

    def work() -> None:
        name_os_thread("o2-test-thread-long-name")
        seen.append(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text())

    t = threading.Thread(target=work)
    t.start()
    t.join(5)
    assert seen == ["o2-test-thread-\n"]  # 15 bytes kept
