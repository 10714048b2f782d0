# Stand-in for the ESP32 `machine` module (test only, never shipped). See README.md.
import json
import sys
import termios
import time

# Only what the firmware uses: every name here is a qstr in the emulated board's heap.
SIM_FILE = "/standins/sim.json"


def _sim():
    with open(SIM_FILE) as f:
        return json.load(f)


class Pin:
    """A GPIO. Output changes are printed with the host's wall clock, so a test can measure
    when the buzzer went on: ``pin 25=1 t=1732400000.123``."""

    OUT = 3

    def __init__(self, pin_id, mode=-1, pull=-1, value=None):
        self.id = pin_id
        self._value = -1
        self.value(value or 0)

    def value(self, v=None):
        if v is None:
            return self._value
        v = 1 if v else 0
        if v != self._value:
            self._value = v
            print("pin %s=%d t=%.3f" % (self.id, v, time.time()))

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


class WDT:
    """Records feeds (the unix port cannot reset itself from a timer)."""

    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self.fed = 0
        print("wdt: armed %d ms" % timeout)

    def feed(self):
        self.fed += 1


def UART(uart_id, baudrate=9600, tx=None, rx=None, timeout=0, **kw):  # noqa: N802
    """A UART on the pseudo-terminal named in sim.json ``uart[id]``: the pty file itself,
    made non-blocking like ``timeout=0`` (VMIN = VTIME = 0: read() returns what is there,
    b"" if nothing). asyncio polls the file directly. A function, not a class: the emulated
    board's heap should hold what a real board's does, and a real UART costs it nothing."""
    f = open(_sim()["uart"][str(uart_id)], "r+b")
    attr = termios.tcgetattr(f.fileno())
    attr[6][6] = 0  # VMIN
    attr[6][5] = 0  # VTIME
    termios.tcsetattr(f.fileno(), termios.TCSANOW, attr)
    return f


class I2C:
    """I2C bus with the devices listed in sim.json (BME280 register models)."""

    def __init__(self, bus_id, scl=None, sda=None, freq=400000, **kw):
        from bme280_model import BME280Model

        self._devices = {}
        for addr in _sim().get("bme280", {}):
            self._devices[int(addr)] = BME280Model(int(addr), SIM_FILE)

    def scan(self):
        return sorted(self._devices)

    def _dev(self, addr):
        dev = self._devices.get(addr)
        if dev is None:
            raise OSError(19)  # ENODEV, as the ESP32 port reports a missing ACK
        return dev

    def readfrom_mem(self, addr, reg, n, addrsize=8):
        return bytes(self._dev(addr).read(reg, n))

    def readfrom_mem_into(self, addr, reg, buf, addrsize=8):
        buf[:] = self._dev(addr).read(reg, len(buf))

    def writeto_mem(self, addr, reg, buf, addrsize=8):
        self._dev(addr).write(reg, buf)


def reset():
    print("machine.reset()")
    sys.exit(75)


def reset_cause():
    try:
        return _sim().get("reset_cause", 1)  # PWRON_RESET unless the runner says otherwise
    except OSError:
        return 1
