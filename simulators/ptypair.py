"""A pair of linked pseudo-terminals (a null-modem cable) made by socat.

    with PtyPair(tmp_dir) as pair:
        serve_on(pair.a)      # e.g. an RTU server or a sensor simulator
        connect_to(pair.b)    # the gateway, the firmware's UART stand-in, a test client

Both ends are real ttys (``/dev/pts/N`` behind the symlinks ``a`` and ``b``), so programs that
open a serial device by path work unchanged. Needs the Debian package ``socat``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from o2base.procs import ChildProcess, StartStop, wait_until


class PtyPairError(RuntimeError):
    """socat is missing or did not create the pair."""


class PtyPair(StartStop):
    def __init__(self, directory: Path, name: str = "tty") -> None:
        self.a = str(Path(directory) / f"{name}A")
        self.b = str(Path(directory) / f"{name}B")
        self._log = Path(directory) / f"{name}.socat.log"
        self._child: ChildProcess | None = None

    def start(self, timeout_s: float = 5.0) -> PtyPair:
        socat = shutil.which("socat")
        if socat is None:
            raise PtyPairError("socat not found: apt-get install -y socat")
        argv = [socat, f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"]
        child = self._child = ChildProcess(argv, self._log).start()
        # socat gives no readiness signal but the links themselves: wait for both (bounded).
        try:
            wait_until(
                lambda: Path(self.a).exists() and Path(self.b).exists(),
                timeout_s,
                f"socat to create {self.a} and {self.b}",
                proc=child,
                error=PtyPairError,
                poll_s=0.01,
            )
        except PtyPairError:
            self.stop()
            raise
        return self

    def stop(self) -> int | None:
        """Stop socat (the links go with it); returns its exit code."""
        child, self._child = self._child, None
        return None if child is None else child.stop(timeout_s=5.0)
