"""Network namespaces joined by a veth pair: a facility and the central tier on two "hosts" of
one machine, with WAN faults on the link between them (for tests and benchmarks; needs root).

    with NetNs.create("o2f-1a2b") as facility, NetNs.create("o2c-1a2b") as central:
        link = WanLink(facility, central, "10.203.7.1", "10.203.7.2")
        link.impair(loss_pct=5, rate_kbit=2000)
        link.partition()   # every packet dropped, both ways, like a cut line
        link.heal()

Addresses live inside the namespaces only (the machine's own network never sees them). Faults:
``tc netem`` for delay and loss where the kernel has it; otherwise loss and the partition are
nftables rules (``numgen random`` drop, drop all) and the bandwidth a ``tbf`` qdisc, which the
kernels without netem still carry (:func:`netem_available` says which). A partition is always
a silent drop (not a link down, which a sender notices at once): TCP has to find out by its own
timeouts, as over a real WAN.

A process runs inside a namespace through :meth:`NetNs.argv` (``ip netns exec``, which execs
the program: the PID is the program's). Code of this process reaches a namespace's addresses
through :meth:`NetNs.call`, which runs a function in a thread that joined the namespace
(``setns`` moves only the calling thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
TOOLS = ("ip", "tc", "nft")
_libc = ctypes.CDLL(None, use_errno=True)


class NetNsError(RuntimeError):
    """A namespace, link or fault could not be set up; the message carries the command."""


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise NetNsError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}")]


def unique_name(prefix: str) -> str:
    """``prefix`` and 6 random hex digits: runs side by side never share a namespace."""
    return f"{prefix}-{secrets.token_hex(3)}"


_netem: bool | None = None


def netem_available() -> bool:
    """True if this kernel has the netem qdisc (delay, loss); tried once in a throwaway
    namespace."""
    global _netem
    if _netem is None:
        with NetNs.create(unique_name("o2probe")) as ns:
            probe = _run(
                ["ip", "netns", "exec", ns.name, "tc", "qdisc", "add", "dev", "lo", "root",
                 "netem", "delay", "1ms"],
                check=False,
            )  # fmt: skip
            _netem = probe.returncode == 0
    return _netem


class NetNs(contextlib.AbstractContextManager["NetNs"]):
    """One named network namespace with its loopback up; deleted by :meth:`delete` (also on
    ``with`` exit, whatever happened)."""

    def __init__(self, name: str):
        if len(name) > 15:
            raise ValueError(f"namespace name {name!r}: at most 15 characters (interface names)")
        self.name = name

    @classmethod
    def create(cls, name: str) -> NetNs:
        ns = cls(name)
        _run(["ip", "netns", "add", name])
        try:
            ns.ip("link", "set", "lo", "up")
        except NetNsError:
            ns.delete()
            raise
        return ns

    def ip(self, *args: str) -> str:
        return _run(["ip", "-n", self.name, *args]).stdout

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(self.argv(list(argv)), check=check)

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this namespace (``ip netns exec`` execs it: same PID)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` in a thread that joined this namespace: its sockets are the namespace's."""
        result: list[T] = []
        error: list[BaseException] = []

        def body() -> None:
            try:
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise NetNsError(f"setns({self.name}): {os.strerror(err)}")
                finally:
                    os.close(fd)
                result.append(fn())
            except BaseException as exc:  # handed to the caller's thread
                error.append(exc)

        thread = threading.Thread(target=body, name=f"netns-{self.name}", daemon=True)
        thread.start()
        thread.join()
        if error:
            raise error[0]
        return result[0]

    def delete(self) -> None:
        """Delete the namespace (its veth ends go with it); no error if it is gone already."""
        _run(["ip", "netns", "del", self.name], check=False)

    @property
    def exists(self) -> bool:
        return os.path.exists(f"/run/netns/{self.name}")

    def __exit__(self, *exc_info: object) -> None:
        self.delete()  # ``with NetNs.create(...) as ns:`` deletes it at the end


class WanLink:
    """A veth pair from ``a`` (address ``a_addr``) to ``b`` (``b_addr``), one /30 or so; faults
    are applied at both ends (each direction of the line)."""

    def __init__(self, a: NetNs, b: NetNs, a_addr: str, b_addr: str, prefix: int = 30):
        net = ipaddress.ip_network(f"{a_addr}/{prefix}", strict=False)
        if not net.is_private or ipaddress.ip_address(b_addr) not in net:
            raise ValueError(f"{a_addr} and {b_addr}: expected one private /{prefix}")
        self.a, self.b = a, b
        self.a_addr, self.b_addr = a_addr, b_addr
        tag = secrets.token_hex(3)
        self.a_if, self.b_if = f"wa{tag}", f"wb{tag}"
        _run(
            ["ip", "link", "add", self.a_if, "netns", a.name, "type", "veth",
             "peer", "name", self.b_if, "netns", b.name]
        )  # fmt: skip
        for ns, ifname, addr in ((a, self.a_if, a_addr), (b, self.b_if, b_addr)):
            ns.ip("addr", "add", f"{addr}/{prefix}", "dev", ifname)
            ns.ip("link", "set", ifname, "up")
            # One table per end for loss and the partition; chains for both directions.
            ns.run("nft", "add", "table", "inet", "o2wan")
            for chain, hook in (("out", "output"), ("in", "input")):
                ns.run(
                    "nft", "add", "chain", "inet", "o2wan", chain,
                    f"{{ type filter hook {hook} priority 0 ; policy accept ; }}",
                )  # fmt: skip
        self.partitioned = False
        self.applied: list[str] = []

    def _ends(self) -> Iterator[tuple[NetNs, str]]:
        yield self.a, self.a_if
        yield self.b, self.b_if

    def impair(
        self, *, delay_ms: float = 0, jitter_ms: float = 0, loss_pct: float = 0, rate_kbit: int = 0
    ) -> list[str]:
        """Apply delay, loss and a bandwidth cap to each direction (replacing earlier ones);
        returns what was applied, one phrase each. Delay needs netem: without it, it is left
        out and the result says so."""
        self.clear_impairment()
        applied: list[str] = []
        netem = netem_available()
        for ns, ifname in self._ends():
            if netem and (delay_ms or loss_pct):
                args = ["tc", "qdisc", "add", "dev", ifname, "root", "handle", "1:", "netem"]
                if delay_ms:
                    args += ["delay", f"{delay_ms}ms"]
                    if jitter_ms:
                        args += [f"{jitter_ms}ms"]
                if loss_pct:
                    args += ["loss", f"{loss_pct}%"]
                if rate_kbit:
                    args += ["rate", f"{rate_kbit}kbit"]
                ns.run(*args)
                continue
            if loss_pct:
                per_mille = round(loss_pct * 10)
                for chain, match in (("out", "oifname"), ("in", "iifname")):
                    ns.run(
                        "nft", "add", "rule", "inet", "o2wan", chain, match, ifname,
                        "numgen", "random", "mod", "1000", "<", str(per_mille), "drop",
                        "comment", '"loss"',
                    )  # fmt: skip
            if rate_kbit:
                ns.run(
                    "tc", "qdisc", "add", "dev", ifname, "root", "tbf",
                    "rate", f"{rate_kbit}kbit", "burst", "16kb", "latency", "400ms",
                )  # fmt: skip
        if delay_ms:
            applied.append(
                f"delay {delay_ms:g}±{jitter_ms:g} ms (netem)" if netem else
                "no delay (this kernel has no netem)"
            )  # fmt: skip
        if loss_pct:
            applied.append(f"loss {loss_pct:g} % each way ({'netem' if netem else 'nftables'})")
        if rate_kbit:
            applied.append(f"rate {rate_kbit} kbit/s each way ({'netem' if netem else 'tbf'})")
        self.applied = applied
        return applied

    def clear_impairment(self) -> None:
        for ns, ifname in self._ends():
            ns.run("tc", "qdisc", "del", "dev", ifname, "root", check=False)
        self._flush(keep_partition=True)

    def _flush(self, *, keep_partition: bool) -> None:
        for ns, _ in self._ends():
            for chain in ("out", "in"):
                ns.run("nft", "flush", "chain", "inet", "o2wan", chain)
        if keep_partition and self.partitioned:
            self._drop_all()
        self.applied = []

    def _drop_all(self) -> None:
        for ns, ifname in self._ends():
            for chain, match in (("out", "oifname"), ("in", "iifname")):
                ns.run(
                    "nft", "insert", "rule", "inet", "o2wan", chain, match, ifname, "drop",
                    "comment", '"partition"',
                )  # fmt: skip

    def partition(self) -> None:
        """Drop every packet on the line, both ways (silently: no ICMP, no RST)."""
        if not self.partitioned:
            self._drop_all()
            self.partitioned = True

    def heal(self) -> None:
        """End the partition (delay, loss and rate stay as they were)."""
        if not self.partitioned:
            return
        for ns, _ in self._ends():
            for chain in ("out", "in"):
                listing = ns.run("nft", "-a", "list", "chain", "inet", "o2wan", chain).stdout
                for line in listing.splitlines():
                    if '"partition"' in line and "# handle" in line:
                        handle = line.rsplit("# handle", 1)[1].strip()
                        ns.run("nft", "delete", "rule", "inet", "o2wan", chain, "handle", handle)
        self.partitioned = False


@contextlib.contextmanager
def namespaces(*prefixes: str) -> Iterator[list[NetNs]]:
    """Create one namespace per prefix (unique names) and delete them all on exit, whatever
    happened (a test's teardown, even after a failure)."""
    made: list[NetNs] = []
    try:
        for prefix in prefixes:
            made.append(NetNs.create(unique_name(prefix)))
        yield made
    finally:
        for ns in made:
            ns.delete()
