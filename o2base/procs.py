"""The one supervisor of child processes: the gateway and simulators the demo and the tests
start, the private Mosquitto and InfluxDB (``o2base.services``), emulated boards
(``o2chain.firmware_runner``) and socat's pseudo-terminal pairs (``simulators.ptypair``).

Each child runs in a session of its own (a Ctrl-C in the terminal reaches the parent, which
decides when children stop) with its output appended to a log file, one ``--- start`` line per
start. Waiting for readiness means watching that log for a line the process prints once it is
ready (an event, not a sleep), or a probe of the caller's. Children still running when the
interpreter exits are stopped then, from one registry.
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
from collections.abc import Callable
from pathlib import Path
from signal import Signals
from types import TracebackType
from typing import Self


class ProcessError(RuntimeError):
    """A child process exited early or did not get ready; the message carries its log tail."""


def process_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat ('T' = stopped), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) is parenthesised and may itself contain spaces or ')'.
    return stat.rpartition(")")[2].split()[0]


def wait_until(
    predicate: Callable[[], object],
    timeout_s: float,
    what: str,
    *,
    proc: ChildProcess | None = None,
    error: Callable[[str], BaseException] = ProcessError,
    poll_s: float = 0.05,
) -> None:
    """Poll ``predicate()`` until it is true: the one bounded wait for a condition that gives
    no event to await (a file another process creates, a kernel state, a counter in another
    thread).

    Raises ``error("timed out after T s waiting for WHAT")`` after ``timeout_s``. With ``proc``
    the pause between polls is a wait on that child, so its death ends the wait at once with
    ``error("ARGV exited with CODE while waiting for WHAT: LOG TAIL")``. Polls start 5 ms apart
    and double up to ``poll_s``.
    """
    deadline = time.monotonic() + timeout_s
    interval_s = min(0.005, poll_s)
    while not predicate():
        if proc is not None and not proc.running:
            raise error(
                f"{proc.argv[:4]} exited with {proc.returncode} while waiting for {what}: "
                f"{proc.log_tail(5)}"
            )
        if time.monotonic() >= deadline:
            raise error(f"timed out after {timeout_s:g} s waiting for {what}")
        if proc is None:
            time.sleep(interval_s)
        else:
            proc.wait(interval_s)  # returns at once if the child dies
        interval_s = min(interval_s * 2, poll_s)


class StartStop:
    """The ``with`` protocol of a thing that has ``start()`` and ``stop()``: ``with thing:``
    starts it and stops it however the block ends (``__enter__`` returns the thing)."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ChildProcess(StartStop):
    """``ChildProcess(["o2chain", "gateway", "run", ...], log_path)`` as a context manager.

    ``stop_signal`` is what an orderly stop sends first (SIGTERM; a board takes SIGINT, as at
    its REPL); ``banner`` replaces the default ``--- start <argv>`` line written before each
    start. Methods are meant to be called from one thread at a time per instance.
    """

    def __init__(
        self,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        *,
        cwd: Path | None = None,
        stop_signal: Signals = Signals.SIGTERM,
        banner: str | None = None,
    ):
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.banner = banner
        self.log_start = 0  # offset of the last start's banner in the log
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

    @property
    def frozen(self) -> bool:
        """True while the process is stopped by SIGSTOP (see :meth:`freeze`)."""
        return self.running and self.pid is not None and process_state(self.pid) == "T"

    def start(self) -> ChildProcess:
        """Start the process (again, after it ended); raises ProcessError while it runs.

        Refusing a second start keeps a running child from being forgotten (and leaked).
        """
        if self.running:
            raise ProcessError(f"{self.argv[:4]} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.log_start = log.tell()
            banner = self.banner or f"--- start {' '.join(self.argv)}"
            log.write(f"{banner}\n".encode())
            log.flush()
            env = dict(os.environ if self.env is None else self.env)
            env.setdefault("PYTHONUNBUFFERED", "1")
            self._proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                start_new_session=True,
                env=env,
            )
        _LIVE.add(self)
        return self

    def wait(self, timeout_s: float | None = None) -> int | None:
        """The exit code once the process ended, or None after ``timeout_s`` (an event to wait
        on: returns at once when the process dies)."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log ("" before the first start)."""
        # Read only the end: a soak run can leave a large log.
        max_bytes = 256 * lines + 4096
        try:
            with self.log_path.open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(size - max_bytes, 0))
                data = log.read()
        except FileNotFoundError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

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
        """``sig`` to the child's whole process group (no-op once it ended)."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """``stop_signal`` to the group (a frozen child is thawed so it can handle it), then
        SIGKILL after ``timeout_s``; returns the exit code (None if never started)."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self.signal(self.stop_signal)
            self.signal(signal.SIGCONT)
            if self.wait(timeout_s) is None:
                self.kill()
        # Children of the group that outlived the leader (none expected) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        _LIVE.discard(self)
        return self._proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the whole process group and reap it (a crash, or power loss of the host)."""
        if self._proc is None:
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        _LIVE.discard(self)
        return self._proc.returncode

    def freeze(self, timeout_s: float = 5.0) -> None:
        """SIGSTOP the child and wait until the kernel reports it stopped: its sockets stay
        open, clients connect at TCP level but get no answer, like a hung server."""
        self._signal_and_wait(signal.SIGSTOP, want_frozen=True, timeout_s=timeout_s)

    def thaw(self, timeout_s: float = 5.0) -> None:
        """SIGCONT a frozen child and wait until it runs again."""
        self._signal_and_wait(signal.SIGCONT, want_frozen=False, timeout_s=timeout_s)

    def _signal_and_wait(self, sig: Signals, *, want_frozen: bool, timeout_s: float) -> None:
        if not self.running:
            raise ProcessError(f"{self.argv[:4]} is not running")
        self.signal(sig)
        wait_until(
            lambda: self.frozen == want_frozen,
            timeout_s,
            f"{self.argv[:4]} to react to {sig.name}",
            proc=self,
            poll_s=0.1,
        )


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


class _Registry:
    """Children with a live process (thread-safe: services start from worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, ChildProcess] = {}

    def add(self, child: ChildProcess) -> None:
        with self._lock:
            self._live[id(child)] = child

    def discard(self, child: ChildProcess) -> None:
        with self._lock:
            self._live.pop(id(child), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)

    def stop_all(self) -> None:
        with self._lock:
            children = list(self._live.values())
        for child in children:
            with contextlib.suppress(Exception):
                child.stop(timeout_s=3.0)


# Children still running when the interpreter exits (a test that failed before its cleanup, an
# uncaught exception, a pytest-timeout) are stopped then; they run in sessions of their own and
# would outlive us. A SIGKILL of this interpreter cannot be covered from inside it;
# PR_SET_PDEATHSIG is not used: it fires when the *thread* that forked exits, and services are
# started from short-lived worker threads.
_LIVE = _Registry()
atexit.register(_LIVE.stop_all)


def o2chain_argv(*args: str) -> list[str]:
    """argv running this installation's ``o2chain`` command with the current interpreter."""
    return [sys.executable, "-m", "o2chain.cli", *args]


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the kernel too (``top -H``, ``/proc/PID/task/*/comm``,
    py-spy's native view), not only in Python; Linux keeps 15 bytes. Best effort: elsewhere, or
    without a C library, nothing happens."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
