"""The gateway service: sources -> decode -> validate -> outbox -> InfluxDB writer."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path
from sqlite3 import Connection

from gateway.alarm_mqtt import AlarmMqttPublisher
from gateway.alarms import AlarmEngine
from gateway.config import GatewayConfig, Transport, redact_url
from gateway.enrich import Enricher
from gateway.forward import CURSOR as CENTRAL_CURSOR
from gateway.forward import CentralForwarder
from gateway.http import HttpPolicy, StatusServer
from gateway.influx import InfluxV1Writer, InfluxV2Writer, make_writer
from gateway.lineproto import LineEncoder
from gateway.links import LinkTracker, broker_event
from gateway.modbus import ClientFactory, DevicePoller, modbus_runners, tcp_client_factory
from gateway.mqtt_ingest import MqttIngest
from gateway.notify import Notifier, NotifyQueue
from gateway.observe import Observer
from gateway.outbox import FullPolicy, Outbox, OutboxFullError
from gateway.pipeline import Output, Pipeline
from gateway.readings import Reading, wall_ms
from gateway.sources import Sources
from gateway.state_store import StateStore
from gateway.supply_forecast import SupplyForecast
from gateway.writer import OutboxDrainer
from o2base.registers import load_profile

log = logging.getLogger(__name__)

STATE_DIR_MODE = 0o700  # readings, dead letters (what anybody published) and alarm state
STATE_FILE_MODE = 0o600
OUTBOX_FILE = "outbox.sqlite"


def prepare_state_dir(state_dir: Path) -> Path:
    """Create ``state_dir`` 0700 (tightened if it exists and is ours) and ``outbox.sqlite``
    0600 before SQLite opens it: SQLite gives its -wal and -shm files the database file's mode,
    so all three stay the gateway's own whatever the umask. Files of ours that an older
    release left open to others are tightened too. Returns the outbox's path."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=STATE_DIR_MODE)
    _tighten(state_dir, STATE_DIR_MODE)
    outbox = state_dir / OUTBOX_FILE
    os.close(os.open(outbox, os.O_CREAT | os.O_WRONLY, STATE_FILE_MODE))
    for path in state_dir.glob("*.sqlite*"):
        _tighten(path, STATE_FILE_MODE)
    return outbox


def _tighten(path: Path, mode: int) -> None:
    """chmod ``path`` to ``mode`` if it is ours and more open (another user's: left alone)."""
    st = path.lstat()
    ours = st.st_uid == os.geteuid() and not stat.S_ISLNK(st.st_mode)
    if ours and stat.S_IMODE(st.st_mode) & ~mode:
        path.chmod(mode)
        log.info("%s was mode %04o: now %04o", path, stat.S_IMODE(st.st_mode), mode)


def influx_drain(
    config: GatewayConfig, outbox: Outbox
) -> tuple[InfluxV1Writer | InfluxV2Writer, OutboxDrainer]:
    """The ``[influx]`` writer and the drainer that feeds it from ``outbox`` (the service's, and
    a standby group member's, gateway/ha.py)."""
    writer = make_writer(config.influx)
    drainer = OutboxDrainer(
        outbox,
        writer,
        config.influx.batch_size,
        config.influx.flush_interval_s,
        max_backoff_s=config.influx.max_backoff_s,
    )
    return writer, drainer


class Gateway:
    """Wires the parts together; ``await Gateway(cfg).run(stop)``."""

    def __init__(self, config: GatewayConfig, client_factory: ClientFactory = tcp_client_factory):
        self.config = config
        state_dir = config.gateway.state_dir
        self.outbox = Outbox(
            prepare_state_dir(state_dir),
            synchronous=config.gateway.outbox_sync.upper(),
            max_bytes=int(config.gateway.outbox_max_mb * 1024 * 1024),
            policy=FullPolicy(config.gateway.outbox_full_policy),
            deadletter_max_count=config.gateway.deadletter_max_count,
            deadletter_max_bytes=int(config.gateway.deadletter_max_mb * 1024 * 1024),
        )
        self.writer, self.drainer = influx_drain(config, self.outbox)
        # [central]: a second reader of the outbox; a cursor left from an old config is dropped.
        self.forwarder: CentralForwarder | None = None
        if config.central is not None:
            self.forwarder = CentralForwarder(self.outbox, config.central, local=config.influx)
        self.outbox.keep_cursors([CENTRAL_CURSOR] if self.forwarder else [])
        self.modbus_dropped = 0  # Modbus readings lost at a full outbox (policy block)
        self.tick_dropped = 0  # chain and self-metric points lost at a full outbox
        self.encoder = LineEncoder()
        self.pollers = [
            DevicePoller(d, load_profile(d.profile or ""), client_factory, self._emit)
            for d in config.device
            if d.transport is Transport.MODBUS
        ]
        # Enrichment, alarms and self-observation.
        # Alarm state lives in the outbox's file: a transition commits with its alarm point.
        self.state_store = StateStore.sharing(
            self.outbox.db, self.outbox.lock, config.alarm_engine.log_keep
        )
        self.state_store.import_legacy(state_dir / "alarms.sqlite")
        self.sources = Sources(outbox=self.outbox, drainer=self.drainer, pollers=[*self.pollers])
        # Link state flows through the pipeline: the status messages' and the pollers'
        # device_health points carry it to the tracker, the first stage (gateway/links.py).
        self.links = LinkTracker(config)
        # Supply stock trends give `days_left` before the alarm engine judges it; the chain
        # balance reads them for the site's days of oxygen left.
        self.forecast = SupplyForecast(config)
        self.enricher = Enricher(config, self.state_store, forecast=self.forecast)
        self.alarms = AlarmEngine(config, self.state_store, link_state=self.links.state)
        self.alarm_mqtt = AlarmMqttPublisher(config, self.alarms.active())
        self.alarms.listeners.append(self.alarm_mqtt)
        # Notifications queue in the alarm event's transaction; their own threads deliver.
        self.notify_queue = NotifyQueue(
            self.outbox.db,
            self.outbox.lock,
            self._commit_notify,
            config.notify,
            gateway_id=config.gateway.id,
        )
        self.state_store.also_write.append(self.notify_queue.write)
        self.notifier = Notifier(config, self.notify_queue)
        self.alarms.listeners.append(self.notifier.listener)
        self.sources.notifier = self.notifier
        self.observer = Observer(config, self.sources, self.alarms, self.enricher, self.links.state)
        self.pipeline = Pipeline(
            [self.links, self.enricher, self.forecast, self.alarms, self.observer]
        )
        self.http = StatusServer(
            config.gateway.http_listen,
            self.observer,
            self.alarms,
            after_action=self.tick,
            policy=HttpPolicy.from_config(
                config.http, config.gateway.http_listen, config.alarm_engine
            ),
        )
        self.mqtt = MqttIngest(
            config,
            self.outbox,
            on_committed=self.drainer.wake,
            process=self.pipeline.process,
            alarm_writer=self.state_store.writer,
            announce=self.alarms.notify,
        )
        self.sources.mqtt = self.mqtt
        # The ingest's connection to the broker, for the boards' last wills (gateway/links.py).
        self.mqtt.on_broker = lambda up, connection: self.pipeline.post(
            broker_event(up, connection, wall_ms())
        )
        self.sources.extra["modbus_dropped_total"] = lambda: self.modbus_dropped
        self.sources.extra["tick_dropped_total"] = lambda: self.tick_dropped
        forwarder = self.forwarder
        if forwarder is not None:
            self.sources.extra["forward_lag_points"] = lambda: forwarder.lag()[0]
            self.sources.extra["forward_lag_seconds"] = lambda: forwarder.lag()[1]
            self.sources.extra["forward_written_total"] = lambda: forwarder.stats.written
            self.sources.extra["forward_failures_total"] = lambda: forwarder.stats.failures
            self.sources.extra["forward_released_total"] = lambda: forwarder.released
            self.sources.extra["forward_backfilled_total"] = lambda: forwarder.backfilled
            self.sources.extra["forward_backfill_pending_spans"] = lambda: (
                forwarder.backfill_pending()[0]
            )
            self.sources.extra["forward_backfill_pending_points"] = lambda: (
                forwarder.backfill_pending()[1]
            )

    def _commit(self, readings: list[Reading]) -> int:
        """Commit pipeline output, then announce its alarm events; returns how many readings
        the full outbox refused (policy ``block``). Alarm points and their state are committed
        whatever the bound: they are never the ones lost."""
        out = Output()
        out.add(readings, self.encoder.encode)
        if not out.lines and not out.keep_lines:
            return 0
        refused = 0
        also = self.state_store.writer(out.events)
        try:
            self.outbox.commit(out.lines, keep_lines=out.keep_lines, also=also)
        except OutboxFullError:
            refused = len(out.lines)
            if out.keep_lines:
                self.outbox.commit([], keep_lines=out.keep_lines, also=also)
        self.alarms.notify(out.events)
        self.drainer.wake()
        return refused

    def _commit_notify(self, keep_lines: list[str], write: Callable[[Connection], None]) -> None:
        """A delivery outcome and its ``notify`` points, one transaction (never refused at the
        bound: like alarm points, the record of who was told is kept)."""
        self.outbox.commit([], keep_lines=keep_lines, also=write)
        if keep_lines:
            self.drainer.wake()

    def _emit(self, reading: Reading) -> None:
        # No broker holds a poll for us: at the bound a Modbus reading is lost, counted.
        if self._commit(self.pipeline.process([reading])):
            self.modbus_dropped += 1

    def tick(self) -> None:
        """Time-driven pipeline work: alarm delays, silence and shelving, chain balance and
        self-metric points, and events of operator actions, committed to the outbox."""
        refused = self._commit(self.pipeline.process([]))
        if refused:
            self.tick_dropped += refused
            log.warning("outbox full: %d chain/gateway points not stored", refused)

    async def _ticker(self, stop: asyncio.Event, interval_s: float = 1.0) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.tick)
            except Exception:
                log.exception("pipeline tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)

    async def run(self, stop: asyncio.Event) -> None:
        log.info(
            "gateway %s: %d Modbus devices, MQTT %s, InfluxDB %s db=%s, state %s",
            self.config.gateway.id,
            len(self.pollers),
            redact_url(self.config.mqtt.url),
            redact_url(self.config.influx.url),
            self.config.influx.database,
            self.config.gateway.state_dir,
        )
        await self.http.start()
        self.alarm_mqtt.start()
        self.mqtt.start()
        self.notifier.start()
        tasks = [asyncio.create_task(self.drainer.run(stop), name="writer")]
        tasks.append(asyncio.create_task(self._ticker(stop), name="tick"))
        if self.forwarder is not None:
            tasks.append(asyncio.create_task(self.forwarder.run(stop), name="forward"))
        tasks += [  # TCP devices one task each, an RTU bus one task for all its devices
            asyncio.create_task(run(stop), name=name) for name, run in modbus_runners(self.pollers)
        ]
        try:
            await stop.wait()
        finally:
            # Stop the sources first; what they committed stays in the outbox for next time.
            self.mqtt.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.http.stop()
            self.tick()  # the last alarm events into the outbox
            self.notifier.stop()  # what is not delivered stays queued for the next start
            self.alarm_mqtt.stop()
            self.alarms.close()
            self.enricher.close()
            self.state_store.close()
            self.writer.close()
            if self.forwarder is not None:
                self.forwarder.close()
            self.outbox.close()
            log.info("gateway stopped")


async def run_until_signalled(config: GatewayConfig) -> int:
    # Whatever the gateway creates (state, logs of libraries, temp files) is its own.
    os.umask(0o077)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if config.mqtt.shared_group:
        # A group of gateways: standby until elected, a Gateway per term (gateway/ha.py).
        from gateway.ha import run_member

        gc.collect()
        gc.freeze()
        return await run_member(config, stop)
    gateway = Gateway(config)
    # Everything built so far (modules, config, pydantic models: ~100,000 objects) lives as long
    # as the process: moved out of the collector's reach, the full collections that the
    # ingest's allocations trigger no longer walk it (measured: 8 % of the commit path's CPU).
    gc.collect()
    gc.freeze()
    await gateway.run(stop)
    return 0
