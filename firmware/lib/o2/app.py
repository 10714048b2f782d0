"""Room board application: sense -> outbox -> MQTT, as three independent asyncio tasks.

The sensing task never awaits the network: it reads the sensors every ``interval_s``, encodes
the reading and puts it into the outbox. The sending task drains the outbox whenever the
MQTT client is up, and readings leave the outbox only on PUBACK. Only the network layer
(net.Wifi, mqtt.MQTTClient) deals with outages; the local alarm (issue 5) will run on the
sensing side for the same reason.
"""

import asyncio
import gc
import json
import time

import machine
import network
import ntptime

from o2 import FW_VERSION, config, oxygen, state, telemetry
from o2 import mqtt_codec as codec
from o2.bme280 import BME280
from o2.clock import Clock
from o2.mqtt import MQTTClient
from o2.net import Wifi, keep_time
from o2.outbox import Outbox
from o2.ze03 import ZE03

SEND_WINDOW = 4  # QoS 1 messages in flight at once: bounds RAM and broker-side queueing
UART_BAUD = 9600  # ZE03: 9600 8N1 (DOMAIN.md section 4)
I2C_FREQ_HZ = 100000
Q_O2_MISSING = 0x01  # bits of the telemetry "quality" field; ze03.Q_* use the same values
Q_BARO_FALLBACK = 0x20  # ppO2 computed from ISA pressure at site altitude: no barometer
OFFLINE = b'{"state":"offline"}'

# Index of each value in telemetry.ROOM_FIELDS
I_O2, I_BARO, I_TEMP, I_RH, I_PPO2, I_EQ_ALT = 0, 1, 2, 3, 4, 5


class RoomApp:
    """One room board. Sensors, MQTT client, WiFi and clock are passed in (tests, stand-ins)."""

    def __init__(
        self,
        cfg: dict,
        boot: int,
        o2_sensor,
        env_sensor,
        mqtt: MQTTClient,
        wifi: Wifi,
        clock: Clock,
    ) -> None:
        self.cfg = cfg
        self.boot = boot
        self.seq = 0
        self.o2_sensor = o2_sensor
        self.env_sensor = env_sensor
        self.mqtt = mqtt
        self.wifi = wifi
        self.clock = clock
        self.outbox = Outbox(cfg["outbox_len"])
        prefix = topic_prefix(cfg)
        self.topic_telemetry = prefix + "telemetry"
        self.topic_status = prefix + "status"
        self.interval_ms = int(cfg["interval_s"] * 1000)
        self.fallback_kpa = oxygen.isa_pressure_kpa(cfg["site_altitude_m"])
        self._values: list = [None] * len(telemetry.ROOM_FIELDS)  # reused every cycle
        self._wake = asyncio.Event()
        mqtt.on_connect = self._on_connect
        mqtt.on_down = self._on_down

    async def run(self) -> None:
        """Run forever: WiFi, NTP, MQTT, sensing and sending tasks."""
        if self.o2_sensor is not None:
            await self.o2_sensor.init()
        asyncio.create_task(self.wifi.run())
        asyncio.create_task(keep_time(self.wifi, self.clock, ntptime.settime))
        asyncio.create_task(self.mqtt.run(self.wifi.up))
        asyncio.create_task(self.send_loop())
        await self.sense_loop()

    async def sense_loop(self) -> None:
        """Take a reading every interval, on a fixed schedule (no drift, no catch-up burst)."""
        next_ms = time.ticks_ms()
        while True:
            quality = await self.sense_once()
            gc.collect()  # a steady heap: collect at a known quiet point, not mid-publish
            print(
                "reading seq=%d quality=%d queued=%d dropped=%d free=%d"
                % (self.seq, quality, len(self.outbox), self.outbox.dropped, gc.mem_free())
            )
            next_ms = time.ticks_add(next_ms, self.interval_ms)
            delay = time.ticks_diff(next_ms, time.ticks_ms())
            if delay < 0:
                next_ms = time.ticks_ms()
                delay = 0
            await asyncio.sleep_ms(delay)

    async def sense_once(self) -> int:
        """Read all sensors, derive ppO2 / equivalent altitude, queue one reading.

        Returns the reading's quality flags (0 = all good).
        """
        values = self._values
        quality = 0
        o2 = None
        if self.o2_sensor is not None:
            o2, q = await self.o2_sensor.read()
            quality |= q
            if q & Q_O2_MISSING:
                o2 = None
        baro_kpa = None
        temp_c = None
        rh = None
        if self.env_sensor is not None:
            p_pa, temp_c, rh, q = await self.env_sensor.read()
            quality |= q
            if p_pa is not None:
                baro_kpa = p_pa / 1000
        values[I_O2] = o2
        values[I_BARO] = baro_kpa
        values[I_TEMP] = temp_c
        values[I_RH] = rh
        values[I_PPO2] = None
        values[I_EQ_ALT] = None
        if o2 is not None:
            pb = baro_kpa
            if pb is None:
                pb = self.fallback_kpa
                quality |= Q_BARO_FALLBACK
            values[I_PPO2] = oxygen.ppo2_kpa(o2, pb)
            values[I_EQ_ALT] = oxygen.equivalent_altitude_m(o2, pb, self.cfg["eq_alt_definition"])
        self.seq += 1
        payload = telemetry.encode(self.boot, self.seq, self.clock.epoch_ms(), values, quality)
        self.outbox.put(payload)
        self._wake.set()
        return quality

    async def send_loop(self) -> None:
        """Publish unsent readings oldest first, at most SEND_WINDOW awaiting their PUBACK."""
        box = self.outbox
        mqtt = self.mqtt
        while True:
            await mqtt.up.wait()
            slot = box.next_unsent() if mqtt.inflight < SEND_WINDOW else -1
            if slot < 0:
                self._wake.clear()
                await self._wake.wait()
                continue
            # Take the id and mark the slot before the write: the PUBACK may arrive while
            # publish() is still awaiting drain().
            mid = mqtt.next_mid()
            box.mark_sent(slot, mid)
            try:
                await mqtt.publish(
                    self.topic_telemetry, box.payload(slot), 1, False, mid, self._on_ack
                )
            except Exception as e:  # noqa: BLE001 -- the client reconnects; we wait for up
                print("send: %r" % (e,))
                await asyncio.sleep_ms(100)

    def status_payload(self) -> bytes:
        """Retained birth message for the status topic."""
        return json.dumps(
            {
                "state": "online",
                "fw": FW_VERSION,
                "boot": self.boot,
                "kind": self.cfg["kind"],
            }
        ).encode()

    def shutdown(self) -> None:
        """Orderly stop (KeyboardInterrupt): say offline ourselves, then DISCONNECT.

        A clean DISCONNECT makes the broker discard the will, so the retained offline status
        must be published explicitly.
        """
        self.mqtt.close((codec.publish(self.topic_status, OFFLINE, 0, True),))

    async def _on_connect(self) -> None:
        self.outbox.requeue()
        await self.mqtt.publish(self.topic_status, self.status_payload(), 1, True)
        self._wake.set()
        print("mqtt: connected (boot %d)" % self.boot)

    def _on_down(self) -> None:
        self.outbox.requeue()

    def _on_ack(self, mid: int) -> None:
        self.outbox.ack(mid)
        self._wake.set()


def topic_prefix(cfg: dict) -> str:
    """``{prefix}/{site}/{device}/`` (ARCHITECTURE.md topic contract)."""
    return "%s/%s/%s/" % (cfg["mqtt.topic_prefix"], cfg["site"], cfg["device"])


def build(cfg: dict, boot: int) -> RoomApp:
    """Create hardware objects and the network layer from a validated config."""
    o2_sensor = None
    if cfg["sensors.o2.type"] == "ze03":
        uart = machine.UART(
            cfg["sensors.o2.uart"],
            baudrate=UART_BAUD,
            tx=cfg["sensors.o2.tx"],
            rx=cfg["sensors.o2.rx"],
            timeout=0,
        )
        o2_sensor = ZE03(uart, cfg["sensors.o2.timeout_ms"])
    env_sensor = None
    if cfg["sensors.env.type"] == "bme280":
        i2c = machine.I2C(
            cfg["sensors.env.i2c"],
            scl=machine.Pin(cfg["sensors.env.scl"]),
            sda=machine.Pin(cfg["sensors.env.sda"]),
            freq=I2C_FREQ_HZ,
        )
        env_sensor = BME280(i2c, cfg["sensors.env.addr"])
    wifi = Wifi(network.WLAN(network.STA_IF), cfg["wifi.ssid"], cfg["wifi.password"])
    client = MQTTClient(
        "o2-%s-%s" % (cfg["site"], cfg["device"]),
        cfg["mqtt.host"],
        cfg["mqtt.port"],
        cfg["mqtt.keepalive_s"],
        cfg["mqtt.username"],
        cfg["mqtt.password"],
        (topic_prefix(cfg) + "status", OFFLINE, 1, True),
        cfg["mqtt.connect_timeout_s"],
    )
    return RoomApp(cfg, boot, o2_sensor, env_sensor, client, wifi, Clock())


def main(config_path: str = "/config.json") -> None:
    """Board entry point (called from /main.py)."""
    try:
        cfg = config.load(config_path)
        if cfg["kind"] != "room":
            raise config.ConfigError("kind: %r is not supported by this firmware yet" % cfg["kind"])
    except config.ConfigError as e:
        # No crash loop on a bad config: say why on the console and stay idle.
        print("config error:", e)
        return
    boot = state.next_boot()
    print("o2chain firmware %s boot %d\n%s" % (FW_VERSION, boot, config.describe(cfg)))
    app = build(cfg, boot)
    try:
        asyncio.run(app.run())
    except KeyboardInterrupt:
        print("stopping")
        app.shutdown()
