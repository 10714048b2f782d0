"""Every supply profile served by `o2chain sim` reads, with an independent Modbus client
(mbpoll), as its profile file declares it: the rows at their tables and addresses, the types,
scales and word orders giving the engineering values the profile's [nominal] data lead to,
within the declared ranges, healthy status bits, and nothing served past the declared rows.

The profile files are read here with tomllib, not with o2base.registers, and the words are
decoded by this test (16-bit) or by mbpoll itself (float32): a mistake in the shared decoder
would show up as a disagreement.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from o2base.procs import ChildProcess, o2chain_argv

pytestmark = pytest.mark.integration

SUPPLY = ("area-alarm-panel", "buffer-tank", "cylinder-manifold", "lox-tank")
TABLE = {"coil": "0", "discrete": "1", "input": "3", "holding": "4"}
WORDS = {"bool": 1, "bits": 1, "uint16": 1, "int16": 1, "float32": 2}


def profile_doc(name: str) -> dict[str, Any]:
    text = (resources.files("o2base") / "profiles" / f"{name}.toml").read_text()
    return tomllib.loads(text)


def expected(name: str, nominal: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """(value, tolerance) of each row of a freshly started device, from its profile's
    [nominal] data and the physics' start state (simulators/README.md, "Supply")."""
    setpoint = float(nominal["pressure_kpa_setpoint"])
    demand = float(nominal["demand_m3h"])
    droop = 0.5 * demand  # the line regulator's 0.5 kPa per m3/h
    line = (setpoint - droop, 3.0)
    flow = (demand, 0.08 * demand + 0.05)
    if name == "buffer-tank":  # starts full, at the cut-out pressure
        return {"tank_kpa": (float(nominal["cut_out_kpa"]), 6.0), "pressure_kpa": line,
                "level_pct": (100.0, 2.0), "flow_m3h": flow, "temp_c": (15.0, 1.0),
                "filling": (0, 0)}  # fmt: skip
    if name == "cylinder-manifold":  # both banks full, the left one in service
        full = (float(nominal["bank_full_kpa"]), 60.0)
        return {"bank_left_kpa": full, "bank_right_kpa": full, "bank_in_service": (0, 0),
                "changeovers": (0, 0), "reserve_in_use": (0, 0), "pressure_kpa": line,
                "flow_m3h": flow}  # fmt: skip
    if name == "lox-tank":
        outlet_c = 10.0 - 10.0 * demand / 60.0  # ambient less 10 K at the vaporiser's rating
        return {"lox_level_pct": (float(nominal["initial_level_pct"]), 0.1),
                "tank_kpa": (float(nominal["operating_kpa"]), 10.0), "pressure_kpa": line,
                "flow_m3h": flow, "vaporiser_out_c": (outlet_c, 1.0)}  # fmt: skip
    if name == "area-alarm-panel":  # riser regulator droop 0.2 kPa per m3/h, branches 0.05 q^2
        zones, metered = int(nominal["zones"]), int(nominal["metered_zones"])
        riser = setpoint - 0.2 * demand * zones
        out = {f"zone{n}_kpa": (riser - 0.05 * demand**2, 2.0) for n in range(1, zones + 1)}
        out |= {f"zone{n}_m3h": (demand, 0.05) for n in range(1, metered + 1)}
        out["flow_m3h"] = (demand * metered, 0.1)
        return out
    raise AssertionError(f"no expectations for {name}")


def mbpoll(port: int, table: str, pdu: int, count: int, kind: str = "") -> list[str]:
    """mbpoll's values for ``count`` references from PDU address ``pdu`` (one poll)."""
    argv = ["mbpoll", "-m", "tcp", "-p", str(port), "-a", "1", "-0", "-1", "-o", "2",
            "-t", TABLE[table] + kind, "-r", str(pdu), "-c", str(count)]  # fmt: skip
    if kind == ":float":
        argv.append("-B")  # the supply profiles' float32 rows are ABCD (high word first)
    done = subprocess.run([*argv, "127.0.0.1"], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError((done.stdout + done.stderr).strip().splitlines()[-1])
    return re.findall(r"^\[\d+\]:\s+(\S+)", done.stdout, re.MULTILINE)


def value_of(row: dict[str, Any], port: int, pdu: int) -> float:
    """The row's engineering value, decoded here from what mbpoll read."""
    rtype, table = row["type"], row["table"]
    if rtype == "float32":
        order = row.get("word_order", "ABCD")
        assert order == "ABCD", f"{row['name']}: word order {order} not handled by this test"
        return float(mbpoll(port, table, pdu, 1, ":float")[0])
    (raw,) = mbpoll(port, table, pdu, 1)
    word = int(raw)
    if rtype in ("bool",):
        return float(word)
    if rtype == "bits":
        return float((word >> int(row["bit"])) & 1)
    if rtype == "int16" and word >= 0x8000:
        word -= 0x10000
    return word * float(row.get("scale", 1.0)) + float(row.get("offset", 0.0))


@pytest.fixture(scope="module")
def listed_profiles() -> list[str]:
    done = subprocess.run(o2chain_argv("sim", "profiles"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_sim_lists_the_supply_profiles(listed_profiles: list[str]) -> None:
    supply = [n for n in listed_profiles if profile_doc(n)["profile"]["kind"] == "supply"]
    assert tuple(sorted(supply)) == SUPPLY


@pytest.mark.parametrize("name", SUPPLY)
def test_mbpoll_reads_what_the_profile_declares(name: str, tmp_path: Path) -> None:
    doc = profile_doc(name)
    base = int(doc["profile"].get("address_base", 0))
    rows = doc["register"]
    want = expected(name, doc["nominal"])
    assert {r["name"] for r in rows if r["type"] != "bits"} >= set(want), "stale expectations"
    argv = o2chain_argv("sim", "concentrator", "--profile", name, "--listen", "tcp://127.0.0.1:0")
    with ChildProcess(argv, tmp_path / "sim.log") as sim:
        url = sim.wait_for_log(r'"listening": "tcp://127\.0\.0\.1:(\d+)"')
        port = int(url.group(1))
        read: dict[str, float] = {}
        for row in rows:
            pdu = int(row["address"]) - base
            value = value_of(row, port, pdu)
            read[row["name"]] = value
            lo, hi = float(row.get("min", -1e30)), float(row.get("max", 1e30))
            assert lo <= value <= hi, f"{name}: {row['name']} = {value}, declared {lo}..{hi}"
            if row["type"] in ("bits", "bool") and row["name"].startswith("alarm"):
                assert value == 0.0, f"{name}: {row['name']} set on a healthy device"
        for field, (value, tol) in want.items():
            assert read[field] == pytest.approx(value, abs=tol), f"{name}: {field}"
        # Nothing past the declared rows of each table: the next address is refused.
        for table in {r["table"] for r in rows}:
            end = max(int(r["address"]) - base + WORDS[r["type"]] for r in rows
                      if r["table"] == table)  # fmt: skip
            if table in ("coil", "discrete"):
                end = -(-end // 16) * 16  # bit tables are served in whole 16-bit words
            with pytest.raises(RuntimeError, match="Illegal data address"):
                mbpoll(port, table, end, 1)
