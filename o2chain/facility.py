"""The gateway's view of a simulated facility: the ``[[device]]`` tables of its config.

The simulators know nothing of the gateway; the demo (this layer) joins the two, from the JSON
line ``o2chain sim run`` prints once its equipment and boards listen.
"""

from __future__ import annotations

from typing import Any


def gateway_devices(
    modbus: dict[str, dict[str, Any]], boards: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """``[[device]]`` tables for a gateway config, from a runner's endpoints (or the ``modbus``
    and ``boards`` of the JSON line ``o2chain sim run`` prints once ready)."""
    out: list[dict[str, Any]] = []
    for dev_id, ep in modbus.items():
        out.append(
            {
                "id": dev_id,
                "site": ep["site"],
                "kind": ep["kind"],
                "transport": "modbus",
                "url": ep["url"],
                "unit": ep["unit"],
                "profile": ep["profile"],
            }
        )
        if ep.get("fed_from"):  # a coupled supply device: the chain balance's topology
            out[-1]["fed_from"] = list(ep["fed_from"])
    for dev_id, ep in boards.items():
        row = {"id": dev_id, "site": ep["site"], "kind": ep["kind"], "transport": "mqtt"}
        for key in ("room", "ventilation_m3h"):
            if key in ep:
                row[key] = ep[key]
        out.append(row)
    return out
