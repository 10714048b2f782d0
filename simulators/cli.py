"""`o2chain sim ...` (contract): simulators of oxygen equipment, listening on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from o2base.errors import RunError, UsageError
from o2base.registers import ProfileError, load_profile, profile_names


def register(sub: Any) -> None:
    sim = sub.add_parser("sim", help="run simulators of oxygen equipment, sensors and fleets")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True, metavar="SIMULATOR")

    profiles = sim_sub.add_parser("profiles", help="list the device profile names, one per line")
    profiles.set_defaults(handler=_profiles)

    conc = sim_sub.add_parser(
        "concentrator", help="serve one concentrator or PSA plant over Modbus until killed"
    )
    conc.add_argument(
        "--profile",
        required=True,
        help="a bundled profile name (see `sim profiles`) or the path of a profile .toml",
    )
    conc.add_argument(
        "--listen",
        default="tcp://127.0.0.1:5020",
        help="tcp://HOST:PORT (port 0 picks a free one; the chosen URL is printed) or "
        "rtu:///dev/ttyX?baudrate=9600",
    )
    conc.add_argument(
        "--unit",
        type=int,
        action="append",
        help="Modbus unit id (default 1); repeat to serve several devices on one port or bus",
    )
    conc.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="UNIT:KIND[=VALUE]",
        help="silent | silent-after=S | slow=S | exception=CODE | corrupt=N (every n-th answer "
        "damaged: RTU CRC error); repeatable",
    )
    conc.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    conc.add_argument("--flow-lpm", type=float, default=None, help="flow setpoint, L/min")
    conc.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    conc.set_defaults(handler=_concentrator)

    fleet = sim_sub.add_parser(
        "fleet",
        help="many virtual room boards publishing telemetry over MQTT, then a JSON summary",
    )
    fleet.add_argument(
        "--mqtt", required=True, help="broker URL mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
    )
    fleet.add_argument(
        "--provision",
        type=Path,
        default=_env_path("O2CHAIN_PROVISION_DIR"),
        metavar="DIR",
        help="a provisioned site (`o2chain provision`): each board logs in with the account, "
        "CA and TLS of DIR/boards/DEVICE/config.json (default $O2CHAIN_PROVISION_DIR)",
    )
    fleet.add_argument("--site", required=True, help="site id ([a-z0-9-]{1,32})")
    fleet.add_argument("--boards", type=int, required=True, help="number of boards")
    fleet.add_argument(
        "--interval-s",
        type=float,
        required=True,
        help="seconds between readings of one board; 0 = as fast as PUBACKs return",
    )
    fleet.add_argument("--readings", type=int, required=True, help="readings per board")
    fleet.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fleet.add_argument("--prefix", default="o2", help="topic prefix (default o2)")
    fleet.add_argument(
        "--boot",
        type=int,
        default=None,
        help="boot counter of every board (default: the start time in s, new for each run)",
    )
    fleet.add_argument("--first-board", type=int, default=1, help="number of the first device")
    fleet.add_argument(
        "--sites", type=int, default=1,
        help="spread the boards over N sites SITE-001... in blocks of consecutive boards",
    )  # fmt: skip
    fleet.add_argument("--altitude-m", type=float, default=3650.0, help="site altitude")
    fleet.add_argument("--batch-max", type=int, default=50, help="readings per replayed array")
    fleet.add_argument("--window", type=int, default=10, help="QoS 1 messages in flight/board")
    fleet.add_argument(
        "--buffer-max", type=int, default=10_000, help="readings a board keeps while offline"
    )
    fleet.add_argument(
        "--timeout-s", type=float, default=None, help="give up after this long (exit 1)"
    )
    fleet.set_defaults(handler=_fleet)

    run = sim_sub.add_parser(
        "run", help="run a scenario: Modbus equipment, room boards on MQTT, a timeline of faults"
    )
    run.add_argument("scenario", help="bundled scenario name (see `sim scenarios`) or a .toml path")
    run.add_argument(
        "--speed",
        type=float,
        default=None,
        help="simulated seconds per second (default: the scenario's `speed`, else 1)",
    )
    run.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after this many real seconds (like `o2chain demo --duration`)",
    )
    run.add_argument(
        "--sim-duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after this many simulated seconds (default: the scenario's duration_s)",
    )
    run.add_argument(
        "--mqtt",
        default=None,
        help="broker for the room boards, mqtt://HOST[:PORT] or mqtts://HOST[:PORT]; its "
        "broker_restart events print a line for whoever runs that broker",
    )
    run.add_argument(
        "--provision",
        type=Path,
        default=_env_path("O2CHAIN_PROVISION_DIR"),
        metavar="DIR",
        help="a provisioned site: every board logs in with its own account and TLS "
        "(default $O2CHAIN_PROVISION_DIR)",
    )
    run.add_argument(
        "--own-broker",
        action="store_true",
        help="start a private Mosquitto for the boards (restarted at broker_restart events)",
    )
    run.add_argument(
        "--no-boards",
        action="store_true",
        help="run the Modbus equipment only, without the room boards (no broker needed)",
    )
    run.set_defaults(handler=_run)

    sensor = sim_sub.add_parser(
        "sensor", help="a serial O2 sensor on a new pseudo-terminal (prints its path)"
    )
    sensor.add_argument("model", choices=["ze03", "gasboard", "luminox", "mhz19"])
    sensor.add_argument(
        "--o2-pct",
        type=float,
        default=None,
        help="O2 %% of the room (ze03 default 20.9, luminox 24.1) or the gas (gasboard 93)",
    )
    sensor.add_argument("--flow-lpm", type=float, default=5.0, help="gasboard: flow")
    sensor.add_argument("--temp-c", type=float, default=21.0)
    sensor.add_argument(
        "--baro-kpa",
        type=float,
        default=65.2,
        help="the pressure around the sensor (luminox reports it; the ze03 cell reads the O2 "
        "partial pressure: O2 %% x baro / 101.325)",
    )
    sensor.add_argument("--co2-ppm", type=float, default=600.0, help="mhz19: CO2")
    sensor.add_argument("--seed", type=int, default=0)
    sensor.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND[=VALUE]",
        help="bad_checksum_every=N, garbage_every=N, drop_every=N, drift_per_h=X, stuck, "
        "disconnected (repeatable)",
    )
    sensor.set_defaults(handler=_sensor)

    scenarios = sim_sub.add_parser("scenarios", help="list the bundled scenario names")
    scenarios.set_defaults(handler=_scenarios)


def _profiles(args: argparse.Namespace) -> int:
    for name in profile_names():
        print(name)
    return 0


_SITE_RE = re.compile(r"[a-z0-9-]{1,32}")
_MQTT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def mqtt_url(text: str, provision: Path | None) -> SplitResult:
    """Check a broker URL for the simulated boards; UsageError naming what was expected."""
    url = urlsplit(text)
    if url.scheme not in _MQTT_PORTS or not url.hostname:
        raise UsageError(f"--mqtt {text!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
    try:
        url.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise UsageError(f"--mqtt {text!r}: the port is not a number in 1..65535") from None
    if url.scheme == "mqtts" and provision is None:
        raise UsageError(
            f"--mqtt {text!r}: a TLS broker needs --provision DIR (each board's account and CA "
            "from `o2chain provision`)"
        )
    if provision is not None and not (provision / "boards").is_dir():
        raise UsageError(f"--provision {provision}: no boards/ in it (`o2chain provision -o DIR`)")
    return url


def check_broker(url: SplitResult, provision: Path | None, timeout_s: float = 5.0) -> None:
    """RunError at once when nothing answers MQTT at ``url`` (instead of boards that retry in
    silence). A CONNACK refusing the anonymous probe counts: the broker is there."""
    import ssl

    from o2base.services import mqtt_handshake

    host, port = url.hostname or "127.0.0.1", url.port or _MQTT_PORTS[url.scheme]
    context = None
    if url.scheme == "mqtts":
        # Only "is a broker there": the boards check the certificate with their own CA.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if not mqtt_handshake(host, port, timeout_s, ssl_context=context, refused_is_answer=True):
        raise RunError(
            f"no MQTT broker answers at {url.scheme}://{host}:{port} within {timeout_s:g} s "
            "(wrong port, or mqtt:// for a TLS listener?)"
        )


def _fleet(args: argparse.Namespace) -> int:
    from simulators.fleet import Fleet, FleetConfig

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    url = mqtt_url(args.mqtt, args.provision)
    if not _SITE_RE.fullmatch(args.site):
        raise UsageError(f"--site {args.site!r}: expected [a-z0-9-]{{1,32}}")
    timeout_s = args.timeout_s
    if timeout_s is None:
        # Real-time runs last readings x interval; leave room for connections and a slow broker.
        timeout_s = 120.0 + args.readings * args.interval_s * 1.5 + args.boards * 0.01
    config = FleetConfig(
        host=url.hostname or "127.0.0.1",
        port=url.port or _MQTT_PORTS[url.scheme],
        site=args.site,
        boards=args.boards,
        interval_s=args.interval_s,
        readings=args.readings,
        seed=args.seed,
        prefix=args.prefix,
        boot=args.boot,
        first_board=args.first_board,
        altitude_m=args.altitude_m,
        batch_max=args.batch_max,
        window=args.window,
        buffer_max=args.buffer_max,
        timeout_s=timeout_s,
        provision_dir=str(args.provision) if args.provision else None,
        sites=args.sites,
    )
    try:
        config.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_broker(url, args.provision)
    summary = asyncio.run(Fleet(config).run())
    print(summary.to_json(), flush=True)
    return 0 if summary.complete else 1


def _sensor(args: argparse.Namespace) -> int:
    from simulators.wire.faults import PtySensor, Wire, WireFaults
    from simulators.wire.gasboard import GasboardWire
    from simulators.wire.luminox import LuminOxWire
    from simulators.wire.mhz19 import MHZ19Wire

    wire: Wire
    faults: WireFaults
    if args.model == "ze03":
        from simulators.wire.ze03 import ZE03Wire

        ze03 = ZE03Wire(
            20.9 if args.o2_pct is None else args.o2_pct, seed=args.seed, baro_kpa=args.baro_kpa
        )
        wire, faults = ze03, ze03.faults
    elif args.model == "gasboard":
        gas = GasboardWire(
            93.0 if args.o2_pct is None else args.o2_pct, args.flow_lpm, args.temp_c, seed=args.seed
        )
        wire, faults = gas, gas.faults
    elif args.model == "mhz19":
        co2 = MHZ19Wire(args.co2_ppm, args.temp_c, seed=args.seed)
        wire, faults = co2, co2.faults
    else:
        lum = LuminOxWire(
            24.1 if args.o2_pct is None else args.o2_pct, args.temp_c, args.baro_kpa, seed=args.seed
        )
        wire, faults = lum, lum.faults
    for text in args.fault:
        name, _, value = text.partition("=")
        if name in ("stuck", "disconnected") and not value:
            setattr(faults, name, True)
        elif name in ("bad_checksum_every", "garbage_every", "drop_every") and value.isdigit():
            setattr(faults, name, int(value))
        elif name == "drift_per_h" and value:
            faults.drift_per_h = float(value)
        else:
            raise UsageError(
                f"--fault {text!r}: expected bad_checksum_every=N, garbage_every=N, "
                "drop_every=N, drift_per_h=X, stuck or disconnected"
            )
    with PtySensor(wire, args.model) as sim:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(json.dumps({"port": sim.port_path, "model": args.model}), flush=True)
        stop.wait()
    return 0


def _scenarios(args: argparse.Namespace) -> int:
    from simulators.scenario import scenario_names

    for name in scenario_names():
        print(name)
    return 0


def _run(args: argparse.Namespace) -> int:
    from simulators.scenario import ScenarioError, load_scenario

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        raise UsageError(str(exc)) from None
    if args.speed is not None and args.speed <= 0:
        raise UsageError(f"--speed {args.speed:g}: expected > 0")
    if args.duration is not None and args.sim_duration is not None:
        raise UsageError("give --duration (real seconds) or --sim-duration, not both")
    for name in ("duration", "sim_duration"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} {value:g}: expected seconds > 0")
    boards = len(scenario.room) + sum(c.transport == "mqtt" for c in scenario.concentrator)
    if args.no_boards and (args.mqtt or args.own_broker):
        raise UsageError("--no-boards runs without a broker: drop --mqtt / --own-broker")
    if args.mqtt is not None and args.own_broker:
        raise UsageError("give --mqtt URL or --own-broker, not both")
    if boards and args.mqtt is None and not args.own_broker and not args.no_boards:
        raise UsageError(
            f"scenario {scenario.scenario.name!r} has {boards} boards that publish over MQTT: "
            "give --mqtt URL or --own-broker, or --no-boards for the Modbus equipment only"
        )
    if args.mqtt is not None:
        check_broker(mqtt_url(args.mqtt, args.provision), args.provision)
    if args.no_boards and boards:
        print(
            f"o2chain sim run: running without boards (--no-boards): the {boards} boards of "
            f"{scenario.scenario.name!r} are not simulated, the Modbus equipment is",
            file=sys.stderr,
            flush=True,
        )
    return asyncio.run(_run_scenario(scenario, args))


async def _run_scenario(scenario: Any, args: argparse.Namespace) -> int:
    import tempfile

    from simulators.scenario import ScenarioRunner

    hooks = {}
    if args.mqtt is not None:
        # Somebody else runs this broker (the demo does): say when the timeline restarts it.
        def broker_restart() -> None:
            line = {"broker_restart": True, "t_s": round(runner.sim_time_s, 1), "mqtt": args.mqtt}
            print(json.dumps(line), flush=True)

        hooks["broker_restart"] = broker_restart
    with tempfile.TemporaryDirectory(prefix="o2chain-scenario-") as tmp:
        runner = ScenarioRunner(
            scenario,
            mqtt_url=None if args.no_boards else args.mqtt,
            speed=args.speed,
            hooks=hooks,
            own_broker_dir=Path(tmp) if args.own_broker else None,
            provision_dir=args.provision,
        )
        if args.duration is not None:  # real seconds -> the runner's simulated ones
            sim_duration = args.duration * runner.speed
        else:
            sim_duration = args.sim_duration
        try:
            endpoints = await runner.start()
        except OSError as exc:
            await runner.stop()
            raise RunError(f"cannot start the scenario's equipment: {exc}") from None
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(endpoints.to_json(), flush=True)
        run = asyncio.create_task(runner.run(sim_duration))
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({run, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        run.cancel()
        await runner.stop()
        fired = [
            {"t_s": round(t, 1), "target": e.target, "action": e.action.value}
            for t, e in runner.fired
        ]
        print(
            json.dumps({"done": True, "sim_time_s": round(runner.sim_time_s, 1), "events": fired})
        )
    return 0


_FAULT_RE = re.compile(
    r"(?P<unit>\d+):(?P<kind>silent|silent-after|slow|exception|corrupt)(=(?P<value>[0-9.]+))?"
)


def parse_fault(text: str) -> tuple[int, str, float | None]:
    """``UNIT:KIND[=VALUE]`` -> (unit, kind, value); raises ValueError naming the expectation."""
    m = _FAULT_RE.fullmatch(text)
    if m is None:
        raise ValueError(
            f"--fault {text!r}: expected UNIT:silent, UNIT:silent-after=S, UNIT:slow=S, "
            "UNIT:exception=CODE or UNIT:corrupt=N"
        )
    kind, value = m["kind"], m["value"]
    if kind != "silent" and value is None:
        raise ValueError(f"--fault {text!r}: {kind} needs =VALUE")
    return int(m["unit"]), kind, None if value is None else float(value)


def _concentrator(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        load_profile(args.profile)
    except ProfileError as exc:
        raise UsageError(f"--profile: {exc}") from None
    except OSError as exc:  # a profile path that is not there or not readable
        raise UsageError(f"--profile {args.profile}: {exc.strerror or exc}") from None
    url = urlsplit(args.listen)
    port_ok = True
    try:
        url.port  # noqa: B018  (raises ValueError: tcp://127.0.0.1:99999)
    except ValueError:
        port_ok = False
    if not port_ok or not (
        (url.scheme == "tcp" and url.hostname) or (url.scheme == "rtu" and url.path)
    ):
        raise UsageError(
            f"--listen {args.listen!r}: expected tcp://HOST:PORT or "
            "rtu:///dev/ttyX?baudrate=9600[&parity=N&stopbits=1]"
        )
    if url.scheme == "tcp" and url.port:
        from o2base.services import port_is_free

        # Checked here: pymodbus logs a bind error and raises a bare RuntimeError.
        if not port_is_free(url.port, url.hostname or "127.0.0.1"):
            raise RunError(f"cannot listen on {args.listen}: address already in use")
    if url.scheme == "rtu" and not os.path.exists(url.path):
        raise UsageError(f"--listen {args.listen!r}: no serial device {url.path}")
    units = args.unit or [1]
    if any(not 1 <= u <= 247 for u in units) or len(set(units)) != len(units):
        raise UsageError(f"--unit {units}: expected distinct ids in 1..247")
    try:
        faults = [parse_fault(f) for f in args.fault]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if any(unit not in units for unit, _, _ in faults):
        raise UsageError(f"--fault names a unit that is not served ({units})")
    return asyncio.run(
        serve_concentrator(
            # The name or path as given: the server loads it again (a path stays a path).
            profile_name=args.profile,
            listen=args.listen,
            units=units,
            seed=args.seed,
            flow_lpm=args.flow_lpm,
            speed=args.speed,
            faults=faults,
        )
    )


async def serve_concentrator(
    profile_name: str,
    listen: str,
    units: list[int],
    seed: int = 0,
    flow_lpm: float | None = None,
    speed: float = 1.0,
    faults: list[tuple[int, str, float | None]] | None = None,
) -> int:
    """Serve simulated devices until SIGINT/SIGTERM; prints a JSON line once listening.

    One device per unit id (seeds ``seed``, ``seed + 1``, ...), all on one TCP port or one
    RTU line. ``faults``: (unit, kind, value) from ``--fault``.
    """
    from urllib.parse import parse_qs

    from simulators.modbus_server import (
        DeviceModel,
        ModbusRtuSimulator,
        ModbusTcpSimulator,
        SimulatedDevice,
        model_for,
    )
    from simulators.physics.concentrator import ConcentratorModel, params_from_profile

    profile = load_profile(profile_name)
    devices = []
    for n, unit in enumerate(units):
        model: DeviceModel
        if profile.kind == "supply":  # tanks, manifolds, panels: their own physics
            model = model_for(profile, seed=seed + n)
        else:
            params = params_from_profile(profile.nominal)
            model = ConcentratorModel(params, seed=seed + n, flow_lpm=flow_lpm)
        devices.append(SimulatedDevice(profile, model, unit=unit, speed=speed))
    url = urlsplit(listen)
    server: ModbusTcpSimulator | ModbusRtuSimulator
    if url.scheme == "tcp":
        server = ModbusTcpSimulator(devices, host=url.hostname or "127.0.0.1", port=url.port or 0)
    else:
        query = parse_qs(url.query)
        server = ModbusRtuSimulator(
            devices,
            port=url.path,
            baudrate=int(query.get("baudrate", ["9600"])[0]),
            parity=query.get("parity", ["N"])[0],
            stopbits=int(query.get("stopbits", ["1"])[0]),
        )
    try:
        await server.start()
    except (OSError, RuntimeError) as exc:  # a port in use, a tty that cannot be opened
        with contextlib.suppress(Exception):
            await server.stop()
        reason = getattr(exc, "strerror", None) or str(exc)
        raise RunError(f"cannot listen on {listen}: {reason}") from None
    loop = asyncio.get_running_loop()
    for unit, kind, value in faults or []:
        f = server.device(unit).faults
        if kind == "silent":
            f.silent = True
        elif kind == "silent-after":
            loop.call_later(value or 0.0, setattr, f, "silent", True)
        elif kind == "slow":
            f.delay_s = value or 0.0
        elif kind == "exception":
            f.exception_code = int(value or 4)
        elif kind == "corrupt":
            f.corrupt_every = int(value or 1)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # "listening" first: the demo and the test fixtures match this line with a regex.
    print(
        json.dumps(
            {"listening": server.url, "profile": profile.name, "unit": units[0], "units": units}
        ),
        flush=True,
    )
    await stop.wait()
    await server.stop()
    return 0
