"""Modbus servers for simulated equipment, built from the shared device profiles.

One process serves many devices: each :class:`SimulatedDevice` pairs a profile with a physics
model under a unit id, and one server (TCP port or RTU line) can hold many of them. Register
values are computed from the model at the moment a request reads them (pymodbus ``SimDevice``
action hook), so what a client reads is always the model's present state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import DataType

from o2chain.registers import Profile, Register, Table
from simulators.physics.concentrator import ConcentratorModel

log = logging.getLogger(__name__)
# pymodbus logs every frame at its default level; the simulator's own log is enough.
logging.getLogger("pymodbus").setLevel(logging.WARNING)

_FC_TABLE = {1: Table.COIL, 2: Table.DISCRETE, 3: Table.HOLDING, 4: Table.INPUT}


@dataclass
class SimulatedDevice:
    """A profile served under ``unit`` with values from ``model``, stepped by ``clock``."""

    profile: Profile
    model: ConcentratorModel
    unit: int = 1
    clock: Callable[[], float] = time.monotonic
    speed: float = 1.0  # simulated seconds per clock second
    reads: int = 0
    _last_clock: float | None = field(default=None, repr=False)

    def _advance(self) -> None:
        now = self.clock()
        if self._last_clock is not None:
            self.model.advance(max(0.0, now - self._last_clock) * self.speed)
        self._last_clock = now

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
    ) -> None:
        table = _FC_TABLE.get(function_code)
        if table is None or set_values is not None:
            return None
        self.reads += 1
        self._advance()
        values = self.model.values()
        for reg in self._rows(table):
            if reg.address + reg.words <= address or reg.address >= address + count:
                continue
            value = values.get(reg.name)
            if value is None:
                continue
            words = reg.encode(value)
            if table.is_bits:
                # Bits arrive packed: bit n of the table is bit n%16 of word n//16.
                index, bit = divmod(reg.address - start_address, 16)
                current[index] = (current[index] & ~(1 << bit)) | (words[0] << bit)
            else:
                i = reg.address - start_address
                current[i : i + len(words)] = words
        return None


class ModbusTcpSimulator:
    """Serve devices on one TCP port of 127.0.0.1 (port 0 = pick a free one)."""

    def __init__(self, devices: list[SimulatedDevice], host: str = "127.0.0.1", port: int = 0):
        self.devices = devices
        self._server = ModbusTcpServer([d.sim_device() for d in devices], address=(host, port))
        self._task: asyncio.Task[None] | None = None
        self.host = host
        self.port = port

    async def start(self) -> None:
        """Start serving; returns once the port is bound (``self.port`` then holds it)."""
        self._task = asyncio.create_task(self._server.serve_forever())
        deadline = time.monotonic() + 5.0
        while self._server.transport is None:
            if self._task.done():
                self._task.result()  # raises the bind error
            if time.monotonic() > deadline:
                raise TimeoutError("Modbus simulator did not bind within 5 s")
            await asyncio.sleep(0.005)
        sockets = getattr(self._server.transport, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info(
            "modbus simulator on tcp://%s:%d units %s",
            self.host,
            self.port,
            [d.unit for d in self.devices],
        )

    async def stop(self) -> None:
        await self._server.shutdown()
        if self._task is not None:
            self._task.cancel()
