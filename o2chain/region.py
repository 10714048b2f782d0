"""``o2chain region``: the central tier of a region of facilities.

    o2chain region provision -i REGION.toml -o DIR     certificates, accounts, bridges' bundles
    o2chain region serve ...                           the region view (every facility, one page)

See o2chain/region_provision.py and gateway/region_view.py; docs/scaling.md, "Region".
"""

from __future__ import annotations

import argparse
from typing import Any

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


def _provision(args: argparse.Namespace) -> int:
    return region_provision.main(args)
