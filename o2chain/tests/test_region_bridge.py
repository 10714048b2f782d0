"""The region bridge through real Mosquitto brokers (loopback): `o2chain region provision` writes
the central broker's CA, accounts and ACL and a bundle per facility; the facility's `o2chain
provision` turns its bundle into a Mosquitto bridge. Alarm and status events reach the central
broker remapped under the facility, QoS 1 over TLS, queued while the central broker is down;
a facility's account writes only its own prefix."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w

from o2base.services import Mosquitto, free_ports
from o2chain.provision import ProvisionError, provision
from o2chain.region_provision import VIEWER_USER, bridge_conf, provision_region
from o2chain.testing import MqttProbe, write_site_inventory

pytestmark = pytest.mark.integration

SITE = "lhasa-hotel"
OTHER = "nyingchi-clinic"
GW = "gw-test"


def write_region(path: Path, port: int, host: str = "127.0.0.1", db_url: str = "") -> Path:
    doc = {
        "region": {"id": "test-region"},
        "broker": {"hosts": [host], "port": port, "bind": host},
        "database": {"url": db_url or f"http://{host}:8086", "database": "o2region"},
        "facilities": {SITE: {}, OTHER: {}},
    }
    path.write_bytes(tomli_w.dumps(doc).encode())
    return path


@dataclass
class Region:
    dir: Path
    central: Mosquitto
    site_dir: Path
    site: Mosquitto

    def viewer(self) -> MqttProbe:
        pw = (self.dir / "viewer" / "mqtt-password").read_text().strip()
        return MqttProbe(
            self.central.port,
            username=VIEWER_USER,
            password=pw,
            ca_file=self.dir / "viewer" / "ca.pem",
            protocol=4,
        )

    def facility_login(self, facility: str) -> MqttProbe:
        bridge = json.loads((self.dir / "facilities" / facility / "bridge.json").read_text())
        return MqttProbe(
            self.central.port,
            username=bridge["username"],
            password=bridge["password"],
            ca_file=self.dir / "broker" / "ca.pem",
        )

    def gateway(self) -> MqttProbe:
        pw = (self.site_dir / "gateway" / "mqtt-password").read_text().strip()
        assert self.site.gateway_port is not None
        return MqttProbe(
            self.site.gateway_port, username="gateway", password=pw, ca_file=self.site.ca_file
        )


@pytest.fixture
def region(tmp_path: Path) -> Iterator[Region]:
    central_port, site_port, gw_port = free_ports(3)
    region_dir = tmp_path / "region"
    provision_region(write_region(tmp_path / "region.toml", central_port), region_dir)
    central = Mosquitto(
        tmp_path / "central",
        central_port,
        listeners=(region_dir / "broker" / "o2region.conf").read_text(),
    )
    inventory = write_site_inventory(
        tmp_path / "inventory.toml",
        {"room-a": {"kind": "room"}},
        port=site_port,
        gateway_port=gw_port,
        site=SITE,
        gateway_id=GW,
    )
    doc = inventory.read_text() + f'\n[region]\nbundle = "region/facilities/{SITE}"\n'
    inventory.write_text(doc)
    provision(inventory, tmp_path / "site")
    site = Mosquitto(
        tmp_path / "site-broker", site_port, provision_dir=tmp_path / "site", gateway_port=gw_port
    )
    with central, site:
        yield Region(region_dir, central, tmp_path / "site", site)


def alarm_topic(prefix: str, site: str, rule: str) -> str:
    return f"{prefix}/{site}/gateway/{GW}/alarm/room-a/{rule}"


def test_provisioned_bridge_carries_alarms_and_status_under_the_facility(region: Region) -> None:
    conf = (region.site_dir / "broker" / "o2chain.conf").read_text()
    assert "cleansession false" in conf and f"address 127.0.0.1:{region.central.port}" in conf
    state = json.dumps({"state": "active", "severity": "alarm"}).encode()
    with region.viewer() as viewer, region.gateway() as gw:
        assert viewer.connect() == 0 and gw.connect() == 0
        assert viewer.subscribe("region/#") == 1
        assert gw.publish(alarm_topic("o2", SITE, "o2-low"), state, retain=True) == 0
        _, payload, _ = viewer.wait_for(alarm_topic("region", SITE, "o2-low"))
        assert payload == state
        # The bridge reports itself on the central broker (its will says when it drops).
        viewer.wait_for(f"region/{SITE}/bridge/state", b"1")
    # Retained at the centre: a region view that connects later sees the active alarm.
    with region.viewer() as late:
        assert late.connect() == 0 and late.subscribe(f"region/{SITE}/gateway/#") == 1
        _, payload, retained = late.wait_for(alarm_topic("region", SITE, "o2-low"))
        assert payload == state and retained
    # A board's status (retained) goes the same way; its telemetry does not.
    board_cfg = json.loads((region.site_dir / "boards" / "room-a" / "config.json").read_text())
    board = MqttProbe(
        region.site.port,
        username=board_cfg["mqtt"]["username"],
        password=board_cfg["mqtt"]["password"],
        ca_file=region.site.ca_file,
    )
    with region.viewer() as viewer, board:
        assert viewer.connect() == 0 and board.connect() == 0
        assert viewer.subscribe("region/#") == 1
        assert board.publish(f"o2/{SITE}/room-a/telemetry", b'{"v":1}') == 0
        assert board.publish(f"o2/{SITE}/room-a/status", b'{"state":"online"}', retain=True) == 0
        viewer.wait_for(f"region/{SITE}/room-a/status", b'{"state":"online"}')
        assert not [m for m in viewer.messages if m[0].endswith("/telemetry")]


def test_events_wait_at_the_facility_while_the_centre_is_down(region: Region) -> None:
    with region.gateway() as gw:
        assert gw.connect() == 0
        region.central.stop()
        # Published while the central broker is away: the bridge's persistent session queues
        # them at the facility broker (QoS 1) and delivers them when it is back.
        for n in range(5):
            topic = alarm_topic("o2", SITE, f"rule-{n}")
            assert gw.publish(topic, f"state-{n}".encode(), retain=True) == 0
        assert gw.publish(alarm_topic("o2", SITE, "rule-0"), b"", retain=True) == 0  # cleared
        region.central.start()
        with region.viewer() as viewer:
            assert viewer.connect() == 0 and viewer.subscribe(f"region/{SITE}/gateway/#") == 1
            # A marker published now travels behind the queued events (one session, in order).
            assert gw.publish(f"o2/{SITE}/gateway/{GW}/alarm", b"marker") == 0
            viewer.wait_for(f"region/{SITE}/gateway/{GW}/alarm", b"marker")
    with region.viewer() as late:
        assert late.connect() == 0 and late.subscribe(f"region/{SITE}/gateway/#") == 1
        for n in range(1, 5):
            _, payload, retained = late.wait_for(alarm_topic("region", SITE, f"rule-{n}"))
            assert payload == f"state-{n}".encode() and retained
        assert late.publish(f"region/{SITE}/x", b"") == 0  # a round trip: retained ones came
        assert not [m for m in late.messages if m[0].endswith("/rule-0")], (
            "an alarm cleared while the WAN was down must not stand at the centre"
        )


def test_a_facility_writes_only_its_own_prefix(region: Region) -> None:
    with region.viewer() as viewer, region.facility_login(SITE) as lhasa:
        assert viewer.connect() == 0 and lhasa.connect() == 0
        assert viewer.subscribe("region/#") == 1
        assert lhasa.publish(f"region/{OTHER}/gateway/gw-1/alarm/x/y", b"forged") == 135
        assert lhasa.publish(f"region/{SITE}/probe", b"mine") == 0
        viewer.wait_for(f"region/{SITE}/probe", b"mine")  # after the forged one, same client
        assert not [m for m in viewer.messages if m[0].startswith(f"region/{OTHER}/")]
        assert viewer.publish(f"region/{SITE}/probe", b"viewer") == 0  # MQTT 3.1.1: no code
    assert not [m for m in viewer.messages if m[1] == b"viewer"], "the viewer only reads"


def test_a_bundle_that_is_not_one_is_refused_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "bridge.json").write_text("{}")
    with pytest.raises(ProvisionError, match=r"bundle.*bridge\.json"):
        bridge_conf(tmp_path / "bundle", topic_prefix="o2", ca_path=tmp_path / "ca.pem")
