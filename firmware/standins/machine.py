# Stand-in for the ESP32 `machine` module (test only, never shipped). See README.md.
import io
import json
import select
import sys
import termios

SIM_FILE = "/standins/sim.json"
_MP_STREAM_POLL = 3
_MP_STREAM_GET_FILENO = 10  # lets select.poll use the pty's fd: no busy polling


def _sim():
    with open(SIM_FILE) as f:
        return json.load(f)


class Pin:
    IN = 1
    OUT = 3
    PULL_UP = 1

    def __init__(self, pin_id, mode=-1, pull=-1, value=None):
        self.id = pin_id
        self._value = value or 0

    def value(self, v=None):
        if v is None:
            return self._value
        self._value = v

    def on(self):
        self._value = 1

    def off(self):
        self._value = 0


class UART(io.IOBase):
    """UART on a pseudo-terminal from sim.json ``uart[id]``; non-blocking like timeout=0."""

    def __init__(self, uart_id, baudrate=9600, tx=None, rx=None, timeout=0, **kw):
        path = _sim()["uart"][str(uart_id)]
        self._f = open(path, "r+b")
        fd = self._f.fileno()
        attr = termios.tcgetattr(fd)
        attr[6][6] = 0  # VMIN: read() returns what is there, never blocks
        attr[6][5] = 0  # VTIME
        termios.tcsetattr(fd, termios.TCSANOW, attr)
        self._poll = select.poll()
        self._poll.register(self._f, select.POLLIN)

    def any(self):
        return 1 if self._poll.poll(0) else 0

    def read(self, n=-1):
        data = self._f.read(n if n > 0 else 256)
        return data if data else None

    def readinto(self, buf, n=-1):
        if not self._poll.poll(0):
            return None
        return self._f.readinto(buf)

    def write(self, buf):
        return self._f.write(buf)

    def ioctl(self, req, arg):
        if req == _MP_STREAM_GET_FILENO:
            return self._f.fileno()
        if req == _MP_STREAM_POLL:
            ready = select.POLLOUT & arg
            if arg & select.POLLIN and self._poll.poll(0):
                ready |= select.POLLIN
            return ready
        return 0

    def deinit(self):
        self._f.close()


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


def soft_reset():
    reset()


def unique_id():
    return b"\x02\x00\x00\xb0\x07\x01"


def freq(hz=None):
    return 240000000


def reset_cause():
    return 1  # PWRON_RESET


PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
SOFT_RESET = 5


def idle():
    pass
