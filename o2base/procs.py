"""Child processes of o2chain's own (gateway, simulators) for the demo and the tests.

Each runs in its own session with its output in a log file; waiting for readiness means
watching that log for a line the process prints once it is ready (an event, not a sleep).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType


class ProcessError(RuntimeError):
    """A child process exited early or did not get ready; the message carries its log tail."""


class ChildProcess:
    """``ChildProcess(["o2chain", "gateway", "run", ...], log_path)`` as a context manager."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def start(self) -> ChildProcess:
        """Start the process (again, after it ended); raises ProcessError while it runs.

        Refusing a second start keeps a running child from being forgotten (and leaked).
        """
        if self.running:
            raise ProcessError(f"{self.argv[:4]} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start {' '.join(self.argv)}\n".encode())
            log.flush()
            env = dict(os.environ if self.env is None else self.env)
            env.setdefault("PYTHONUNBUFFERED", "1")
            self._proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        _LIVE.add(self)
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(
        self, pattern: str, timeout_s: float = 15.0, cancel: threading.Event | None = None
    ) -> re.Match[str]:
        """Return the first match of ``pattern`` in the log since start; raises ProcessError.

        ``cancel`` set (a Ctrl-C caught by the caller's signal handler) ends the wait with
        KeyboardInterrupt, so a start-up can be interrupted between two polls.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            if cancel is not None and cancel.is_set():
                raise KeyboardInterrupt
            text = self.log_text()
            last_start = text.rfind("--- start ")
            match = regex.search(text, max(0, last_start))
            if match:
                return match
            if not self.running:
                raise ProcessError(
                    f"{self.argv[:4]} exited with {self.returncode} before printing "
                    f"{pattern!r}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ProcessError(
                    f"{self.argv[:4]} did not print {pattern!r} within {timeout_s} s:\n"
                    f"{self.log_tail()}"
                )
            if cancel is not None:
                cancel.wait(0.02)  # polling a file: there is no event to wait on
            else:
                time.sleep(0.02)

    def signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, sig)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM the process group, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        # Children of the group that outlived the leader (none expected) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        _LIVE.discard(self)
        return self._proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, or power loss of the host)."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        _LIVE.discard(self)

    def __enter__(self) -> ChildProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LogTail:
    """New complete lines of a log file since the last call (a child's stdout, read live)."""

    def __init__(self, path: Path, *, from_end: bool = False) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        if from_end:
            with contextlib.suppress(OSError):
                self._offset = path.stat().st_size

    def lines(self) -> list[str]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return []
        self._offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        return [line.decode(errors="replace") for line in complete]


# Children still running when the interpreter exits (a test that failed before its cleanup, an
# uncaught exception) are stopped then; they run in sessions of their own and would outlive us.
_LIVE: set[ChildProcess] = set()


@atexit.register
def _stop_leftovers() -> None:
    for child in list(_LIVE):
        child.stop(timeout_s=3.0)


def o2chain_argv(*args: str) -> list[str]:
    """argv running this installation's ``o2chain`` command with the current interpreter."""
    return [sys.executable, "-m", "o2chain.cli", *args]
