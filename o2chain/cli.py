"""The `o2chain` command: one entry point whose subcommands are every part's entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from o2chain import __version__


def build_parser() -> argparse.ArgumentParser:
    # Imported here so `o2chain --help` stays fast and one broken part names itself clearly.
    from dashboards import cli as dashboards_cli
    from gateway import cli as gateway_cli
    from o2chain import board_cli, demo, firmware_cli, provision
    from simulators import cli as sim_cli

    parser = argparse.ArgumentParser(
        prog="o2chain", description="Monitoring of the high-altitude oxygen chain."
    )
    parser.add_argument("--version", action="version", version=f"o2chain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.register(sub)
    gateway_cli.register(sub)
    sim_cli.register(sub)
    firmware_cli.register(sub)
    board_cli.register(sub)
    dashboards_cli.register(sub)
    provision.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    result = handler(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
