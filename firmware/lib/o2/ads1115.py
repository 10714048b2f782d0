"""Analog galvanic O2 cell through a TI ADS1115 (I2C ADC): conversion (pure) and a driver.

A galvanic cell gives ~10-16 mV in air (or ~100 uA into 100 ohm); at PGA +-0.256 V the
ADS1115 resolves 7.8125 uV/LSB (TI ADS1115 datasheet, table 3). The cell's output is
proportional to the O2 *partial pressure*: the board converts with a fresh-air calibration
(``mv_per_pct``, taken on site in outdoor air = 20.95 %) and the app scales by
``cal_kpa / now_kpa`` (docs/domain.md "Fraction and partial pressure"; o2.calibration).
"""

import asyncio

REG_CONVERSION = 0x00
REG_CONFIG = 0x01
# Config (datasheet 8.6.3): OS=1 start single shot, MUX=000 AIN0-AIN1 differential,
# PGA=101 +-0.256 V, MODE=1 single shot, DR=100 128 SPS, comparator off (11).
CONFIG_SINGLE_SHOT = 0x8000 | (0b000 << 12) | (0b101 << 9) | 0x0100 | (0b100 << 5) | 0x0003
LSB_MV = 0.256 * 1000 / 32768  # 7.8125 uV
CONVERSION_MS = 9  # 1/128 SPS + margin
AIR_MV_DEFAULT = 13.0  # typical new cell in sea-level air; replaced by calibration
FRESH_AIR_PCT = 20.95

Q_BUS = 0x01  # no answer (reported like a missing O2 reading)
Q_RANGE = 0x04  # negative or saturated: cell reversed, dead, or shorted


def counts_to_mv(msb: int, lsb: int) -> float:
    """Signed 16-bit conversion register -> millivolts at PGA +-0.256 V."""
    raw = (msb << 8) | lsb
    if raw & 0x8000:
        raw -= 0x10000
    return raw * LSB_MV


def mv_to_o2_pct(mv: float, mv_per_pct: float) -> float:
    """O2 % from the cell voltage; ``mv_per_pct`` = calibration mV / 20.95 (fresh air)."""
    return mv / mv_per_pct


class ADS1115Cell:
    """Driver: ``read()`` -> ``(o2_pct_uncorrected, quality)``; ``mv`` keeps the raw voltage."""

    def __init__(self, i2c, addr: int = 0x48, air_mv: float = AIR_MV_DEFAULT) -> None:
        self._i2c = i2c
        self._addr = addr
        self._cfg = bytearray((CONFIG_SINGLE_SHOT >> 8, CONFIG_SINGLE_SHOT & 0xFF))
        self._data = bytearray(2)
        self.mv_per_pct = air_mv / FRESH_AIR_PCT
        self.mv = 0.0  # last cell voltage (0.0 after a bus error)
        self.errors = 0

    async def init(self) -> None:
        pass

    async def read(self):
        try:
            self._i2c.writeto_mem(self._addr, REG_CONFIG, self._cfg)
            await asyncio.sleep_ms(CONVERSION_MS)
            self._i2c.readfrom_mem_into(self._addr, REG_CONVERSION, self._data)
        except OSError:
            self.errors += 1
            self.mv = 0.0
            return None, Q_BUS
        mv = counts_to_mv(self._data[0], self._data[1])
        self.mv = mv
        if mv <= 0 or mv >= 255.9:
            return None, Q_RANGE | Q_BUS
        return mv_to_o2_pct(mv, self.mv_per_pct), 0
