"""`o2chain gateway ...` (contract): run, check, deadletters."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from gateway.config import (
    ConfigError,
    GatewayConfig,
    Transport,
    load_config,
    preflight,
    redact_url,
)
from o2base.registers import ProfileError, load_profile


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

    dl = gw_sub.add_parser(
        "deadletters",
        help="list rejected messages (JSON lines), or replay them after a config fix",
        description="list: one JSON object per dead letter. replay: validate them again with "
        "the current config; those that pass go to the outbox (the running gateway, or the "
        "next start, writes them) and leave the dead letters; prints a JSON summary.",
    )
    dl.add_argument("-c", "--config", type=Path, required=True)
    dl.add_argument("action", nargs="?", default="list", choices=["list", "replay"])
    dl.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    dl.add_argument("--reason", action="append", help="only this reason (repeatable)")
    dl.add_argument("--id", type=int, action="append", dest="ids", help="only this id")
    dl.set_defaults(handler=_deadletters)


def _load(path: Path) -> GatewayConfig | None:
    from gateway.modbus import field_type_conflicts  # pymodbus: only for run and check

    try:
        config = load_config(path)
        polled = [
            (dev, load_profile(dev.profile or ""))
            for dev in config.device
            if dev.transport is Transport.MODBUS
        ]
        conflicts = field_type_conflicts(polled)
        if conflicts:
            raise ConfigError(f"{path}: {'; '.join(conflicts)}")
        return config
    except (ConfigError, ProfileError) as exc:
        print(f"o2chain gateway: {exc}", file=sys.stderr)
        return None


def _preflight(path: Path, config: GatewayConfig) -> bool:
    """What ``run`` would trip on (files, directories), one line each on stderr; True if none."""
    problems = preflight(config)
    if problems:  # one line, every problem in it
        print(f"o2chain gateway: {path}: {'; '.join(problems)}", file=sys.stderr)
    return not problems


def _check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None or not _preflight(args.config, config):
        return 2
    modbus = sum(d.transport is Transport.MODBUS for d in config.device)
    print(
        f"{args.config}: OK — gateway {config.gateway.id}, {len(config.site)} site(s), "
        f"{len(config.device)} device(s) ({modbus} Modbus), MQTT {redact_url(config.mqtt.url)}, "
        f"InfluxDB {config.influx.api} {redact_url(config.influx.url)}"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = _load(args.config)
    if config is None or not _preflight(args.config, config):
        return 2
    from gateway.app import run_until_signalled

    return asyncio.run(run_until_signalled(config))


def _deadletters(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    from gateway.app import prepare_state_dir
    from gateway.deadletters import replay
    from gateway.outbox import DeadLetter, Outbox

    def selected(dl: DeadLetter) -> bool:
        return (not args.reason or dl.reason in args.reason) and (not args.ids or dl.id in args.ids)

    outbox = Outbox(
        prepare_state_dir(config.gateway.state_dir),
        deadletter_max_count=config.gateway.deadletter_max_count,
        deadletter_max_bytes=int(config.gateway.deadletter_max_mb * 1024 * 1024),
    )
    try:
        if args.action == "replay":
            result = replay(config, outbox, selected, limit=args.limit)
            truncated = result.truncated_line()
            if truncated:
                print(f"o2chain gateway: {truncated}", file=sys.stderr)
            print(
                json.dumps(
                    {
                        "replayed": len(result.replayed),
                        "points": result.points,
                        "still_rejected": len(result.still_rejected),
                        "truncated": len(result.truncated),
                        "replayed_ids": result.replayed,
                        "still_rejected_reasons": {
                            str(k): v for k, v in result.still_rejected.items()
                        },
                    }
                )
            )
            return 0
        shown = 0
        after = 0
        while shown < args.limit:
            letters = outbox.dead_letters(min(500, args.limit - shown), after_id=after)
            if not letters:
                break
            for dl in letters:
                after = dl.id
                if not selected(dl):
                    continue
                shown += 1
                print(
                    json.dumps(
                        {
                            "id": dl.id,
                            "received_ms": dl.received_ms,
                            "source": dl.source,
                            "topic": dl.topic,
                            "reason": dl.reason,
                            "detail": dl.detail,
                            # At most DEADLETTER_PAYLOAD_MAX bytes; length and SHA-256 of
                            # the whole, to match it with what the sender logged.
                            "payload": dl.payload.decode("utf-8", "backslashreplace"),
                            "payload_len": dl.payload_len,
                            "payload_sha256": dl.payload_sha256,
                            "truncated": dl.truncated,
                        }
                    )
                )
    finally:
        outbox.close()
    return 0
