"""A region over a real (emulated) WAN: two facilities and the central tier in network
namespaces of their own, joined by veth links with packet loss and a bandwidth cap, and a
partition of one facility's link. Everything is real: `o2chain region provision` and `o2chain
provision`, TLS brokers with the bridge, InfluxDB servers, gateways forwarding through their
outbox's second cursor, fleets of simulated boards.

After the partition heals, the central database holds every reading of every facility exactly
once (count and distinct seq per device) and the central broker's alarm list is the gateways'.
The CI version cuts the line for 8 s, the soak version (`-m soak`) for 60 s, long enough for
keep-alives and TCP retransmissions to give up and the bridge to reconnect.

This kernel may lack `tc netem` (it does on the project's machines): the link then has no added
delay, only loss (nftables) and a bandwidth cap (tbf), and the test prints what was applied.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.tests.conftest import wait_until
from o2chain.region_lab import Facility, RegionLab

pytestmark = pytest.mark.integration

SITES = ["lhasa-hotel", "nyingchi-clinic"]
BOARDS = 10
INTERVAL_S = 0.2


def rules(partition_s: float) -> list[dict[str, object]]:
    """Alarm rules on the boards' seq: one raises at the start and clears during the partition,
    one raises during it (the run starts about 4 s before the cut)."""
    clear_at = int((4 + partition_s / 3) / INTERVAL_S)
    raise_at = int((4 + 2 * partition_s / 3) / INTERVAL_S)
    return [
        {"id": "seq-early", "field": "seq", "op": "<", "value": clear_at, "severity": "warning"},
        {"id": "seq-late", "field": "seq", "op": ">=", "value": raise_at, "severity": "alarm"},
    ]


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[list[RegionLab]]:
    labs: list[RegionLab] = []
    yield labs
    for lab in labs:  # namespaces and processes go, even when the test failed
        lab.stop()
    assert not [ns for lab in labs for ns in lab.namespaces if ns.exists]


def local_total(fac: Facility) -> int:
    return sum(n for n, _ in fac.local_counts().values())


def central_total(lab: RegionLab, site: str) -> int:
    return sum(n for n, _ in lab.central_counts(site).values())


def run_partition(tmp_path: Path, labs: list[RegionLab], partition_s: float) -> None:
    readings = int((partition_s + 12) / INTERVAL_S)
    total = BOARDS * readings
    lab = RegionLab(tmp_path, SITES, BOARDS, alarm_rules=rules(partition_s))
    labs.append(lab)
    lab.start()
    watch = lab.watch_alarms()  # the centre's alarm list, live from the start
    cut, other = lab.facilities
    for fac in lab.facilities:
        print(fac.site, "link:", fac.link.impair(delay_ms=40, loss_pct=2, rate_kbit=4000))
        fac.start_gateway()
    fleets = [
        fac.start_fleet(readings, INTERVAL_S, timeout_s=partition_s + 120) for fac in lab.facilities
    ]
    wait_until(lambda: central_total(lab, cut.site) > 0, 30, "the first readings at the centre")
    cut.link.partition()
    cut_at = time.monotonic()
    at_centre = central_total(lab, cut.site)
    local_at_cut = local_total(cut)
    # Cut off, the facility goes on: its local database keeps filling, and the other
    # facility keeps reaching the centre.
    other_at_cut = central_total(lab, other.site)
    wait_until(lambda: local_total(cut) > local_at_cut + BOARDS * 10, 30, "the local drain")
    wait_until(
        lambda: central_total(lab, other.site) > other_at_cut + BOARDS * 10,
        30,
        "the other facility at the centre",
    )
    wait_until(lambda: time.monotonic() - cut_at >= partition_s, partition_s + 5, "the cut")
    assert central_total(lab, cut.site) == at_centre, "readings crossed a partitioned line"
    cut.link.heal()

    wait_until(lambda: not any(f.running for f in fleets), partition_s + 120, "the fleets")
    assert [f.returncode for f in fleets] == [0, 0], [f.log_tail() for f in fleets]
    for fac in lab.facilities:
        site = fac.site
        wait_until(lambda: local_total(lab.facilities[0]) >= total, 60, "local")
        wait_until(lambda: local_total(lab.facilities[1]) >= total, 60, "local")
        wait_until(lambda: central_total(lab, site) >= total, 120, f"{site} at the centre")  # noqa: B023
    time.sleep(1.0)  # a batch still in flight would now show up as extra points
    for fac in lab.facilities:
        expected = {d: (readings, readings) for d in (f"room-{n + 1:04d}" for n in range(BOARDS))}
        assert fac.local_counts() == expected, fac.site
        assert lab.central_counts(fac.site) == expected, fac.site

    # The alarms: the centre's list (retained at the central broker, through the bridges)
    # is the gateways' own. Boards end with an offline status, so each gateway ends with
    # seq-late and device-offline standing for every board: wait for that, then for the centre.
    def gateways_alarms() -> dict[str, str]:
        out: dict[str, str] = {}
        for fac in lab.facilities:
            out.update(fac.active_alarms())
        return out

    final = {
        f"{site}/room-{n + 1:04d}/{rule}"
        for site in SITES
        for n in range(BOARDS)
        for rule in ("seq-late", "device-offline")
    }
    wait_until(lambda: final <= gateways_alarms().keys(), 60, "the gateways' final alarms")
    wait_until(lambda: watch.active() == gateways_alarms(), 60, "the central alarm list")
    alarms = watch.active()
    assert alarms == gateways_alarms()
    watch.close()
    late = lab.watch_alarms()  # a view started now: the retained states alone
    wait_until(lambda: late.active() == alarms, 30, "the retained alarms")
    late.close()
    assert final <= alarms.keys()
    assert not [k for k in alarms if k.endswith("/seq-early")], "cleared during the cut"
    for fac in lab.facilities:
        assert fac.gateway is not None
        fac.gateway.stop()
        assert fac.gateway.returncode == 0, fac.gateway.log_tail()
    assert "InfluxDB unavailable" in (cut.gateway.log_text() if cut.gateway else "")


def test_partition_short(tmp_path: Path, lab_factory: list[RegionLab]) -> None:
    run_partition(tmp_path, lab_factory, partition_s=8)


@pytest.mark.soak
@pytest.mark.skipif(not os.environ.get("O2CHAIN_SOAK"), reason="soak: O2CHAIN_SOAK=1")
def test_partition_60s(tmp_path: Path, lab_factory: list[RegionLab]) -> None:
    run_partition(tmp_path, lab_factory, partition_s=60)
