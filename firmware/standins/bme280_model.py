# BME280 register model for the I2C stand-in (test only). Answers like the chip in forced
# mode: a write of ctrl_meas "measures" -- the raw ADC codes come from sim.json, where the
# runner (o2chain/firmware_runner.py) computed them on the host by inverting the firmware's
# Bosch compensation for the wanted pressure / temperature / humidity. Nothing heavy runs
# here, so the emulated board's heap holds only what a real board would.
import json

from micropython import const

_REG_ID = const(0xD0)
_REG_CALIB_A = const(0x88)
_REG_CALIB_B = const(0xE1)
_REG_STATUS = const(0xF3)
_REG_CTRL_MEAS = const(0xF4)
_REG_DATA = const(0xF7)


class BME280Model:
    def __init__(self, addr, sim_file):
        self.addr = addr
        self.sim_file = sim_file
        self.regs = bytearray(256)
        dev = self._dev()
        self.regs[_REG_ID] = dev["chip_id"]
        cal_a, cal_b = dev["cal_a"], dev["cal_b"]
        self.regs[_REG_CALIB_A : _REG_CALIB_A + len(cal_a)] = bytes(cal_a)
        self.regs[_REG_CALIB_B : _REG_CALIB_B + len(cal_b)] = bytes(cal_b)

    def _dev(self):
        with open(self.sim_file) as f:
            return json.load(f)["bme280"][str(self.addr)]

    def read(self, reg, n):
        return self.regs[reg : reg + n]

    def write(self, reg, data):
        for i in range(len(data)):
            self.regs[reg + i] = data[i]
        if reg == _REG_CTRL_MEAS and data[0] & 0x03:
            raw = self._dev()["raw"]  # [adc_p, adc_t, adc_h]
            self.regs[_REG_DATA : _REG_DATA + 8] = bytes(raw)
            self.regs[_REG_STATUS] = 0  # measurement done
