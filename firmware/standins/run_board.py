# Launcher for the emulated board (test only): micropython run_board.py BOARD_DIR STANDINS_DIR
# Mounts the board directory as the root filesystem, the stand-ins and /dev beside it, then
# runs /boot.py and /main.py like the board's boot sequence (MICROPYTHON.md, "Board
# filesystem emulation").
import os
import sys

import vfs


class BoardVfs:
    """VfsPosix rooted at the board directory, with rename() fixed.

    The unix port's VfsPosix formats both rename() paths into one shared buffer, so an
    absolute destination overwrites the source: rename('/a.tmp', '/a') becomes
    rename('/a', '/a') -> ENOENT. Relative paths bypass that buffer, so the destination is
    handed down relative to the current directory. (LittleFS on the board has no such bug.)
    A wrapper, not a subclass: a subclass of VfsPosix breaks import from the mount.
    """

    def __init__(self, root):
        self._fs = vfs.VfsPosix(root)
        for name in (
            "mount",
            "umount",
            "open",
            "ilistdir",
            "chdir",
            "getcwd",
            "mkdir",
            "remove",
            "rmdir",
            "stat",
            "statvfs",
        ):
            setattr(self, name, getattr(self._fs, name))

    def rename(self, old, new):
        if new.startswith("/"):
            depth = len([p for p in os.getcwd().split("/") if p])
            new = "../" * depth + new[1:]
        self._fs.rename(old, new)


board_dir = sys.argv[1]
standins_dir = sys.argv[2]
vfs.umount("/")
vfs.mount(BoardVfs(board_dir), "/")
vfs.mount(vfs.VfsPosix(standins_dir), "/standins")
vfs.mount(vfs.VfsPosix("/dev"), "/dev")
os.chdir("/")
# The ESP32 port's path is ['', '.frozen', '/lib']; the stand-ins come first so that they
# replace the built-in machine module.
sys.path[:] = ["/standins", "", ".frozen", "/lib"]
for name in ("/boot.py", "/main.py"):
    execfile(name, {"__name__": "__main__"})  # noqa: F821 -- a MicroPython builtin
