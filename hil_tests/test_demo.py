"""`o2chain demo --duration` leaves data in InfluxDB and no process behind, and runs the site
the way provisioning secures it: no anonymous MQTT, every board under its own account."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from o2base.services import InfluxDB, Mosquitto
from o2chain.testing import DemoRun, MqttProbe

pytestmark = pytest.mark.integration


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped by its parent; /proc tells.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_demo_prints_where_everything_runs(demo_run: DemoRun) -> None:
    for expected in ("live page       http://127.0.0.1:", "MQTT broker     mqtts://127.0.0.1:",
                     "web login       admin / ", "web login       operator / ",
                     f"web logins in   {demo_run.data_dir}/provision/operator/",
                     "InfluxDB        http://127.0.0.1:", "Modbus tcp://127.0.0.1:",
                     "24 simulated boards", "room-401        MicroPython firmware",
                     "broker_restart", "o2chain alarms list --url http://127.0.0.1:",
                     str(demo_run.data_dir)):  # fmt: skip
        assert expected in demo_run.stdout


def test_demo_prints_alarm_events_as_they_happen(demo_run: DemoRun) -> None:
    """conc-4's lost Modbus link shows as an event line read from the gateway's API, and the
    periodic summary names the offline device with its alarm's severity and state."""
    lines = demo_run.stdout.splitlines()
    raised = [x for x in lines if "alarm RAISED" in x and "lhasa-hotel/conc-4/device-offline" in x]
    assert raised, demo_run.stdout[-3000:]
    assert any(x.strip().startswith("offline      conc-4 (device-offline alarm, ") for x in lines)
    assert demo_run.summary["alarm_events"].get("raise", 0) >= 1


def test_demo_leaves_data_and_no_process(demo_run: DemoRun) -> None:
    summary = demo_run.summary
    assert summary["counts"]["room"] >= 25 * 3  # 24 simulated boards + the firmware board
    assert summary["counts"]["concentrator"] >= 5 * 3  # the plant and four concentrators
    assert summary["counts"]["alarm"] >= 1  # conc-4's lost Modbus link
    assert len(summary["pids"]) >= 2 + 1 + 1 + 1  # services, scenario, gateway, firmware
    leftovers = [pid for pid in summary["pids"] if pid_alive(pid)]
    assert leftovers == [], f"processes left behind: {leftovers}"

    # The data stays: a new InfluxDB on the demo's data dir still answers with it.
    with InfluxDB(demo_run.data_dir / "services") as influx:
        points = influx.query_points("SELECT count(o2_pct) FROM room", db="o2chain")
        # At least what was counted before shutdown: the gateway flushes its outbox on the way out.
        assert points and points[0]["count"] >= summary["counts"]["room"]
        # The scenario cut conc-4's Modbus link: the poller reported it offline, the engine
        # raised the alarm, and its neighbours kept being polled.
        raised = influx.query_points(
            "SELECT * FROM alarm WHERE device = 'conc-4' AND rule = 'device-offline' "
            "AND state = 'raise'",
            db="o2chain",
        )
        assert raised, "no device-offline alarm for conc-4"
        health = influx.query_points(
            "SELECT last(online) AS online FROM device_health WHERE device = 'conc-4'",
            db="o2chain",
        )
        assert health and health[0]["online"] is False
        polled = influx.query_points(
            "SELECT count(purity_pct) FROM concentrator WHERE source = 'modbus' "
            "AND device =~ /^conc-[123]$/ GROUP BY device",
            db="o2chain",
        )
        assert len(polled) == 3 and all(p["count"] >= 5 for p in polled), polled
        # The supply link is in the demo: buffer tank, zone valve box, manifold and LOX tank
        # polled over Modbus.
        supply = influx.query_points(
            "SELECT count(flow_m3h) FROM supply GROUP BY device", db="o2chain"
        )
        assert {p["device"] for p in supply} == {"buffer-1", "panel-1", "manifold-1", "lox-1"}
        assert all(p["count"] >= 3 for p in supply), supply


def test_demo_supply_fault_is_raised_in_the_first_minute(demo_run: DemoRun) -> None:
    """The riser regulator feeding the zone valve box fails from 60 simulated seconds: within
    the demo's first minute the area alarm panel's zones sag below 320 kPa and its own alarm
    is raised (read back from InfluxDB), and the supply points are there by then."""
    lines = demo_run.stdout.splitlines()
    assert any(
        "alarm RAISED" in x and "lhasa-hotel/panel-1/equipment-pressure-low" in x for x in lines
    ), demo_run.stdout[-3000:]
    with InfluxDB(demo_run.data_dir / "services") as influx:
        [raised] = influx.query_points(
            "SELECT first(value) FROM alarm WHERE device = 'panel-1' "
            "AND rule = 'equipment-pressure-low' AND state = 'raise'",
            db="o2chain",
        )
        [first_supply] = influx.query_points("SELECT first(flow_m3h) FROM supply", db="o2chain")
        assert 0 <= raised["time"] - first_supply["time"] < 60_000, (raised, first_supply)
        before = influx.query_points(
            f"SELECT count(flow_m3h) FROM supply WHERE time <= {raised['time']}ms GROUP BY device",
            db="o2chain",
        )
        assert {p["device"] for p in before} == {"buffer-1", "panel-1", "manifold-1", "lox-1"}
        [zones] = influx.query_points(
            f"SELECT last(zone1_kpa) AS z1, last(zone2_kpa) AS z2, last(zone3_kpa) AS z3 "
            f"FROM supply WHERE device = 'panel-1' AND time <= {raised['time']}ms",
            db="o2chain",
        )
        # The panel sets its low bit when any zone's pressure is under 80 % of the normal
        # 400 kPa; the gauges it reports carry the simulator's noise (sigma 0.5 kPa), so the
        # lowest reported zone is within 5 sigma of 320 kPa and every zone has sagged.
        sagged = [zones["z1"], zones["z2"], zones["z3"]]
        assert min(sagged) < 320.0 + 2.5, zones
        assert max(sagged) < 360.0, zones  # the riser fails for all zones, not one branch


def test_demo_chain_balance_has_the_supply(demo_run: DemoRun) -> None:
    """The chain points carry the supply: stored oxygen, delivery where metered, use, and once
    the trends have their history the loss and the days of oxygen left."""
    with InfluxDB(demo_run.data_dir / "services") as influx:
        [last] = influx.query_points(
            "SELECT last(stored_o2_l) AS stored, last(stores_reporting) AS stores, "
            "last(delivered_metered_o2_lpm) AS metered, last(used_o2_lpm) AS used, "
            "last(loss_o2_lpm) AS loss, last(days_left) AS days, "
            "last(produced_o2_lpm) AS produced FROM chain WHERE site = 'lhasa-hotel'",
            db="o2chain",
        )
    # Buffer tank, manifold and LOX tank: about 2.1 million litres of O2 at Lhasa's pressure.
    assert last["stores"] == 3 and 1.9e6 < last["stored"] < 2.3e6, last
    # The zone valve box (43.2 Nm3/h of plant product), the LOX tank's 20 and the manifold's
    # 3 Nm3/h, at Lhasa's pressure: about 1,770 L/min of O2.
    assert 1600 < last["metered"] < 1900 and 900 < last["used"] < 1400, last
    # The LOX tank's boil-off (~23 L/min), and the riser leak (~78 L/min) once it started,
    # give or take the short trend's noise; a unit slip would be hundreds off.
    assert -150 < last["loss"] < 300, last
    assert 1.8 < last["days"] < 2.7, last  # mostly the LOX tank at 30 % drawing 20 Nm3/h


def test_demo_broker_takes_only_each_accounts_own_login(demo_run: DemoRun) -> None:
    """The demo's broker refused anonymous clients and every client logged in with its own
    account; started again from the same provisioned files, a board's credentials cannot pose
    as another board."""
    data, provision_dir = demo_run.data_dir, demo_run.data_dir / "provision"
    # As the demo ran it (read before the broker below rewrites its config and log).
    conf = (data / "services" / "mosquitto" / "mosquitto.conf").read_text()
    assert "allow_anonymous true" not in conf and conf.count("allow_anonymous false") == 2
    log = (data / "services" / "mosquitto" / "mosquitto.log").read_text()
    logins = re.findall(r"New client connected from \S+ as (\S+) \(p\d, c\d, k\d+(.*?)\)", log)
    users = [re.sub(r"^, u'(.*)'$", r"\1", rest) for _, rest in logins]
    assert logins and all(u and not u.startswith(",") for u in users), logins
    assert {"gateway", "lhasa-hotel/room-401", "lhasa-hotel/room-101"} <= set(users)
    assert len(set(users)) >= 24 + 2  # simulated rooms, the firmware board and the gateway
    board = json.loads((provision_dir / "boards" / "room-401" / "config.json").read_text())
    login = (board["mqtt"]["username"], board["mqtt"]["password"])
    with Mosquitto(data / "services", provision_dir=provision_dir) as broker:
        assert broker.gateway_port is not None and broker.ca_file is not None
        for port in (broker.port, broker.gateway_port):
            with MqttProbe(port, ca_file=broker.ca_file) as anon:
                assert anon.connect() in (134, 135)  # bad user name or password / not authorized
        with (
            MqttProbe(broker.port, username=login[0], password=login[1], ca_file=broker.ca_file,
                      client_id="o2-lhasa-hotel-room-101") as fake,
        ):  # fmt: skip
            assert fake.connect() == 0
            assert fake.publish("o2/lhasa-hotel/room-101/telemetry", b'{"o2_pct":12.5}') == 135
        with MqttProbe(
            broker.port, username=login[0], password=login[1], ca_file=broker.ca_file
        ) as own:
            assert own.connect() == 0
            assert own.publish("o2/lhasa-hotel/room-401/status", b'{"state":"online"}') == 0
            assert own.publish("o2/lhasa-hotel/room-102/status", b'{"state":"offline"}') == 135
