"""`o2chain gateway ...` (contract): run, check, deadletters."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, GatewayConfig, Transport, load_config
from o2chain.registers import ProfileError, load_profile


def register(sub: Any) -> None:
    gw = sub.add_parser("gateway", help="the facility gateway: Modbus + MQTT into InfluxDB")
    gw_sub = gw.add_subparsers(dest="gateway_command", required=True, metavar="ACTION")

    run = gw_sub.add_parser("run", help="run the gateway until SIGTERM/SIGINT")
    run.add_argument("-c", "--config", type=Path, required=True, help="gateway TOML config")
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    run.set_defaults(handler=_run)

    check = gw_sub.add_parser("check", help="validate a config file without connecting")
    check.add_argument("-c", "--config", type=Path, required=True)
    check.set_defaults(handler=_check)

    dl = gw_sub.add_parser("deadletters", help="inspect rejected messages")
    dl.add_argument("-c", "--config", type=Path, required=True)
    dl.add_argument("action", nargs="?", default="list", choices=["list"])
    dl.add_argument("--limit", type=int, default=100)
    dl.set_defaults(handler=_deadletters)


def _load(path: Path) -> GatewayConfig | None:
    try:
        config = load_config(path)
        for dev in config.device:
            if dev.transport is Transport.MODBUS:
                load_profile(dev.profile or "")
        return config
    except (ConfigError, ProfileError) as exc:
        print(f"o2chain gateway: {exc}", file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    modbus = sum(d.transport is Transport.MODBUS for d in config.device)
    print(
        f"{args.config}: OK — gateway {config.gateway.id}, {len(config.site)} site(s), "
        f"{len(config.device)} device(s) ({modbus} Modbus), InfluxDB {config.influx.api} "
        f"{config.influx.url}"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = _load(args.config)
    if config is None:
        return 2
    from gateway.app import run_until_signalled

    return asyncio.run(run_until_signalled(config))


def _deadletters(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    from gateway.outbox import Outbox

    outbox = Outbox(config.gateway.state_dir / "outbox.sqlite")
    try:
        for dl in outbox.dead_letters(args.limit):
            print(
                json.dumps(
                    {
                        "id": dl.id,
                        "received_ms": dl.received_ms,
                        "source": dl.source,
                        "topic": dl.topic,
                        "reason": dl.reason,
                        "detail": dl.detail,
                        "payload": dl.payload.decode("utf-8", "backslashreplace"),
                    }
                )
            )
    finally:
        outbox.close()
    return 0
