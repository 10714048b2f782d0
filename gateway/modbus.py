"""Modbus poller: one task per TCP device, reads planned from the device profile.

Each device keeps its own schedule, so one dead or slow device never delays its neighbours.
The client comes from a factory (real pymodbus client in service, any stand-in in unit tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from gateway.config import Device, DeviceKind
from gateway.readings import FieldValue, Reading
from o2chain.registers import Profile, ReadBlock, Table, Value

log = logging.getLogger(__name__)
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # the poller reports per device


class ModbusClient(Protocol):
    """What the poller needs of a client (pymodbus' async clients have it)."""

    @property
    def connected(self) -> bool: ...
    async def connect(self) -> bool: ...
    def close(self) -> None: ...
    def read_holding_registers(
        self, address: int, *, count: int = ..., device_id: int = ...
    ) -> Awaitable[Any]: ...
    def read_input_registers(
        self, address: int, *, count: int = ..., device_id: int = ...
    ) -> Awaitable[Any]: ...
    def read_coils(
        self, address: int, *, count: int = ..., device_id: int = ...
    ) -> Awaitable[Any]: ...
    def read_discrete_inputs(
        self, address: int, *, count: int = ..., device_id: int = ...
    ) -> Awaitable[Any]: ...


ClientFactory = Callable[[Device], ModbusClient]


def tcp_client_factory(device: Device) -> ModbusClient:
    """A pymodbus TCP client for ``tcp://host:port``; retries are the poller's business."""
    url = urlsplit(device.url or "")
    client: ModbusClient = AsyncModbusTcpClient(
        url.hostname or "127.0.0.1",
        port=url.port or 502,
        timeout=device.timeout_s,
        retries=0,
        reconnect_delay=0,
    )
    return client


class ModbusReadError(Exception):
    """A read failed; ``kind`` is timeout, exception (Modbus exception code) or io."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


@dataclass
class DeviceHealth:
    polls: int = 0
    ok: int = 0
    timeouts: int = 0
    exceptions: int = 0
    io_errors: int = 0
    last_error: str = ""
    last_ok_monotonic: float | None = None
    online: bool = False
    errors_by_code: dict[int, int] = field(default_factory=dict)


def measurement_for(kind: DeviceKind) -> str:
    return "supply" if kind is DeviceKind.SUPPLY else "concentrator"


class DevicePoller:
    """Polls one device every ``device.interval_s`` and hands each reading to ``emit``."""

    def __init__(
        self,
        device: Device,
        profile: Profile,
        client_factory: ClientFactory,
        emit: Callable[[Reading], None],
        gap_fill: int = 8,
        wall_clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ):
        self.device = device
        self.profile = profile
        self.blocks = profile.plan_reads(gap_fill=gap_fill)
        self.client_factory = client_factory
        self.emit = emit
        self.wall_clock_ms = wall_clock_ms
        self.health = DeviceHealth()
        self._client: ModbusClient | None = None

    async def _read_block(self, client: ModbusClient, block: ReadBlock) -> dict[str, Value]:
        read = {
            Table.HOLDING: client.read_holding_registers,
            Table.INPUT: client.read_input_registers,
            Table.COIL: client.read_coils,
            Table.DISCRETE: client.read_discrete_inputs,
        }[block.table]
        try:
            rr = await read(block.start, count=block.count, device_id=self.device.unit)
        except TimeoutError as exc:
            raise ModbusReadError("timeout", f"no answer within {self.device.timeout_s} s") from exc
        except ModbusException as exc:
            text = str(exc)
            kind = "timeout" if "timeout" in text.lower() or "no response" in text.lower() else "io"
            raise ModbusReadError(kind, text) from exc
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0) or 0)
            self.health.errors_by_code[code] = self.health.errors_by_code.get(code, 0) + 1
            raise ModbusReadError(
                "exception",
                f"{block.table} {block.start}+{block.count}: Modbus exception code {code}",
            )
        raw = rr.bits if block.table.is_bits else rr.registers
        return block.decode(raw)

    async def poll_once(self) -> Reading | None:
        """One poll of every block; returns the reading or ``None`` (failure counted)."""
        self.health.polls += 1
        dev = f"{self.device.site}/{self.device.id}"
        try:
            if self._client is None:
                self._client = self.client_factory(self.device)
            client = self._client
            if not client.connected and not await client.connect():
                raise ModbusReadError("io", f"cannot connect to {self.device.url}")
            values: dict[str, Value] = {}
            for block in self.blocks:
                values.update(await self._read_block(client, block))
        except ModbusReadError as exc:
            if exc.kind == "timeout":
                self.health.timeouts += 1
            elif exc.kind == "exception":
                self.health.exceptions += 1
            else:
                self.health.io_errors += 1
            self.health.last_error = f"{exc.kind}: {exc}"
            if self.health.online:
                log.warning("modbus %s (%s): %s: %s", dev, self.device.url, exc.kind, exc)
            self.health.online = False
            if exc.kind != "exception" and self._client is not None:
                self._client.close()  # a fresh connection next time: the old one may be stuck
                self._client = None
            return None
        if not self.health.online:
            log.info("modbus %s (%s) online", dev, self.device.url)
        self.health.online = True
        self.health.ok += 1
        self.health.last_ok_monotonic = time.monotonic()
        fields: dict[str, FieldValue] = dict(values)
        return Reading(
            measurement_for(self.device.kind),
            {"site": self.device.site, "device": self.device.id, "source": "modbus"},
            fields,
            self.wall_clock_ms(),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Poll on a fixed schedule until ``stop``; a late poll skips missed slots."""
        loop = asyncio.get_running_loop()
        interval = self.device.interval_s
        next_at = loop.time()
        while not stop.is_set():
            reading = await self.poll_once()
            if reading is not None:
                self.emit(reading)
            next_at += interval
            now = loop.time()
            if next_at < now:
                next_at = now + interval - ((now - next_at) % interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=next_at - now)
        if self._client is not None:
            self._client.close()
