"""`o2chain dashboards build`: regenerate the Grafana dashboard JSON from code."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    dash = sub.add_parser("dashboards", help="Grafana dashboards as code")
    dash_sub = dash.add_subparsers(dest="dashboards_command", required=True, metavar="ACTION")
    build = dash_sub.add_parser("build", help="write dashboards/generated/*.json")
    build.add_argument("--out", type=Path, default=None, help="output directory")
    build.set_defaults(handler=_build)


def _build(args: argparse.Namespace) -> int:
    from dashboards.build import GENERATED, build_all

    for path in build_all(args.out or GENERATED):
        print(path)
    return 0
