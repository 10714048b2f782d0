"""RTU bus acceptance over a pty pair (socat) with the concentrator simulator serving RTU:
one of five devices stops answering and the other four keep their poll interval (measured);
exception codes and CRC errors are counted per device; device_health points are emitted."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Device
from gateway.modbus import DevicePoller, RtuBus, SerialLine, modbus_runners
from gateway.readings import Reading
from o2base.procs import ChildProcess, o2chain_argv
from o2base.registers import load_profile

pytestmark = pytest.mark.integration  # socat: a required tool (conftest.py)

INTERVAL_S = 0.5


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two connected pseudo-terminals (a null-modem cable): (simulator end, gateway end)."""
    a, b = tmp_path / "tty-sim", tmp_path / "tty-gw"
    with ChildProcess(
        ["socat", "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        tmp_path / "socat.log",
    ) as socat:
        socat.wait_for_log(r"starting data transfer loop", timeout_s=10)
        yield str(a), str(b)


def simulator(tmp_path: Path, port: str, units: int, *faults: str) -> ChildProcess:
    argv = o2chain_argv(
        "sim",
        "concentrator",
        "--profile",
        "medical-concentrator",
        "--listen",
        f"rtu://{port}?baudrate=19200",
    )
    for unit in range(1, units + 1):
        argv += ["--unit", str(unit)]
    for fault in faults:
        argv += ["--fault", fault]
    return ChildProcess(argv, tmp_path / "sim.log")


def bus_pollers(
    port: str, units: int, emitted: list[tuple[float, Reading]], interval_s: float = INTERVAL_S
) -> list[DevicePoller]:
    profile = load_profile("medical-concentrator")
    pollers = []
    for unit in range(1, units + 1):
        device = Device.model_validate(
            {
                "id": f"conc-{unit}",
                "site": "s",
                "kind": "concentrator",
                "transport": "modbus",
                "url": f"rtu://{port}?baudrate=19200",
                "unit": unit,
                "profile": "medical-concentrator",
                "interval_s": interval_s,
                "timeout_s": 0.2,
                "retries": 1,
            }
        )
        pollers.append(
            DevicePoller(
                device,
                profile,
                lambda d: None,  # type: ignore[arg-type, return-value]  # the bus gives the client
                lambda r: emitted.append((time.monotonic(), r)),
            )
        )
    return pollers


async def run_for(pollers: list[DevicePoller], seconds: float) -> None:
    stop = asyncio.Event()
    (name, run), *rest = modbus_runners(pollers)
    assert name.startswith("modbus-rtu:") and not rest  # one bus, one task
    task = asyncio.create_task(run(stop))
    await asyncio.sleep(seconds)  # the measuring window
    stop.set()
    await task


def test_dead_device_does_not_delay_its_neighbours(
    tmp_path: Path, pty_pair: tuple[str, str]
) -> None:
    sim_end, gw_end = pty_pair
    silent_after = 2.0
    emitted: list[tuple[float, Reading]] = []
    pollers = bus_pollers(gw_end, 5, emitted)
    with simulator(tmp_path, sim_end, 5, f"3:silent-after={silent_after}") as sim:
        sim.wait_for_log(r'"listening"', timeout_s=20)
        started = time.monotonic()
        asyncio.run(run_for(pollers, 8.0))
    after_fault = started + silent_after + 1.0  # detection settled
    for p in pollers:
        times = [
            t
            for t, r in emitted
            if r.measurement == "concentrator" and r.tags["device"] == p.device.id
        ]
        if p.device.unit == 3:
            assert not p.health.online and p.health.timeouts >= 2, p.health
            assert not any(t > after_fault for t in times)
            continue
        gaps = [b - a for a, b in itertools.pairwise(times) if a > after_fault]
        assert len(gaps) >= 6, (p.device.id, gaps)
        # Each live device keeps its own 0.5 s schedule while its neighbour times out.
        assert abs(statistics.median(gaps) - INTERVAL_S) < 0.05, (p.device.id, gaps)
        assert max(gaps) < INTERVAL_S * 1.3, (p.device.id, gaps)
        assert p.health.online and p.health.timeouts == 0
    health = [r for _, r in emitted if r.measurement == "device_health"]
    dead = [r for r in health if r.tags["device"] == "conc-3"]
    assert dead[-1].fields["online"] is False and int(dead[-1].fields["timeouts"]) >= 2
    assert {r.tags["device"] for r in health} == {f"conc-{u}" for u in range(1, 6)}


def test_exception_codes_and_crc_errors_are_counted_per_device(
    tmp_path: Path, pty_pair: tuple[str, str]
) -> None:
    sim_end, gw_end = pty_pair
    emitted: list[tuple[float, Reading]] = []
    # A damaged RTU answer costs a whole timeout (the master cannot tell where it ends) plus a
    # retry: 0.4 s of each second here, so the failing device gets the slack that is left.
    pollers = bus_pollers(gw_end, 3, emitted, interval_s=1.0)
    with simulator(tmp_path, sim_end, 3, "2:exception=2", "3:corrupt=2") as sim:
        sim.wait_for_log(r'"listening"', timeout_s=20)
        asyncio.run(run_for(pollers, 4.5))
    ok, exc, crc = (p.health for p in pollers)
    assert ok.ok >= 4 and ok.exceptions == ok.crc_errors == ok.timeouts == 0
    assert exc.exceptions >= 3 and exc.errors_by_code == {2: exc.exceptions} and exc.ok == 0
    assert crc.crc_errors >= 2 and crc.ok >= 2, crc  # every other answer damaged: retried
    assert crc.timeouts == 0


def test_serial_line_from_url() -> None:
    line = SerialLine.from_url("rtu:///dev/ttyUSB0?baudrate=9600&parity=E&stopbits=1")
    assert (line.port, line.baudrate, line.parity, line.stopbits) == ("/dev/ttyUSB0", 9600, "E", 1)
    assert line.char_s == pytest.approx(11 / 9600)
    assert line.frame_gap_s == pytest.approx(3.5 * 11 / 9600)
    assert SerialLine.from_url("rtu:///dev/x?baudrate=115200").frame_gap_s == 0.00175
    with pytest.raises(ValueError, match="parity must be N, E or O"):
        SerialLine.from_url("rtu:///dev/ttyUSB0?parity=Q")


def concentrators(units: int) -> list[Any]:
    """Simulated medical concentrators, units 1..``units``, for an in-process RTU server."""
    from simulators.modbus_server import SimulatedDevice
    from simulators.physics.concentrator import ConcentratorModel, params_from_profile

    profile = load_profile("medical-concentrator")
    return [
        SimulatedDevice(profile, ConcentratorModel(params_from_profile(profile.nominal)), unit=u)
        for u in range(1, units + 1)
    ]


def run_bus_until(
    tmp_path: Path,
    devices: list[Any],
    interval_s: float,
    emitted: list[tuple[float, Reading]],
    done: Callable[[list[DevicePoller]], bool],
) -> list[DevicePoller]:
    """``devices`` served over RTU on a pty pair, polled by the gateway's (supervised) bus task
    until ``done(pollers)``, 20 s at most; returns the pollers."""
    from simulators.modbus_server import ModbusRtuSimulator
    from simulators.ptypair import PtyPair

    async def main(pair: PtyPair) -> list[DevicePoller]:
        server = ModbusRtuSimulator(devices, port=pair.a, baudrate=19200)
        await server.start()
        pollers = bus_pollers(pair.b, len(devices), emitted, interval_s=interval_s)
        polled = watch_polls(pollers)
        stop = asyncio.Event()
        [(_, run)] = modbus_runners(pollers)
        task = asyncio.create_task(run(stop))
        deadline = time.monotonic() + 20
        try:
            while not done(pollers):
                assert not task.done(), "the bus task ended"
                assert time.monotonic() < deadline, [
                    (p.health.polls, p.health.ok, p.health.restarts, p.health.last_error)
                    for p in pollers
                ]
                await wait_for_poll(polled, deadline)
        finally:
            stop.set()
            await task
            await server.stop()
        return pollers

    with PtyPair(tmp_path) as pair:
        return asyncio.run(main(pair))


def watch_polls(pollers: list[DevicePoller]) -> asyncio.Event:
    """An event set after every poll of any of ``pollers`` (failed or not): tests wait on it
    instead of sleeping."""
    polled = asyncio.Event()
    for p in pollers:
        poll_once = p.poll_once

        async def watched(poll_once: Any = poll_once) -> Reading | None:
            try:
                return await poll_once()
            finally:
                polled.set()

        p.poll_once = watched  # type: ignore[method-assign]
    return polled


async def wait_for_poll(polled: asyncio.Event, deadline: float) -> None:
    polled.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(polled.wait(), timeout=max(0.0, deadline - time.monotonic()))


def test_short_answer_and_sentinels_on_one_unit_do_not_silence_the_bus(tmp_path: Path) -> None:
    """Was: one short answer raised out of the bus task, so every device on the line went
    silent while their links stayed "online". Now it is that unit's failed poll."""
    devices = concentrators(3)
    devices[1].faults.short_by = 1  # unit 2: every answer one register short
    devices[2].faults.raw["purity_pct"] = [0xFFFF]  # unit 3: purity "no value"
    emitted: list[tuple[float, Reading]] = []
    pollers = run_bus_until(
        tmp_path,
        devices,
        0.5,
        emitted,
        lambda ps: ps[1].health.decode_errors >= 3 and min(ps[0].health.ok, ps[2].health.ok) >= 6,
    )
    one, short, sentinel = (p.health for p in pollers)
    assert one.online and sentinel.online and not short.online
    assert short.ok == 0 and "got 7 (missing alarm_bits)" in short.last_error
    assert one.decode_errors == sentinel.decode_errors == 0 and short.restarts == 0
    readings = [r for _, r in emitted if r.measurement == "concentrator"]
    unit3 = [r.fields for r in readings if r.tags["device"] == "conc-3"]
    assert unit3 and all("purity_pct" not in f for f in unit3)
    assert all(f["invalid"] == "purity_pct:sentinel" for f in unit3)
    assert all(
        isinstance(r.fields["purity_pct"], float) for r in readings if r.tags["device"] == "conc-1"
    )


def test_a_dead_bus_task_is_restarted_and_reopens_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bus task dies of a bug (here: in its scheduler, once): the supervisor restarts it,
    the serial line is opened again, every device on it reports the restart."""
    from gateway import modbus

    monkeypatch.setattr(modbus, "RESTART_MIN_S", 0.05)
    pick = RtuBus._pick
    picks = [0]

    def buggy_pick(self: RtuBus, due: dict[int, float], now: float) -> DevicePoller:
        picks[0] += 1
        if picks[0] == 6:
            raise RuntimeError("scheduler bug")
        return pick(self, due, now)

    monkeypatch.setattr(RtuBus, "_pick", buggy_pick)
    emitted: list[tuple[float, Reading]] = []
    pollers = run_bus_until(
        tmp_path,
        concentrators(2),
        0.1,
        emitted,
        lambda ps: all(p.health.restarts == 1 and p.health.ok >= 8 for p in ps),
    )
    assert all(p.health.online for p in pollers)
    crashed = [
        (r.tags["device"], r.fields["poller_crashed"])
        for _, r in emitted
        if r.measurement == "modbus_poller"
    ]
    assert sorted(crashed) == [("conc-1", 0), ("conc-1", 1), ("conc-2", 0), ("conc-2", 1)]
