# Stand-in for the ESP32 `machine` module (test only, never shipped). See README.md.
# Only what the firmware uses: every name here is a qstr and every line bytecode in the
# emulated board's heap, which the board's C module does not cost.
import json
import sys
import termios
import time

SIM_FILE = "/standins/sim.json"


def _sim():
    with open(SIM_FILE) as f:
        return json.load(f)


class Pin:
    """A GPIO. Output changes are printed with the host's wall clock, so a test can measure
    when the buzzer went on: ``pin 25=1 t=1732400000.123``."""

    OUT = 3

    def __init__(self, n, mode=-1, pull=-1, value=0):
        self.id = n
        self._v = -1
        self.value(value)

    def value(self, v=None):
        if v is None:
            return self._v
        v = 1 if v else 0
        if v != self._v:
            self._v = v
            print("pin %s=%d t=%.3f" % (self.id, v, time.time()))


class WDT:
    """Says it is armed (the unix port cannot reset itself from a timer); feeds are free."""

    def __init__(self, id=0, timeout=5000):
        print("wdt: armed %d ms" % timeout)

    def feed(self):
        pass


def UART(n, baudrate=9600, tx=None, rx=None, timeout=0):  # noqa: N802
    """A UART on the pseudo-terminal named in sim.json ``uart[n]``: the pty file itself,
    made non-blocking like ``timeout=0`` (VMIN = VTIME = 0: read() returns what is there,
    b"" if nothing). asyncio polls the file directly. A function, not a class: a real UART
    costs the board's heap nothing."""
    f = open(_sim()["uart"][str(n)], "r+b")
    attr = termios.tcgetattr(f.fileno())
    attr[6][6] = 0  # VMIN
    attr[6][5] = 0  # VTIME
    termios.tcsetattr(f.fileno(), termios.TCSANOW, attr)
    return f


class I2C:
    """I2C bus with the BME280 register models listed in sim.json ``bme280``: chip id,
    calibration words and raw ADC codes come from there (the runner computes the codes on the
    host by inverting the firmware's Bosch compensation). Answers like the chip in forced
    mode: a write of ctrl_meas (0xF4) "measures" -- reads the raw codes from sim.json again,
    so a test may change the world live. Any other address: ENODEV, as the ESP32 port reports
    a missing ACK."""

    def __init__(self, n, scl=None, sda=None, freq=400000):
        self._regs = {}
        sim = _sim()
        # ADS1115 models: the conversion register answers sim.json "ads1115"[addr] (counts),
        # read again at every conversion so a test may change the cell's voltage live.
        self._ads = [int(a) for a in sim.get("ads1115", {})]
        for addr, dev in sim.get("bme280", {}).items():
            regs = bytearray(256)
            regs[0xD0] = dev["chip_id"]
            regs[0x88 : 0x88 + len(dev["cal_a"])] = bytes(dev["cal_a"])
            regs[0xE1 : 0xE1 + len(dev["cal_b"])] = bytes(dev["cal_b"])
            self._regs[int(addr)] = regs

    def _dev(self, addr):
        regs = self._regs.get(addr)
        if regs is None:
            raise OSError(19)  # ENODEV
        return regs

    def readfrom_mem(self, addr, reg, n):
        return bytes(self._dev(addr)[reg : reg + n])

    def readfrom_mem_into(self, addr, reg, buf):
        if addr in self._ads:
            c = _sim()["ads1115"][str(addr)] & 0xFFFF
            buf[0] = c >> 8
            buf[1] = c & 0xFF
            return
        buf[:] = self._dev(addr)[reg : reg + len(buf)]

    def writeto_mem(self, addr, reg, buf):
        if addr in self._ads:
            return  # config register: single-shot start
        regs = self._dev(addr)
        regs[reg : reg + len(buf)] = buf
        if reg == 0xF4 and buf[0] & 0x03:  # ctrl_meas, forced mode: measure
            regs[0xF7:0xFF] = bytes(_sim()["bme280"][str(addr)]["raw"])
            regs[0xF3] = 0  # status: measurement done


def reset():
    print("machine.reset()")
    sys.exit(75)


def reset_cause():
    try:
        return _sim().get("reset_cause", 1)  # PWRON_RESET unless the runner says otherwise
    except OSError:
        return 1
