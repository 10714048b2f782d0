"""A power cut really loses the page cache (gateway/README.md, ``outbox_sync``): the outbox
lives on an ext4 file system in a loop device; a process commits points and reports each
commit as it returns (the moment the gateway would acknowledge the message); then the device's
image is copied while the file system is still mounted. The copy holds what reached the
device - whatever was only in the page cache is gone, as after a power cut - and is mounted
again (journal replay, SQLite WAL recovery) like a rebooted host.

``full`` must keep every commit that returned; ``normal`` is the control: it loses the last
commits (documented under "What can still lose data"), which shows the cut is real.

Needs root (loop devices, mount); ext4 is mounted with ``commit=600`` so the journal does not
write back on its own during the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.outbox import Outbox

pytestmark = pytest.mark.integration

COMMITS = 40

# The gateway's side: open the outbox, wait until the file system is synced (the outbox
# existed long before the cut), then commit one point at a time, printing each returned commit.
CHILD = r"""
import sys
from pathlib import Path
from gateway.outbox import Outbox
box = Outbox(Path(sys.argv[1]), synchronous=sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[3])):
    box.commit([f"room,device=d seq={i}i {i}"])
    print(i, flush=True)
sys.stdin.readline()  # alive when the power goes
"""


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextmanager
def mounted(image: Path, mountpoint: Path) -> Iterator[Path]:
    device = run("losetup", "--find", "--show", str(image))
    try:
        mountpoint.mkdir(exist_ok=True)
        run("mount", "-t", "ext4", "-o", "commit=600", device, str(mountpoint))
        try:
            yield mountpoint
        finally:
            run("umount", str(mountpoint))
    finally:
        run("losetup", "--detach", device)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    if os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root, losetup and mkfs.ext4 (loop devices) to cut the power")
    path = tmp_path / "disk.img"
    with path.open("wb") as f:
        f.truncate(64 << 20)
    run("mkfs.ext4", "-q", "-F", str(path))
    try:
        with mounted(path, tmp_path / "probe"):
            pass
    except RuntimeError as exc:
        pytest.skip(f"this machine does not let the test mount a loop device: {exc}")
    return path


def cut_power(image: Path, tmp_path: Path, sync: str) -> tuple[int, list[str], str]:
    """Commit under ``sync``, cut the power after the last returned commit; returns (commits
    that returned, points found after the reboot, SQLite's integrity check)."""
    crashed = tmp_path / f"crashed-{sync}.img"
    with mounted(image, tmp_path / f"mnt-{sync}") as mnt:
        (mnt / "state").mkdir()
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(mnt / "state" / "outbox.sqlite"), sync,
             str(COMMITS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert child.stdin is not None and child.stdout is not None
        try:
            assert child.stdout.readline().strip() == "ready"
            run("sync", "--file-system", str(mnt))
            child.stdin.write("\n")
            child.stdin.flush()
            returned = [int(child.stdout.readline()) for _ in range(COMMITS)]
            assert returned == list(range(COMMITS))
            shutil.copyfile(image, crashed)  # the power goes: what the device holds survives
        finally:
            child.kill()
            child.wait(30)
    with mounted(crashed, tmp_path / f"reboot-{sync}") as mnt:
        box = Outbox(mnt / "state" / "outbox.sqlite")
        try:
            (check,) = box.db.execute("PRAGMA integrity_check").fetchone()
            lines = box.peek_batch(10 * COMMITS).lines
        finally:
            box.close()
    return len(returned), lines, str(check)


def test_full_sync_keeps_every_commit_that_returned_across_a_power_cut(
    image: Path, tmp_path: Path
) -> None:
    returned, lines, check = cut_power(image, tmp_path, "FULL")
    assert check == "ok"
    assert lines == [f"room,device=d seq={i}i {i}" for i in range(returned)]


def test_normal_sync_loses_the_last_commits_so_the_cut_is_real(image: Path, tmp_path: Path) -> None:
    returned, lines, check = cut_power(image, tmp_path, "NORMAL")
    assert check == "ok"
    assert len(lines) < returned  # acknowledged, then lost with the page cache
    assert lines == [f"room,device=d seq={i}i {i}" for i in range(len(lines))]  # a prefix
