"""`o2chain sim ...` (contract): simulators of oxygen equipment, listening on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import Any
from urllib.parse import urlsplit

from o2chain.registers import ProfileError, load_profile, profile_names


def register(sub: Any) -> None:
    sim = sub.add_parser("sim", help="run simulators of oxygen equipment, sensors and fleets")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True, metavar="SIMULATOR")

    profiles = sim_sub.add_parser("profiles", help="list the device profile names, one per line")
    profiles.set_defaults(handler=_profiles)

    conc = sim_sub.add_parser(
        "concentrator", help="serve one concentrator or PSA plant over Modbus until killed"
    )
    conc.add_argument("--profile", required=True, help="device profile name (see `sim profiles`)")
    conc.add_argument(
        "--listen",
        default="tcp://127.0.0.1:5020",
        help="tcp://HOST:PORT (port 0 picks a free one; the chosen URL is printed)",
    )
    conc.add_argument("--unit", type=int, default=1, help="Modbus unit id (default 1)")
    conc.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    conc.add_argument("--flow-lpm", type=float, default=None, help="flow setpoint, L/min")
    conc.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    conc.set_defaults(handler=_concentrator)


def _profiles(args: argparse.Namespace) -> int:
    for name in profile_names():
        print(name)
    return 0


def _concentrator(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        print(f"o2chain sim concentrator: {exc}", file=sys.stderr)
        return 2
    url = urlsplit(args.listen)
    if url.scheme != "tcp" or not url.hostname:
        print(
            f"o2chain sim concentrator: --listen {args.listen!r}: expected tcp://HOST:PORT "
            "(RTU serving arrives with the serial-line simulators)",
            file=sys.stderr,
        )
        return 2
    if not 1 <= args.unit <= 247:
        print(f"o2chain sim concentrator: --unit {args.unit}: expected 1..247", file=sys.stderr)
        return 2
    return asyncio.run(
        serve_concentrator(
            profile_name=profile.name,
            host=url.hostname,
            port=url.port or 0,
            unit=args.unit,
            seed=args.seed,
            flow_lpm=args.flow_lpm,
            speed=args.speed,
        )
    )


async def serve_concentrator(
    profile_name: str,
    host: str,
    port: int,
    unit: int = 1,
    seed: int = 0,
    flow_lpm: float | None = None,
    speed: float = 1.0,
) -> int:
    """Serve one simulated device until SIGINT/SIGTERM; prints a JSON line once listening."""
    from simulators.modbus_server import ModbusTcpSimulator, SimulatedDevice
    from simulators.physics.concentrator import ConcentratorModel, ConcentratorParams

    profile = load_profile(profile_name)
    params = ConcentratorParams(
        rated_flow_lpm=float(profile.nominal.get("rated_flow_lpm", 5.0)),
        outlet_kpa_at_rated=float(profile.nominal.get("outlet_kpa_at_rated", 55.0)),
    )
    model = ConcentratorModel(params, seed=seed, flow_lpm=flow_lpm)
    device = SimulatedDevice(profile, model, unit=unit, speed=speed)
    server = ModbusTcpSimulator([device], host=host, port=port)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        json.dumps(
            {"listening": f"tcp://{host}:{server.port}", "profile": profile.name, "unit": unit}
        ),
        flush=True,
    )
    await stop.wait()
    await server.stop()
    return 0
