"""Modbus poller against the real pymodbus simulator over TCP: every kind of failed poll is
counted and logged once and polling goes on; sentinels, NaN and out-of-range rows are flagged,
never stored as numbers; a dead poller task is restarted and alarmed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway import modbus
from gateway.alarms import AlarmEngine, AlarmEvent, LocalAlarmEngine
from gateway.config import Device, parse_config
from gateway.modbus import DevicePoller, modbus_runners, tcp_client_factory
from gateway.observe import Observer
from gateway.readings import Reading, invalid_fields
from gateway.sources import Sources
from gateway.state_store import StateStore
from o2base.registers import load_profile
from simulators.modbus_server import ModbusTcpSimulator, SimulatedDevice
from simulators.physics.concentrator import ConcentratorModel, params_from_profile

KIND = {"medical-concentrator": "concentrator", "psa-plant": "plant", "psa-plant-modular": "plant"}


def sim_device(profile_name: str, unit: int = 1) -> SimulatedDevice:
    profile = load_profile(profile_name)
    model = ConcentratorModel(params_from_profile(profile.nominal), seed=unit)
    return SimulatedDevice(profile, model, unit=unit)


async def serving(devices: list[SimulatedDevice]) -> ModbusTcpSimulator:
    """The devices on a started pymodbus simulator (a free port); the caller stops it."""
    server = ModbusTcpSimulator(devices)
    await server.start()
    return server


class Sink:
    """The poller's ``emit``: keeps every point and wakes whoever waits for a condition."""

    def __init__(self) -> None:
        self.points: list[Reading] = []
        self.changed = asyncio.Event()

    def __call__(self, reading: Reading) -> None:
        self.points.append(reading)
        self.changed.set()

    def of(self, measurement: str) -> list[Reading]:
        return [r for r in self.points if r.measurement == measurement]

    async def until(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=left)


def poller_for(
    profile_name: str,
    port: int,
    sink: Sink,
    device_id: str = "conc-1",
    unit: int = 1,
    interval_s: float = 0.05,
    wall_clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
) -> DevicePoller:
    device = Device.model_validate(
        {
            "id": device_id,
            "site": "lhasa",
            "kind": KIND[profile_name],
            "transport": "modbus",
            "url": f"tcp://127.0.0.1:{port}",
            "unit": unit,
            "profile": profile_name,
            "interval_s": interval_s,
            "timeout_s": 0.5,
            "retries": 0,
        }
    )
    poller = DevicePoller(
        device, load_profile(profile_name), tcp_client_factory, sink, wall_clock_ms=wall_clock_ms
    )
    poll_once = poller.poll_once

    async def watched() -> Reading | None:  # every poll, failed or not, wakes the waiters
        try:
            return await poll_once()
        finally:
            sink.changed.set()

    poller.poll_once = watched  # type: ignore[method-assign]
    return poller


def failed_poll_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "poll failed" in r.getMessage()]


def test_short_response_is_counted_logged_once_and_polling_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Was: a ValueError from the short answer ended the poller task, link still online."""
    caplog.set_level(logging.INFO, logger="gateway.modbus")

    async def main() -> DevicePoller:
        device = sim_device("medical-concentrator")
        server = await serving([device])
        sink = Sink()
        poller = poller_for("medical-concentrator", server.port, sink)
        stop = asyncio.Event()
        [(_, run)] = modbus_runners([poller])
        task = asyncio.create_task(run(stop))
        try:
            await sink.until(lambda: poller.health.ok >= 2, 10, "first good polls")
            device.faults.short_by = 1
            await sink.until(lambda: poller.health.decode_errors >= 6, 10, "6 short answers")
            assert not task.done()
            assert poller.health.online is False  # no usable answer: the link is reported down
            health = sink.of("device_health")[-1].fields
            assert health["online"] is False and int(health["decode_errors"]) >= 1
            assert "expected 8 registers, got 7 (missing alarm_bits)" in poller.health.last_error
            device.faults.short_by = 0
            ok = poller.health.ok
            await sink.until(lambda: poller.health.ok >= ok + 2, 10, "answers again")
            assert poller.health.online
        finally:
            stop.set()
            await task
            await server.stop()
        assert poller.health.restarts == 0  # it never died: the poll failed, not the task
        return poller

    poller = asyncio.run(main())
    logs = failed_poll_logs(caplog)
    assert len(logs) == 1, logs  # once per change of what is wrong, not once per poll
    assert "lhasa/conc-1" in logs[0] and "holding 0+8" in logs[0] and "expected 8" in logs[0]
    # /metrics shows the count where the other poll results are.
    metrics = Observer(parse_config(ALARM_CFG), Sources(pollers=[poller])).prometheus()
    line = next(x for x in metrics.splitlines() if 'result="decode_errors"' in x)
    assert 'device="conc-1"' in line and int(float(line.split()[-1])) >= 6


def test_every_failure_kind_is_a_counted_failed_poll(caplog: pytest.LogCaptureFixture) -> None:
    """Exception codes, short bit answers and a library surprise: each a failed poll."""
    caplog.set_level(logging.INFO, logger="gateway.modbus")

    async def main() -> None:
        device = sim_device("psa-plant")
        server = await serving([device])
        sink = Sink()
        poller = poller_for("psa-plant", server.port, sink, device_id="psa-1")
        try:
            assert await poller.poll_once() is not None
            device.faults.exception_code = 4  # server device failure
            assert await poller.poll_once() is None
            assert poller.health.exceptions == 1 and poller.health.errors_by_code == {4: 1}
            device.faults.exception_code = None
            device.faults.short_by = 1  # the discrete-input answer loses its only byte
            poller.blocks = [b for b in poller.blocks if b.table.is_bits]
            assert await poller.poll_once() is None
            assert poller.health.decode_errors == 1
            assert "expected 3 bits, got 0" in poller.health.last_error
            device.faults.short_by = 0

            def broken(*args: Any, **kwargs: Any) -> Any:
                raise KeyError("surprise")

            poller.blocks = load_profile("psa-plant").plan_reads()
            real = poller._client.read_input_registers  # type: ignore[union-attr]
            poller._client.read_input_registers = broken  # type: ignore[union-attr, method-assign]
            assert await poller.poll_once() is None
            assert poller.health.other_errors == 1
            assert poller._client is None  # a fresh client next time
            assert real is not None
            assert await poller.poll_once() is not None  # and polling goes on
            assert poller.health.online
        finally:
            await server.stop()

    asyncio.run(main())
    logs = failed_poll_logs(caplog)
    assert [m.split(", ")[1].split(":")[0] for m in logs] == ["exception", "decode", "other"]
    surprise = next(r for r in caplog.records if "other" in r.getMessage())
    assert surprise.exc_info is not None  # a bug is logged with its traceback


def test_sentinels_nan_and_out_of_range_are_flagged_not_stored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Was: 0xFFFF stored as purity 6553.5 %, NaN purity accepted."""
    caplog.set_level(logging.INFO, logger="gateway.modbus")

    async def main() -> tuple[list[Reading], list[Reading], DevicePoller]:
        medical, plant = sim_device("medical-concentrator", 1), sim_device("psa-plant", 2)
        server = await serving([medical, plant])
        sink = Sink()
        conc = poller_for("medical-concentrator", server.port, sink)
        psa = poller_for("psa-plant", server.port, sink, device_id="psa-1", unit=2)
        try:
            medical.faults.raw.update(purity_pct=[0xFFFF], temp_c=[0x8000], run_h=[0xFFFF, 0xFFFF])
            medical.faults.values["flow_lpm"] = 12.0  # the profile's plausible range is 0..10
            nan_words = load_profile("psa-plant").register("purity_pct").encode(math.nan)
            plant.faults.raw["purity_pct"] = nan_words
            plant.faults.raw["flow_lpm"] = [0x0000, 0x7F80]  # +inf, CDAB
            bad = [await conc.poll_once(), await conc.poll_once()]
            bad_plant = [await psa.poll_once()]
            medical.faults.raw.clear()
            medical.faults.values.clear()
            good = await conc.poll_once()
            assert good is not None and isinstance(good.fields["purity_pct"], float)
            assert "invalid" not in good.fields
        finally:
            await server.stop()
        return [r for r in bad if r], [r for r in bad_plant if r], conc

    bad, bad_plant, conc = asyncio.run(main())
    fields = bad[0].fields
    assert dict(invalid_fields(fields)) == {
        "purity_pct": "sentinel",
        "temp_c": "sentinel",
        "run_h": "sentinel",
        "flow_lpm": "out_of_range",
    }
    for name in ("purity_pct", "temp_c", "run_h", "flow_lpm"):
        assert name not in fields
    assert fields["purity_pct_raw"] == 0xFFFF and fields["temp_c_raw"] == 0x8000
    assert fields["run_h_raw"] == 0xFFFFFFFF and fields["flow_lpm_raw"] == pytest.approx(12.0)
    assert isinstance(fields["outlet_kpa"], float)  # the rest of the reading is kept
    assert conc.health.invalid_values == 8 and conc.health.ok == 3
    plant_fields = bad_plant[0].fields
    assert dict(invalid_fields(plant_fields)) == {
        "purity_pct": "not_finite",
        "flow_lpm": "not_finite",
    }
    assert "purity_pct" not in plant_fields and "flow_lpm" not in plant_fields
    # Logged when a field turns invalid and when it is valid again, not at every poll.
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "conc-1: purity_pct" in r.getMessage()
    ]
    assert len(warnings) == 1 and "sentinel" in warnings[0] and "0xffff" in warnings[0]
    again = [r.getMessage() for r in caplog.records if "valid again" in r.getMessage()]
    assert sorted(m.split(": ")[1].split()[0] for m in again) == [
        "flow_lpm",
        "purity_pct",
        "run_h",
        "temp_c",
    ]


ALARM_CFG: dict[str, Any] = {
    "site": [{"id": "lhasa", "altitude_m": 3650}],
    "device": [
        {"id": "conc-1", "site": "lhasa", "kind": "concentrator", "transport": "modbus",
         "url": "tcp://127.0.0.1:5020", "profile": "medical-concentrator", "interval_s": 1},
        {"id": "psa-1", "site": "lhasa", "kind": "plant", "transport": "modbus",
         "url": "tcp://127.0.0.1:5021", "unit": 2, "profile": "psa-plant-modular",
         "interval_s": 1},
        {"id": "psa-2", "site": "lhasa", "kind": "plant", "transport": "modbus",
         "url": "tcp://127.0.0.1:5021", "unit": 3, "profile": "psa-plant", "interval_s": 1},
    ],
}  # fmt: skip


def alarm_engine(tmp_path: Path, now_ms: Callable[[], int]) -> tuple[AlarmEngine, list[Any]]:
    eng = LocalAlarmEngine(
        parse_config(ALARM_CFG), StateStore(tmp_path / "alarms.sqlite"), clock_ms=now_ms
    )
    events: list[AlarmEvent] = []
    eng.listeners.append(events.append)
    return eng, events


def test_device_alarm_bits_become_integer_fields_and_raise_alarms(tmp_path: Path) -> None:
    """Was: alarm_bits (and the plants' dryer/purity flags) stored but never alarmed."""
    now = [1_700_000_000_000]

    async def main() -> tuple[list[Reading], list[Reading]]:
        medical = sim_device("medical-concentrator", 1)
        modular, discrete = sim_device("psa-plant-modular", 2), sim_device("psa-plant", 3)
        server = await serving([medical, modular, discrete])
        sink = Sink()
        clock = lambda: now[0]  # noqa: E731
        pollers = [
            poller_for("medical-concentrator", server.port, sink, "conc-1", 1, wall_clock_ms=clock),
            poller_for("psa-plant-modular", server.port, sink, "psa-1", 2, wall_clock_ms=clock),
            poller_for("psa-plant", server.port, sink, "psa-2", 3, wall_clock_ms=clock),
        ]
        try:
            quiet = [await p.poll_once() for p in pollers]
            medical.faults.values["alarm_bits"] = 0b0101  # low purity + power fault
            modular.faults.values["alarm_dryer"] = True  # served active low: the bit reads 0
            discrete.faults.values["alarm_dryer"] = True
            alarming = [await p.poll_once() for p in pollers]
        finally:
            await server.stop()
        return [r for r in quiet if r], [r for r in alarming if r]

    quiet, alarming = asyncio.run(main())
    assert len(quiet) == len(alarming) == 3
    conc, modular, discrete = alarming
    bits = {k: conc.fields[k] for k in ("purity_low", "temp_high", "power_fault", "flow_low")}
    assert bits == {"purity_low": 1, "temp_high": 0, "power_fault": 1, "flow_low": 0}
    assert all(type(v) is int for v in bits.values())  # integers: the engine ignores bools
    assert conc.fields["alarm_bits"] == 5  # the raw word is kept
    assert modular.fields["dryer_fault"] == 1 and modular.fields["purity_low"] == 0
    assert discrete.fields["dryer_fault"] == 1 and type(discrete.fields["dryer_fault"]) is int
    assert all(r.fields.get("dryer_fault", 0) == 0 for r in quiet)

    eng, events = alarm_engine(tmp_path, lambda: now[0])
    eng(quiet)
    assert not [e for e in events if e.state == "raise"]
    eng(alarming)
    raised = {(e.alarm["device"], e.alarm["rule"]): e.alarm for e in events if e.state == "raise"}
    assert set(raised) == {
        ("conc-1", "equipment-purity-low"),
        ("conc-1", "equipment-power-fault"),
        ("psa-1", "equipment-dryer-fault"),
        ("psa-2", "equipment-dryer-fault"),
    }
    assert raised[("conc-1", "equipment-power-fault")]["message"] == (
        "conc-1: power supply failure (the unit's own alarm)"
    )
    assert raised[("psa-1", "equipment-dryer-fault")]["severity"] == "alarm"
    # Cleared once the bit is back to 0 for the off-delay.
    now[0] += 1000
    eng([Reading(r.measurement, r.tags, r.fields, now[0]) for r in quiet])
    now[0] += 31_000
    eng([Reading(r.measurement, r.tags, r.fields, now[0]) for r in quiet])
    cleared = {(e.alarm["device"], e.alarm["rule"]) for e in events if e.state == "clear"}
    assert cleared == set(raised)


def test_dead_poller_task_is_restarted_and_alarmed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: nothing watched the poller tasks; one that died stayed dead, silently."""
    monkeypatch.setattr(modbus, "RESTART_MIN_S", 0.05)
    now = [1_700_000_000_000]

    async def main() -> tuple[Sink, DevicePoller]:
        server = await serving([sim_device("medical-concentrator")])
        sink = Sink()
        poller = poller_for("medical-concentrator", server.port, sink, wall_clock_ms=lambda: now[0])
        deaths = [1]

        def next_interval_s() -> float:  # a bug in the scheduling, once
            if deaths[0]:
                deaths[0] -= 1
                raise RuntimeError("scheduler bug")
            return 0.05

        poller.next_interval_s = next_interval_s  # type: ignore[method-assign]
        stop = asyncio.Event()
        [(_, run)] = modbus_runners([poller])
        task = asyncio.create_task(run(stop))
        try:
            await sink.until(lambda: len(sink.of("modbus_poller")) >= 2, 10, "restart reported")
            ok = poller.health.ok
            await sink.until(lambda: poller.health.ok >= ok + 3, 10, "polling after restart")
        finally:
            stop.set()
            await task
            await server.stop()
        return sink, poller

    sink, poller = asyncio.run(main())
    assert poller.health.restarts == 1
    crashed = [r.fields["poller_crashed"] for r in sink.of("modbus_poller")]
    assert crashed == [1, 0]  # reported at the death, cleared when polling resumed
    assert any("died" in r.getMessage() and r.exc_info for r in caplog.records)
    health = [r for r in sink.of("device_health") if r.fields["restarts"] == 1]
    assert health  # the restart count reaches device_health (and so InfluxDB) at once

    eng, events = alarm_engine(tmp_path, lambda: now[0])
    eng(sink.points[:])
    raised = [e.alarm for e in events if e.state == "raise"]
    assert [(a["device"], a["rule"]) for a in raised] == [("conc-1", "modbus-poller-restart")]
    assert "poller task died" in raised[0]["message"]
