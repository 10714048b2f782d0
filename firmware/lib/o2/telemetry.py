"""Telemetry payload v1 (docs/contracts.md contract; o2base/schema/telemetry_v1.json).

``{"v":1,"boot":B,"seq":S,"ts":ms,<field>:<number>,...}`` -- only fields that have a value
(a failed sensor leaves its fields out and sets a ``quality`` bit: never a silent zero).
"""

# (name, decimals) in payload order. Decimals match sensor resolution, not float noise.
ROOM_FIELDS = (
    ("o2_pct", 2),
    ("baro_kpa", 3),
    ("temp_c", 2),
    ("rh_pct", 2),
    ("ppo2_kpa", 3),
    ("eq_alt_m", 1),
    ("co2_ppm", 0),
)

I_O2, I_BARO, I_TEMP, I_RH, I_PPO2, I_EQ_ALT = 0, 1, 2, 3, 4, 5  # co2_ppm: 6 (app._I_CO2)

CONCENTRATOR_FIELDS = (
    ("purity_pct", 1),
    ("flow_lpm", 2),
    ("temp_c", 1),
)
I_PURITY, I_FLOW, I_CTEMP = 0, 1, 2


def encode(boot: int, seq: int, ts_ms: int, values, quality: int = 0, fields=ROOM_FIELDS) -> bytes:
    """JSON bytes of one reading; ``values`` parallels ``fields`` (None = field absent).

    A value that is not a finite number of sane size (NaN, inf) is left out as well: "nan"
    is not JSON. The caller's ``quality`` bits say why a field is missing.
    """
    parts = ['{"v":1,"boot":%d,"seq":%d,"ts":%d' % (boot, seq, ts_ms)]
    for i in range(min(len(fields), len(values))):  # values may omit trailing fields
        v = values[i]
        if v is not None and -1e9 < v < 1e9:
            parts.append(',"%s":%.*f' % (fields[i][0], fields[i][1], v))
    if quality:
        parts.append(',"quality":%d' % quality)
    parts.append("}")
    return "".join(parts).encode()
