"""The silence an RTU line must keep between frames: every request on a bus follows the
previous answer (or timeout) by at least t3.5, within one device's poll (its blocks, its
retries) as well as between polls. A fake client on the event loop's clock, no serial port."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Device
from gateway.modbus import DevicePoller, RtuBus, SerialLine
from o2base.registers import load_profile

WIRE_S = 0.004  # what the fake line takes for a request and its answer


@dataclass
class Answer:
    registers: list[int] = field(default_factory=list)
    bits: list[bool] = field(default_factory=list)

    def isError(self) -> bool:  # pymodbus' name
        return False


class LineClient:
    """Answers every read after WIRE_S, except the units in ``silent`` (they time out);
    keeps (unit, request start, answer end) for each request, on the loop's clock."""

    def __init__(self, silent: set[int], timeout_s: float):
        self.connected = True
        self.silent, self.timeout_s = silent, timeout_s
        self.frames: list[tuple[int, float, float]] = []

    async def connect(self) -> bool:
        return True

    def close(self) -> None:
        self.connected = False

    async def _read(self, count: int, device_id: int, bits: bool) -> Answer:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            if device_id in self.silent:
                await asyncio.sleep(self.timeout_s)
                raise TimeoutError(f"unit {device_id}: no response")
            await asyncio.sleep(WIRE_S)
            return Answer(bits=[False] * count) if bits else Answer(registers=[0] * count)
        finally:
            self.frames.append((device_id, start, loop.time()))

    async def read_holding_registers(self, start: int, count: int, device_id: int) -> Answer:
        return await self._read(count, device_id, bits=False)

    async def read_input_registers(self, start: int, count: int, device_id: int) -> Answer:
        return await self._read(count, device_id, bits=False)

    async def read_coils(self, start: int, count: int, device_id: int) -> Answer:
        return await self._read(count, device_id, bits=True)

    async def read_discrete_inputs(self, start: int, count: int, device_id: int) -> Answer:
        return await self._read(count, device_id, bits=True)


def run_bus(units: int, silent: set[int], seconds: float) -> tuple[SerialLine, LineClient]:
    line = SerialLine.from_url("rtu:///dev/ttyFAKE?baudrate=19200")
    profile = load_profile("medical-concentrator")
    pollers = [
        DevicePoller(
            Device.model_validate(
                {
                    "id": f"conc-{unit}",
                    "site": "s",
                    "kind": "concentrator",
                    "transport": "modbus",
                    "url": "rtu:///dev/ttyFAKE?baudrate=19200",
                    "unit": unit,
                    "profile": "medical-concentrator",
                    "interval_s": 0.01,
                    "timeout_s": 0.02,
                    "retries": 1,
                }
            ),
            profile,
            lambda d: None,  # type: ignore[arg-type, return-value]  # the bus gives the client
            lambda r: None,
        )
        for unit in range(1, units + 1)
    ]
    made: list[LineClient] = []

    def factory(line: SerialLine, timeout_s: float, trace: Any) -> Any:
        made.append(LineClient(silent, timeout_s))
        return made[-1]

    async def main() -> None:
        bus = RtuBus(line, pollers, factory)
        stop = asyncio.Event()
        task = asyncio.create_task(bus.run(stop))
        await asyncio.sleep(seconds)
        stop.set()
        await task

    asyncio.run(main())
    return line, made[0]


def test_every_request_follows_the_previous_frame_by_t35() -> None:
    line, client = run_bus(units=3, silent={2}, seconds=0.6)
    frames = client.frames
    assert {unit for unit, _, _ in frames} == {1, 2, 3}
    # Unit 1 answered every request: polls of several requests back to back were made.
    assert sum(1 for unit, _, _ in frames if unit == 1) >= 2 * 3
    gaps = [nxt[1] - prev[2] for prev, nxt in itertools.pairwise(frames)]
    assert min(gaps) >= line.frame_gap_s - 1e-6, (
        f"a request {min(gaps) * 1000:.3f} ms after the previous frame; the line needs "
        f"{line.frame_gap_s * 1000:.3f} ms"
    )


def test_worst_case_counts_the_silences_between_its_requests() -> None:
    line = SerialLine.from_url("rtu:///dev/ttyFAKE?baudrate=19200")
    profile = load_profile("medical-concentrator")
    poller = DevicePoller(
        Device.model_validate(
            {
                "id": "conc-1",
                "site": "s",
                "kind": "concentrator",
                "transport": "modbus",
                "url": "rtu:///dev/ttyFAKE?baudrate=19200",
                "unit": 1,
                "profile": "medical-concentrator",
                "timeout_s": 0.5,
                "retries": 2,
            }
        ),
        profile,
        lambda d: None,  # type: ignore[arg-type, return-value]
        lambda r: None,
    )
    alone = poller.worst_case_s()
    poller.use_shared_client(object(), None, line.frame_gap_s)  # type: ignore[arg-type]
    tries = len(poller.blocks) * 3
    assert len(poller.blocks) > 1  # a poll of more than one request
    assert alone == tries * 0.5
    assert poller.worst_case_s() == alone + (tries - 1) * line.frame_gap_s
