"""100 (``--devices``) simulated concentrators, each on its own Modbus TCP port of 127.0.0.1, in
one process (the benchmark's Modbus TCP load). Prints ``ports [p1, p2, ...]`` once listening;
serves until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from o2base.registers import load_profile
from simulators.modbus_server import ModbusTcpSimulator, SimulatedDevice
from simulators.physics.concentrator import ConcentratorModel, params_from_profile


async def serve(devices: int) -> None:
    profile = load_profile("medical-concentrator")
    servers = []
    for n in range(devices):
        model = ConcentratorModel(params_from_profile(profile.nominal), seed=n)
        server = ModbusTcpSimulator([SimulatedDevice(profile, model, unit=1)], port=0)
        await server.start()
        servers.append(server)
    print(f"ports {[s.port for s in servers]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        await s.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, default=100)
    asyncio.run(serve(ap.parse_args().devices))
    return 0


if __name__ == "__main__":
    sys.exit(main())
