"""Bosch BME280 pressure / temperature / humidity sensor: compensation (pure) and I2C driver.

Register map and integer compensation formulas from the Bosch BME280 datasheet
(BST-BME280-DS002, section 4.2.3 "Compensation formulas" and table 18 "Memory map"). The
integer versions are used on purpose: they give bit-exact results on the ESP32's single
precision floats and on CPython's doubles (MicroPython ints are arbitrary precision).
"""

import asyncio

try:
    from micropython import const
except ImportError:  # CPython (tests): const() is the identity

    def const(x):  # type: ignore[misc]
        return x


_ADDR_PRIMARY = const(0x76)  # SDO to GND
_ADDR_SECONDARY = const(0x77)  # SDO to VDDIO
_CHIP_ID = const(0x60)  # BMP280 answers 0x58 and has no humidity
_REG_CALIB_A = const(0x88)  # dig_T1 .. dig_P9, 0xA0 unused, 0xA1 dig_H1 (26 bytes)
_REG_ID = const(0xD0)
_REG_CALIB_B = const(0xE1)  # dig_H2 .. dig_H6 (7 bytes)
_REG_CTRL_HUM = const(0xF2)
_REG_STATUS = const(0xF3)
_REG_CTRL_MEAS = const(0xF4)
_REG_CONFIG = const(0xF5)
_REG_DATA = const(0xF7)  # press msb/lsb/xlsb, temp msb/lsb/xlsb, hum msb/lsb (8 bytes)
_CALIB_A_LEN = const(26)
_CALIB_B_LEN = const(7)
_DATA_LEN = const(8)
_STATUS_MEASURING = const(0x08)
# Forced mode, oversampling x1 for T, P and H, filter off: Bosch's "weather monitoring"
# recommendation (datasheet 3.5.1) -- one measurement per read, sensor sleeps in between.
_OSRS_X1 = const(0x01)
_MODE_FORCED = const(0x01)
_CTRL_MEAS_FORCED = const((_OSRS_X1 << 5) | (_OSRS_X1 << 2) | _MODE_FORCED)
# Datasheet 9.1: t_max = 1.25 + 2.3*1 + (2.3*1 + 0.575) + (2.3*1 + 0.575) ms = 9.3 ms at x1.
_MEASURE_TIME_MS = const(10)

# "No measurement" codes: the data registers hold 0x80000 (P, T) / 0x8000 (H) when that
# measurement was skipped (oversampling 0) or has not completed since power-on (Bosch
# BME280 datasheet, section 4 "Data readout" / memory map reset values). Compensating them gives
# a plausible-looking 82 kPa: they are no value.
_SKIPPED_20 = const(0x80000)
_SKIPPED_16 = const(0x8000)

_Q_BUS = const(0x08)  # I2C error / no measurement (telemetry "quality" bit)
_Q_ID = const(0x10)  # wrong chip id at start-up


def _s16(v: int) -> int:
    return v - 0x10000 if v & 0x8000 else v


def _s8(v: int) -> int:
    return v - 0x100 if v & 0x80 else v


def _s12(v: int) -> int:
    return v - 0x1000 if v & 0x800 else v


def parse_calibration(a, b) -> tuple:
    """Calibration words from the 26 bytes at 0x88 and the 7 bytes at 0xE1.

    Returns ``(T1, T2, T3, P1, ..., P9, H1, ..., H6)`` (18 ints, datasheet table 16).
    """
    t1 = a[0] | (a[1] << 8)
    t2 = _s16(a[2] | (a[3] << 8))
    t3 = _s16(a[4] | (a[5] << 8))
    p1 = a[6] | (a[7] << 8)
    p = [p1]
    for i in range(8, 24, 2):
        p.append(_s16(a[i] | (a[i + 1] << 8)))
    h1 = a[25]
    h2 = _s16(b[0] | (b[1] << 8))
    h3 = b[2]
    # H4 and H5 are 12-bit values sharing the nibbles of 0xE5 (datasheet table 16).
    h4 = _s12((b[3] << 4) | (b[4] & 0x0F))
    h5 = _s12((b[5] << 4) | (b[4] >> 4))
    h6 = _s8(b[6])
    return (t1, t2, t3) + tuple(p) + (h1, h2, h3, h4, h5, h6)


def parse_raw(d) -> tuple:
    """``(adc_P, adc_T, adc_H)`` from the 8 data bytes at 0xF7 (20, 20 and 16 bits)."""
    adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
    adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
    adc_h = (d[6] << 8) | d[7]
    return adc_p, adc_t, adc_h


def t_fine(cal, adc_t: int) -> int:
    """Fine temperature (datasheet BME280_compensate_T_int32), input to P and H compensation."""
    t1, t2, t3 = cal[0], cal[1], cal[2]
    var1 = (((adc_t >> 3) - (t1 << 1)) * t2) >> 11
    var2 = (((((adc_t >> 4) - t1) * ((adc_t >> 4) - t1)) >> 12) * t3) >> 14
    return var1 + var2


def temperature_c(tf: int) -> float:
    """Temperature in degrees C from t_fine (resolution 0.01 degC)."""
    return ((tf * 5 + 128) >> 8) / 100


def pressure_pa(cal, tf: int, adc_p: int) -> float:
    """Pressure in Pa (BME280_compensate_P_int64: Q24.8 result / 256); 0.0 if dig_P1 is 0."""
    p1, p2, p3, p4, p5, p6, p7, p8, p9 = cal[3:12]
    var1 = tf - 128000
    var2 = var1 * var1 * p6
    var2 = var2 + ((var1 * p5) << 17)
    var2 = var2 + (p4 << 35)
    var1 = ((var1 * var1 * p3) >> 8) + ((var1 * p2) << 12)
    var1 = (((1 << 47) + var1) * p1) >> 33
    if var1 == 0:
        return 0.0  # avoids a division by zero (datasheet)
    p = 1048576 - adc_p
    p = (((p << 31) - var2) * 3125) // var1
    var1 = (p9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (p8 * p) >> 19
    p = ((p + var1 + var2) >> 8) + (p7 << 4)
    return p / 256


def humidity_pct(cal, tf: int, adc_h: int) -> float:
    """Relative humidity in % (BME280_compensate_H_int32: Q22.10 result / 1024), 0..100."""
    h1, h2, h3, h4, h5, h6 = cal[12:18]
    v = tf - 76800
    v = ((((adc_h << 14) - (h4 << 20) - (h5 * v)) + 16384) >> 15) * (
        ((((((v * h6) >> 10) * (((v * h3) >> 11) + 32768)) >> 10) + 2097152) * h2 + 8192) >> 14
    )
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * h1) >> 4)
    if v < 0:
        v = 0
    if v > 419430400:
        v = 419430400
    return (v >> 12) / 1024


def compensate(cal, adc_p: int, adc_t: int, adc_h: int) -> tuple:
    """``(pressure_pa, temp_c, rh_pct)`` from calibration and raw ADC values.

    A skipped measurement (0x80000 / 0x8000) is None; so are P and H without a temperature,
    which both need (t_fine). A damaged calibration (dig_P1 = 0) gives 0.0: the caller's
    plausibility check catches it.
    """
    if adc_t == _SKIPPED_20:
        return None, None, None
    tf = t_fine(cal, adc_t)
    p = None if adc_p == _SKIPPED_20 else pressure_pa(cal, tf, adc_p)
    h = None if adc_h == _SKIPPED_16 else humidity_pct(cal, tf, adc_h)
    return p, temperature_c(tf), h


class BME280:
    """Forced-mode driver. ``i2c`` is a machine.I2C (passed in, shared with other devices).

    ``read()`` returns ``(pressure_pa, temp_c, rh_pct, quality)``; on a bus fault the three
    values are None and quality has _Q_BUS set.
    """

    def __init__(self, i2c, addr: int = _ADDR_PRIMARY) -> None:
        self._i2c = i2c
        self._addr = addr
        self._cal: tuple = ()
        self._data = bytearray(_DATA_LEN)  # preallocated: read into it every cycle
        self._one = bytearray(1)
        self.errors = 0

    def init(self) -> int:
        """Check the chip id and load calibration; returns 0 or a quality flag."""
        try:
            chip = self._i2c.readfrom_mem(self._addr, _REG_ID, 1)[0]
            if chip != _CHIP_ID:
                return _Q_ID
            a = self._i2c.readfrom_mem(self._addr, _REG_CALIB_A, _CALIB_A_LEN)
            b = self._i2c.readfrom_mem(self._addr, _REG_CALIB_B, _CALIB_B_LEN)
            self._cal = parse_calibration(a, b)
            # ctrl_hum only takes effect after a write to ctrl_meas (datasheet 5.4.3).
            self._write(_REG_CTRL_HUM, _OSRS_X1)
            self._write(_REG_CONFIG, 0)
        except OSError:
            return _Q_BUS
        return 0

    async def read(self):
        """One forced measurement: ``(pressure_pa, temp_c, rh_pct, quality)``."""
        if not self._cal and self.init():
            self.errors += 1
            return None, None, None, _Q_BUS
        try:
            self._write(_REG_CTRL_MEAS, _CTRL_MEAS_FORCED)
            await asyncio.sleep_ms(_MEASURE_TIME_MS)
            for _ in range(5):
                self._i2c.readfrom_mem_into(self._addr, _REG_STATUS, self._one)
                if not self._one[0] & _STATUS_MEASURING:
                    break
                await asyncio.sleep_ms(2)
            self._i2c.readfrom_mem_into(self._addr, _REG_DATA, self._data)
        except OSError:
            self.errors += 1
            self._cal = ()  # re-initialise next time: the sensor may have been power-cycled
            return None, None, None, _Q_BUS
        adc_p, adc_t, adc_h = parse_raw(self._data)
        p, t, h = compensate(self._cal, adc_p, adc_t, adc_h)
        if p is None or t is None or h is None:
            self.errors += 1
            return p, t, h, _Q_BUS  # a value missing: say so, never report a made-up one
        return p, t, h, 0

    def _write(self, reg: int, value: int) -> None:
        self._one[0] = value
        self._i2c.writeto_mem(self._addr, reg, self._one)
