# Under `micropython` (test_robustness.py), with the compiled firmware and the machine/network
# stand-ins on the path: the board's start-up with a config error enters safe mode; then a
# command arrives. Prints the firmware modules loaded by then and the free heap.
# argv: the config.json path.
import asyncio
import gc
import sys

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

print("prepare:", start.prepare(sys.argv[1]))
net_cfg = config.network_only(config.read(sys.argv[1]))
ack = safemode.check_reboot(net_cfg, b'{"body": "{\\"id\\": \\"c1\\"}", "mac": "00"}', False)
print("ack:", ack["id"], ack["ok"], ack["error"])
print("modules:", " ".join(sorted(k for k in sys.modules if k.startswith("o2"))))
gc.collect()
print("free:", gc.mem_free())
