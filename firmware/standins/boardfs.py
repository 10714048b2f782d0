# Mounts the emulated board's filesystem (test only), imported once by run_board.py: the board
# directory (argv[1]) at /, the stand-ins (this directory) at /standins and /dev beside them
# (standins/README.md). Compiled like the stand-ins, and dropped
# from sys.modules once imported: only the BoardFs class stays in the emulated board's heap.
import os
import sys

import vfs


class BoardFs:
    """VfsPosix rooted at the board directory, with rename() fixed.

    The unix port's VfsPosix formats both rename() paths into one shared buffer, so an
    absolute destination overwrites the source: rename('/a.tmp', '/a') becomes
    rename('/a', '/a') -> ENOENT. Relative paths bypass that buffer, so the destination is
    handed down relative to the current directory. (LittleFS on the board has no such bug.)
    A wrapper, not a subclass: a subclass of VfsPosix breaks import from the mount. Every
    other method is the VfsPosix one, looked up on use (no bound methods kept on the heap).
    """

    def __init__(self, root):
        self._fs = vfs.VfsPosix(root)

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def rename(self, old, new):
        if new.startswith("/"):
            depth = len([p for p in os.getcwd().split("/") if p])
            new = "../" * depth + new[1:]
        self._fs.rename(old, new)


vfs.umount("/")
vfs.mount(BoardFs(sys.argv[1]), "/")
vfs.mount(vfs.VfsPosix(sys.path[0]), "/standins")  # sys.path[0]: this script's directory
vfs.mount(vfs.VfsPosix("/dev"), "/dev")
os.chdir("/")
# The ESP32 port's path is ['', '.frozen', '/lib']; the stand-ins come first so that they
# replace the built-in machine module.
sys.path[:] = ["/standins", "", ".frozen", "/lib"]
