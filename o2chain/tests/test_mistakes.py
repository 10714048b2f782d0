"""The mistakes a user makes on the way from a new board to a trusted reading, each run through
the CLI as a user runs it (a subprocess): ONE line on stderr naming what is wrong, a non-zero
exit code (2 for a usage or configuration mistake: nothing was started; 1 for a failure while
running), never a traceback. One table; each row builds its own files in a temp dir.

(The demo's and the simulators' other mistakes, Ctrl-C and ``--debug`` are in
test_cli_errors.py.)"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest

from o2base.procs import o2chain_argv

TIMEOUT_S = 60
Setup = Callable[[Path], list[str]]


def _file(tmp: Path, name: str, text: str = "") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _gateway_toml(tmp: Path, state_dir: Path, mqtt_url: str = "mqtt://127.0.0.1:1883") -> str:
    text = (
        f'[gateway]\nid = "gw"\nstate_dir = "{state_dir}"\n[mqtt]\nurl = "{mqtt_url}"\n'
        '[influx]\nurl = "http://127.0.0.1:8086"\ndatabase = "o2chain"\n'
    )
    return str(_file(tmp, "gw.toml", text))


def _inventory(tmp: Path, board: str) -> str:
    """A one-board inventory whose board table holds ``board`` (TOML lines)."""
    text = (
        '[defaults]\nsite = "bench"\nsite_altitude_m = 3650\nmqtt = { host = "127.0.0.1" }\n'
        f"[devices.room-1]\n{board}\n"
    )
    return str(_file(tmp, "site.toml", text))


def _busy_port() -> int:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    _KEEP.append(busy)  # closed after the row ran
    return int(busy.getsockname()[1])


def _closed_port() -> int:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    _KEEP.append(closed)
    return int(closed.getsockname()[1])


_KEEP: list[socket.socket] = []
_FLEET = ["sim", "fleet", "--site", "s", "--boards", "1", "--interval-s", "1", "--readings", "3"]
_CONCENTRATOR = ["sim", "concentrator", "--profile", "medical-concentrator", "--listen"]


def _flash(
    t: Path, port: str, *, board: str = 'kind = "room"', device: str = "room-1"
) -> list[str]:
    """``firmware flash`` of ``device`` from a one-board inventory holding ``board``."""
    inventory = _inventory(t, board)
    return ["firmware", "flash", "--port", port, "--device", device, "--inventory", inventory]


def _board_config(t: Path, board: str) -> list[str]:
    """``firmware config`` of room-1 from a one-board inventory holding ``board``."""
    return ["firmware", "config", "--device", "room-1", "--inventory", _inventory(t, board)]


_RUN = ["firmware", "run", "--duration", "1", "--config"]
_MISSPELT_BOARD = {
    "site": "s",
    "device": "d",
    "site_altitude_m": 0,
    "intervall_s": 1,
    "mqtt": {"host": "127.0.0.1"},
}

# (id, argv from a temp dir, exit code, words the one line must hold)
ROWS: list[tuple[str, Setup, int, list[str]]] = [
    (
        "demo --scenario typo",
        lambda t: ["demo", "--scenario", "lhasa-hotle", "--data-dir", str(t / "data")],
        2,
        ["o2chain demo:", "unknown scenario 'lhasa-hotle'", "lhasa-hotel"],
    ),
    (
        "demo --data-dir that is a file",
        lambda t: ["demo", "--data-dir", str(_file(t, "afile"))],
        2,
        ["--data-dir", "not a directory"],
    ),
    (
        "demo --data-dir that cannot be written",
        lambda t: ["demo", "--data-dir", str(_file(t, "afile") / "sub")],
        2,
        ["--data-dir", "cannot create it"],
    ),
    ("demo --speed 0", lambda t: ["demo", "--speed", "0"], 2, ["--speed 0: expected"]),
    (
        "gateway run with a state dir that cannot be written",
        lambda t: ["gateway", "run", "-c", _gateway_toml(t, _file(t, "afile") / "state")],
        2,
        ["gateway.state_dir", "cannot be created", "is a file, not a directory"],
    ),
    (
        "gateway check with a state_dir that is a file and MQTT port 99999",
        lambda t: [
            "gateway",
            "check",
            "-c",
            _gateway_toml(t, _file(t, "afile"), "mqtt://127.0.0.1:99999"),
        ],
        2,
        ["mqtt.url: port of '127.0.0.1:99999' out of range"],
    ),
    (
        "gateway check with a state_dir that is a file",
        lambda t: ["gateway", "check", "-c", _gateway_toml(t, _file(t, "afile"))],
        2,
        ["gateway.state_dir:", "is a file, not a directory"],
    ),
    (
        "sim concentrator on a busy port",
        lambda t: [*_CONCENTRATOR, f"tcp://127.0.0.1:{_busy_port()}"],
        1,
        ["o2chain sim concentrator:", "cannot listen on tcp://127.0.0.1:", "in use"],
    ),
    (
        "sim concentrator on a missing tty",
        lambda t: [*_CONCENTRATOR, "rtu:///dev/ttyNOPE0?baudrate=9600"],
        2,
        ["no serial device /dev/ttyNOPE0"],
    ),
    (
        "sim fleet on a wrong port",
        lambda t: [*_FLEET, "--mqtt", f"mqtt://127.0.0.1:{_closed_port()}"],
        1,
        ["o2chain sim fleet:", "no MQTT broker answers at mqtt://127.0.0.1:"],
    ),
    (
        "firmware flash on a missing port",
        lambda t: _flash(t, "/dev/ttyUSB-NOPE"),
        2,
        [
            "o2chain firmware flash:",
            "--port /dev/ttyUSB-NOPE: no such serial port",
            "o2chain firmware ports",
        ],
    ),
    (
        "firmware flash with a --build that is not there",
        lambda t: [*_flash(t, "/dev/null"), "--build", str(t / "none")],
        2,
        ["--build", "no such directory", "o2chain firmware build"],
    ),
    (
        "firmware flash on a port that is no serial port",
        lambda t: _flash(t, "/dev/null"),
        1,
        ["o2chain firmware flash: cannot open /dev/null"],
    ),
    (
        "firmware flash with a device the inventory does not have",
        lambda t: _flash(t, "/dev/null", device="room-2"),
        2,
        ["no [devices.room-2] (known: room-1)"],
    ),
    (
        "firmware run with a board config error",
        lambda t: [*_RUN, str(_file(t, "board.json", json.dumps(_MISSPELT_BOARD)))],
        2,
        ["o2chain firmware run:", "intervall_s: unknown key (did you mean interval_s?)"],
    ),
    (
        'board config mqtt.host = ""',
        lambda t: _board_config(t, 'mqtt = { host = "" }'),
        2,
        ["device room-1: mqtt.host: expected a broker IP address (not empty), got ''"],
    ),
    (
        "board config buzzer on GPIO 34",
        lambda t: _board_config(t, "alarm = { pin = 34 }"),
        2,
        ["alarm.pin: expected a GPIO that can drive an output (34-39 are input-only), got 34"],
    ),
    (
        "board config tx = 40",
        lambda t: _board_config(t, "sensors = { o2 = { tx = 40 } }"),
        2,
        ["sensors.o2.tx: expected an ESP32 GPIO (0-19, 21-23, 25-27, 32-39), got 40"],
    ),
    (
        "board config with a misspelt key",
        lambda t: _board_config(t, "alarm = { o2_hihg_alarm_pct = 27.5 }"),
        2,
        ["alarm.o2_hihg_alarm_pct: unknown key (did you mean alarm.o2_high_alarm_pct?)"],
    ),
    (
        "flash a board config with a pin used twice",
        lambda t: _flash(t, "/dev/null", board="alarm = { pin = 17 }"),
        2,
        ["alarm.pin: expected a GPIO of its own, got 17 (also sensors.o2.tx)"],
    ),
]


@pytest.mark.parametrize(
    ("setup", "code", "words"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_one_line_and_an_exit_code(
    tmp_path: Path, setup: Setup, code: int, words: list[str]
) -> None:
    argv = setup(tmp_path)
    started = time.monotonic()
    try:
        done = subprocess.run(
            o2chain_argv(*argv), capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path
        )
    finally:
        for sock in _KEEP:
            sock.close()
        _KEEP.clear()
    elapsed_s = time.monotonic() - started
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    for word in words:
        assert word in lines[0], lines[0]
    # Said, not waited out: each row's line names the mistake (not a timeout), and the run ends
    # well before TIMEOUT_S. Not a speed check: on a loaded 2-core machine a run that takes 3 s
    # alone took 15 s, so the bound only catches a command that hangs.
    assert elapsed_s < TIMEOUT_S - 15, f"{elapsed_s:.1f} s: a mistake must be said, not hang"
    if argv[0] == "demo":  # nothing left behind by a refused demo
        assert not (tmp_path / "data").exists()


def test_sim_concentrator_serves_a_profile_copied_next_to_the_user(tmp_path: Path) -> None:
    """Not a mistake: `--profile ./my.toml` (relative, from the current directory) serves it."""
    bundled = Path(str(resources.files("o2base") / "profiles" / "medical-concentrator.toml"))
    text = bundled.read_text().replace('name = "medical-concentrator"', 'name = "my"', 1)
    _file(tmp_path, "my.toml", text)
    sim = subprocess.Popen(
        o2chain_argv("sim", "concentrator", "--profile", "./my.toml",
                     "--listen", "tcp://127.0.0.1:0"),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert sim.stdout is not None
        line = sim.stdout.readline()  # the "listening" line, or '' if it exited
        assert line, sim.communicate(timeout=10)[1]
        listening = json.loads(line)
        assert listening["profile"] == "my" and listening["listening"].startswith("tcp://")
    finally:
        sim.send_signal(signal.SIGTERM)
        code = sim.wait(timeout=30)
    assert code == 0


def test_sim_run_says_when_it_runs_without_boards() -> None:
    done = subprocess.run(
        o2chain_argv("sim", "run", "lhasa-hotel", "--no-boards", "--speed", "100",
                     "--sim-duration", "50"),
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "o2chain sim run: running without boards (--no-boards): the 24 boards of" in done.stderr
