"""Modbus servers for simulated equipment, built from the shared device profiles.

One process serves many devices: each :class:`SimulatedDevice` pairs a profile with a physics
model under a unit id, and one server (TCP port or RTU line) can hold many of them. Register
values are computed from the model at the moment a request reads them (pymodbus ``SimDevice``
action hook), so what a client reads is always the model's present state.

Faults (:class:`DeviceFaults`, per device, switchable at run time): stop answering (also while
the model has no power), answer late, answer every read with a Modbus exception code, corrupt
the CRC of answers (RTU) or garble them (TCP), answer register reads a few registers short
(a well-formed frame with a smaller byte count), and serve chosen rows with other contents:
raw words (``raw``: "no value" sentinels such as 0xFFFF, a NaN float) or engineering values
(``values``: alarm bits set, service counters, out-of-range numbers). The gateway's tests use
them for "one of five devices stops answering", "exception codes / CRC errors", short
responses, sentinels and device alarms.

Rows of a profile the model does not compute (service counters, spare alarm bits) are served
as 0 / healthy (a bit row reads its healthy level, inverted rows included).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.framer.rtu import FramerRTU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import DataType

from o2base.registers import Profile, Register, RegType, Table, Value
from simulators.physics.concentrator import ConcentratorModel, params_from_profile
from simulators.physics.supply import model_for_profile

log = logging.getLogger(__name__)
# pymodbus logs every frame at its default level; the simulator's own log is enough.
logging.getLogger("pymodbus").setLevel(logging.WARNING)

_FC_TABLE = {1: Table.COIL, 2: Table.DISCRETE, 3: Table.HOLDING, 4: Table.INPUT}


class DeviceModel(Protocol):
    """What a served device needs of its physics: a concentrator / plant
    (physics/concentrator.py) or a supply device (physics/supply.py)."""

    @property
    def powered(self) -> bool: ...

    def power_on(self, on: bool) -> None: ...

    def advance(self, dt_s: float) -> None: ...

    def values(self) -> dict[str, float | int | bool]: ...


def model_for(profile: Profile, seed: int = 0) -> DeviceModel:
    """The physics a profile's device kind needs: ``kind = "supply"`` profiles name their
    model in ``[nominal] model`` (physics/supply.py), the others are concentrators / plants."""
    if profile.kind == "supply":
        return model_for_profile(profile.nominal, seed=seed)
    return ConcentratorModel(params_from_profile(profile.nominal), seed=seed)


@dataclass
class DeviceFaults:
    """Misbehaviour of one served device; change the fields at any time."""

    silent: bool = False  # no answer at all (a dead device, a cut A/B pair)
    delay_s: float = 0.0  # answer this much later (real seconds): a slow device
    exception_code: int | None = None  # answer every request with this exception (1..11)
    corrupt_every: int = 0  # corrupt every n-th answer (RTU: CRC; TCP: a garbled byte)
    short_by: int = 0  # register reads answered this many registers (bit reads: bytes) short
    raw: dict[str, list[int]] = field(default_factory=dict)  # row name -> raw words served
    values: dict[str, Value] = field(default_factory=dict)  # row name -> engineering value
    _answers: int = field(default=0, repr=False)

    def should_corrupt(self) -> bool:
        if self.corrupt_every <= 0:
            return False
        self._answers += 1
        return self._answers % self.corrupt_every == 0


@dataclass
class SimulatedDevice:
    """A profile served under ``unit`` with values from ``model``, stepped by ``clock``.

    ``drive_model`` False: someone else steps the model (a scenario's world clock); the device
    only reads it.
    """

    profile: Profile
    model: DeviceModel
    unit: int = 1
    clock: Callable[[], float] = time.monotonic
    speed: float = 1.0  # simulated seconds per clock second
    drive_model: bool = True
    faults: DeviceFaults = field(default_factory=DeviceFaults)
    reads: int = 0
    _last_clock: float | None = field(default=None, repr=False)

    def _advance(self) -> None:
        if not self.drive_model:
            return
        now = self.clock()
        if self._last_clock is not None:
            self.model.advance(max(0.0, now - self._last_clock) * self.speed)
        self._last_clock = now

    def values(self) -> dict[str, Value]:
        """What the device serves now: the model's fields, 0 / healthy for rows the model does
        not compute, and the ``faults.values`` overrides."""
        values: dict[str, Value] = dict(self.model.values())
        for reg in self.profile.registers:
            if reg.name not in values:
                values[reg.name] = False if reg.type in (RegType.BOOL, RegType.BITS) else 0
        values.update(self.faults.values)
        return values

    def _rows(self, table: Table) -> list[Register]:
        return [r for r in self.profile.registers if r.table is table]

    def _size(self, table: Table) -> int:
        rows = self._rows(table)
        return max((r.address + r.words for r in rows), default=1)

    def sim_device(self) -> SimDevice:
        """The pymodbus device definition (four separate tables, bit addressing per coil)."""
        bits = DataType.BITS
        regs = DataType.REGISTERS
        # Bit tables need a multiple of 16 bits (packed into 16-bit words by pymodbus).
        coil_n = -(-self._size(Table.COIL) // 16) * 16
        di_n = -(-self._size(Table.DISCRETE) // 16) * 16
        return SimDevice(
            id=self.unit,
            simdata=(
                [SimData(0, count=coil_n, values=False, datatype=bits)],
                [SimData(0, count=di_n, values=False, datatype=bits)],
                [SimData(0, count=self._size(Table.HOLDING), values=0, datatype=regs)],
                [SimData(0, count=self._size(Table.INPUT), values=0, datatype=regs)],
            ),
            action=self._on_access,
        )

    async def _on_access(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        faults = self.faults
        if faults.silent or not self.model.powered:
            # With ignore_missing_devices the server then sends nothing: the client times out.
            raise NoSuchIdException(f"unit {self.unit} is not answering (fault)")
        if faults.delay_s > 0:
            await asyncio.sleep(faults.delay_s)
        if faults.exception_code is not None:
            return ExcCodes(faults.exception_code)
        table = _FC_TABLE.get(function_code)
        if table is None or set_values is not None:
            return None
        self.reads += 1
        self._advance()
        values = self.values()
        raw_rows = faults.raw
        bits = table.is_bits
        for reg in self._rows(table):
            # Bit tables: pymodbus passes ``count`` in 16-bit words (and the whole table), so
            # an overlap test in bits would skip rows: every bit row is set.
            if not bits and (reg.address + reg.words <= address or reg.address >= address + count):
                continue
            raw = raw_rows.get(reg.name)
            words = list(raw) if raw is not None else reg.encode(values[reg.name])
            if table.is_bits:
                # Bits arrive packed: bit n of the table is bit n%16 of word n//16.
                index, bit = divmod(reg.address - start_address, 16)
                current[index] = (current[index] & ~(1 << bit)) | (words[0] << bit)
            elif reg.type is RegType.BITS:
                # Several rows share one word: set only this row's bit.
                i = reg.address - start_address
                current[i] = (current[i] & ~(1 << reg.bit) & 0xFFFF) | (words[0] << reg.bit)
            else:
                i = reg.address - start_address
                current[i : i + len(words)] = words
        return None


def _shorten(data: bytes, rtu: bool, short_by: int) -> bytes:
    """A read answer (FC 1-4) with ``short_by`` registers (bit reads: bytes) fewer, the byte
    count, the MBAP length (TCP) and the CRC (RTU) made to match: a valid frame, short."""
    pdu_at = 1 if rtu else 7
    end = len(data) - 2 if rtu else len(data)
    if len(data) < pdu_at + 2 or data[pdu_at] not in (1, 2, 3, 4):
        return data  # exception answers (FC | 0x80) and writes stay as they are
    count = data[pdu_at + 1]
    drop = min(count, short_by * (2 if data[pdu_at] in (3, 4) else 1))
    frame = bytearray(data[: end - drop])
    frame[pdu_at + 1] = count - drop
    if rtu:
        return bytes(frame) + FramerRTU.compute_CRC(bytes(frame)).to_bytes(2, "big")
    frame[4:6] = (len(frame) - 6).to_bytes(2, "big")  # MBAP length: unit id + PDU
    return bytes(frame)


def _corrupting_tracer(devices: list[SimulatedDevice], rtu: bool) -> Callable[[bool, bytes], bytes]:
    """pymodbus ``trace_packet`` hook that damages answers of devices with ``corrupt_every``
    and shortens those of devices with ``short_by``."""
    by_unit = {d.unit: d for d in devices}

    def trace(sending: bool, data: bytes) -> bytes:
        if not sending or len(data) < 4:
            return data
        unit = data[0] if rtu else (data[6] if len(data) > 6 else -1)
        device = by_unit.get(unit)
        if device is None:
            return data
        if device.faults.short_by > 0:
            data = _shorten(data, rtu, device.faults.short_by)
        if not device.faults.should_corrupt():
            return data
        damaged = bytearray(data)
        damaged[-1] ^= 0xFF  # RTU: the CRC's high byte; TCP: the last data byte
        return bytes(damaged)

    return trace


class _Simulator:
    """Common start/stop of a pymodbus server in the running event loop."""

    _server: ModbusTcpServer | ModbusSerialServer
    devices: list[SimulatedDevice]
    url: str

    async def _start(self, what: str) -> None:
        self._task: asyncio.Task[None] | None = asyncio.create_task(self._server.serve_forever())
        deadline = time.monotonic() + 5.0
        while self._server.transport is None:
            if self._task.done():
                self._task.result()  # raises the bind / open error
                raise OSError(f"Modbus simulator on {what} stopped at once")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Modbus simulator did not open {what} within 5 s")
            await asyncio.sleep(0.005)

    def device(self, unit: int) -> SimulatedDevice:
        for d in self.devices:
            if d.unit == unit:
                return d
        raise KeyError(f"no unit {unit} on {self.url}")

    async def stop(self) -> None:
        await self._server.shutdown()
        if self._task is not None:
            self._task.cancel()


class ModbusTcpSimulator(_Simulator):
    """Serve devices on one TCP port of 127.0.0.1 (port 0 = pick a free one)."""

    def __init__(self, devices: list[SimulatedDevice], host: str = "127.0.0.1", port: int = 0):
        self.devices = devices
        self._server = ModbusTcpServer(
            [d.sim_device() for d in devices],
            address=(host, port),
            ignore_missing_devices=True,  # lets a silent device stay silent (DeviceFaults)
            trace_packet=_corrupting_tracer(devices, rtu=False),
        )
        self._task = None
        self.host = host
        self.port = port

    @property
    def url(self) -> str:  # type: ignore[override]
        return f"tcp://{self.host}:{self.port}"

    async def start(self) -> None:
        """Start serving; returns once the port is bound (``self.port`` then holds it)."""
        await self._start(f"tcp://{self.host}:{self.port}")
        sockets = getattr(self._server.transport, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("modbus simulator on %s units %s", self.url, [d.unit for d in self.devices])


class ModbusRtuSimulator(_Simulator):
    """Serve devices (one unit id each) on one RTU serial line: a tty, a pty, ``socket://``."""

    def __init__(
        self,
        devices: list[SimulatedDevice],
        port: str,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
    ):
        self.devices = devices
        self.port = port
        self.baudrate = baudrate
        self._server = ModbusSerialServer(
            [d.sim_device() for d in devices],
            framer=FramerType.RTU,
            port=port,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            ignore_missing_devices=True,  # RS-485: an absent unit simply does not answer
            trace_packet=_corrupting_tracer(devices, rtu=True),
        )
        self._task = None

    @property
    def url(self) -> str:  # type: ignore[override]
        return f"rtu://{self.port}?baudrate={self.baudrate}"

    async def start(self) -> None:
        await self._start(self.port)
        log.info("modbus simulator on %s units %s", self.url, [d.unit for d in self.devices])
