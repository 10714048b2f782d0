"""Wiring: hardware objects and the network layer from a validated config (second start-up
phase, after ``o2.start``). Dropped from the heap by ``app.run`` once the board is built.

Imports nothing of the application (``o2.app`` passes its ``Board`` class to :func:`build`):
safe mode uses :func:`make_mqtt` and :func:`reset_cause` without loading the board's code.
"""

import gc
import time

import machine
import network
from micropython import const

_UART_BAUD = const(9600)  # ZE03, Gasboard, LuminOx, MH-Z19: 9600 8N1 (datasheets)
_I2C_FREQ_HZ = const(100000)
# machine.reset_cause() 1..6, one string constant (one qstr) instead of six.
_RESET_CAUSES = const("power_on hard watchdog deepsleep soft brownout")


def ca_der(path: str) -> bytes:
    """The pinned CA certificate as DER. Mbed TLS in MicroPython rejects a PEM file read
    as-is ("invalid cert": it wants PEM NUL-terminated), so PEM is decoded here."""
    with open(path, "rb") as f:
        data = f.read()
    begin = data.find(b"-----BEGIN CERTIFICATE-----")
    if begin < 0:
        return data  # already DER
    end = data.find(b"-----END CERTIFICATE-----", begin)
    if end < 0:
        raise ValueError("%s: truncated PEM" % path)
    import binascii

    body = data[begin + 27 : end].replace(b"\r", b"").replace(b"\n", b"")
    return binascii.a2b_base64(body)


def make_mqtt(cfg: dict):
    from o2 import OFFLINE, topic_prefix
    from o2.mqtt import MQTTClient

    ctx = None
    if cfg["mqtt.tls.ca_file"]:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = ssl.CERT_REQUIRED  # type: ignore[attr-defined]  # in MicroPython
        ctx.load_verify_locations(cadata=ca_der(cfg["mqtt.tls.ca_file"]))
    return MQTTClient(
        "o2-%s-%s" % (cfg["site"], cfg["device"]),
        cfg["mqtt.host"],
        cfg["mqtt.port"],
        cfg["mqtt.keepalive_s"],
        cfg["mqtt.username"],
        cfg["mqtt.password"],
        (topic_prefix(cfg) + "status", OFFLINE, 1, True),
        cfg["mqtt.connect_timeout_s"],
        ctx,
        cfg["mqtt.tls.server_hostname"],
        cfg["mqtt.backoff_max_s"],
    )


def _uart(cfg: dict, sensor: str):
    # The UART of sensors.<sensor> (9600 8N1 for every UART sensor); reads never block.
    key = "sensors." + sensor + "."
    return machine.UART(
        cfg[key + "uart"], baudrate=_UART_BAUD, tx=cfg[key + "tx"], rx=cfg[key + "rx"], timeout=0
    )


def _i2c(cfg: dict, bus: int):
    # I2C bus ``bus`` on the environment sensor's pins (an ADS1115 O2 cell shares them).
    return machine.I2C(
        bus,
        scl=machine.Pin(cfg["sensors.env.scl"]),
        sda=machine.Pin(cfg["sensors.env.sda"]),
        freq=_I2C_FREQ_HZ,
    )


def make_sensor(cfg: dict):
    kind = cfg["sensors.o2.type"]
    if kind == "none":
        return None
    if kind in ("ze03", "gasboard", "luminox"):
        uart = _uart(cfg, "o2")
        if kind == "ze03":
            from o2.ze03 import ZE03

            return ZE03(uart, cfg["sensors.o2.timeout_ms"])
        if kind == "gasboard":
            from o2.gasboard import Gasboard

            return Gasboard(
                uart,
                cfg["sensors.o2.timeout_ms"],
                cfg["sensors.o2.flow_scale"],
                cfg["sensors.o2.mode"],
                time,
            )
        from o2.luminox import LuminOx

        return LuminOx(uart, cfg["sensors.o2.timeout_ms"])
    if kind == "ads1115":
        from o2.ads1115 import ADS1115Cell

        return ADS1115Cell(_i2c(cfg, cfg["sensors.o2.i2c"]), cfg["sensors.o2.addr"])
    raise ValueError("sensors.o2.type: %r is not supported by this build" % kind)


def make_co2(cfg: dict):
    if cfg["kind"] != "room" or cfg["sensors.co2.type"] != "mhz19":
        return None
    from o2.mhz19 import MHZ19

    return MHZ19(_uart(cfg, "co2"))


def make_env(cfg: dict):
    if cfg["kind"] != "room" or cfg["sensors.env.type"] != "bme280":
        return None
    from o2.bme280 import BME280

    return BME280(_i2c(cfg, cfg["sensors.env.i2c"]), cfg["sensors.env.addr"])


def make_pin(n: int, cfg: dict):
    if n < 0:
        return None
    return machine.Pin(n, machine.Pin.OUT, value=0 if cfg["alarm.active_high"] else 1)


def make_wdt(cfg: dict):
    if not cfg["wdt_timeout_s"]:
        return None
    return lambda: machine.WDT(timeout=int(cfg["wdt_timeout_s"] * 1000))


def reset_cause() -> str:
    try:
        return _RESET_CAUSES.split()[machine.reset_cause() - 1]
    except Exception:  # noqa: BLE001
        return "unknown"


def build(make_board, cfg: dict, boot, spool, batch=None):
    """Create hardware objects and the network layer from a validated config, and the board
    from them: ``make_board`` is ``o2.app.Board``."""
    from o2.clock import Clock
    from o2.net import Wifi

    wifi = Wifi(network.WLAN(network.STA_IF), cfg["wifi.ssid"], cfg["wifi.password"])
    return make_board(
        cfg,
        boot,
        make_sensor(cfg),
        make_env(cfg),
        make_mqtt(cfg),
        wifi,
        Clock(),
        spool,
        (make_pin(cfg["alarm.pin"], cfg), make_pin(cfg["alarm.warn_pin"], cfg)),
        make_wdt(cfg),
        reset_cause(),
        batch,
        make_co2(cfg),
    )


def load_modules(cfg: dict) -> None:
    """Import every module the board will run (``o2.app``, the biggest, is loaded already:
    main.py imported it), collecting in between, before any long-lived object exists: code
    then packs at the bottom of the heap instead of being interleaved with objects (a
    fragmented heap fails large allocations long before it is full -- measured on the 110K
    run)."""
    names = []
    if cfg["sensors.o2.type"] != "none":
        names.append("o2." + cfg["sensors.o2.type"])
    if cfg["kind"] == "room" and cfg["sensors.env.type"] == "bme280":
        names.append("o2.bme280")
    if cfg["kind"] == "room" and cfg["sensors.co2.type"] != "none":
        names.append("o2." + cfg["sensors.co2.type"])
    for name in names:
        __import__(name)
        gc.collect()
    import asyncio

    # asyncio loads its submodules on first use (funcs, event, stream): load them now too.
    for attr in ("Event", "wait_for", "StreamReader", "open_connection"):
        getattr(asyncio, attr)
    gc.collect()
