"""The `o2chain` command: one entry point whose subcommands are every part's entry points."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from o2chain import __version__


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (its default prints the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    # Imported here so `o2chain --help` stays fast and one broken part names itself clearly.
    from dashboards import cli as dashboards_cli
    from gateway import cli as gateway_cli
    from o2chain import alarms_cli, board_cli, demo, firmware_cli, provision, region
    from simulators import cli as sim_cli

    parser = _Parser(prog="o2chain", description="Monitoring of the high-altitude oxygen chain.")
    parser.add_argument("--version", action="version", version=f"o2chain {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error instead of one line"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.register(sub)
    gateway_cli.register(sub)
    sim_cli.register(sub)
    firmware_cli.register(sub)
    board_cli.register(sub)
    dashboards_cli.register(sub)
    provision.register(sub)
    alarms_cli.register(sub)
    region.register(sub)
    return parser


def _prefix(args: argparse.Namespace | None) -> str:
    """``o2chain demo``, ``o2chain sim concentrator``: who speaks in an error line."""
    words = ["o2chain"]
    if args is not None:
        for attr in (
            "command",
            "sim_command",
            "alarms_command",
            "gateway_command",
            "firmware_command",
            "region_command",
        ):
            value = getattr(args, attr, None)
            if isinstance(value, str):
                words.append(value)
    return " ".join(words)


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (a service's log tail stays in its log file)."""
    text = str(exc).strip() or type(exc).__name__
    first, _, rest = text.partition("\n")
    tail = re.search(r"--- last \d+ lines of (\S+) ---", rest)
    if tail:  # ServiceError carries the log's tail after its first line: name the log instead
        return f"{first} (see {tail.group(1)})"
    return " ".join(text.split()) if len(text) < 400 else first


def _exit_code(exc: BaseException) -> int | None:
    """2 for a usage or configuration mistake, 1 for a runtime failure, None if unexpected."""
    from o2base.errors import CliError
    from o2base.procs import ProcessError
    from o2base.registers import ProfileError
    from o2base.services import ServiceError

    if isinstance(exc, CliError):
        return exc.exit_code
    usage: tuple[type[BaseException], ...] = (ProfileError,)
    with contextlib.suppress(ImportError):
        from simulators.scenario import ScenarioError

        usage += (ScenarioError,)
    with contextlib.suppress(ImportError):
        from gateway.config import ConfigError

        usage += (ConfigError,)
    with contextlib.suppress(ImportError):
        from o2chain.provision import ProvisionError

        usage += (ProvisionError,)
    if isinstance(exc, usage):
        return 2
    if isinstance(exc, ServiceError | ProcessError | OSError):
        return 1
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure a user can cause ends in one line on stderr.

    Exit codes: 0 done, 1 runtime failure, 2 usage or configuration error (argparse's too),
    130 interrupted (Ctrl-C). ``--debug`` re-raises so the traceback shows.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # Accepted anywhere on the line (`o2chain demo --debug` too), so it is taken out here.
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args: argparse.Namespace | None = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        result = args.handler(args)
        return int(result or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{_prefix(args)}: interrupted", file=sys.stderr, flush=True)
        return 130
    except SystemExit:
        raise
    except Exception as exc:
        if debug:
            raise
        code = _exit_code(exc)
        if code is None:
            print(
                f"{_prefix(args)}: unexpected error: {type(exc).__name__}: {_one_line(exc)} "
                "(run again with --debug for the traceback)",
                file=sys.stderr,
                flush=True,
            )
            return 1
        print(f"{_prefix(args)}: {_one_line(exc)}", file=sys.stderr, flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
