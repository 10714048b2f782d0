"""``o2chain firmware``: build, configure, flash and run the board firmware.

o2chain firmware build [--out build/firmware]
o2chain firmware config --inventory FILE --device ID [--out FILE]
o2chain firmware flash --port PORT --device ID --inventory FILE [--build DIR] [--resume]
o2chain firmware run --config FILE [--heap 220K] [--o2-pct 24.5] [--duration S]

The inventory is TOML: ``[defaults]`` shared by every board of a site, ``[devices.<id>]``
per board (deep-merged over the defaults; ``device`` is the table's id). See
``firmware/inventory.example.toml`` and firmware/README.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from o2chain.firmware_runner import (
    BoardRunner,
    FirmwareError,
    build_firmware,
    find_tool,
    load_firmware_file,
)


def register(sub: Any) -> None:
    """Add the ``firmware`` command and its subcommands to the ``o2chain`` parser."""
    parser = sub.add_parser("firmware", help="build and run the ESP32 board firmware")
    commands = parser.add_subparsers(dest="firmware_command", required=True, metavar="COMMAND")

    build = commands.add_parser("build", help="compile firmware/lib with mpy-cross")
    build.add_argument("--out", type=Path, default=Path("build/firmware"), help="output dir")
    build.set_defaults(handler=_build)

    cfg = commands.add_parser(
        "config", help="write one board's config.json from an inventory (validated)"
    )
    cfg.add_argument("--inventory", type=Path, required=True, help="inventory TOML")
    cfg.add_argument("--device", required=True, help="device id ([devices.<id>])")
    cfg.add_argument("--out", type=Path, default=None, help="output file (default: stdout)")
    cfg.set_defaults(handler=_config)

    flash = commands.add_parser(
        "flash", help="copy the built firmware and the board's config.json with mpremote"
    )
    flash.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    flash.add_argument("--device", required=True, help="device id in the inventory")
    source = flash.add_mutually_exclusive_group(required=True)
    source.add_argument("--inventory", type=Path, help="inventory TOML (config without secrets)")
    source.add_argument(
        "--provision",
        type=Path,
        help="the site's `o2chain provision` output: the board's own config.json (its MQTT "
        "account, command key) and CA come from DIR/boards/DEVICE/",
    )
    flash.add_argument("--ca", type=Path, help="CA certificate for mqtt.tls.ca_file (--inventory)")
    flash.add_argument("--build", type=Path, default=None, help="use this build, do not rebuild")
    flash.add_argument(
        "--resume",
        action="store_true",
        help="no soft reset on connect (mpremote resume; needed for a fake board)",
    )
    flash.add_argument("--no-reset", action="store_true", help="do not reset the board after")
    flash.set_defaults(handler=_flash)

    run = commands.add_parser(
        "run", help="run the firmware on micropython with simulated sensors (emulated board)"
    )
    run.add_argument("--config", type=Path, required=True, help="board config.json")
    run.add_argument("--heap", default="220K", help="micropython heap (110K ~ a bare ESP32)")
    run.add_argument("--o2-pct", type=float, default=24.5, help="what the simulated ZE03 reads")
    run.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    run.add_argument(
        "--work-dir", type=Path, default=None, help="board dir to keep (default: a temp dir)"
    )
    run.add_argument("--build", type=Path, default=None, help="use this build, do not rebuild")
    run.set_defaults(handler=_run)


def _build(args: argparse.Namespace) -> int:
    try:
        files = build_firmware(args.out)
    except FirmwareError as e:
        print(f"firmware build: {e}", file=sys.stderr)
        return 1
    for rel in files:
        print(args.out / rel)
    return 0


def merge_tables(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` deep-merged over ``base``: the inventory's rule, ``[devices.<id>]`` over
    ``[defaults]`` (o2chain provision reads inventories the same way)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def device_config(inventory: Path, device: str) -> dict[str, Any]:
    """The board's config.json content: ``[defaults]`` deep-merged with ``[devices.<id>]``,
    ``device`` set, validated with the firmware's schema. Raises FirmwareError naming the
    inventory, the device and the bad key."""
    try:
        doc = tomllib.loads(inventory.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise FirmwareError(f"{inventory}: {e}") from e
    devices = doc.get("devices", {})
    if device not in devices:
        known = ", ".join(sorted(devices)) or "none"
        raise FirmwareError(f"{inventory}: no [devices.{device}] (known: {known})")
    cfg = merge_tables(doc.get("defaults", {}), devices[device])
    cfg["device"] = device
    schema = load_firmware_file("config")
    try:
        schema.validate(json.loads(json.dumps(cfg)))
    except schema.ConfigError as e:
        raise FirmwareError(f"{inventory}: device {device}: {e}") from e
    return cfg


def _config(args: argparse.Namespace) -> int:
    try:
        cfg = device_config(args.inventory, args.device)
    except FirmwareError as e:
        print(f"firmware config: {e}", file=sys.stderr)
        return 2
    text = json.dumps(cfg, indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(args.out)
    return 0


def flash_argv(
    port: str,
    build: Path,
    config_file: Path,
    resume: bool,
    reset: bool,
    extra: Sequence[tuple[Path, str]] = (),
) -> list[str]:
    """The mpremote command line that copies a build, a config.json and ``extra`` files
    (local path, board path) onto a board."""
    argv = [find_tool("mpremote"), "connect", port]
    if resume:
        argv.append("resume")
    argv += ["fs", "cp", "-r", str(build / "lib"), ":"]
    for name in ("boot.py", "main.py"):
        argv += ["+", "fs", "cp", str(build / name), f":{name}"]
    for local, on_board in extra:
        argv += ["+", "fs", "cp", str(local), f":{on_board.lstrip('/')}"]
    argv += ["+", "fs", "cp", str(config_file), ":config.json"]
    if reset:
        argv += ["+", "reset"]
    return argv


def flash_files(args: argparse.Namespace) -> tuple[dict[str, Any], list[tuple[Path, str]]]:
    """The board's config and the files it refers to (local path, path on the board), from
    the provision dir or the inventory; raises FirmwareError naming what is missing."""
    if args.provision is not None:
        board_dir = args.provision / "boards" / args.device
        config_file = board_dir / "config.json"
        if not config_file.is_file():
            raise FirmwareError(
                f"{config_file}: no provisioned config for {args.device}; run `o2chain provision "
                f"-i INVENTORY -o {args.provision}` with the device in the inventory first"
            )
        try:
            cfg: dict[str, Any] = json.loads(config_file.read_text())
        except (OSError, ValueError) as e:
            raise FirmwareError(f"{config_file}: {e}") from e
        schema = load_firmware_file("config")
        try:
            schema.validate(cfg)
        except schema.ConfigError as e:
            raise FirmwareError(f"{config_file}: {e}") from e
    else:
        cfg = device_config(args.inventory, args.device)
    extra: list[tuple[Path, str]] = []
    ca_on_board = cfg.get("mqtt", {}).get("tls", {}).get("ca_file")
    if ca_on_board:
        if args.ca is not None:
            ca = args.ca
        elif args.provision is not None:
            ca = args.provision / "boards" / args.device / Path(ca_on_board).name
        else:
            raise FirmwareError(
                f"device {args.device}: mqtt.tls.ca_file = {ca_on_board} must be on the board: "
                "give --provision DIR (what `o2chain provision` wrote) or --ca FILE"
            )
        if not ca.is_file():
            raise FirmwareError(f"{ca}: the CA for mqtt.tls.ca_file is missing")
        extra.append((ca, ca_on_board))
    return cfg, extra


def _flash(args: argparse.Namespace) -> int:
    try:
        cfg, extra = flash_files(args)
    except FirmwareError as e:
        print(f"firmware flash: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="o2chain-flash-") as tmp:
        build = args.build
        try:
            if build is None:
                build = Path(tmp) / "firmware"
                build_firmware(build)
            config_file = Path(tmp) / "config.json"
            config_file.write_text(json.dumps(cfg, indent=2) + "\n")
            argv = flash_argv(args.port, build, config_file, args.resume, not args.no_reset, extra)
        except FirmwareError as e:
            print(f"firmware flash: {e}", file=sys.stderr)
            return 1
        print("$ " + " ".join(argv), flush=True)
        result = subprocess.run(argv, check=False)
        if result.returncode != 0:
            print(f"firmware flash: mpremote failed ({result.returncode})", file=sys.stderr)
            return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        config = json.loads(args.config.read_text())
    except (OSError, ValueError) as e:
        print(f"firmware run: {args.config}: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="o2chain-board-") as tmp:
        work_dir = args.work_dir or Path(tmp)
        board = BoardRunner(config, work_dir, args.heap, args.o2_pct, build_dir=args.build)
        return _run_board(board, args.duration)


def _run_board(board: BoardRunner, duration_s: float | None) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        board.start()
        print(f"board {board.pid}: fs {board.board_dir}, console {board.log_path}", flush=True)
        deadline = None if duration_s is None else time.monotonic() + duration_s
        shown = 0
        while not stop.is_set() and board.running:
            text = board.log_text()  # follow the console, like a serial monitor
            sys.stdout.write(text[shown:])
            sys.stdout.flush()
            shown = len(text)
            if deadline is not None and time.monotonic() >= deadline:
                break
            stop.wait(0.2)
        board.stop()
        sys.stdout.write(board.log_text()[shown:])
        return 0 if board.returncode in (0, 130, None) or stop.is_set() else 1
    except FirmwareError as e:
        print(f"firmware run: {e}", file=sys.stderr)
        return 1
    finally:
        board.kill()
        for s, handler in previous.items():
            signal.signal(s, handler)
