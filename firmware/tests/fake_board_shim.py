# A "fake board" for deploy tests: `micropython -i fake_board_shim.py DIR`
# behind socat's PTY mounts DIR as the board's root filesystem, then leaves the REPL to
# mpremote, which copies files onto it as it would onto an ESP32.
import os
import sys

import vfs

vfs.umount("/")
vfs.mount(vfs.VfsPosix(sys.argv[1]), "/")  # type: ignore[attr-defined]  # unix port only
os.chdir("/")
