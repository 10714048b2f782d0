"""``o2chain firmware``: build, configure, flash and run the board firmware.

o2chain firmware build [--out build/firmware]
o2chain firmware config --inventory FILE --device ID [--out FILE]
o2chain firmware ports [PORT...] [--no-probe]
o2chain firmware flash --port PORT --device ID (--inventory FILE | --provision DIR)
                       [--erase --micropython FILE] [--keep-settings] [--no-tail]
o2chain firmware check --device ID (--inventory FILE | --provision DIR) [--timeout S]
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
from urllib.parse import urlsplit

from o2base.errors import RunError, UsageError
from o2chain.firmware_runner import (
    FIRMWARE_DIR,
    BoardRunner,
    FirmwareError,
    build_firmware,
    find_tool,
    load_firmware_file,
)

PROBE_TIMEOUT_S = 2.0
TAIL_S = 8.0
CHECK_TIMEOUT_S = 30.0
BOOT_WAIT_S = 15.0  # after esptool wrote MicroPython: its first boot formats the filesystem
# Where the MicroPython image goes (micropython.org's download pages): the ESP32's second-stage
# bootloader at 0x1000, the newer chips' at 0x0.
CHIP_OFFSETS = {"esp32": "0x1000", "esp32s2": "0x1000", "esp32s3": "0x0", "esp32c3": "0x0"}


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

    ports = commands.add_parser(
        "ports", help="list serial ports and what answers on them (MicroPython and its version)"
    )
    ports.add_argument(
        "extra", nargs="*", metavar="PORT", help="also probe these ports (e.g. a symlink)"
    )
    ports.add_argument(
        "--no-probe",
        action="store_true",
        help="do not ask the ports (a probe interrupts a running board and soft-resets it)",
    )
    ports.add_argument("--timeout", type=float, default=PROBE_TIMEOUT_S, help="per port, s")
    ports.set_defaults(handler=_ports)

    flash = commands.add_parser(
        "flash", help="check the board, copy the built firmware and its config.json, reset it"
    )
    flash.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    flash.add_argument("--device", required=True, help="device id in the inventory")
    _inventory_or_provision(
        flash,
        "inventory TOML (config without secrets)",
        "the site's `o2chain provision` output: the board's own config.json (its MQTT account, "
        "command key) and CA come from DIR/boards/DEVICE/",
    )
    flash.add_argument("--ca", type=Path, help="CA certificate for mqtt.tls.ca_file (--inventory)")
    flash.add_argument("--build", type=Path, default=None, help="use this build, do not rebuild")
    flash.add_argument(
        "--resume",
        action="store_true",
        help="no soft reset on connect (mpremote resume; needed for a fake board)",
    )
    flash.add_argument("--no-reset", action="store_true", help="do not reset the board after")
    flash.add_argument(
        "--erase",
        action="store_true",
        help="erase the whole flash first (firmware, settings, spool, calibration) and install "
        "MicroPython from --micropython FILE with esptool",
    )
    flash.add_argument(
        "--micropython", type=Path, metavar="FILE", help="MicroPython image (.bin) for --erase"
    )
    flash.add_argument(
        "--chip",
        default="esp32",
        choices=sorted(CHIP_OFFSETS),
        help="chip for --erase (default esp32; sets where the image goes)",
    )
    flash.add_argument(
        "--keep-settings",
        action="store_true",
        help="keep /settings.json (changes made by signed commands); by default it is removed "
        "so the new config.json is what the board runs",
    )
    flash.add_argument(
        "--no-tail", action="store_true", help="do not show the board's console after the reset"
    )
    flash.add_argument(
        "--tail",
        type=float,
        default=TAIL_S,
        metavar="S",
        help=f"show the board's console for at most S s after the reset (default {TAIL_S:g})",
    )
    flash.set_defaults(handler=_flash)

    check = commands.add_parser(
        "check",
        help="wait for a board's status and first reading on the broker and show them",
    )
    check.add_argument("--device", required=True, help="device id")
    _inventory_or_provision(
        check,
        "inventory TOML: the broker the board uses",
        "the site's `o2chain provision` output: broker, CA and the read-only dashboard account "
        "from DIR/dashboard/mqtt.toml",
    )
    check.add_argument(
        "--timeout",
        type=float,
        default=CHECK_TIMEOUT_S,
        metavar="S",
        help=f"wait at most S s for the status and for the first reading "
        f"(default {CHECK_TIMEOUT_S:g})",
    )
    check.set_defaults(handler=_check)

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


def _inventory_or_provision(
    parser: argparse.ArgumentParser, inventory_help: str, provision_help: str
) -> None:
    """Where a command takes the board's settings from: one of ``--inventory FILE`` and
    ``--provision DIR``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--inventory", type=Path, help=inventory_help)
    source.add_argument("--provision", type=Path, help=provision_help)


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
        raise UsageError(str(e)) from None
    text = json.dumps(cfg, indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(args.out)
    return 0


# Run on the board before the copy unless --keep-settings: settings written by signed
# commands (/settings.json) would otherwise stay laid over the new config.json.
CLEAR_SETTINGS = "import os\ntry:\n os.remove('/settings.json')\nexcept OSError:\n pass"


def flash_argv(
    port: str,
    build: Path,
    config_file: Path,
    resume: bool,
    reset: bool = False,
    extra: Sequence[tuple[Path, str]] = (),
    keep_settings: bool = True,
) -> list[str]:
    """The mpremote command line that copies a build, a config.json and ``extra`` files
    (local path, board path) onto a board (and clears its settings unless ``keep_settings``).
    ``reset``: mpremote's hard reset at the end (flash resets the board itself, then follows
    its console)."""
    argv = [find_tool("mpremote"), "connect", port]
    if resume:
        argv.append("resume")
    if not keep_settings:
        argv += ["exec", CLEAR_SETTINGS, "+"]
    argv += ["fs", "cp", "-r", str(build / "lib"), ":"]
    for name in ("boot.py", "main.py"):
        argv += ["+", "fs", "cp", str(build / name), f":{name}"]
    for local, on_board in extra:
        argv += ["+", "fs", "cp", str(local), f":{on_board.lstrip('/')}"]
    argv += ["+", "fs", "cp", str(config_file), ":config.json"]
    if reset:
        argv += ["+", "reset"]
    return argv


def build_mpy_version(build: Path) -> int:
    """The .mpy version of a build (its app module's header). Bytecode-only files carry no
    sub-version: any MicroPython that loads this version runs them."""
    return (build / "lib" / "o2" / "app.mpy").read_bytes()[1]


def check_build(build: Path) -> None:
    """UsageError unless ``build`` is a complete firmware build of this source: boot.py,
    main.py and a compiled .mpy for every module of firmware/lib."""
    hint = f"run `o2chain firmware build --out {build}` (or leave out --build)"
    if not build.is_dir():
        raise UsageError(f"--build {build}: no such directory; {hint}")
    missing = [n for n in ("boot.py", "main.py") if not (build / n).is_file()]
    for py in sorted((FIRMWARE_DIR / "lib").rglob("*.py")):
        rel = py.relative_to(FIRMWARE_DIR).with_suffix(".mpy")
        mpy = build / rel
        if not mpy.is_file():
            missing.append(str(rel))
        elif mpy.read_bytes()[:1] != b"M":
            raise UsageError(f"--build {build}: {rel} is not compiled MicroPython; {hint}")
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise UsageError(f"--build {build}: not a complete firmware build (no {shown}); {hint}")


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


def _ports(args: argparse.Namespace) -> int:
    from o2chain.board_serial import BoardSerialError, PortInfo, list_ports, probe

    ports = list_ports()
    known = {p.device for p in ports}
    ports += [PortInfo(p, "given on the command line", "") for p in args.extra if p not in known]
    if not ports:
        print("no serial ports found (is the board plugged in? a charge-only USB cable?)")
        return 0
    for port in ports:
        what = ", ".join(x for x in (port.description, port.vid_pid) if x) or "-"
        answer = ""
        if not args.no_probe:
            try:
                found = probe(port.device, args.timeout)
            except BoardSerialError as exc:
                answer = str(exc)
            else:
                answer = (
                    found.describe() if found else f"no MicroPython answer in {args.timeout:g} s"
                )
        print(f"{port.device:<24} {what}" + (f"  [{answer}]" if answer else ""))
    return 0


def _port_opens(port: str) -> None:
    """RunError naming the port and the likely cause when the OS will not open it."""
    from o2chain.board_serial import BoardSerialError, open_port

    try:
        open_port(port).close()
    except BoardSerialError as exc:
        raise RunError(
            f"{exc} (in use by another program, or no permission: the dialout group)"
        ) from None


def preflight(args: argparse.Namespace, build: Path | None) -> None:
    """Before anything is written: the port is there and MicroPython answers on it, in a
    version that loads this build's bytecode. UsageError / RunError naming what to do."""
    from o2chain.board_serial import BoardSerialError, probe

    if not Path(args.port).exists():
        raise UsageError(
            f"--port {args.port}: no such serial port (`o2chain firmware ports` lists them)"
        )
    try:
        found = probe(args.port, PROBE_TIMEOUT_S + 1, restart=False)
    except BoardSerialError as exc:
        raise RunError(
            f"{exc} (in use by another program, or no permission: the dialout group)"
        ) from None
    install = "install it with --erase --micropython FILE (ESP32_GENERIC .bin from micropython.org)"
    if found is None:
        raise RunError(f"no MicroPython answers on {args.port}: {install}")
    print(f"board on {args.port}: {found.describe()}", flush=True)
    if build is not None and found.mpy:
        want = build_mpy_version(build)
        if found.mpy_version[0] != want:
            raise RunError(
                f"MicroPython {found.version} on {args.port} loads .mpy version "
                f"{found.mpy_version[0]}, this build is version {want}: {install}"
            )


def install_micropython(args: argparse.Namespace) -> None:
    """esptool: erase the flash, write the MicroPython image, let it boot."""
    import time

    from o2chain.board_serial import probe

    image = args.micropython
    offset = CHIP_OFFSETS[args.chip]
    base = [sys.executable, "-m", "esptool", "--chip", args.chip, "--port", args.port]
    for argv in (
        [*base, "erase-flash"],
        [*base, "--baud", "460800", "write-flash", "-z", offset, str(image)],
    ):
        print("$ " + " ".join(argv[1:]), flush=True)
        done = subprocess.run(argv, check=False, capture_output=True, text=True)
        sys.stdout.write(done.stdout)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise RunError(
                f"esptool {argv[7] if 'write-flash' in argv else 'erase-flash'} "
                f"failed (exit {done.returncode}): {lines[-1]}"
            )
    deadline = time.monotonic() + BOOT_WAIT_S
    while time.monotonic() < deadline:
        if probe(args.port, PROBE_TIMEOUT_S, restart=False) is not None:
            return
    raise RunError(
        f"MicroPython written, but it does not answer on {args.port} within "
        f"{BOOT_WAIT_S:g} s (press the board's EN/reset button and flash again)"
    )


def _flash(args: argparse.Namespace) -> int:
    try:
        cfg, extra = flash_files(args)
    except FirmwareError as exc:
        raise UsageError(str(exc)) from None
    if args.erase != (args.micropython is not None):
        raise UsageError(
            "--erase needs --micropython FILE (the image to install on the erased board)"
            if args.erase
            else "--micropython FILE is installed on an erased board: add --erase (it wipes "
            "the board's files: settings, spool, calibration)"
        )
    if args.micropython is not None and not args.micropython.is_file():
        raise UsageError(f"--micropython {args.micropython}: no such file")
    if args.build is not None:
        check_build(args.build)
    if not Path(args.port).exists():
        raise UsageError(
            f"--port {args.port}: no such serial port (`o2chain firmware ports` lists them)"
        )
    if not args.erase:  # a port that cannot be opened is said before the build's seconds
        _port_opens(args.port)
    with tempfile.TemporaryDirectory(prefix="o2chain-flash-") as tmp:
        build = args.build
        if build is None:
            build = Path(tmp) / "firmware"
            build_firmware(build)
        if args.erase:
            install_micropython(args)
        preflight(args, build)
        config_file = Path(tmp) / "config.json"
        config_file.write_text(json.dumps(cfg, indent=2) + "\n")
        argv = flash_argv(
            args.port, build, config_file, args.resume, False, extra, args.keep_settings
        )
        print("$ " + " ".join(argv), flush=True)
        result = subprocess.run(argv, check=False)
        if result.returncode != 0:
            raise RunError(f"mpremote failed (exit {result.returncode}) copying onto {args.port}")
    print(
        f"copied the firmware, config.json{' and ' + extra[0][1] if extra else ''} "
        f"onto {args.port}" + ("" if args.keep_settings else "; board settings cleared")
    )
    if args.no_reset:
        return 0
    return _reset_and_tail(args, cfg)


def _reset_and_tail(args: argparse.Namespace, cfg: dict[str, Any]) -> int:
    """Reset the board and show its console until it connects, reports a config error, or
    --tail seconds pass."""
    from o2chain.board_serial import BoardSerialError, reset_and_follow

    seconds = 0.0 if args.no_tail else args.tail
    seen: list[str] = []

    def settled(line: str) -> bool:
        return line.startswith(("mqtt: connected", "config error"))

    print(
        f"resetting the board{'' if args.no_tail else f'; its console for up to {seconds:g} s'}:",
        flush=True,
    )
    try:
        for line in reset_and_follow(args.port, seconds, settled):
            seen.append(line)
            print(f"  | {line}", flush=True)
    except BoardSerialError as exc:
        raise RunError(str(exc)) from None
    if args.no_tail:
        return 0
    errors = [x for x in seen if x.startswith("config error")]
    if errors:
        raise RunError(f"the board reports: {errors[0]}")
    if any(x.startswith("mqtt: connected") for x in seen):
        print(
            f"{args.device}: running and connected to its broker; `o2chain firmware check "
            f"--device {args.device} ...` shows its status and first reading"
        )
    else:
        mqtt = cfg.get("mqtt", {})
        print(
            f"{args.device}: not connected to {mqtt.get('host')}:{mqtt.get('port', 1883)} within "
            f"{seconds:g} s (WiFi, broker address, account?); `o2chain firmware check` waits longer"
        )
    return 0


def check_broker_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Where the board publishes and how to read it: ``site``, ``prefix``, ``host``, ``port``,
    ``username``, ``password``, ``ca_file``, ``server_hostname``. From the inventory (the
    board's own broker settings) or from a provisioned site (its read-only dashboard account).
    UsageError naming what is missing."""
    if args.provision is not None:
        board_file = args.provision / "boards" / args.device / "config.json"
        account = args.provision / "dashboard" / "mqtt.toml"
        try:
            board = json.loads(board_file.read_text())
            doc = tomllib.loads(account.read_text())
            password = Path(doc["password_file"]).read_text().strip()
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(
                f"--provision {args.provision}: no provisioned {args.device} or dashboard "
                f"account ({exc}); run `o2chain provision -i INVENTORY -o {args.provision}`"
            ) from None
        url = urlsplit(doc.get("url", ""))
        return {
            "site": board["site"],
            "prefix": doc.get("topic_prefix", "o2"),
            "host": url.hostname or "127.0.0.1",
            "port": url.port or (8883 if url.scheme == "mqtts" else 1883),
            "username": doc.get("username"),
            "password": password,
            "ca_file": doc.get("ca_file") if url.scheme == "mqtts" else None,
            "server_hostname": doc.get("server_hostname"),
        }
    try:
        cfg = device_config(args.inventory, args.device)
    except FirmwareError as exc:
        raise UsageError(str(exc)) from None
    mqtt = cfg["mqtt"]
    tls = mqtt.get("tls") or {}
    if tls.get("ca_file"):
        raise UsageError(
            f"device {args.device}: its broker takes TLS with the site's CA: give --provision "
            "DIR (the `o2chain provision` output) instead of --inventory"
        )
    return {
        "site": cfg["site"],
        "prefix": mqtt.get("topic_prefix", "o2"),
        "host": mqtt["host"],
        "port": mqtt.get("port", 1883),
        "username": mqtt.get("username"),
        "password": mqtt.get("password"),
        "ca_file": None,
        "server_hostname": None,
    }


def describe_status(status: dict[str, Any]) -> str:
    """One line of a board's ``online`` status for a technician."""
    parts = [f"firmware {status.get('fw', '?')}", f"boot {status.get('boot', '?')}"]
    if "uptime_s" in status:
        parts.append(f"up {status['uptime_s']} s")
    if status.get("reset_cause"):
        parts.append(f"reset {status['reset_cause']}")
    rssi = status.get("rssi_dbm")
    parts.append(f"WiFi {rssi} dBm" if rssi is not None else "WiFi RSSI unknown")
    if "heap_free_b" in status:
        parts.append(f"heap free {status['heap_free_b']} B")
    if "buffered" in status:
        parts.append(f"{status['buffered']} buffered")
    if status.get("alarms"):
        parts.append(f"alarms {', '.join(status['alarms'])}")
    if status.get("commands"):
        parts.append(f"commands {status['commands']}")
    return ", ".join(parts)


def describe_reading(reading: dict[str, Any]) -> str:
    fields = [
        f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in reading.items()
        if k not in ("v", "boot", "seq", "ts")
    ]
    return f"seq {reading.get('seq')}: " + ", ".join(fields)


def _check(args: argparse.Namespace) -> int:
    import queue
    import ssl
    import time
    import uuid

    import paho.mqtt.client as mqtt

    if not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout:g}: expected seconds > 0")
    where = check_broker_settings(args)
    base = f"{where['prefix']}/{where['site']}/{args.device}/"
    name = f"{where['site']}/{args.device}"
    url = f"{'mqtts' if where['ca_file'] else 'mqtt'}://{where['host']}:{where['port']}"
    inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"o2chain-check-{uuid.uuid4().hex[:8]}"
    )
    if where["username"]:
        client.username_pw_set(where["username"], where["password"])
    if where["ca_file"]:
        client.tls_set(ca_certs=where["ca_file"], tls_version=ssl.PROTOCOL_TLS_CLIENT)

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            inbox.put(("refused", str(rc)))
        else:
            c.subscribe([(base + "status", 1), (base + "telemetry", 1)])

    def on_message(c: Any, u: Any, msg: Any) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            doc = None
        inbox.put((msg.topic.rsplit("/", 1)[-1], doc))

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(where["host"], int(where["port"]), keepalive=30)
    except (OSError, ssl.SSLError) as exc:
        raise RunError(f"cannot reach the broker at {url}: {exc}") from None
    client.loop_start()
    print(f"{name}: waiting up to {args.timeout:g} s on {url} for its status", flush=True)
    try:
        deadline = time.monotonic() + args.timeout
        status: dict[str, Any] | None = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                what, doc = inbox.get(timeout=left)
            except queue.Empty:
                break
            if what == "refused":
                raise RunError(f"the broker at {url} refused the connection: {doc}")
            if what == "telemetry":
                if status is not None and status.get("state") == "online":
                    reading = doc[0] if isinstance(doc, list) and doc else doc
                    if isinstance(reading, dict):
                        print(f"  reading   {describe_reading(reading)}")
                        print(f"{name}: OK")
                        return 0
                continue
            if not isinstance(doc, dict):
                continue
            status = doc
            state = doc.get("state")
            if state == "online":
                print(f"  status    online, {describe_status(doc)}", flush=True)
                deadline = time.monotonic() + args.timeout  # now the first reading
            elif state == "config_error":
                alarm = doc.get("local_alarm", "?")
                raise RunError(
                    f"{name} reports config_error: {doc.get('error', '?')} (local alarm {alarm}); "
                    "fix the config and flash again"
                )
            elif state == "safe_mode":
                raise RunError(
                    f"{name} is in safe mode: {doc.get('error', '?')} (it obeys only a signed "
                    "reboot: `o2chain board cmd ... reboot`)"
                )
            elif state == "offline":
                print(
                    "  status    offline (its last will): waiting for it to come back", flush=True
                )
        if status is None:
            raise RunError(
                f"no status from {name} on {url} within {args.timeout:g} s: is the board "
                "powered, on WiFi, and is its mqtt.host this broker?"
            )
        if status.get("state") == "online":
            raise RunError(f"{name} is online but sent no reading within {args.timeout:g} s")
        raise RunError(
            f"{name} is {status.get('state')} (no online status within {args.timeout:g} s)"
        )
    finally:
        client.loop_stop()
        client.disconnect()


def _run(args: argparse.Namespace) -> int:
    try:
        config = json.loads(args.config.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{args.config}: {e}") from None
    schema = load_firmware_file("config")
    try:  # the board would say the same on its console and status, then wait
        schema.validate(json.loads(json.dumps(config)))
    except schema.ConfigError as e:
        raise UsageError(f"{args.config}: {e}") from None
    files: dict[str, bytes] = {}
    ca = ((config.get("mqtt") or {}).get("tls") or {}).get("ca_file")
    if ca:  # a provisioned board's CA lies beside its config.json (`o2chain provision`)
        beside = args.config.parent / Path(ca).name
        if not beside.is_file():
            raise UsageError(
                f"{args.config}: mqtt.tls.ca_file = {ca} must be on the board: no {beside}"
            )
        files[ca.lstrip("/")] = beside.read_bytes()
    with tempfile.TemporaryDirectory(prefix="o2chain-board-") as tmp:
        work_dir = args.work_dir or Path(tmp)
        board = BoardRunner(
            config, work_dir, args.heap, args.o2_pct, build_dir=args.build, files=files
        )
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
