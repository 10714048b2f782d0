"""Galvanic O2 cell calibration (zero / span / fresh air), stored in /calibration.json.

Loaded only on a calibrated board or by the ``calibrate`` command.
"""

import json
import os

CALIBRATION_FILE = "/calibration.json"
FACTORY_KPA = 101.325  # cells and modules leave the factory calibrated in sea-level air


class Calibration:
    """Two-point linear correction of a galvanic O2 reading, ``o2 = gain * raw + offset``,
    plus the pressure at calibration: galvanic cells measure partial pressure, so the reading
    is always scaled by ``cal_kpa / now_kpa`` (docs/domain.md "Fraction and partial
    pressure"). Uncalibrated = the factory calibration: gain 1, offset 0, 101.325 kPa."""

    def __init__(self) -> None:
        self.gain = 1.0
        self.offset = 0.0
        self.cal_kpa = FACTORY_KPA

    def load(self, path: str = CALIBRATION_FILE) -> bool:
        """True if a usable calibration was read; a missing or damaged file (also one
        without a positive ``cal_kpa``) leaves the factory calibration."""
        try:
            with open(path) as f:
                doc = json.load(f)
            gain = float(doc["gain"])
            offset = float(doc["offset"])
            cal_kpa = float(doc["cal_kpa"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if not (0 < gain < 100 and -50 < offset < 50 and 10 < cal_kpa < 200):
            return False
        self.gain, self.offset, self.cal_kpa = gain, offset, cal_kpa
        return True

    def save(self, path: str = CALIBRATION_FILE) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"gain": self.gain, "offset": self.offset, "cal_kpa": self.cal_kpa}, f)
        os.rename(tmp, path)

    def apply(self, raw: float, baro_kpa: float) -> float:
        """O2 % from the cell's raw reading at pressure ``baro_kpa`` (> 0: the caller
        passes the measured pressure or the site's ISA pressure, never 0)."""
        return (self.gain * raw + self.offset) * self.cal_kpa / baro_kpa

    def as_dict(self) -> dict:
        return {"gain": self.gain, "offset": self.offset, "cal_kpa": self.cal_kpa}
