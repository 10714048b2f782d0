"""Galvanic O2 cell calibration (zero / span / fresh air), stored in /calibration.json.

Loaded only on a calibrated board or by the ``calibrate`` command.
"""

import json
import os

CALIBRATION_FILE = "/calibration.json"


class Calibration:
    """Two-point linear correction of a galvanic O2 reading, ``o2 = gain * raw + offset``,
    plus the pressure at calibration: galvanic cells measure partial pressure, so the reading
    is scaled by ``cal_kpa / now_kpa`` (DOMAIN.md section 1). Stored in /calibration.json."""

    def __init__(self) -> None:
        self.gain = 1.0
        self.offset = 0.0
        self.cal_kpa = 0.0  # 0: no pressure correction

    def load(self, path: str = CALIBRATION_FILE) -> None:
        try:
            with open(path) as f:
                doc = json.load(f)
            self.gain = float(doc["gain"])
            self.offset = float(doc["offset"])
            self.cal_kpa = float(doc.get("cal_kpa", 0.0))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # uncalibrated (defaults)

    def save(self, path: str = CALIBRATION_FILE) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"gain": self.gain, "offset": self.offset, "cal_kpa": self.cal_kpa}, f)
        os.rename(tmp, path)

    def apply(self, raw: float, baro_kpa) -> float:
        v = self.gain * raw + self.offset
        if self.cal_kpa and baro_kpa:
            v = v * self.cal_kpa / baro_kpa
        return v

    def as_dict(self) -> dict:
        return {"gain": self.gain, "offset": self.offset, "cal_kpa": self.cal_kpa}
