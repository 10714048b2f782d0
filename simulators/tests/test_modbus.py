"""Modbus acceptance: every documented register of every profile, faults, RTU on a pty pair."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from o2base.procs import ChildProcess, o2chain_argv
from o2base.registers import Profile, Table, load_profile, profile_names
from simulators.modbus_server import (
    ModbusRtuSimulator,
    ModbusTcpSimulator,
    SimulatedDevice,
)
from simulators.physics.concentrator import ConcentratorModel, ConcentratorParams
from simulators.profile_doc import render_profile_table
from simulators.ptypair import PtyPair

README = Path(__file__).resolve().parents[1] / "README.md"


def device_for(profile: Profile, unit: int = 1, seed: int = 1) -> SimulatedDevice:
    params = ConcentratorParams(
        rated_flow_lpm=float(profile.nominal.get("rated_flow_lpm", 5.0)),
        purity_alarm_pct=float(profile.nominal.get("purity_alarm_pct", 82.0)),
    )
    return SimulatedDevice(profile, ConcentratorModel(params, seed=seed), unit=unit)


async def read_row(client: Any, reg: Any, unit: int) -> Any:
    read = {
        Table.HOLDING: client.read_holding_registers,
        Table.INPUT: client.read_input_registers,
        Table.COIL: client.read_coils,
        Table.DISCRETE: client.read_discrete_inputs,
    }[reg.table]
    response = await read(reg.address, count=reg.words, device_id=unit)
    if response.isError():
        raise AssertionError(f"{reg.name}: {response}")
    raw = response.bits[:1] if reg.table.is_bits else response.registers
    return reg.decode(raw)


def check_value(reg: Any, value: Any) -> None:
    python = {"boolean": bool, "integer": int, "float": float}[reg.value_class]
    assert type(value) is python, reg.name
    if reg.min is not None:
        assert value >= reg.min, f"{reg.name} = {value} below {reg.min}"
    if reg.max is not None:
        assert value <= reg.max, f"{reg.name} = {value} above {reg.max}"


@pytest.mark.parametrize("name", profile_names())
def test_every_documented_register_answers_in_range(name: str) -> None:
    profile = load_profile(name)
    assert render_profile_table(profile) in README.read_text(), (
        f"simulators/README.md lacks the current table of {name}: "
        "python -m simulators.profile_doc prints it"
    )

    async def main() -> None:
        device = device_for(profile)
        server = ModbusTcpSimulator([device])
        await server.start()
        client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=2, retries=0)
        try:
            await client.connect()
            expected = device.values()
            for reg in profile.registers:
                value = await read_row(client, reg, unit=1)
                check_value(reg, value)
                # Scale and word order: what the client decodes is what the model holds.
                want = expected[reg.name]
                if isinstance(want, bool):
                    assert value == want, reg.name
                elif reg.name not in ("purity_pct", "flow_lpm"):  # noisy fields
                    assert value == pytest.approx(want, abs=max(reg.scale, 1e-3) + 1), reg.name
            assert device.reads == len(profile.registers)
        finally:
            client.close()
            await server.stop()

    asyncio.run(main())


def test_faults_silence_slowness_exceptions_corruption() -> None:
    profile = load_profile("medical-concentrator")

    async def main() -> None:
        devices = [device_for(profile, unit=u, seed=u) for u in (1, 2, 3, 4, 5)]
        server = ModbusTcpSimulator(devices)
        await server.start()
        client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=0.3, retries=0)
        await client.connect()
        try:
            # One of five devices stops answering: the others still do.
            server.device(3).faults.silent = True
            with pytest.raises(ModbusException):
                await client.read_holding_registers(0, count=2, device_id=3)
            await client.connect()  # pymodbus may drop the connection after a timeout
            for unit in (1, 2, 4, 5):
                assert not (
                    await client.read_holding_registers(0, count=2, device_id=unit)
                ).isError()
            server.device(3).faults.silent = False
            assert not (await client.read_holding_registers(0, count=2, device_id=3)).isError()
            # Power loss of the unit also silences its controller.
            server.device(4).model.power_on(False)
            with pytest.raises(ModbusException):
                await client.read_holding_registers(0, count=2, device_id=4)
            await client.connect()
            # Exception codes.
            server.device(2).faults.exception_code = 6  # slave device busy
            response = await client.read_holding_registers(0, count=2, device_id=2)
            assert response.isError() and response.exception_code == 6
            # Slow answers.
            server.device(5).faults.delay_s = 0.15
            t0 = time.monotonic()
            assert not (await client.read_holding_registers(0, count=2, device_id=5)).isError()
            assert time.monotonic() - t0 >= 0.15
            # Outside the profile: illegal data address.
            response = await client.read_holding_registers(100, count=1, device_id=1)
            assert response.isError() and response.exception_code == 2
        finally:
            client.close()
            await server.stop()

    asyncio.run(main())


@pytest.mark.integration
def test_rtu_two_units_on_one_pty_bus_with_crc_errors(tmp_path: Path) -> None:
    medical, plant = load_profile("medical-concentrator"), load_profile("psa-plant")

    async def main(pair: PtyPair) -> None:
        server = ModbusRtuSimulator(
            [device_for(medical, unit=1), device_for(plant, unit=2)], port=pair.a, baudrate=19200
        )
        await server.start()
        client = AsyncModbusSerialClient(pair.b, baudrate=19200, timeout=0.5, retries=0)
        try:
            assert await client.connect()
            purity = await read_row(client, medical.register("purity_pct"), unit=1)
            assert 85.0 < purity < 96.0
            dew = await read_row(client, plant.register("dew_point_c"), unit=2)
            assert dew == pytest.approx(-55.0, abs=0.5)
            assert await read_row(client, plant.register("state"), unit=2) is True
            # CRC errors on unit 2 only: its reads fail, unit 1 on the same bus is unaffected.
            server.device(2).faults.corrupt_every = 1
            with pytest.raises((ModbusException, AssertionError)):
                await read_row(client, plant.register("purity_pct"), unit=2)
            server.device(2).faults.corrupt_every = 0
            assert 85.0 < await read_row(client, medical.register("purity_pct"), unit=1) < 96.0
            assert await read_row(client, plant.register("state"), unit=2) is True
        finally:
            client.close()
            await server.stop()

    with PtyPair(tmp_path) as pair:
        asyncio.run(main(pair))


@pytest.mark.integration
def test_cli_serves_two_units_on_an_rtu_line_with_a_fault(tmp_path: Path) -> None:
    medical = load_profile("medical-concentrator")
    purity = medical.register("purity_pct")

    async def main(port: str) -> None:
        client = AsyncModbusSerialClient(port, baudrate=9600, timeout=0.5, retries=0)
        try:
            assert await client.connect()
            assert 85.0 < await read_row(client, purity, unit=1) < 96.0
            with pytest.raises(ModbusException):  # unit 7 stopped answering
                await read_row(client, purity, unit=7)
            assert 85.0 < await read_row(client, purity, unit=1) < 96.0
        finally:
            client.close()

    with PtyPair(tmp_path) as pair:
        argv = o2chain_argv(
            "sim", "concentrator", "--profile", "medical-concentrator",
            "--listen", f"rtu://{pair.a}?baudrate=9600", "--unit", "1", "--unit", "7",
            "--fault", "7:silent",
        )  # fmt: skip
        with ChildProcess(argv, tmp_path / "sim.log") as sim:
            line = sim.wait_for_log(r"\{\"listening\": \"rtu://[^\n]*\}")
            assert json.loads(line.group(0))["units"] == [1, 7]
            asyncio.run(main(pair.b))


def test_fault_flags_parse() -> None:
    from simulators.cli import parse_fault

    assert parse_fault("3:silent") == (3, "silent", None)
    assert parse_fault("2:exception=6") == (2, "exception", 6.0)
    with pytest.raises(ValueError, match="needs =VALUE"):
        parse_fault("1:slow")
    with pytest.raises(ValueError, match="expected UNIT:silent"):
        parse_fault("x:boom")


def test_fault_short_answers_raw_words_values_and_bit_blocks() -> None:
    """Short answers are well-formed frames with fewer registers; ``raw`` and ``values`` serve
    chosen rows; a multi-bit read serves every bit row (it served only the first)."""
    medical, plant = load_profile("medical-concentrator"), load_profile("psa-plant")

    async def main() -> None:
        conc, psa = device_for(medical, unit=1), device_for(plant, unit=2)
        server = ModbusTcpSimulator([conc, psa])
        await server.start()
        client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=1, retries=0)
        try:
            await client.connect()
            conc.faults.short_by = 2
            rr = await client.read_holding_registers(0, count=8, device_id=1)
            assert not rr.isError() and len(rr.registers) == 6
            conc.faults.short_by = 0
            conc.faults.raw["purity_pct"] = [0xFFFF]
            conc.faults.values["alarm_bits"] = 0b1010
            rr = await client.read_holding_registers(0, count=8, device_id=1)
            assert rr.registers[0] == 0xFFFF and rr.registers[7] == 0b1010
            assert conc.values()["alarm_bits"] == 0b1010
            psa.faults.values["alarm_purity"] = True
            rr = await client.read_discrete_inputs(0, count=3, device_id=2)
            assert rr.bits[:3] == [True, False, True]  # state, dryer ok, low purity
        finally:
            client.close()
            await server.stop()

    asyncio.run(main())


@pytest.mark.integration
def test_rtu_short_answer_keeps_a_valid_crc(tmp_path: Path) -> None:
    medical = load_profile("medical-concentrator")

    async def main(pair: PtyPair) -> None:
        device = device_for(medical, unit=1)
        device.faults.short_by = 1
        server = ModbusRtuSimulator([device], port=pair.a, baudrate=19200)
        await server.start()
        client = AsyncModbusSerialClient(pair.b, baudrate=19200, timeout=0.5, retries=0)
        try:
            assert await client.connect()
            rr = await client.read_holding_registers(0, count=8, device_id=1)
            assert not rr.isError() and len(rr.registers) == 7  # a valid frame, one short
        finally:
            client.close()
            await server.stop()

    with PtyPair(tmp_path) as pair:
        asyncio.run(main(pair))
