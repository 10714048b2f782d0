# Under `micropython` (test_robustness.py): the board's start-up with a config error that leaves
# no usable local alarm enters safe mode; then a command arrives. Prints the firmware modules
# loaded by then and the free heap. argv: the board directory (lib/ with the compiled firmware,
# the machine/network stand-ins, config.json), mounted as / like a board's filesystem so that
# nothing the firmware writes (/resets, /spool, ...) lands outside it.
import asyncio
import gc
import os
import sys

import vfs

vfs.umount("/")
vfs.mount(vfs.VfsPosix(sys.argv[1]), "/")  # type: ignore[attr-defined]  # unix port only
os.chdir("/")
sys.path[:] = ["", ".frozen", "/lib"]
_run = asyncio.run


def run_until_waiting(coro):
    # Safe mode runs for ever: step it until it waits for a command, then come back here.
    async def step():
        task = asyncio.create_task(coro)
        await asyncio.sleep(0)
        task.cancel()

    _run(step())


asyncio.run = run_until_waiting  # type: ignore[assignment]  # a test stepping safe mode
from o2 import config, safemode, start  # noqa: E402

print("prepare:", start.prepare("/config.json"))
net_cfg = config.network_only(config.read("/config.json"))
ack = safemode.check_reboot(net_cfg, b'{"body": "{\\"id\\": \\"c1\\"}", "mac": "00"}', False)
print("ack:", ack["id"], ack["ok"], ack["error"])
print("modules:", " ".join(sorted(k for k in sys.modules if k.startswith("o2"))))
gc.collect()
print("free:", gc.mem_free())
