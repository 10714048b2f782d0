"""An InfluxQL query target for grafana-foundation-sdk panels.

The SDK has builders for many data sources but none for InfluxDB, so this supplies one: a raw
InfluxQL query (which InfluxDB 1.x, 2.x with DBRP mappings, and 3.x all answer) in the JSON
shape Grafana's InfluxDB data source stores.
"""

from __future__ import annotations

import typing

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.dashboard import DataSourceRef

DATASOURCE_UID = "o2chain-influxdb"
DATASOURCE = DataSourceRef(type_val="influxdb", uid=DATASOURCE_UID)


class InfluxQLTarget(cogvariants.Dataquery):
    """One raw InfluxQL query of a panel."""

    def __init__(self, query: str, ref_id: str, alias: str | None, result_format: str):
        self.query = query
        self.ref_id = ref_id
        self.alias = alias
        self.result_format = result_format

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "datasource": DATASOURCE.to_json(),
            "query": self.query,
            "rawQuery": True,
            "resultFormat": self.result_format,
        }
        if self.alias:
            payload["alias"] = self.alias
        return payload


class InfluxQL(cogbuilder.Builder[InfluxQLTarget]):
    """``InfluxQL('SELECT ...', 'A').alias('$tag_device')`` for ``panel.with_target(...)``."""

    def __init__(self, query: str, ref_id: str = "A") -> None:
        self._internal = InfluxQLTarget(" ".join(query.split()), ref_id, None, "time_series")

    def alias(self, alias: str) -> typing.Self:
        """Series name pattern, e.g. ``$tag_device``."""
        self._internal.alias = alias
        return self

    def table(self) -> typing.Self:
        """Return the result as a table (one row per series) instead of time series."""
        self._internal.result_format = "table"
        return self

    def build(self) -> InfluxQLTarget:
        return self._internal
