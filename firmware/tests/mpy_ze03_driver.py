# Under `micropython`: the async ZE03 driver (compiled) on a UART stand-in backed by a pty.
# argv: sim.json path. Prints one line per read: "READ <o2 or None> <quality> <ms>".
import asyncio
import sys
import time

import machine

machine.SIM_FILE = sys.argv[1]  # type: ignore[attr-defined]  # the stand-in's (firmware/standins)

from o2.ze03 import ZE03  # noqa: E402


async def main():
    sensor = ZE03(machine.UART(2), 300)
    await sensor.init()
    for _ in range(int(sys.argv[2])):
        t0 = time.ticks_ms()
        o2, quality = await sensor.read()
        print("READ", o2, quality, time.ticks_diff(time.ticks_ms(), t0))


asyncio.run(main())
