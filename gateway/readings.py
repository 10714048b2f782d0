"""The gateway's one internal data shape: a point bound for InfluxDB."""

from __future__ import annotations

from dataclasses import dataclass, field

from influxdb_client import Point, WritePrecision

FieldValue = float | int | bool | str


@dataclass(frozen=True)
class Reading:
    """One point: measurement, tags, fields and the reading's time in ms since the epoch (UTC).

    Point identity in InfluxDB is measurement + tags + time, which is what makes replays of the
    same reading overwrite rather than duplicate (ARCHITECTURE.md, delivery guarantee).
    """

    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    ts_ms: int
    meta: dict[str, int | str] = field(default_factory=dict, compare=False)

    def to_line(self) -> str:
        """InfluxDB line protocol (escaping by influxdb-client's ``Point``)."""
        point = Point(self.measurement)
        for key in sorted(self.tags):
            point.tag(key, self.tags[key])
        for key in sorted(self.fields):
            point.field(key, self.fields[key])
        point.time(self.ts_ms, write_precision=WritePrecision.MS)
        line: str = point.to_line_protocol()
        return line
