"""The gateway service: sources -> decode -> validate -> outbox -> InfluxDB writer."""

from __future__ import annotations

import asyncio
import logging
import signal

from gateway.config import GatewayConfig, Transport
from gateway.influx import InfluxV1Writer
from gateway.modbus import ClientFactory, DevicePoller, tcp_client_factory
from gateway.mqtt_ingest import MqttIngest
from gateway.outbox import Outbox
from gateway.pipeline import Pipeline
from gateway.readings import Reading
from gateway.writer import OutboxDrainer
from o2chain.registers import load_profile

log = logging.getLogger(__name__)


class Gateway:
    """Wires the parts together; ``await Gateway(cfg).run(stop)``."""

    def __init__(self, config: GatewayConfig, client_factory: ClientFactory = tcp_client_factory):
        self.config = config
        state_dir = config.gateway.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(state_dir / "outbox.sqlite")
        if config.influx.api != "v1":
            raise NotImplementedError(
                f"influx.api = {config.influx.api!r}: only 'v1' is available in this release"
            )
        self.writer = InfluxV1Writer(config.influx)
        self.drainer = OutboxDrainer(
            self.outbox, self.writer, config.influx.batch_size, config.influx.flush_interval_s
        )
        self.pollers = [
            DevicePoller(d, load_profile(d.profile or ""), client_factory, self._emit)
            for d in config.device
            if d.transport is Transport.MODBUS
        ]
        # Enrichment and alarm stages plug in here (issue 4).
        self.pipeline = Pipeline([])
        self.mqtt = MqttIngest(
            config, self.outbox, on_committed=self.drainer.wake, process=self.pipeline.process
        )

    def _emit(self, reading: Reading) -> None:
        self.outbox.add(r.to_line() for r in self.pipeline.process([reading]))
        self.drainer.wake()

    async def run(self, stop: asyncio.Event) -> None:
        log.info(
            "gateway %s: %d Modbus devices, MQTT %s, InfluxDB %s db=%s, state %s",
            self.config.gateway.id,
            len(self.pollers),
            self.config.mqtt.url,
            self.config.influx.url,
            self.config.influx.database,
            self.config.gateway.state_dir,
        )
        self.mqtt.start()
        tasks = [asyncio.create_task(self.drainer.run(stop), name="writer")]
        tasks += [
            asyncio.create_task(p.run(stop), name=f"modbus:{p.device.id}") for p in self.pollers
        ]
        try:
            await stop.wait()
        finally:
            # Stop the sources first; what they committed stays in the outbox for next time.
            self.mqtt.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.writer.close()
            self.outbox.close()
            log.info("gateway stopped")


async def run_until_signalled(config: GatewayConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await Gateway(config).run(stop)
    return 0
