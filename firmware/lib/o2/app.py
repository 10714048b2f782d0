"""Board application: sample + alarm -> spool -> MQTT, as independent asyncio tasks.

- ``sample_loop`` (the healthy main loop): reads the O2 / purity sensor every
  ``alarm.sample_s``, runs the local alarm on every sample and drives the buzzer / LED pins at
  once, takes a telemetry reading every ``interval_s`` and appends it to the flash spool, feeds
  the watchdog. It never awaits the network: alarm events and readings are queued.
- ``send_loop`` (network side): publishes queued alarm events, command acks, the retained
  status / health message and spooled readings (oldest first, JSON-array batches, one batch in
  flight, released from the spool only on its PUBACK).
- ``net.Wifi`` and ``mqtt.MQTTClient`` own connectivity and say up / down through events.
"""

import asyncio
import gc
import json
import sys
import time

import machine
from micropython import const

from o2 import FW_VERSION, OFFLINE, alarm, command_id, telemetry, topic_prefix
from o2.clock import Clock
from o2.mqtt import MQTTClient
from o2.net import Wifi, keep_time
from o2.spool import Spool
from o2core import mqtt_codec as codec
from o2core import oxygen

_I2C_FREQ_HZ = const(100000)
_Q_O2_MISSING = const(0x03)  # timeout | checksum: no value (telemetry "quality" bits, README)
_Q_RANGE = const(0x04)
_Q_BARO_FALLBACK = const(0x20)  # ISA pressure of the site used: no (plausible) barometer value
_Q_BARO_BAD = const(0x80)  # the barometer's value is outside the site's band (ignored)
_Q_UNCALIBRATED = const(0x100)  # galvanic cell on its factory (sea-level) calibration
_Q_WARMUP = const(0x200)  # concentrator warming up: purity alarms held
_Q_CO2 = const(0x400)  # CO2 sensor: no reply / bad frame
_FACTORY_CAL_KPA = const(101.325)  # galvanic cells leave the factory calibrated at sea level
# The ZE03 reads 0-25 % of sea-level partial pressure: a raw reading there is a lower bound.
_ZE03_FULL_SCALE_PCT = const(25.0)
_MAX_ALARM_QUEUE = const(32)
_FLAG_BARO = const(2)  # alarm.Alarms.flags indices
_FLAG_WARMUP = const(3)
_I_CO2 = const(6)  # telemetry.ROOM_FIELDS index of co2_ppm
_MAX_COMMANDS = const(4)
# Free heap (after a collection) below which commands are answered "out of memory" without
# loading them: loading costs ~19 KB on the 64-bit unix port (code, config schema, one more
# qstr pool), about half on an ESP32 (firmware/README.md "Memory").
_CMD_MIN_FREE_B = const(24576)


def load_calibration():
    """The stored galvanic-cell calibration, or None (factory calibration) without importing
    its code."""
    try:
        import os

        os.stat("/calibration.json")
    except OSError:
        return None
    from o2.calibration import Calibration

    cal = Calibration()
    return cal if cal.load() else None


class Board:
    """One board (room or concentrator). Hardware, network and clock are passed in."""

    def __init__(
        self,
        cfg: dict,
        boot,
        sensor,
        env_sensor,
        mqtt: MQTTClient,
        wifi: Wifi,
        clock: Clock,
        spool: Spool,
        pins=(None, None),
        wdt_factory=None,
        reset_cause: str = "",
        batch_buffer=None,
        co2_sensor=None,
    ) -> None:
        self.cfg = cfg
        self.boot = boot.number
        self.boot_recovered = boot.recovered
        self.seq = 0
        self.sensor = sensor
        self.env_sensor = env_sensor
        self.co2_sensor = co2_sensor
        self.mqtt = mqtt
        self.wifi = wifi
        self.clock = clock
        self.spool = spool
        self.buzzer, self.led = pins
        self._wdt_factory = wdt_factory
        self.reset_cause = reset_cause
        self.room = cfg["kind"] == "room"
        self.fields = telemetry.ROOM_FIELDS if self.room else telemetry.CONCENTRATOR_FIELDS
        # Galvanic cells (ZE03, ADS1115) measure partial pressure: always pressure-corrected.
        self.galvanic = cfg["sensors.o2.type"] in ("ze03", "ads1115")
        self.calibration = load_calibration() if self.galvanic else None  # None: factory
        prefix = topic_prefix(cfg)
        self.topic_telemetry = prefix + "telemetry"
        self.topic_status = prefix + "status"
        self.topic_alarm = prefix + "alarm"
        self.topic_cmd = prefix + "cmd"
        self.topic_ack = prefix + "cmd/ack"
        self.interval_ms = int(cfg["interval_s"] * 1000)
        self.sample_ms = min(int(cfg["alarm.sample_s"] * 1000), self.interval_ms)
        self.site_kpa = oxygen.isa_pressure_kpa(cfg["site_altitude_m"])
        self.baro_kpa = self.site_kpa  # measured if plausible, else the site's ISA pressure
        self.baro_measured = False
        self.warmup_ms = 0 if self.room else int(cfg["alarm.warmup_s"] * 1000)
        if self.room:
            rules = alarm.room_rules(self.baro_kpa, cfg)
        else:
            rules = alarm.concentrator_rules(cfg)
        self.alarms = alarm.Alarms(
            rules,
            cfg["alarm.hysteresis_pct"],
            int(cfg["alarm.on_delay_s"] * 1000),
            int(cfg["alarm.off_delay_s"] * 1000),
            int(cfg["alarm.fault_delay_s"] * 1000),
            time.ticks_diff,
        )
        self._values: list = [None] * len(self.fields)  # reused every reading
        self._value = None  # newest O2 / purity sample (corrected) and its quality
        self._raw = None  # the same sample as the sensor reported it
        self._quality = 0
        self._alarm_out: list = []  # encoded alarm events waiting for the network
        self.alarm_events_dropped = 0
        self._cmds: list = []
        self.cmds_dropped = 0
        self._wake = asyncio.Event()
        self._acked = asyncio.Event()
        self._ack_mid = 0
        self._ack_ok = False
        self._started_ms = time.ticks_ms()
        self._stable = False
        self._reboot_at = time.ticks_ms()
        self._reboot_due = False
        self.samples = 0
        room = codec.publish_header_size(self.topic_telemetry, 1)
        self._room = room
        size = room + cfg["spool.batch_kb"] * 1024
        if batch_buffer is None or len(batch_buffer) < size:
            batch_buffer = bytearray(size)
        self._batch = batch_buffer  # preallocated once: every batch is built in place
        mqtt.on_connect = self._on_connect
        mqtt.on_down = self._on_down
        mqtt.on_message = self._on_message

    # -- tasks -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run forever: WiFi, SNTP, MQTT, the sending task and the sampling loop."""
        if self.sensor is not None:
            await self.sensor.init()
        if self.co2_sensor is not None:
            await self.co2_sensor.init()
        if self.warmup_ms:
            print("warm-up: purity alarms held for %d s" % (self.warmup_ms // 1000))
            self.alarms.flag(_FLAG_WARMUP, True, 0.0, self.warmup_ms / 1000, time.ticks_ms())
            self._alarm_changed()
        self._drive_pins()
        if self.cfg["mqtt.host"] and self.cfg["site"] and self.cfg["device"]:
            asyncio.create_task(self.wifi.run())
            if self.cfg["ntp.host"]:
                asyncio.create_task(
                    keep_time(self.wifi, self.clock, self.cfg["ntp.host"], self.cfg["ntp.port"])
                )
            asyncio.create_task(self.mqtt.run(self.wifi.up))
            asyncio.create_task(self.send_loop())
        await self.sample_loop()

    async def sample_loop(self) -> None:
        """Sample + alarm every sample_ms; a reading every interval_ms; feed the watchdog."""
        wdt = self._wdt_factory() if self._wdt_factory is not None else None
        now = time.ticks_ms()
        next_sample = now
        # The first reading one interval after boot: the alarm samples at once, telemetry
        # gives WiFi and SNTP that long to put a real time on it (ts 0 otherwise).
        next_reading = time.ticks_add(now, self.interval_ms)
        while True:
            t0 = time.ticks_us()
            await self.sample_once()
            now = time.ticks_ms()
            # cfg["config_error"]: a config error (o2.config.salvage): the local alarm runs,
            # no telemetry; the status says config_error with the reason. (Not an attribute:
            # one more would double the Board's attribute table; a key of more than 10
            # characters: not one more qstr for good.)
            if time.ticks_diff(now, next_reading) >= 0 and "config_error" not in self.cfg:
                await self.reading_once()
                busy_us = time.ticks_diff(time.ticks_us(), t0)
                next_reading = time.ticks_add(next_reading, self.interval_ms)
                if time.ticks_diff(next_reading, now) < 0:
                    next_reading = now  # no catch-up burst after a stall
                gc.collect()  # a steady heap: collect at a known quiet point
                print(
                    "reading seq=%d quality=%d queued=%d dropped=%d free=%d busy_us=%d"
                    % (
                        self.seq,
                        self._quality,
                        self.spool.pending,
                        self.spool.dropped,
                        gc.mem_free(),
                        busy_us,
                    )
                )
            if wdt is not None:
                wdt.feed()  # only from here: a stuck sampling loop resets the board
            self._housekeeping(now)
            next_sample = time.ticks_add(next_sample, self.sample_ms)
            delay = time.ticks_diff(next_sample, time.ticks_ms())
            if delay < 0:
                next_sample = time.ticks_ms()
                delay = 0
            await asyncio.sleep_ms(delay)

    async def sample_once(self) -> None:
        """Read the O2 / purity sensor and run the alarm on it (no network, no flash)."""
        self.samples += 1
        value = None
        quality = 0
        if self.sensor is not None:
            value, quality = await self.sensor.read()
            if quality & _Q_O2_MISSING:
                value = None
        if value is not None and not -1000 < value < 1000:  # NaN, inf, garbage: no value
            value = None
            quality |= _Q_RANGE
        raw = value
        over = False
        if value is not None and raw is not None and self.galvanic:
            # o2_true = reading * P_cal / P_now (docs/domain.md "Fraction and partial
            # pressure"); baro_kpa is the measured pressure if plausible, else the site's ISA.
            if self.calibration is None:
                value = value * _FACTORY_CAL_KPA / self.baro_kpa
                quality |= _Q_UNCALIBRATED
            else:
                value = self.calibration.apply(value, self.baro_kpa)
            # Full scale of the ZE03 is judged on what the module itself reports: the true
            # value is above, unknown. Flag it (quality) and warn (alarm.o2_over_range).
            over = self.cfg["sensors.o2.type"] == "ze03" and raw >= _ZE03_FULL_SCALE_PCT - 0.05
            if over:
                quality |= _Q_RANGE
        now = time.ticks_ms()
        changed = 0
        held = False
        if self.warmup_ms:
            if time.ticks_diff(now, self._started_ms) < self.warmup_ms:
                held = True
                quality |= _Q_WARMUP
            else:
                print("warm-up over: purity alarms active")
                changed = self.alarms.flag(_FLAG_WARMUP, False, 0.0, 0.0, now)
                self.warmup_ms = 0
        self._value = value
        self._raw = raw
        self._quality = quality
        if self.alarms.update(value, now, over, held) or changed:
            self._alarm_changed()

    def _alarm_changed(self) -> None:
        self._drive_pins()
        events = self.alarms.events
        while events:
            name, severity, what, value, threshold = events.pop(0)
            print(
                "alarm: %s %s %s value=%.2f threshold=%.2f"
                % (what, name, severity, value, threshold)
            )
            doc = (
                '{"rule":"%s","severity":"%s","state":"%s","value":%.2f,"threshold":%.2f,'
                '"boot":%d,"seq":%d,"ts":%d,"active":%s}'
                % (
                    name,
                    severity,
                    what,
                    value,
                    threshold,
                    self.boot,
                    self.seq,
                    self.clock.epoch_ms(),
                    json.dumps(self.alarms.active_names()),
                )
            )
            if len(self._alarm_out) >= _MAX_ALARM_QUEUE:
                self._alarm_out.pop(0)
                self.alarm_events_dropped += 1
            self._alarm_out.append(doc.encode())
        self._wake.set()

    def _drive_pins(self) -> None:
        on = 1 if self.cfg["alarm.active_high"] else 0
        if self.buzzer is not None:
            self.buzzer.value(on if self.alarms.sounding() else 1 - on)
        if self.led is not None:
            self.led.value(on if self.alarms.warning() else 1 - on)

    async def reading_once(self) -> None:
        """Environment sensor, derived values, one telemetry reading into the spool."""
        values = self._values
        for i in range(len(values)):
            values[i] = None
        quality = self._quality
        value = self._value
        if self.room:
            p_kpa = None
            if self.env_sensor is not None:
                p_pa, temp_c, rh, q = await self.env_sensor.read()
                quality |= q
                if p_pa is not None:
                    p_kpa = p_pa / 1000
                values[telemetry.I_TEMP] = temp_c
                values[telemetry.I_RH] = rh
            elif self.cfg["sensors.o2.type"] == "luminox":
                # The LuminOx carries its own barometer and thermometer (docs/domain.md
                # "Fraction and partial pressure"); None after a bad line.
                p_kpa = self.sensor.baro_kpa
                values[telemetry.I_TEMP] = self.sensor.temp_c
            quality |= self._set_baro(p_kpa)
            if self.baro_measured:
                values[telemetry.I_BARO] = self.baro_kpa
            if self.co2_sensor is not None:
                ppm, q = await self.co2_sensor.read()
                values[_I_CO2] = ppm
                if q:
                    quality |= _Q_CO2
            values[telemetry.I_O2] = value
            if value is not None and 0 < value <= 100:
                pb = self.baro_kpa
                values[telemetry.I_PPO2] = oxygen.ppo2_kpa(value, pb)
                values[telemetry.I_EQ_ALT] = oxygen.equivalent_altitude_m(
                    value, pb, self.cfg["eq_alt_definition"]
                )
        else:
            values[telemetry.I_PURITY] = value
            if value is not None:
                values[telemetry.I_FLOW] = self.sensor.flow_lpm
                values[telemetry.I_CTEMP] = self.sensor.temp_c
        self.seq += 1
        payload = telemetry.encode(
            self.boot, self.seq, self.clock.epoch_ms(), values, quality, self.fields
        )
        try:
            self.spool.append(payload)  # flash errors are counted inside; never stop sampling
        except ValueError as e:  # SpoolError: a reading that cannot be a record (a bug)
            print("spool: %r" % (e,))
        self._wake.set()

    def _set_baro(self, p_kpa) -> int:
        """Take a barometer value (kPa, or None) if it is plausible for the site; otherwise
        use the site's ISA pressure, and warn when a value was there but implausible.
        Returns quality bits. Never raises (0, negative, NaN, inf all end here)."""
        ok = oxygen.baro_plausible(p_kpa, self.site_kpa)
        bad = p_kpa is not None and not ok
        shown = p_kpa if bad and -1e6 < p_kpa < 1e6 else 0.0  # finite, for the alarm event
        if self.alarms.flag(_FLAG_BARO, bad, shown, self.site_kpa, time.ticks_ms()):
            self._alarm_changed()
        # NFPA thresholds follow the pressure in use: at once when the source changes
        # (barometer <-> site ISA), else every 16th reading (weather moves PB slowly).
        if ok != self.baro_measured or self.seq % 16 == 0:
            alarm.update_room_thresholds(self.alarms, p_kpa if ok else self.site_kpa, self.cfg)
        self.baro_kpa = p_kpa if ok else self.site_kpa
        self.baro_measured = ok
        if ok:
            return 0
        return _Q_BARO_FALLBACK | (_Q_BARO_BAD if bad else 0)

    def _housekeeping(self, now) -> None:
        if not self._stable and time.ticks_diff(now, self._started_ms) > int(
            self.cfg["stable_after_s"] * 1000
        ):
            self._stable = True
            mark_stable()  # not part of a crash loop any more
            print("run: stable")
        if self._reboot_due and time.ticks_diff(now, self._reboot_at) >= 0:
            print("reboot (command)")
            mark_stable()
            self.mqtt.close((codec.publish(self.topic_status, OFFLINE, 0, True),))
            machine.reset()

    async def send_loop(self) -> None:
        """Alarm events, command acks, status and spooled readings, one at a time, in order."""
        mqtt = self.mqtt
        spool = self.spool
        buf = self._batch
        room = self._room
        health_ms = int(self.cfg["health_interval_s"] * 1000)
        next_health = time.ticks_ms()
        while True:
            try:
                await mqtt.up.wait()
                if self._alarm_out:
                    if await self._publish_acked(self.topic_alarm, self._alarm_out[0]):
                        self._alarm_out.pop(0)
                    continue
                if self._cmds:
                    await self._handle_command(self._cmds.pop(0))
                    continue
                now = time.ticks_ms()
                if time.ticks_diff(now, next_health) >= 0:
                    next_health = time.ticks_add(now, health_ms)
                    await self._guarded(
                        mqtt.publish(self.topic_status, self.status_payload(), 1, True)
                    )
                    continue
                end = spool.peek_batch(buf, room, self.cfg["spool.batch_max"])
                if end == room:
                    self._wake.clear()
                    try:
                        wait_ms = max(1, time.ticks_diff(next_health, time.ticks_ms()))
                        await asyncio.wait_for_ms(self._wake.wait(), wait_ms)
                    except asyncio.TimeoutError:
                        pass
                    continue
                begin = spool.batch_begin
                mid = mqtt.next_mid()
                start = codec.publish_header_into(
                    buf, begin, self.topic_telemetry, end - begin, 1, False, mid
                )
                if await self._send_acked(memoryview(buf)[start:end], mid):
                    spool.release()
            except Exception as e:  # noqa: BLE001 -- e.g. MemoryError: retry, never die
                # The sender is the only way out for readings and alarm events: a failure
                # in one step (a transient allocation, a bad payload) must not end it.
                print("send: %r" % (e,))
                await asyncio.sleep_ms(100)

    async def _guarded(self, coro) -> bool:
        # A write that cannot complete (frozen broker, full socket buffer) must not hang the
        # sender: bounded by the keep-alive, after which the connection is dropped.
        try:
            await asyncio.wait_for(coro, self.cfg["mqtt.keepalive_s"])
            return True
        except Exception as e:  # noqa: BLE001 -- OSError, timeout: reconnect
            print("send: %r" % (e,))
            self.mqtt.abort()
            return False

    async def _publish_acked(self, topic: str, payload) -> bool:
        mid = self.mqtt.next_mid()
        return await self._send_acked(codec.publish(topic, payload, 1, False, mid), mid)

    async def _send_acked(self, packet, mid: int) -> bool:
        """Send a QoS 1 packet and wait for its PUBACK (True) or the connection's end."""
        self._acked.clear()
        self._ack_mid = mid
        self._ack_ok = False
        if not await self._guarded(self.mqtt.send_packet(packet, mid, self._on_ack)):
            return False
        try:
            await asyncio.wait_for(self._acked.wait(), self.cfg["mqtt.keepalive_s"])
        except asyncio.TimeoutError:
            print("send: no PUBACK for %d" % mid)
            self.mqtt.abort()
            return False
        return self._ack_ok

    def _on_ack(self, mid: int) -> None:
        if mid == self._ack_mid:
            self._ack_ok = True
            self._acked.set()

    def status_payload(self) -> str:
        """Retained status with the health fields the gateway stores in ``device_health``.

        Formatted in one step (no dict, no bytes copy): the smallest transient allocation,
        taken every health period next to the running board."""
        extra = ""
        if "config_error" in self.cfg:
            extra += ',"error":%s,"local_alarm":"armed"' % json.dumps(self.cfg["config_error"])
        if self.boot_recovered:
            extra += ',"boot_recovered":' + json.dumps(self.boot_recovered)
        if self.warmup_ms:
            extra += ',"warming_up":true'
        if not self.cfg["command_key"]:
            extra += ',"commands":"disabled: no command_key"'
        text = (
            '{"state":"online","fw":"%s","boot":%d,"kind":"%s","uptime_s":%d,'
            '"heap_free_b":%d,"rssi_dbm":%s,"buffered":%d,"dropped":%d,"spool_torn":%d,'
            '"reset_cause":"%s","alarms":%s,"ts":%d%s}'
        ) % (
            FW_VERSION,
            self.boot,
            self.cfg["kind"],
            time.ticks_diff(time.ticks_ms(), self._started_ms) // 1000,
            gc.mem_free(),
            json.dumps(self.wifi.rssi_dbm()),
            self.spool.pending,
            self.spool.dropped,
            self.spool.torn,
            self.reset_cause,
            json.dumps(self.alarms.active_names()),
            self.clock.epoch_ms(),
            extra,
        )
        if "config_error" in self.cfg:
            text = text.replace('{"state":"online"', '{"state":"config_error"', 1)
        return text

    def shutdown(self) -> None:
        """Orderly stop (KeyboardInterrupt): say offline ourselves, then DISCONNECT.

        A clean DISCONNECT makes the broker discard the will, so the retained offline status
        must be published explicitly.
        """
        mark_stable()
        self.mqtt.close((codec.publish(self.topic_status, OFFLINE, 0, True),))

    async def _on_connect(self) -> None:
        await self.mqtt.subscribe(self.topic_cmd, 1)
        await self.mqtt.publish(self.topic_status, self.status_payload(), 1, True)
        self._wake.set()
        print("mqtt: connected (boot %d, %d buffered)" % (self.boot, self.spool.pending))

    def _on_down(self) -> None:
        self._ack_ok = False
        self._acked.set()  # the sender stops waiting for a PUBACK that cannot come

    def _on_message(self, topic, payload, retain) -> None:
        if topic != self.topic_cmd.encode():
            return
        if len(self._cmds) >= _MAX_COMMANDS:
            self.cmds_dropped += 1
            return
        self._cmds.append((payload, retain))
        self._wake.set()

    async def _handle_command(self, message) -> None:
        # Loaded on demand and dropped afterwards: commands need the config schema, which
        # start-up dropped from the heap. A command that cannot be handled (even for lack of
        # memory) gets an error ack; the sender task never dies of it. Loading them interns
        # their names for good (the qstr pool only grows): with too little heap left they
        # are not loaded at all, so a command can never starve the alarm loop.
        gc.collect()
        free = gc.mem_free()
        try:
            if free < _CMD_MIN_FREE_B:
                raise MemoryError
            from o2 import commands

            ack = commands.handle(self, message[0], message[1])
        except MemoryError:
            ack = json.dumps(
                {
                    "id": command_id(message[0]),
                    "ok": False,
                    "error": "out of memory: %d bytes free, commands need %d"
                    % (free, _CMD_MIN_FREE_B),
                }
            )
        for name in ("commands", "config", "auth"):
            forget_module(name)
        await self._publish_acked(self.topic_ack, ack)


def mark_stable() -> None:
    """The run was not part of a crash loop (o2.state, loaded only for this)."""
    from o2 import state

    state.mark_stable()
    forget_module("state")


def forget_module(name: str) -> None:
    """Drop ``o2.<name>`` from the heap (it is imported again when next needed)."""
    sys.modules.pop("o2." + name, None)
    package = sys.modules["o2"]
    if hasattr(package, name):
        delattr(package, name)
    gc.collect()


def run(ready) -> None:
    """Build the board from ``o2.start.prepare``'s ``(cfg, boot, spool)`` and run it until
    Ctrl-C (main.py). The start-up and wiring code is dropped from the heap before it runs."""
    forget_module("start")
    forget_module("state")
    from o2 import wiring

    cfg, boot, spool, batch = ready
    if len(batch) < 128 + cfg["spool.batch_kb"] * 1024:
        batch = bytearray(128 + cfg["spool.batch_kb"] * 1024)
    wiring.load_modules(cfg)
    try:
        board = wiring.build(Board, cfg, boot, spool, batch)
    except Exception as e:  # noqa: BLE001 -- a pin, UART or CA file the hardware refuses
        print("config error: wiring: %r" % (e,))
        from o2.safemode import safe_mode

        asyncio.run(safe_mode(cfg, "config error: wiring: %r" % (e,)))
        return
    del wiring, ready
    forget_module("wiring")
    print("reset cause: %s; heap free %d" % (board.reset_cause, gc.mem_free()))
    try:
        asyncio.run(board.run())
    except KeyboardInterrupt:
        print("stopping")
        board.shutdown()
    except Exception as e:  # noqa: BLE001 -- a bug: reset (counted by the crash-loop guard)
        print("crash: %r" % (e,))
        sys.print_exception(e)
        machine.reset()
