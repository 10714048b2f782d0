"""``o2chain region``: the central tier of a region of facilities.

    o2chain region provision -i REGION.toml -o DIR     certificates, accounts, bridges' bundles
    o2chain region serve ...                           the region view (every facility, one page)

See o2chain/region_provision.py and gateway/region_view.py; docs/scaling.md, "Region".
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from o2base.errors import UsageError
from o2chain import region_provision


def register(sub: Any) -> None:
    p = sub.add_parser("region", help="the central tier: provisioning and the region view")
    rsub = p.add_subparsers(dest="region_command", required=True, metavar="SUBCOMMAND")
    prov = rsub.add_parser(
        "provision",
        help="the central broker's CA, accounts and ACL, and one bridge bundle per facility",
    )
    region_provision.add_arguments(prov)
    prov.set_defaults(handler=_provision)
    serve = rsub.add_parser(
        "serve", help="the region view: every facility's worst alarm and chain balance"
    )
    serve.add_argument(
        "-c", "--config", type=Path, required=True,
        help="viewer/region.toml of `o2chain region provision` (logins to the central tier)",
    )  # fmt: skip
    serve.add_argument(
        "--listen", default="127.0.0.1:8480", help="HOST:PORT on loopback (default 127.0.0.1:8480)"
    )
    serve.set_defaults(handler=_serve)


def _provision(args: argparse.Namespace) -> int:
    return region_provision.main(args)


def _serve(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError
    from gateway.region_view import RegionView, RegionViewConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = RegionViewConfig.load(args.config, args.listen)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    view = RegionView(cfg)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await view.run(stop)

    asyncio.run(main())
    return 0
