"""Every mistake a user can make on the command line ends in one line on stderr and an exit
code (2 usage or configuration, 1 runtime failure, 130 Ctrl-C), never a traceback; ``--debug``
shows the traceback. Each case runs the CLI as a user does, in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest

from o2base.procs import ChildProcess, o2chain_argv
from o2chain.demo import DataDirLock

TIMEOUT_S = 60


def run(*args: str, timeout_s: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(o2chain_argv(*args), capture_output=True, text=True, timeout=timeout_s)


def one_line(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The single stderr line of a failed run, after checking its exit code and words."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- o2chain demo ------------------------------------------------------------------------------


def test_demo_scenario_typo_is_one_line_and_leaves_no_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = run("demo", "--scenario", "lhasa-hotle", "--data-dir", str(data))
    one_line(done, 2, "o2chain demo:", "unknown scenario 'lhasa-hotle'", "lhasa-hotel")
    assert not data.exists()


def test_demo_data_dir_that_is_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    one_line(run("demo", "--data-dir", str(afile)), 2, f"--data-dir {afile}", "not a directory")


def test_demo_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    # A directory below a file cannot be made, by root either.
    one_line(run("demo", "--data-dir", str(afile / "sub")), 2, "--data-dir", "cannot create it")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--speed", "0"], "--speed 0: expected"),
        (["--speed", "-3"], "--speed -3: expected"),
        (["--duration", "0"], "--duration 0: expected"),
        (["--http-port", "70000"], "--http-port 70000: expected 0..65535"),
    ],
)
def test_demo_bad_numbers_before_anything_starts(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    data = tmp_path / "data"
    one_line(run("demo", "--data-dir", str(data), *args), 2, needle)
    assert not (data / "services").exists()  # no service was started


def test_demo_refuses_a_data_dir_in_use_naming_the_other_pid(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    lock = DataDirLock(data)
    lock.acquire()  # as a running demo holds it
    try:
        done = run("demo", "--data-dir", str(data))
    finally:
        lock.release()
    one_line(done, 1, f"{data} is in use by another demo (pid {os.getpid()})")
    assert not (data / "services").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["demo", "--speed", "fast"], "o2chain demo: argument --speed: invalid float value"),
        (["sim", "concentrator"], "the following arguments are required: --profile"),
        (["alarms", "ack"], "o2chain alarms ack: the following arguments are required: KEY"),
    ],
)
def test_argparse_mistakes_are_one_line_too(args: list[str], needle: str) -> None:
    one_line(run(*args), 2, needle, "--help")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    done = run("demo", "--speed", "0", "--debug")
    assert done.returncode != 0 and "Traceback" in done.stderr and "UsageError" in done.stderr


@pytest.mark.integration
def ctrl_c(child: ChildProcess, running: Callable[[], object], timeout_s: float) -> int | None:
    """Start ``child``, press Ctrl-C (SIGINT) once ``running()`` returned, and return its exit
    code (None if it did not exit within ``timeout_s``); the child is stopped either way."""
    child.start()
    try:
        running()
        child.signal(signal.SIGINT)
        return child.wait(timeout_s)
    finally:
        child.stop()


def test_demo_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path: Path) -> None:
    data = tmp_path / "data"
    demo = ChildProcess(
        o2chain_argv("demo", "--data-dir", str(data), "--http-port", "0", "--mqtt-port", "0",
                     "--influx-port", "0"),
        tmp_path / "demo.log",
    )  # fmt: skip
    code = ctrl_c(demo, lambda: demo.wait_for_log("o2chain demo: starting scenario", 30), 60)
    log = demo.log_text()
    assert code == 130, log
    assert "Traceback" not in log
    assert log.count("o2chain demo: interrupted") == 1
    assert "o2chain demo: stopped; data kept in" in log


# -- o2chain sim -------------------------------------------------------------------------------


def test_sim_concentrator_on_a_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run("sim", "concentrator", "--profile", "medical-concentrator",
                   "--listen", f"tcp://127.0.0.1:{port}")  # fmt: skip
    one_line(done, 1, "o2chain sim concentrator:", f"cannot listen on tcp://127.0.0.1:{port}")


def test_sim_concentrator_on_a_missing_tty() -> None:
    done = run("sim", "concentrator", "--profile", "medical-concentrator",
               "--listen", "rtu:///dev/ttyNOPE0?baudrate=9600")  # fmt: skip
    one_line(done, 2, "no serial device /dev/ttyNOPE0")


def test_sim_concentrator_serves_a_profile_given_by_path(tmp_path: Path) -> None:
    custom = tmp_path / "my-unit.toml"  # [profile] name = the file name
    bundled = Path(str(resources.files("o2base") / "profiles" / "medical-concentrator.toml"))
    text = bundled.read_text()
    custom.write_text(text.replace('name = "medical-concentrator"', 'name = "my-unit"', 1))
    sim = ChildProcess(
        o2chain_argv("sim", "concentrator", "--profile", str(custom),
                     "--listen", "tcp://127.0.0.1:0"),
        tmp_path / "sim.log",
    ).start()  # fmt: skip
    try:
        line = sim.wait_for_log(r'(\{"listening".*\})', timeout_s=30).group(1)
        assert json.loads(line)["profile"] == "my-unit"
    finally:
        code = sim.stop()
    assert code == 0, sim.log_tail()


def test_sim_concentrator_missing_profile_file(tmp_path: Path) -> None:
    one_line(run("sim", "concentrator", "--profile", str(tmp_path / "none.toml")), 2, "--profile")


def test_sim_fleet_wrong_port_fails_fast() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        started = time.monotonic()
        done = run("sim", "fleet", "--mqtt", f"mqtt://127.0.0.1:{port}", "--site", "s",
                   "--boards", "1", "--interval-s", "1", "--readings", "3")  # fmt: skip
    one_line(done, 1, f"no MQTT broker answers at mqtt://127.0.0.1:{port}")
    assert time.monotonic() - started < 20  # not the fleet's silent retries


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["fleet", "--mqtt", "http://x", "--site", "s", "--boards", "1", "--interval-s", "1",
          "--readings", "1"], 2, "expected mqtt://HOST:PORT or mqtts://"),
        (["fleet", "--mqtt", "mqtts://127.0.0.1:8883", "--site", "s", "--boards", "1",
          "--interval-s", "1", "--readings", "1"], 2, "needs --provision DIR"),
        (["run", "lhasa-hotel"], 2, "give --mqtt URL or --own-broker, or --no-boards"),
        (["run", "lhasa-hotel", "--no-boards", "--duration", "1", "--sim-duration", "1"], 2,
         "not both"),
        (["run", "lhasa-hotel", "--mqtt", "mqtts://127.0.0.1:1"], 2, "needs --provision DIR"),
        (["run", "lhasa-hotel", "--mqtt", "mqtt://127.0.0.1:99999"], 2, "port"),
    ],
)  # fmt: skip
def test_sim_usage_errors(args: list[str], code: int, needle: str) -> None:
    env_free = {k: v for k, v in os.environ.items() if k != "O2CHAIN_PROVISION_DIR"}
    done = subprocess.run(
        o2chain_argv("sim", *args), capture_output=True, text=True, timeout=TIMEOUT_S, env=env_free
    )
    one_line(done, code, needle)


def test_sim_run_duration_is_real_seconds() -> None:
    """`--duration` means real seconds in `sim run` as in `demo`; `--sim-duration` simulated."""
    started = time.monotonic()
    done = run("sim", "run", "lhasa-hotel", "--no-boards", "--speed", "100", "--duration", "2")
    elapsed_s = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    end = json.loads(done.stdout.strip().splitlines()[-1])
    assert end["done"] and 200 <= end["sim_time_s"] < 400
    assert elapsed_s >= 2
    done = run(
        "sim", "run", "lhasa-hotel", "--no-boards", "--speed", "100", "--sim-duration", "100"
    )
    end = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0 and 100 <= end["sim_time_s"] < 200


@pytest.mark.integration
def test_sim_fleet_ctrl_c_is_one_line_and_exit_130(mosquitto: object, tmp_path: Path) -> None:
    from o2base.services import Mosquitto
    from o2chain.testing import MqttProbe

    assert isinstance(mosquitto, Mosquitto)
    with MqttProbe(mosquitto.port) as probe:
        assert probe.connect() == 0
        probe.subscribe("o2/fleet-int/#")
        fleet = ChildProcess(
            o2chain_argv("sim", "fleet", "--mqtt", mosquitto.url, "--site", "fleet-int",
                         "--boards", "2", "--interval-s", "0.5", "--readings", "1000"),
            tmp_path / "fleet.log",
        )  # fmt: skip
        code = ctrl_c(fleet, lambda: probe.wait_for("o2/fleet-int/room-0001/telemetry"), 30)
    log = fleet.log_text()
    assert code == 130, log
    assert "Traceback" not in log and log.count("o2chain sim fleet: interrupted") == 1


def test_demo_ports_are_fixed_and_a_taken_one_moves_with_a_note() -> None:
    import argparse

    from o2chain.demo import _ports

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        args = argparse.Namespace(http_port=taken, bind="127.0.0.1", mqtt_port=0, influx_port=0)
        ports, notes = _ports(args)
    assert ports["live page"] != taken
    assert notes == [f"port {taken} is taken: the live page runs on {ports['live page']} instead"]
    assert len(set(ports.values())) == len(ports)  # no two services on one port


@pytest.mark.integration
def test_sim_run_with_somebody_elses_broker_announces_broker_restart(mosquitto: object) -> None:
    """`broker_restart` is not skipped: with --mqtt the run prints a line for the broker's
    owner (the demo restarts its broker on it)."""
    from o2base.services import Mosquitto

    assert isinstance(mosquitto, Mosquitto)
    # lhasa-hotel restarts the broker at 1200 simulated s: 1.2 s at 1000x.
    done = run("sim", "run", "lhasa-hotel", "--mqtt", mosquitto.url, "--speed", "1000",
               "--sim-duration", "1300", timeout_s=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    restart = [x for x in lines if x.get("broker_restart")]
    assert restart == [{"broker_restart": True, "t_s": 1200.0, "mqtt": mosquitto.url}]
    assert ("broker_restart skipped") not in done.stderr


def test_a_service_failure_names_its_log_instead_of_pasting_it() -> None:
    from o2base.services import ServiceError
    from o2chain.cli import _exit_code, _one_line

    exc = ServiceError(
        "mosquitto exited with code 3 before it was ready\n"
        "--- last 40 lines of /data/services/mosquitto/mosquitto.log ---\nError: ...\nmore"
    )
    assert _one_line(exc) == (
        "mosquitto exited with code 3 before it was ready "
        "(see /data/services/mosquitto/mosquitto.log)"
    )
    assert _exit_code(exc) == 1
