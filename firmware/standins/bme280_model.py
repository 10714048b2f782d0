# BME280 register model for the I2C stand-in (test only). Answers like the chip in forced
# mode: a write of ctrl_meas starts a "measurement" that encodes the target pressure,
# temperature and humidity from sim.json into raw ADC values, by inverting the firmware's own
# Bosch compensation (monotonic in each raw value, so bisection finds the closest code).
import json

from o2 import bme280 as b

# Calibration: T and P words from the Bosch BMP280 datasheet example (section 3.12);
# H words are typical of production parts.
CAL_A = bytes(
    (
        0x70,
        0x6B,
        0x43,
        0x67,
        0x18,
        0xFC,  # T1 27504, T2 26435, T3 -1000
        0x7D,
        0x8E,
        0x43,
        0xD6,
        0xD0,
        0x0B,
        0x27,
        0x0B,
        0x8C,
        0x00,
        0xF9,
        0xFF,  # P1..P4,P5,P6
        0x8C,
        0x3C,
        0xF8,
        0xC6,
        0x70,
        0x17,  # P7 15500, P8 -14600, P9 6000
        0x00,
        0x4B,  # 0xA0 unused, H1 75
    )
)
CAL_B = bytes((0x6A, 0x01, 0x00, 0x13, 0x29, 0x03, 0x1E))  # H2 362, H3 0, H4 313, H5 50, H6 30


def _bisect(f, lo, hi, target, increasing):
    # Largest/smallest code whose value is closest to target, for a monotonic f on [lo, hi).
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (f(mid) <= target) == increasing:
            lo = mid
        else:
            hi = mid
    return lo


class BME280Model:
    def __init__(self, addr, sim_file):
        self.addr = addr
        self.sim_file = sim_file
        self.regs = bytearray(256)
        self.regs[b.REG_ID] = b.CHIP_ID
        self.regs[b.REG_CALIB_A : b.REG_CALIB_A + len(CAL_A)] = CAL_A
        self.regs[b.REG_CALIB_B : b.REG_CALIB_B + len(CAL_B)] = CAL_B
        self.cal = b.parse_calibration(CAL_A, CAL_B)

    def read(self, reg, n):
        return self.regs[reg : reg + n]

    def write(self, reg, data):
        for i in range(len(data)):
            self.regs[reg + i] = data[i]
        if reg == b.REG_CTRL_MEAS and data[0] & 0x03:
            self._measure()

    def _measure(self):
        with open(self.sim_file) as f:
            env = json.load(f)["bme280"][str(self.addr)]
        cal = self.cal
        adc_t = _bisect(
            lambda a: b.temperature_c(b.t_fine(cal, a)), 0, 1 << 20, env["temp_c"], True
        )
        tf = b.t_fine(cal, adc_t)
        adc_p = _bisect(
            lambda a: b.pressure_pa(cal, tf, a), 0, 1 << 20, env["pressure_kpa"] * 1000, False
        )
        adc_h = _bisect(lambda a: b.humidity_pct(cal, tf, a), 0, 1 << 16, env["rh_pct"], True)
        d = self.regs
        d[0xF7] = adc_p >> 12
        d[0xF8] = (adc_p >> 4) & 0xFF
        d[0xF9] = (adc_p & 0x0F) << 4
        d[0xFA] = adc_t >> 12
        d[0xFB] = (adc_t >> 4) & 0xFF
        d[0xFC] = (adc_t & 0x0F) << 4
        d[0xFD] = adc_h >> 8
        d[0xFE] = adc_h & 0xFF
        d[b.REG_STATUS] = 0  # measurement done
