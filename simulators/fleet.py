"""Fleet generator: many virtual room boards in one asyncio process, each a real MQTT client.

Every board speaks the board contract (docs/contracts.md) exactly:

- its own MQTT connection and client id (``{client_prefix}-{site}-{device}``), a last will
  ``{"state":"offline"}`` and a retained QoS 1 birth ``{"state":"online","fw":...,"boot":N}`` on
  ``{prefix}/{site}/{device}/status`` after every (re)connect;
- QoS 1 telemetry v1 on ``{prefix}/{site}/{device}/telemetry``: ``v``, ``boot``, ``seq`` (per boot,
  from 0), ``ts`` (board clock, ms; strictly increasing per board, at least 1 ms per reading so
  InfluxDB point identity holds even faster than real time) and the room fields from the room
  physics (:mod:`simulators.physics.room`; ``co2_ppm`` from the boards with a CO2 sensor);
- store and forward: a board measures on schedule whether or not the broker is reachable, into
  a bounded buffer (oldest dropped and counted when full); a reading leaves the buffer for the
  MQTT client when published and counts as *sent* only on its PUBACK. After an outage the
  backlog goes out as JSON arrays of up to ``batch_max`` readings, and what was in flight when
  the connection broke is sent again (paho re-sends unacknowledged QoS 1 messages with DUP on
  reconnect): the gateway sees duplicates, as it would from real boards, and dedups them.

At the end each board publishes a retained ``{"state":"offline"}`` status (a clean MQTT
DISCONNECT suppresses the will) and disconnects. :meth:`Fleet.run` returns a :class:`FleetSummary`.

The MQTT client is paho-mqtt 2.x (already the gateway's client), one ``Client`` per board on one
asyncio loop through :class:`simulators.mqtt_loop.AsyncioPaho`; bench/bench_fleet.py measures it.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import os
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators.mqtt_loop import AsyncioPaho
from simulators.physics.atmosphere import Weather
from simulators.physics.room import (
    FixedSupply,
    FlowBasis,
    RoomKind,
    RoomModel,
    room_params,
    supply_for_target_lpm,
)

log = logging.getLogger(__name__)

FIRMWARE = "o2sim-fleet/1"
_encode_json = json.JSONEncoder(separators=(",", ":")).encode
_MISC_SWEEP_S = 2.0  # keep-alive sweep over all clients (keepalive is tens of seconds)
_TICK_S = 0.01  # shortest pause of the scheduler between turns


class ReadingSource(Protocol):
    """Where a board's measurements come from."""

    def measure(self, dt_s: float) -> dict[str, float]:
        """Advance by ``dt_s`` simulated seconds since the previous reading, then read."""
        ...


class RoomSource:
    """A board in a room of its own: room physics fed by a room concentrator."""

    def __init__(self, room: RoomModel) -> None:
        self.room = room

    def measure(self, dt_s: float) -> dict[str, float]:
        if dt_s > 0.0:
            self.room.advance(dt_s)
        return self.room.reading()


CO2_SENSOR_SHARE = 0.5  # fleet rooms whose board also has a CO2 sensor


def default_room_source(index: int, seed: int, weather: Weather) -> RoomSource:
    """The fleet's default board: a hotel room ventilated to GB 50736 (60 m3/h, about 2 air
    changes an hour) on a pipeline branch from a PSA plant, sized to hold it near 25 % O2.

    Rooms differ a little (volume, guests, product purity, target) so a fleet does not draw one
    line; about half the boards also measure CO2. With realistic ventilation a bedside
    concentrator cannot enrich a room (simulators/README.md), hence the pipeline.
    """
    rng = random.Random(f"room-{seed}-{index}")
    volume_m3 = rng.uniform(26.0, 34.0)
    params = room_params(
        RoomKind.HOTEL_ROOM,
        volume_m3=volume_m3,
        ach_per_h=60.0 / volume_m3,  # GB 50736: 30 m3/h for each of the 2 guests it is built for
        occupants=rng.choice((1, 1, 2)),
        temp_c=rng.uniform(18.5, 21.5),
        rh_pct=rng.uniform(22.0, 34.0),
    )
    params.co2_sensor = rng.random() < CO2_SENSOR_SHARE
    purity = rng.uniform(92.0, 93.5)
    flow = supply_for_target_lpm(
        params, rng.uniform(24.6, 25.4), purity, weather.pressure_kpa(0.0), FlowBasis.NORMAL
    )
    supply = FixedSupply(flow, purity, FlowBasis.NORMAL)
    return RoomSource(RoomModel(params, weather, supply, seed=rng.randrange(1 << 30)))


@dataclass(frozen=True)
class FleetConfig:
    """One fleet run. ``interval_s`` 0 means as fast as the PUBACKs come back."""

    host: str
    port: int
    site: str
    boards: int
    interval_s: float
    readings: int
    seed: int = 0
    prefix: str = "o2"
    boot: int | None = None  # None: the start time in s since the epoch (new per run)
    first_board: int = 1  # device ids room-{first_board:04d} ...
    device_format: str = "room-{n:04d}"
    client_prefix: str = "o2fleet"
    # A provisioned site (`o2chain provision`): each board logs in with the account, CA and
    # certificate name of its own DIR/boards/{device}/config.json, over TLS, like a flashed board.
    # Default: $O2CHAIN_PROVISION_DIR, so `o2chain sim run` inherits it from the demo.
    provision_dir: str | None = field(
        default_factory=lambda: os.environ.get("O2CHAIN_PROVISION_DIR") or None
    )
    altitude_m: float = 3650.0
    buffer_max: int = 10_000  # readings a board keeps while offline (oldest dropped beyond)
    batch_max: int = 50  # readings per JSON array when replaying a backlog
    window: int = 10  # QoS 1 messages in flight per board
    keepalive_s: int = 30
    connect_per_turn: int = 200  # connection ramp: new connections per loop turn
    reconnect_min_s: float = 0.25
    reconnect_max_s: float = 5.0
    connect_timeout_s: float = 5.0  # one TCP connect attempt
    timeout_s: float = 600.0  # the whole run, connections and shutdown included
    # Spread the boards over this many sites, in equal blocks of consecutive boards: site ids
    # {site}-001 ... (1: every board is at `site`). A region's fleet in one process.
    sites: int = 1

    def validate(self) -> None:
        """Raise ValueError naming the bad setting."""
        if not 1 <= self.boards <= 100_000:
            raise ValueError(f"boards = {self.boards}: expected 1..100000")
        if self.readings < 0:
            raise ValueError(f"readings = {self.readings}: expected >= 0")
        if self.interval_s < 0:
            raise ValueError(f"interval_s = {self.interval_s}: expected >= 0")
        if not 1 <= self.batch_max <= 500:  # schema max_batch
            raise ValueError(f"batch_max = {self.batch_max}: expected 1..500")
        if self.window < 1 or self.buffer_max < 1:
            raise ValueError("window and buffer_max must be >= 1")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s = {self.timeout_s}: expected > 0")
        if not 1 <= self.sites <= min(self.boards, 999):
            raise ValueError(f"sites = {self.sites}: expected 1..min(boards, 999)")

    def device_id(self, index: int) -> str:
        return self.device_format.format(n=self.first_board + index)

    def site_id(self, index: int) -> str:
        """The site of board ``index`` (0-based)."""
        if self.sites == 1:
            return self.site
        per_site = -(-self.boards // self.sites)
        return f"{self.site}-{index // per_site + 1:03d}"


@dataclass
class FleetSummary:
    """What one run did; printed by the CLI as one JSON line."""

    site: str
    boards: int
    readings_per_board: int
    readings_sent: int  # PUBACKed readings (each reading counted once)
    readings_measured: int
    readings_dropped: int  # lost to a full buffer during a long outage
    messages_acked: int  # telemetry messages (single objects and arrays) PUBACKed
    batches_sent: int  # of which JSON arrays
    reconnects: int
    first_ts: int | None
    last_ts: int | None
    elapsed_s: float
    cpu_s: float
    complete: bool
    boot: int
    devices: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        doc = asdict(self)
        devices = doc.pop("devices")
        doc["first_device"] = devices[0] if devices else None
        doc["last_device"] = devices[-1] if devices else None
        return json.dumps(doc)


class _FleetClient(mqtt.Client):
    """paho's client, connecting over a socket the event loop connected without blocking.

    paho's own connect is a blocking ``socket.create_connection``: against a frozen or
    black-holed broker it would stall every board of the loop for ``connect_timeout``. The
    fleet connects the TCP socket with ``loop.sock_connect`` (bounded by a timeout) and hands
    it to paho here. It also avoids paho's ``bind(("", 0))`` before connecting, which costs
    about 0.5 ms per socket once thousands of local ports are in use (measured: 5.8 s of
    10,000 connections). With TLS the fleet also does the handshake on the loop and hands over
    the finished TLS socket (paho's own TLS wrapping, a blocking handshake, stays off).
    """

    next_socket: socket.socket | None = None

    def _create_socket_connection(self) -> socket.socket:
        sock, self.next_socket = self.next_socket, None
        if sock is not None:
            return sock
        return socket.create_connection((self._host, self._port), timeout=self._connect_timeout)


class Board:
    """One virtual room board: its readings buffer, its sequence numbers, its MQTT client."""

    def __init__(
        self,
        fleet: Fleet,
        index: int,
        device: str,
        boot: int,
        source: ReadingSource,
        rng: random.Random,
    ) -> None:
        cfg = fleet.config
        self.fleet = fleet
        self.index = index
        self.device = device
        self.boot = boot
        self.source = source
        self.rng = rng
        self.seq = 0
        self.last_ts = 0
        self.first_ts: int | None = None
        self.buffer: deque[dict[str, Any]] = deque()
        self.inflight: dict[int, int] = {}  # mid -> readings in the message (-1: status)
        self.measured = 0
        self.acked = 0
        self.dropped = 0
        self.messages_acked = 0
        self.batches = 0
        self.reconnects = 0
        self.connected = False
        self.connecting = False
        self.ever_connected = False
        self.finishing = False  # saying goodbye: offline status, then DISCONNECT
        self.goodbye_mid: int | None = None
        self.closed = False
        self.backoff_s = cfg.reconnect_min_s
        site = cfg.site_id(index)
        base = f"{cfg.prefix}/{site}/{device}"
        self.telemetry_topic = f"{base}/telemetry"
        self.status_topic = f"{base}/status"
        client = _FleetClient(
            CallbackAPIVersion.VERSION2,
            client_id=f"{cfg.client_prefix}-{site}-{device}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self.tls: ssl.SSLContext | None = None
        self.server_hostname: str | None = None
        if cfg.provision_dir:
            self._use_provisioned_account(client, Path(cfg.provision_dir))
        client.max_inflight_messages_set(cfg.window + 1)  # + the status message
        client.max_queued_messages_set(0)
        client.will_set(self.status_topic, b'{"state":"offline"}', qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        fleet.glue.attach(client)
        self.client = client

    # -- measuring -----------------------------------------------------------------------------

    @property
    def measuring_done(self) -> bool:
        return self.measured >= self.fleet.config.readings

    @property
    def done(self) -> bool:
        """Connected once, measured everything, every reading PUBACKed (or dropped)."""
        readings_inflight = any(n >= 0 for n in self.inflight.values())
        return (
            self.ever_connected
            and self.measuring_done
            and not self.buffer
            and not readings_inflight
        )

    def measure(self) -> None:
        ts = max(self.fleet.wall_ms(), self.last_ts + 1)
        dt_s = (ts - self.last_ts) / 1000.0 if self.last_ts else 0.0
        reading: dict[str, Any] = {"v": 1, "boot": self.boot, "seq": self.seq, "ts": ts}
        reading.update(self.source.measure(dt_s))
        self.seq += 1
        self.last_ts = ts
        if self.first_ts is None:
            self.first_ts = ts
        self.measured += 1
        if len(self.buffer) >= self.fleet.config.buffer_max:
            self.buffer.popleft()
            self.dropped += 1
        self.buffer.append(reading)

    # -- sending -------------------------------------------------------------------------------

    def pump(self) -> None:
        """Publish from the buffer while connected and the in-flight window has room."""
        cfg = self.fleet.config
        fast = cfg.interval_s == 0
        while self.connected and len(self.inflight) < cfg.window:
            if not self.buffer:
                if fast and not self.measuring_done:
                    self.measure()
                else:
                    break
            if len(self.buffer) == 1:
                items: Any = self.buffer.popleft()
                count = 1
            else:
                count = min(len(self.buffer), cfg.batch_max)
                items = [self.buffer.popleft() for _ in range(count)]
            info = self.client.publish(self.telemetry_topic, _encode_json(items).encode(), qos=1)
            # Also when the connection broke a moment ago (MQTT_ERR_NO_CONN): paho keeps the
            # QoS 1 message and sends it after the reconnect, so it stays in flight here.
            self.inflight[info.mid] = count
        self.fleet.check_done(self)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        count = self.inflight.pop(mid, None)
        if count is None:
            return
        if count >= 0:
            self.acked += count
            self.messages_acked += 1
            if count > 1:
                self.batches += 1
        elif mid == self.goodbye_mid:
            self.client.disconnect()
            return
        self.pump()

    # -- connection ----------------------------------------------------------------------------

    def _use_provisioned_account(self, client: mqtt.Client, provision_dir: Path) -> None:
        """Username, password and (if set) the pinned CA of the board's provisioned config."""
        path = provision_dir / "boards" / self.device / "config.json"
        try:
            mqtt_cfg = json.loads(path.read_text())["mqtt"]
            client.username_pw_set(mqtt_cfg["username"], mqtt_cfg["password"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"board {self.device}: {path}: expected a provisioned config.json with "
                f"mqtt.username and mqtt.password ({exc!r})"
            ) from exc
        tls = mqtt_cfg.get("tls") or {}
        if tls.get("ca_file"):
            # The board's CA path is on its own filesystem ("/ca.pem"): the file sits next to
            # config.json in the provisioned directory.
            ca = path.parent / str(tls["ca_file"]).rsplit("/", 1)[-1]
            self.tls = ssl.create_default_context(cafile=str(ca))
            self.server_hostname = tls.get("server_hostname") or self.fleet.config.host

    async def _tls_handshake(self, sock: socket.socket) -> ssl.SSLSocket:
        """TLS client handshake on the event loop (non-blocking); raises OSError/SSLError."""
        assert self.tls is not None
        loop = asyncio.get_running_loop()
        tls = self.tls.wrap_socket(
            sock, server_hostname=self.server_hostname, do_handshake_on_connect=False
        )
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                add, remove = loop.add_reader, loop.remove_reader
            except ssl.SSLWantWriteError:
                add, remove = loop.add_writer, loop.remove_writer
            ready: asyncio.Future[None] = loop.create_future()
            add(tls.fileno(), _resolve, ready)
            try:
                await ready
            finally:
                remove(tls.fileno())

    def connect(self) -> None:
        """Start one connection attempt in the background (see :class:`_FleetClient`)."""
        if self.connecting:
            return
        self.connecting = True
        task = asyncio.get_running_loop().create_task(self._connect())
        self.fleet.tasks.add(task)
        task.add_done_callback(self.fleet.tasks.discard)

    async def _connect(self) -> None:
        cfg = self.fleet.config
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            try:
                await asyncio.wait_for(
                    loop.sock_connect(sock, (cfg.host, cfg.port)), cfg.connect_timeout_s
                )
            except (OSError, TimeoutError):
                sock.close()
                raise
            if self.tls is not None:
                try:
                    sock = await asyncio.wait_for(self._tls_handshake(sock), cfg.connect_timeout_s)
                except (OSError, TimeoutError) as exc:
                    sock.close()
                    if isinstance(exc, ssl.SSLError):  # a wrong CA or name: say so, keep trying
                        log.warning("%s: TLS handshake failed: %s", self.device, exc)
                    raise
            if self.closed:
                sock.close()
                return
            self.client.next_socket = sock
            if self.ever_connected or self.reconnects:
                self.client.reconnect()
            else:
                self.client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        except (OSError, TimeoutError) as exc:
            log.debug("%s: connect failed: %s", self.device, exc)
            self.reconnects += 1
            self._schedule_reconnect()
        finally:
            self.connecting = False

    def _schedule_reconnect(self) -> None:
        if self.closed:
            return
        delay = self.backoff_s * self.rng.uniform(0.5, 1.5)
        self.backoff_s = min(self.backoff_s * 2, self.fleet.config.reconnect_max_s)
        self.fleet.schedule_connect(self, delay)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.warning("%s: broker refused the connection: %s", self.device, reason)
            return
        self.connected = True
        self.ever_connected = True
        self.backoff_s = self.fleet.config.reconnect_min_s
        birth = {"state": "online", "fw": FIRMWARE, "boot": self.boot, "sim": True}
        info = client.publish(self.status_topic, _encode_json(birth), qos=1, retain=True)
        self.inflight[info.mid] = -1
        if self.finishing:  # reconnected while saying goodbye: say it again
            self.finish()
        self.pump()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_connected = self.connected
        self.connected = False
        if self.closed:
            return
        if (
            self.finishing
            and self.goodbye_mid is not None
            and self.goodbye_mid not in self.inflight
        ):
            self.closed = True
            self.fleet.board_closed(self)
            return
        if was_connected:
            self.reconnects += 1
            log.info("%s: connection lost (%s), reconnecting", self.device, reason)
        # Messages in flight stay with paho (re-sent with DUP after the reconnect).
        self.inflight = {mid: n for mid, n in self.inflight.items() if n >= 0}
        self._schedule_reconnect()

    def finish(self) -> None:
        """Publish the retained offline status; disconnect once it is acknowledged."""
        self.finishing = True
        if not self.connected:
            return
        info = self.client.publish(self.status_topic, b'{"state":"offline"}', qos=1, retain=True)
        self.inflight[info.mid] = -1
        self.goodbye_mid = info.mid

    def misc(self) -> None:
        """Keep-alive: PINGREQ when idle, drop a connection whose broker stopped answering."""
        if self.connected:
            self.client.loop_misc()


class Fleet:
    """Run ``config.boards`` boards until each has sent ``config.readings`` readings."""

    def __init__(
        self,
        config: FleetConfig,
        sources: Sequence[ReadingSource] | None = None,
        *,
        device_ids: Sequence[str] | None = None,
        wall_ms: Callable[[], int] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        config.validate()
        self.config = config
        self.wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self.monotonic = monotonic
        self.boot = config.boot if config.boot is not None else int(time.time())
        self.sources = sources
        self.device_ids = device_ids
        if device_ids is not None and len(device_ids) != config.boards:
            raise ValueError(f"{len(device_ids)} device ids for {config.boards} boards")
        self._stop_requested = False
        self.boards: list[Board] = []
        self._connect_queue: list[tuple[float, int, Board]] = []
        self._done: set[int] = set()
        self._closed: set[int] = set()
        self._all_done = asyncio.Event()
        self._all_closed = asyncio.Event()
        self._sleeper: asyncio.Future[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.glue: AsyncioPaho

    def check_done(self, board: Board) -> None:
        if board.index not in self._done and board.done:
            self._done.add(board.index)
            if len(self._done) == len(self.boards):
                self._all_done.set()
                if self._sleeper is not None and not self._sleeper.done():
                    self._sleeper.set_result(None)

    def stop(self) -> None:
        """Stop measuring now: boards say goodbye and :meth:`run` returns (not complete)."""
        self._stop_requested = True
        if self._sleeper is not None and not self._sleeper.done():
            self._sleeper.set_result(None)

    async def _sleep(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        """Sleep up to ``timeout_s``; returns early when every board is done."""
        if self._all_done.is_set() or self._stop_requested:
            return
        self._sleeper = fut = loop.create_future()
        handle = loop.call_later(timeout_s, _resolve, fut)
        try:
            await fut
        finally:
            handle.cancel()
            self._sleeper = None

    def board_closed(self, board: Board) -> None:
        self._closed.add(board.index)
        if len(self._closed) == len(self.boards):
            self._all_closed.set()

    def schedule_connect(self, board: Board, delay_s: float) -> None:
        heapq.heappush(self._connect_queue, (self.monotonic() + delay_s, board.index, board))

    def _make_boards(self) -> None:
        cfg = self.config
        weather = Weather(cfg.altitude_m, seed=cfg.seed)
        for i in range(cfg.boards):
            source = (
                self.sources[i]
                if self.sources is not None
                else default_room_source(i, cfg.seed, weather)
            )
            rng = random.Random(f"board-{cfg.seed}-{i}")
            device = self.device_ids[i] if self.device_ids is not None else cfg.device_id(i)
            board = Board(self, i, device, self.boot, source, rng)
            self.boards.append(board)
            self.schedule_connect(board, 0.0)

    async def run(self) -> FleetSummary:
        """Connect, measure and send, say goodbye; bounded by ``config.timeout_s``."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        self.glue = AsyncioPaho(loop)
        cpu0 = time.process_time()
        t0 = self.monotonic()
        deadline = t0 + cfg.timeout_s
        self._make_boards()
        # Measurement schedule (interval > 0): boards spread evenly over one interval.
        due: list[tuple[float, int]] = []
        if cfg.interval_s > 0 and cfg.readings > 0:
            due = [(t0 + cfg.interval_s * i / cfg.boards, i) for i in range(cfg.boards)]
        next_misc = t0 + _MISC_SWEEP_S
        complete = False
        try:
            while self.monotonic() < deadline:
                now = self.monotonic()
                connects = 0
                while (
                    self._connect_queue
                    and self._connect_queue[0][0] <= now
                    and connects < cfg.connect_per_turn
                ):
                    _, _, board = heapq.heappop(self._connect_queue)
                    if not board.connected and not board.closed and not board.connecting:
                        board.connect()
                        connects += 1
                while due and due[0][0] <= now:
                    when, i = heapq.heappop(due)
                    board = self.boards[i]
                    board.measure()
                    board.pump()
                    if not board.measuring_done:
                        heapq.heappush(due, (when + cfg.interval_s, i))
                if now >= next_misc:
                    for board in self.boards:
                        board.misc()
                    next_misc = now + _MISC_SWEEP_S
                if self._all_done.is_set():
                    complete = True
                    break
                if self._stop_requested:
                    break
                wake_at = min(
                    due[0][0] if due else now + 0.2,
                    self._connect_queue[0][0] if self._connect_queue else now + 0.2,
                    next_misc,
                )
                if connects >= cfg.connect_per_turn:
                    wake_at = now
                # At least one tick between turns: 10,000 boards due at 1 ms spacing are
                # handled in batches rather than one loop turn each.
                timeout = min(max(wake_at - now, _TICK_S), deadline - now)
                await self._sleep(loop, max(0.0, timeout))
            await self._say_goodbye(deadline)
        finally:
            for task in list(self.tasks):
                task.cancel()
            for board in self.boards:
                if not board.closed:
                    board.closed = True
                    sock = board.client.socket()
                    if sock is not None:
                        board.client.disconnect()
                        board.client.loop_write()
        return FleetSummary(
            site=cfg.site,
            boards=cfg.boards,
            readings_per_board=cfg.readings,
            readings_sent=sum(b.acked for b in self.boards),
            readings_measured=sum(b.measured for b in self.boards),
            readings_dropped=sum(b.dropped for b in self.boards),
            messages_acked=sum(b.messages_acked for b in self.boards),
            batches_sent=sum(b.batches for b in self.boards),
            reconnects=sum(b.reconnects for b in self.boards),
            first_ts=min((b.first_ts for b in self.boards if b.first_ts), default=None),
            last_ts=max((b.last_ts for b in self.boards if b.last_ts), default=None),
            elapsed_s=round(self.monotonic() - t0, 3),
            cpu_s=round(time.process_time() - cpu0, 3),
            complete=complete,
            boot=self.boot,
            devices=[b.device for b in self.boards],
        )

    async def _say_goodbye(self, deadline: float) -> None:
        """Retained offline status from every connected board, then a clean disconnect."""
        for board in self.boards:
            if board.connected:
                board.finish()
            else:
                board.closed = True
                self.board_closed(board)
        remaining = max(0.1, min(10.0, deadline - self.monotonic() + 10.0))
        try:
            await asyncio.wait_for(self._all_closed.wait(), remaining)
        except TimeoutError:
            log.warning("%d boards did not close cleanly", len(self.boards) - len(self._closed))


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
