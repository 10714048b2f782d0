"""Modbus poller: TCP devices each on their own task; an RTU bus as one serial master.

Reads are planned from the device profile (neighbouring registers coalesced, see
``Profile.plan_reads``). Clients come from a factory (real pymodbus clients in service, any
stand-in in unit tests).

**Health.** Every poller keeps :class:`DeviceHealth` (``poller.health``), which /metrics reads,
and which is written to InfluxDB as the ``device_health`` measurement
(:meth:`DeviceHealth.fields`) when the device's link changes and every :data:`HEALTH_EVERY_S`
otherwise. Each of these points carries the poller's :class:`gateway.links.LinkReport`: the
alarm engine and the status API learn the link from it (gateway/links.py).

**Faults never stop polling.** A poll that raises anything (timeout, Modbus exception code,
CRC error, a short or undecodable answer, a library surprise) is counted per device
(:class:`DeviceHealth`), logged once per change of what is wrong (device, register block, what
was expected), counts as a failed poll for the link state, and the poller goes on with the next
poll or device. A poller task that dies anyway is restarted by :func:`supervise` with backoff
and reported as a ``modbus_poller`` point (``poller_crashed = 1``) per device it served, which
the built-in rule ``modbus-poller-restart`` raises (gateway/equipment_rules.py).

**Values.** Rows are decoded with :meth:`ReadBlock.decode_checked`: a "no value" sentinel, a
NaN/infinite float or a value outside the row's plausible range is flagged with
:func:`gateway.readings.flag_invalid` (raw kept, reason listed), never stored as a number. The
device's alarm bits become one 0/1 integer field each (``Profile.alarm_fields``), and
:class:`gateway.equipment_rules.EquipmentFields` adds ``no_flow_running``.

**Degradation.** A device that failed :data:`OFFLINE_AFTER` polls in a row is *offline*: it is
polled without retries and at a growing interval (x2 per failure, at most
:data:`MAX_BACKOFF_FACTOR` x its interval), and comes back to its own interval at its first answer.

**Schedules.** TCP devices poll concurrently, so a dead one only costs its own task. An RTU bus
(:class:`RtuBus`) is one master polling its devices in sequence, each on its own schedule,
with an inter-frame gap; an offline device is only polled when its worst-case time on the line
(timeout, no retries) fits before the next live device is due - so one dead or slow device never
delays its neighbours' schedule (Modbus over Serial Line V1.02, 2.5.1.1: t3.5 between frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from gateway.config import Device, DeviceKind
from gateway.equipment_rules import POLLER_MEASUREMENT, EquipmentFields
from gateway.links import LINK, LinkReport
from gateway.readings import FieldValue, Reading, flag_invalid, wall_ms
from o2base.registers import Invalid, Profile, ReadBlock, ShortResponseError, Table, Value
from o2base.schema import telemetry_schema

log = logging.getLogger(__name__)
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # the poller reports per device

OFFLINE_AFTER = 2  # consecutive failed polls before a device counts as offline
MAX_BACKOFF_FACTOR = 8  # an offline device is tried at most every 8 intervals
MAX_BACKOFF_S = 60.0  # ... and at least once a minute
HEALTH_EVERY_S = 10.0  # device_health points at least this often
STABLE_AFTER = 10  # good polls in a row before a logged error may be logged again
RESTART_MIN_S = 1.0  # a dead poller task is restarted after 1 s, 2 s, 4 s ...
RESTART_MAX_S = 60.0  # ... at most a minute apart


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


@dataclass(frozen=True)
class SerialLine:
    """``rtu:///dev/ttyX?baudrate=9600&parity=N&stopbits=1&bytesize=8`` (defaults 19200 8N1)."""

    port: str
    baudrate: int = 19200
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8

    @classmethod
    def from_url(cls, url: str) -> SerialLine:
        u = urlsplit(url)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        parity = q.get("parity", "N").upper()[:1]
        if parity not in ("N", "E", "O"):
            raise ValueError(f"{url}: parity must be N, E or O")
        return cls(
            port=u.path,
            baudrate=int(q.get("baudrate", 19200)),
            parity=parity,
            stopbits=int(q.get("stopbits", 1)),
            bytesize=int(q.get("bytesize", 8)),
        )

    @property
    def char_s(self) -> float:
        """Seconds per character on the wire (start + data + parity + stop bits)."""
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate

    @property
    def frame_gap_s(self) -> float:
        """t3.5 between frames; fixed at 1.75 ms above 19,200 baud (serial line spec 2.5.1.1)."""
        return 3.5 * self.char_s if self.baudrate <= 19200 else 0.00175


TracePacket = Callable[[bool, bytes], bytes]
SerialFactory = Callable[[SerialLine, float, TracePacket], ModbusClient]


def serial_client_factory(line: SerialLine, timeout_s: float, trace: TracePacket) -> ModbusClient:
    """A pymodbus RTU client on ``line`` (a device path or any pyserial URL); ``trace`` sees
    every frame sent and every chunk received."""
    client: ModbusClient = AsyncModbusSerialClient(
        line.port,
        baudrate=line.baudrate,
        parity=line.parity,
        stopbits=line.stopbits,
        bytesize=line.bytesize,
        timeout=timeout_s,
        retries=0,
        reconnect_delay=0.5,
        reconnect_delay_max=5.0,
        trace_packet=trace,
    )
    return client


class ModbusReadError(Exception):
    """A read failed; ``kind`` is timeout, exception (Modbus exception code), crc, io, decode
    (a short or malformed answer) or other (anything unexpected); ``where`` names the request
    (``holding 0+8``) when there is one."""

    def __init__(self, kind: str, detail: str, where: str = ""):
        super().__init__(detail)
        self.kind = kind
        self.where = where


@dataclass
class DeviceHealth:
    """Per-device poll health (read by the alarm engine and the status API; cumulative).

    - ``polls``/``ok``: polls attempted / answered completely; ``requests``: Modbus requests
      sent (a poll is one request per read block, plus retries);
    - ``timeouts``, ``exceptions`` (Modbus exception answers, by code in ``errors_by_code``),
      ``crc_errors`` (RTU: bytes came back but no valid frame), ``io_errors`` (cannot connect),
      ``decode_errors`` (an answer too short or undecodable), ``other_errors`` (anything else:
      a bug or a library surprise, logged with its traceback);
    - ``invalid_values``: rows flagged invalid (sentinel, not finite, out of range);
    - ``restarts``: times the poller task died and was restarted by :func:`supervise`;
    - ``online``: answered its last poll (or failed fewer than OFFLINE_AFTER in a row);
      ``consecutive_failures``; ``last_ok_monotonic`` (``time.monotonic()`` of the last answer);
      ``last_error``; ``last_response_s`` (duration of the last good poll);
    - ``deferred``: polls of an offline device postponed so live neighbours kept their slot.
    """

    polls: int = 0
    ok: int = 0
    requests: int = 0
    timeouts: int = 0
    exceptions: int = 0
    crc_errors: int = 0
    io_errors: int = 0
    decode_errors: int = 0
    other_errors: int = 0
    invalid_values: int = 0
    restarts: int = 0
    consecutive_failures: int = 0
    deferred: int = 0
    last_error: str = ""
    last_ok_monotonic: float | None = None
    last_response_s: float = 0.0
    online: bool = False
    errors_by_code: dict[int, int] = field(default_factory=dict)

    @property
    def poll_ok(self) -> int:
        return self.ok

    def fields(self) -> dict[str, FieldValue]:
        """The ``device_health`` fields of a Modbus device."""
        return {
            "online": self.online,
            "polls": self.polls,
            "poll_ok": self.ok,
            "timeouts": self.timeouts,
            "exceptions": self.exceptions,
            "crc_errors": self.crc_errors,
            "io_errors": self.io_errors,
            "decode_errors": self.decode_errors,
            "other_errors": self.other_errors,
            "invalid_values": self.invalid_values,
            "restarts": self.restarts,
            "response_ms": round(self.last_response_s * 1000, 1),
        }


def measurement_for(kind: DeviceKind) -> str:
    return "supply" if kind is DeviceKind.SUPPLY else "concentrator"


_SCHEMA_CLASS = {"number": "float", "int": "integer"}


def field_type_conflicts(devices: Sequence[tuple[Device, Profile]]) -> list[str]:
    """Fields two sources would write to one measurement with two types, one line each.

    InfluxDB keeps one type per field and measurement and refuses a point whose field has the
    other type, so such a configuration would turn one device's readings into dead letters.
    The sources: the Modbus devices' profiles (a row's :attr:`Register.value_class`, an alarm
    bit an integer) and the boards' telemetry schema.
    """
    schema = telemetry_schema()
    seen: dict[tuple[str, str], tuple[str, str]] = {}  # (measurement, field): (type, whose)
    for name, spec in {**schema["id_fields"], **schema["fields"]}.items():
        for measurement in ("concentrator", "supply"):
            if spec.get("measurement", measurement) == measurement:
                whose = "the boards' telemetry schema"
                seen[measurement, name] = (_SCHEMA_CLASS[spec["type"]], whose)
    problems = []
    for dev, profile in devices:
        measurement = measurement_for(dev.kind)
        types = {r.name: r.value_class for r in profile.registers}
        types.update((bit.name, "integer") for bit in profile.alarm_bits)
        for name, kind in types.items():
            whose = f"{dev.id} (profile {profile.name})"
            known = seen.setdefault((measurement, name), (kind, whose))
            if known[0] != kind:
                problems.append(
                    f"{whose} writes {measurement}.{name} as {kind}, {known[1]} as "
                    f"{known[0]}: InfluxDB keeps one type per field (set field_type in "
                    "the profile's row)"
                )
    return problems


class _RxCapture:
    """pymodbus ``trace_packet`` hook keeping the bytes received since the last request, so a
    timed-out RTU request can be told apart: silence (timeout) or garbage (CRC error)."""

    def __init__(self) -> None:
        self.received = b""

    def __call__(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self.received = b""
        else:
            self.received += data
        return data


class DevicePoller:
    """Polls one device and hands each reading (and health point) to ``emit``."""

    def __init__(
        self,
        device: Device,
        profile: Profile,
        client_factory: ClientFactory,
        emit: Callable[[Reading], None],
        gap_fill: int = 8,
        wall_clock_ms: Callable[[], int] = wall_ms,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.device = device
        self.profile = profile
        self.blocks = profile.plan_reads(gap_fill=gap_fill)
        self.client_factory = client_factory
        self.emit = emit
        self.wall_clock_ms = wall_clock_ms
        self.clock = clock
        self.health = DeviceHealth()
        self.shared_client = False  # an RTU bus' client: a device's failure must not close it
        self.rx: _RxCapture | None = None
        self.frame_gap_s = 0.0  # on a serial line: t3.5 between this poll's own requests
        self._client: ModbusClient | None = None
        self._health_sent_at: float | None = None
        self._health_sent_link: tuple[bool, bool | None, bool] | None = None
        self.derive = EquipmentFields(profile)
        self._logged_error: tuple[str, str] | None = None  # (kind, where) last logged
        self._good_streak = 0
        self._logged_invalid: dict[str, str] = {}  # field -> reason last logged
        self.crashed = False  # its task died; cleared (and reported) at its next poll

    @property
    def name(self) -> str:
        return f"{self.device.site}/{self.device.id}"

    def use_shared_client(
        self, client: ModbusClient, rx: _RxCapture | None = None, frame_gap_s: float = 0.0
    ) -> None:
        """Poll through ``client``, which a bus shares; ``frame_gap_s`` is the line's silence
        (t3.5) kept between this poll's own requests (the bus keeps it between polls)."""
        self._client = client
        self.shared_client = True
        self.rx = rx
        self.frame_gap_s = frame_gap_s

    async def _line_quiet(self) -> None:
        """On a serial line, the silence a frame must follow (a slave takes a request sent
        sooner after the previous answer as part of that frame, and drops both)."""
        if self.frame_gap_s:
            await asyncio.sleep(self.frame_gap_s)

    @property
    def degraded(self) -> bool:
        """Its last poll failed: no retries, and on a bus it only gets the line's slack."""
        return self.health.consecutive_failures > 0

    @property
    def retries(self) -> int:
        """Retries per request: ``device.retries``, none while degraded."""
        return 0 if self.degraded else self.device.retries

    def worst_case_s(self) -> float:
        """Longest time a poll can take on the line. Degraded: its first request times out
        (no retries) and ends the poll; otherwise every block with every retry."""
        if self.degraded:
            return self.device.timeout_s
        tries = len(self.blocks) * (1 + self.retries)
        return tries * self.device.timeout_s + (tries - 1) * self.frame_gap_s

    def next_interval_s(self) -> float:
        """The interval, stretched while the device is offline."""
        failures = self.health.consecutive_failures
        if failures < OFFLINE_AFTER:
            return self.device.interval_s
        factor = min(2 ** (failures - OFFLINE_AFTER + 1), MAX_BACKOFF_FACTOR)
        return min(self.device.interval_s * factor, max(MAX_BACKOFF_S, self.device.interval_s))

    async def _request(self, client: ModbusClient, block: ReadBlock) -> Any:
        read = {
            Table.HOLDING: client.read_holding_registers,
            Table.INPUT: client.read_input_registers,
            Table.COIL: client.read_coils,
            Table.DISCRETE: client.read_discrete_inputs,
        }[block.table]
        self.health.requests += 1
        if self.rx is not None:
            self.rx.received = b""
        try:
            # The client has its own timeout; this one also bounds a client that hangs
            # (asyncio.timeout, not wait_for: no task of its own for every request).
            async with asyncio.timeout(self.device.timeout_s * 1.5 + 0.1):
                return await read(block.start, count=block.count, device_id=self.device.unit)
        except (TimeoutError, ModbusException) as exc:
            text = str(exc)
            where = block.describe()
            if self.rx is not None and self.rx.received:
                raise ModbusReadError(
                    "crc", f"no valid frame in {len(self.rx.received)} bytes received", where
                ) from exc
            if (
                isinstance(exc, TimeoutError)
                or "timeout" in text.lower()
                or "no response" in text.lower()
            ):
                raise ModbusReadError(
                    "timeout", f"no answer within {self.device.timeout_s} s", where
                ) from exc
            raise ModbusReadError("io", text or exc.__class__.__name__, where) from exc
        except OSError as exc:  # a reset connection, a vanished serial device
            raise ModbusReadError(
                "io", f"{exc.__class__.__name__}: {exc}", block.describe()
            ) from exc

    async def _read_block(
        self,
        client: ModbusClient,
        block: ReadBlock,
        values: dict[str, Value],
        invalid: dict[str, Invalid],
    ) -> None:
        attempt = 0
        while True:
            try:
                rr = await self._request(client, block)
                break
            except ModbusReadError as exc:
                if exc.kind not in ("timeout", "crc") or attempt >= self.retries:
                    raise
                self._count(exc)  # each failed try is counted; the poll may still succeed
                attempt += 1
                await self._line_quiet()
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0) or 0)
            self.health.errors_by_code[code] = self.health.errors_by_code.get(code, 0) + 1
            raise ModbusReadError(
                "exception",
                f"{block.describe()}: Modbus exception code {code}",
                block.describe(),
            )
        try:
            raw = rr.bits if block.table.is_bits else rr.registers
            block.decode_checked(raw, values, invalid)
        except ShortResponseError as exc:
            raise ModbusReadError("decode", str(exc), block.describe()) from exc
        except (AttributeError, TypeError, ValueError, IndexError) as exc:
            raise ModbusReadError(
                "decode",
                f"{block.describe()}: undecodable answer {rr!r} ({exc}); expected "
                f"{block.count} {'bits' if block.table.is_bits else 'registers'}",
                block.describe(),
            ) from exc

    def _count(self, exc: ModbusReadError) -> None:
        if exc.kind == "timeout":
            self.health.timeouts += 1
        elif exc.kind == "exception":
            self.health.exceptions += 1
        elif exc.kind == "crc":
            self.health.crc_errors += 1
        elif exc.kind == "decode":
            self.health.decode_errors += 1
        elif exc.kind == "io":
            self.health.io_errors += 1
        else:
            self.health.other_errors += 1

    async def poll_once(self) -> Reading | None:
        """One poll of every block; returns the reading or ``None`` (failure counted and
        logged). Never raises: whatever goes wrong is this device's failed poll."""
        health = self.health
        health.polls += 1
        started = self.clock()
        values: dict[str, Value] = {}
        invalid: dict[str, Invalid] = {}
        try:
            if self._client is None:
                self._client = self.client_factory(self.device)
            client = self._client
            if not client.connected and not await client.connect():
                raise ModbusReadError("io", f"cannot connect to {self.device.url}", "connect")
            for n, block in enumerate(self.blocks):
                if n:
                    await self._line_quiet()
                await self._read_block(client, block, values, invalid)
        except ModbusReadError as exc:
            self._failed(exc)
            return None
        except Exception as exc:  # a bug or a library surprise: this poll failed, not the task
            self._failed(ModbusReadError("other", f"{exc.__class__.__name__}: {exc}"), exc)
            return None
        if not health.online:
            log.info("modbus %s (%s) online", self.name, self.device.url)
        health.online = True
        health.consecutive_failures = 0
        health.ok += 1
        health.last_ok_monotonic = self.clock()
        health.last_response_s = health.last_ok_monotonic - started
        if self._logged_error is not None:
            self._good_streak += 1
            if self._good_streak >= STABLE_AFTER:
                log.info(
                    "modbus %s: %d good polls in a row since the last error",
                    self.name,
                    STABLE_AFTER,
                )
                self._logged_error = None
        fields: dict[str, FieldValue] = values  # type: ignore[assignment]
        if invalid or self._logged_invalid:
            self._flag(fields, invalid)
        if self.profile.alarm_bits:
            fields.update(self.profile.alarm_fields(values))
        self.derive(fields)
        return Reading(
            measurement_for(self.device.kind),
            self.device.tags("modbus"),
            fields,
            self.wall_clock_ms(),
        )

    def _failed(self, exc: ModbusReadError, cause: BaseException | None = None) -> None:
        """Count a failed poll, log it when what is wrong changed, update the link state."""
        health = self.health
        self._count(exc)
        health.consecutive_failures += 1
        health.last_error = f"{exc.kind}: {exc}"
        self._good_streak = 0
        signature = (exc.kind, exc.where)
        if signature != self._logged_error:
            self._logged_error = signature
            log.warning(
                "modbus %s (%s unit %d): poll failed, %s: %s (logged once until it changes)",
                self.name,
                self.device.url,
                self.device.unit,
                exc.kind,
                exc,
                exc_info=cause,
            )
        if health.online and health.consecutive_failures >= OFFLINE_AFTER:
            log.warning("modbus %s (%s) offline: %s: %s", self.name, self.device.url, exc.kind, exc)
            health.online = False
        if exc.kind in ("io", "other") and self._client is not None and not self.shared_client:
            self._client.close()  # a fresh connection next time: the old one may be stuck
            self._client = None

    def _flag(self, fields: dict[str, FieldValue], invalid: dict[str, Invalid]) -> None:
        """Flag invalid rows in ``fields``; log each field when it turns invalid (or its
        reason changes) and when it is valid again."""
        logged = self._logged_invalid
        for name, bad in invalid.items():
            flag_invalid(fields, name, bad.reason, bad.raw)
            if logged.get(name) != bad.reason:
                logged[name] = bad.reason
                reg = self.profile.register(name)
                log.warning(
                    "modbus %s: %s (%s %d) %s: raw %s, expected %s",
                    self.name,
                    name,
                    reg.table,
                    reg.address,
                    bad.reason,
                    f"{bad.raw:#x}" if bad.reason != "out_of_range" else f"{bad.raw:g}",
                    bad.expected,
                )
        self.health.invalid_values += len(invalid)
        for name in [n for n in logged if n not in invalid]:
            del logged[name]
            log.info("modbus %s: %s valid again", self.name, name)

    def link_report(self) -> LinkReport:
        """The link as the poller sees it: online at an answer; unknown while the first polls
        run (every gateway start would otherwise alarm every Modbus device for a moment);
        offline after :data:`OFFLINE_AFTER` failed polls, but only once the last answer is two
        intervals old (one lost poll is not "offline")."""
        health = self.health
        if health.online:
            return LinkReport(True)
        last_ok = health.last_ok_monotonic
        if last_ok is None:
            return LinkReport(None if health.consecutive_failures < OFFLINE_AFTER else False)
        left_s = last_ok + 2 * self.device.interval_s - self.clock()
        if left_s < 0:
            return LinkReport(False)
        return LinkReport(True, offline_from_ms=self.wall_clock_ms() + math.ceil(left_s * 1000))

    def health_reading(self, force: bool = False) -> Reading | None:
        """A ``device_health`` point, with the :meth:`link_report` in its meta, when the link
        changed or every HEALTH_EVERY_S."""
        now = self.clock()
        link = self.link_report()
        changed = (self.health.online, link.online, link.offline_from_ms is None)
        if (
            not force
            and self._health_sent_link == changed
            and self._health_sent_at is not None
            and now - self._health_sent_at < HEALTH_EVERY_S
        ):
            return None
        self._health_sent_at, self._health_sent_link = now, changed
        return Reading(
            "device_health",
            {"site": self.device.site, "device": self.device.id},
            self.health.fields(),
            self.wall_clock_ms(),
            {LINK: link},
        )

    def crashed_reading(self, crashed: bool) -> Reading:
        """The ``modbus_poller`` point the alarm engine judges (rule modbus-poller-restart)."""
        return Reading(
            POLLER_MEASUREMENT,
            {"site": self.device.site, "device": self.device.id},
            {"poller_crashed": int(crashed), "restarts": self.health.restarts},
            self.wall_clock_ms(),
        )

    def task_died(self) -> None:
        """Its task died (called by :func:`supervise`): counted, reported at once."""
        self.health.restarts += 1
        self.crashed = True
        for point in (self.crashed_reading(True), self.health_reading(force=True)):
            self._emit(point)

    def _emit(self, point: Reading | None) -> None:
        if point is None:
            return
        try:
            self.emit(point)
        except Exception:  # the sink's problem must not stop polling
            log.exception("modbus %s: reading not stored", self.name)

    async def poll_and_emit(self) -> None:
        reading = await self.poll_once()
        if self.crashed:  # polling again after a restart: the engine clears after its delay
            self.crashed = False
            self._emit(self.crashed_reading(False))
        for point in (reading, self.health_reading()):
            if point is None:
                continue
            try:
                self.emit(point)
            except Exception:  # the sink's problem must not stop polling
                log.exception("modbus %s: reading not stored", self.name)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll on a fixed schedule until ``stop``; a late poll skips missed slots."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not stop.is_set():
            await self.poll_and_emit()
            interval = self.next_interval_s()
            next_at += interval
            now = loop.time()
            if next_at < now:
                next_at = now + interval - ((now - next_at) % interval)
            await _sleep_unless(stop, next_at - now)
        if self._client is not None and not self.shared_client:
            self._client.close()


async def _sleep_unless(stop: asyncio.Event, delay_s: float) -> None:
    """Sleep ``delay_s`` or until ``stop`` is set, in the calling task (``wait_for`` would make
    a task of ``stop.wait()`` on every poll)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay_s):
            await stop.wait()


class RtuBus:
    """One serial line, one master: the devices on it are polled in sequence, each on its own
    schedule; live devices first, an offline one only in the slack before the next live poll."""

    def __init__(
        self,
        line: SerialLine,
        pollers: Sequence[DevicePoller],
        serial_factory: SerialFactory = serial_client_factory,
    ):
        self.line = line
        self.pollers = list(pollers)
        timeout = max((p.device.timeout_s for p in self.pollers), default=1.0)
        self.rx = _RxCapture()  # CRC errors told from silence
        self.client = serial_factory(line, timeout, self.rx)
        for p in self.pollers:
            p.use_shared_client(self.client, self.rx, line.frame_gap_s)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        # Spread the first polls so devices with one interval do not all queue at once.
        due = {id(p): start + n * self.line.frame_gap_s for n, p in enumerate(self.pollers)}
        try:
            while not stop.is_set() and self.pollers:
                poller = self._pick(due, loop.time())
                wait_s = due[id(poller)] - loop.time()
                if wait_s > 0:
                    await _sleep_unless(stop, wait_s)
                    continue  # re-pick: nothing else may have become due meanwhile
                slot = due[id(poller)]
                await poller.poll_and_emit()
                interval = poller.next_interval_s()
                now = loop.time()
                nxt = slot + interval
                if nxt < now:  # fell behind (bus saturated): skip missed slots
                    nxt = now + interval - ((now - nxt) % interval)
                due[id(poller)] = nxt
                await asyncio.sleep(self.line.frame_gap_s)  # t3.5: the line is quiet
        finally:
            self.client.close()

    def _pick(self, due: dict[int, float], now: float) -> DevicePoller:
        """The poller to run next: the earliest due, unless it is degraded (its last poll
        failed) and its worst case would run into the slot of a healthy device (one already
        due included); then it waits for slack (counted in ``health.deferred``)."""
        ordered = sorted(self.pollers, key=lambda p: due[id(p)])
        next_healthy = min((due[id(p)] for p in ordered if not p.degraded), default=float("inf"))
        for p in ordered:
            if due[id(p)] > now or not p.degraded:
                return p
            if now + p.worst_case_s() + self.line.frame_gap_s <= next_healthy:
                return p
            p.health.deferred += 1
            # Behind that healthy poll (and its answer), then look for slack again.
            due[id(p)] = max(now, next_healthy) + p.worst_case_s() / 2
        return min(self.pollers, key=lambda p: due[id(p)])


Runner = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


async def supervise(
    name: str, run: Runner, pollers: Sequence[DevicePoller], stop: asyncio.Event
) -> None:
    """Run ``run(stop)`` until ``stop``; when it dies of an exception, log it with its
    traceback, tell its pollers (:meth:`DevicePoller.task_died`: a ``modbus_poller`` point
    and a device_health point each) and start it again after RESTART_MIN_S, doubling up to
    RESTART_MAX_S while it keeps dying within RESTART_MAX_S of its start."""
    loop = asyncio.get_running_loop()
    backoff_s = RESTART_MIN_S
    while not stop.is_set():
        started = loop.time()
        try:
            await run(stop)
            return
        except Exception:
            if loop.time() - started > RESTART_MAX_S:
                backoff_s = RESTART_MIN_S  # it ran fine for a while: this is a new failure
            log.exception(
                "modbus task %s died (devices %s); restarting it in %.1f s",
                name,
                ", ".join(p.name for p in pollers),
                backoff_s,
            )
        for p in pollers:
            p.task_died()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=backoff_s)
        backoff_s = min(backoff_s * 2, RESTART_MAX_S)


def _supervised(name: str, run: Runner, pollers: Sequence[DevicePoller]) -> Runner:
    def runner(stop: asyncio.Event) -> Coroutine[Any, Any, None]:
        return supervise(name, run, pollers, stop)

    return runner


def modbus_runners(
    pollers: Sequence[DevicePoller], serial_factory: SerialFactory = serial_client_factory
) -> list[tuple[str, Runner]]:
    """``(task name, run)`` for each TCP device and each RTU bus (devices grouped by port),
    each run under :func:`supervise`."""
    runners: list[tuple[str, Runner]] = []
    buses: dict[str, list[DevicePoller]] = {}
    lines: dict[str, SerialLine] = {}
    for p in pollers:
        if (p.device.url or "").startswith("rtu:"):
            line = SerialLine.from_url(p.device.url or "")
            if line.port in lines and lines[line.port] != line:
                raise ValueError(
                    f"{p.name}: {line.port} is configured with two line settings "
                    f"({lines[line.port]} and {line})"
                )
            lines[line.port] = line
            buses.setdefault(line.port, []).append(p)
        else:
            name = f"modbus:{p.device.id}"
            runners.append((name, _supervised(name, p.run, [p])))
    for port, members in buses.items():
        bus = RtuBus(lines[port], members, serial_factory)
        name = f"modbus-rtu:{port}"
        runners.append((name, _supervised(name, bus.run, members)))
    return runners
