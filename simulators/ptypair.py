"""A pair of linked pseudo-terminals (a null-modem cable) made by socat.

    with PtyPair(tmp_dir) as pair:
        serve_on(pair.a)      # e.g. an RTU server or a sensor simulator
        connect_to(pair.b)    # the gateway, the firmware's UART stand-in, a test client

Both ends are real ttys (``/dev/pts/N`` behind the symlinks ``a`` and ``b``), so programs that
open a serial device by path work unchanged. Needs the Debian package ``socat``.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType


class PtyPairError(RuntimeError):
    """socat is missing or did not create the pair."""


class PtyPair:
    def __init__(self, directory: Path, name: str = "tty") -> None:
        self.a = str(Path(directory) / f"{name}A")
        self.b = str(Path(directory) / f"{name}B")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 5.0) -> PtyPair:
        socat = shutil.which("socat")
        if socat is None:
            raise PtyPairError("socat not found: apt-get install -y socat")
        self._proc = subprocess.Popen(
            [socat, f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout_s
        # socat gives no readiness signal but the links themselves: wait for both (bounded).
        while not (Path(self.a).exists() and Path(self.b).exists()):
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise PtyPairError(f"socat exited with {self._proc.returncode}: {err}")
            if time.monotonic() > deadline:
                self.stop()
                raise PtyPairError(f"socat did not create {self.a} and {self.b} in {timeout_s} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            with contextlib.suppress(OSError):
                proc.stderr.close()
        self._proc = None

    def __enter__(self) -> PtyPair:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
