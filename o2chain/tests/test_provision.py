"""``o2chain provision``: the files it writes (modes, contents, re-runs, rotation) and, against
the real Mosquitto running with those files, what each account can and cannot do."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import ssl
import stat
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.passwords import verify_password
from o2base.services import HOST, Mosquitto, ServiceError, free_ports, mqtt_handshake
from o2chain.cli import main
from o2chain.provision import (
    ProvisionError,
    mosquitto_hash,
    mosquitto_verify,
    provision,
)
from o2chain.testing import MqttProbe, ProvisionedSite, write_site_inventory

INVENTORY = Path(__file__).resolve().parents[2] / "firmware" / "inventory.example.toml"
NOT_AUTHORIZED = 135  # MQTT 5 reason code (PUBACK, CONNACK, SUBACK)
BAD_LOGIN = (134, 135)  # CONNACK: bad user name or password / not authorized


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def example(tmp_path: Path) -> Path:
    out = tmp_path / "site"
    provision(INVENTORY, out)
    return out


# -- files ------------------------------------------------------------------------------------


def test_every_file_is_0600_and_every_dir_0700(example: Path) -> None:
    for path in [example, *example.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {oct(mode)}"
    for key in ("ca/ca.key", "broker/server.key", "gateway/mqtt-password", "gateway/users.toml"):
        assert (example / key).is_file()


def test_board_config_holds_its_own_account_ca_and_command_key(example: Path) -> None:
    keys = json.loads((example / "operator" / "command_keys.json").read_text())
    assert set(keys) == {"lhasa-hotel/room-101", "lhasa-hotel/room-102", "lhasa-hotel/oc-lobby"}
    passwords = set()
    for device in ("room-101", "room-102", "oc-lobby"):
        cfg = json.loads((example / "boards" / device / "config.json").read_text())
        assert cfg["device"] == device
        assert cfg["mqtt"]["username"] == f"lhasa-hotel/{device}"
        assert cfg["mqtt"]["password"] != "change-me" and len(cfg["mqtt"]["password"]) >= 32
        passwords.add(cfg["mqtt"]["password"])
        assert cfg["mqtt"]["tls"] == {
            "ca_file": "/ca.pem",
            "server_hostname": "mqtt.lhasa-hotel.local",
        }
        assert (example / "boards" / device / "ca.pem").read_bytes() == (
            example / "ca" / "ca.pem"
        ).read_bytes()
        assert cfg["command_key"] == keys[f"lhasa-hotel/{device}"]
        assert len(bytes.fromhex(cfg["command_key"])) == 32
        assert cfg["wifi"]["ssid"] == "hotel-iot"  # the rest of the inventory is kept
    assert len(passwords) == 3
    # Still a config the firmware accepts.
    from o2chain.firmware_runner import load_firmware_file

    schema = load_firmware_file("config")
    schema.validate(json.loads((example / "boards" / "oc-lobby" / "config.json").read_text()))


def test_broker_certificate_is_signed_by_the_site_ca_for_every_broker_name(example: Path) -> None:
    ca = x509.load_pem_x509_certificate((example / "ca" / "ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((example / "broker" / "server.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(n) for n in san.get_values_for_type(x509.IPAddress)}
    names |= set(san.get_values_for_type(x509.DNSName))
    assert names == {"127.0.0.1", "localhost", "192.168.1.10", "mqtt.lhasa-hotel.local"}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_passwd_and_acl_give_each_account_its_own_topics(example: Path) -> None:
    passwd = (example / "broker" / "devices.passwd").read_text().splitlines()
    users = [line.rpartition(":")[0] for line in passwd]
    assert users == [
        "lhasa-hotel/room-101", "lhasa-hotel/room-102", "lhasa-hotel/oc-lobby",
        "operator", "dashboard",
    ]  # fmt: skip
    cfg = json.loads((example / "boards" / "room-101" / "config.json").read_text())
    assert mosquitto_verify(cfg["mqtt"]["password"], passwd[0].rpartition(":")[2])
    assert not mosquitto_verify(cfg["mqtt"]["password"], passwd[1].rpartition(":")[2])
    gw_passwd = (example / "broker" / "gateway.passwd").read_text()
    assert gw_passwd.startswith("gateway:$7$") and "room-101" not in gw_passwd
    acl = (example / "broker" / "devices.acl").read_text()
    block = acl.split("user lhasa-hotel/room-101\n")[1].split("\n\n")[0].splitlines()
    assert block == [
        "topic write o2/lhasa-hotel/room-101/telemetry",
        "topic write o2/lhasa-hotel/room-101/status",
        "topic write o2/lhasa-hotel/room-101/alarm",
        "topic write o2/lhasa-hotel/room-101/cmd/ack",
        "topic read o2/lhasa-hotel/room-101/cmd",
    ]
    gateway_acl = (example / "broker" / "gateway.acl").read_text()
    assert "topic write o2/+/gateway/gw-1/alarm/#" in gateway_acl
    # Of $SYS only the broker's dropped-message count (the gateway's metrics show it).
    assert [line for line in gateway_acl.splitlines() if "$SYS" in line] == [
        "topic read $SYS/broker/publish/messages/dropped"
    ]
    conf = (example / "broker" / "o2chain.conf").read_text()
    assert "allow_anonymous true" not in conf and conf.count("allow_anonymous false") == 2
    assert "use_username_as_clientid true" in conf


def test_a_group_of_gateways_gets_its_alarm_and_presence_topics(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.toml"
    doc = tomllib.loads(INVENTORY.read_text())
    doc.setdefault("gateway", {})["group"] = "lhasa-gws"
    inventory.write_bytes(tomli_w.dumps(doc).encode())
    provision(inventory, tmp_path / "site")
    acl = (tmp_path / "site" / "broker" / "gateway.acl").read_text()
    assert "topic write o2/+/gateway/lhasa-gws/alarm/#" in acl
    assert "topic write o2/_group/lhasa-gws/#" in acl
    snippet = tomllib.loads((tmp_path / "site" / "gateway" / "gateway.toml").read_text())
    assert snippet["mqtt"]["shared_group"] == "lhasa-gws"
    doc["gateway"]["group"] = "no spaces"
    inventory.write_bytes(tomli_w.dumps(doc).encode())
    with pytest.raises(ProvisionError, match=r"\[gateway\] group"):
        provision(inventory, tmp_path / "site2")


def test_gateway_snippet_and_web_users(example: Path) -> None:
    snippet = tomllib.loads((example / "gateway" / "gateway.toml").read_text())
    assert snippet["mqtt"]["url"] == "mqtts://127.0.0.1:8884"
    assert snippet["mqtt"]["username"] == "gateway"
    assert Path(snippet["mqtt"]["password_file"]) == example.resolve() / "gateway" / "mqtt-password"
    assert snippet["http"]["users_file"] == str(example.resolve() / "gateway" / "users.toml")
    provision(INVENTORY, example, gateway_path=Path("/etc/o2chain/gw"), broker_path=Path("/b"))
    moved = tomllib.loads((example / "gateway" / "gateway.toml").read_text())
    assert moved["mqtt"]["password_file"] == "/etc/o2chain/gw/mqtt-password"
    assert moved["http"]["users_file"] == "/etc/o2chain/gw/users.toml"
    assert "password_file /b/devices.passwd" in (example / "broker" / "o2chain.conf").read_text()
    users = tomllib.loads((example / "gateway" / "users.toml").read_text())["user"]
    assert [(u["name"], u["role"]) for u in users] == [("admin", "admin"), ("operator", "operator")]
    initial = (example / "operator" / "initial-passwords.txt").read_text().splitlines()
    logins = dict(line.split() for line in initial if not line.startswith("#"))
    for u in users:
        assert verify_password(logins[u["name"]], u["password_hash"])


def test_rerun_changes_nothing_and_keeps_every_secret(example: Path) -> None:
    before = snapshot(example)
    result = provision(INVENTORY, example)
    assert result.changed == [] and result.web_passwords == {}
    assert snapshot(example) == before


def test_rotate_one_board_changes_only_its_secrets(example: Path) -> None:
    before = snapshot(example)
    provision(INVENTORY, example, ["room-102"])
    after = snapshot(example)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {
        "boards/room-102/config.json", "broker/devices.passwd", "operator/command_keys.json",
    }  # fmt: skip
    old = json.loads(before["boards/room-102/config.json"])
    new = json.loads(after["boards/room-102/config.json"])
    assert old["mqtt"]["password"] != new["mqtt"]["password"]
    assert old["command_key"] != new["command_key"]
    # The other boards' passwd lines are the same bytes: their hashes were kept.
    old_lines = before["broker/devices.passwd"].decode().splitlines()
    new_lines = after["broker/devices.passwd"].decode().splitlines()
    assert [a == b for a, b in zip(old_lines, new_lines, strict=True)] == [
        True, False, True, True, True,
    ]  # fmt: skip


def test_rotate_ca_issues_new_ca_and_server_certificate(example: Path) -> None:
    before = snapshot(example)
    result = provision(INVENTORY, example, ["ca"])
    after = snapshot(example)
    for name in ("ca/ca.key", "ca/ca.pem", "broker/server.pem", "boards/room-101/ca.pem"):
        assert before[name] != after[name], name
    assert before["broker/server.key"] == after["broker/server.key"]  # only `server` rotates it
    assert before["boards/room-101/config.json"] == after["boards/room-101/config.json"]
    assert any("re-flash" in n for n in result.notes)
    ca = x509.load_pem_x509_certificate(after["ca/ca.pem"])
    x509.load_pem_x509_certificate(after["broker/server.pem"]).verify_directly_issued_by(ca)


def test_rotate_gateway_and_web(example: Path) -> None:
    before = snapshot(example)
    result = provision(INVENTORY, example, ["gateway", "web"])
    after = snapshot(example)
    assert before["gateway/mqtt-password"] != after["gateway/mqtt-password"]
    assert before["broker/gateway.passwd"] != after["broker/gateway.passwd"]
    assert before["broker/devices.passwd"] == after["broker/devices.passwd"]
    assert set(result.web_passwords) == {"admin", "operator"}
    assert before["gateway/users.toml"] != after["gateway/users.toml"]


def test_removed_board_loses_its_account(tmp_path: Path, example: Path) -> None:
    text = INVENTORY.read_text().split("[devices.oc-lobby]")[0]
    smaller = tmp_path / "smaller.toml"
    smaller.write_text(text)
    result = provision(smaller, example)
    assert "oc-lobby" not in (example / "broker" / "devices.passwd").read_text()
    assert "oc-lobby" not in (example / "broker" / "devices.acl").read_text()
    assert "lhasa-hotel/oc-lobby" not in json.loads(
        (example / "operator" / "command_keys.json").read_text()
    )
    assert any("oc-lobby" in n for n in result.notes)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ('[devices.gateway]\nkind = "room"\n', "device gateway: the name is taken"),
        ('[devices.room-9]\nkind = "room"\nmqtt = { port = 1883 }\n', "device room-9: mqtt.port"),
        ('[devices.room-9]\nkind = "lamp"\n', "room-9"),
        ("[broker]\nport = 8883\ngateway_port = 8883\n", "[broker] gateway_port"),
        ("[broker]\nbogus = 1\n", "[broker] bogus: unknown key"),
        ('[devices.web]\nkind = "room"\n', "device web: the name is reserved"),
    ],
)
def test_bad_inventory_is_refused_naming_device_and_key(
    tmp_path: Path, edit: str, message: str
) -> None:
    inventory = tmp_path / "inv.toml"
    inventory.write_text(INVENTORY.read_text() + "\n" + edit)
    with pytest.raises(ProvisionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        provision(inventory, tmp_path / "out")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_gateway_and_broker_files_go_to_their_users(tmp_path: Path) -> None:
    out = tmp_path / "site"
    provision(INVENTORY, out, gateway_user="nobody", broker_user="daemon")
    nobody, daemon = pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("daemon").pw_uid
    assert {p.stat().st_uid for p in [out / "gateway", *(out / "gateway").iterdir()]} == {nobody}
    assert {p.stat().st_uid for p in [out / "broker", *(out / "broker").iterdir()]} == {daemon}
    assert (out / "ca" / "ca.key").stat().st_uid == os.geteuid()  # the CA key stays ours
    with pytest.raises(ProvisionError, match="user 'no-such-user-x': no such user"):
        provision(INVENTORY, out, gateway_user="no-such-user-x")


def test_secure_broker_needs_a_provisioned_dir(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "services", provision_dir=tmp_path / "empty")
    assert broker.url.startswith("mqtts://") and broker.gateway_port not in (None, broker.port)
    with pytest.raises(ServiceError, match="empty/broker: not a provisioned broker dir"):
        broker.start()


def test_board_without_port_or_certificate_name_gets_the_brokers(tmp_path: Path) -> None:
    inventory = tmp_path / "inv.toml"
    inventory.write_text(
        '[defaults]\nsite = "s"\nsite_altitude_m = 3650\nmqtt = { host = "10.0.0.2" }\n'
        '[devices.room-1]\nkind = "room"\n'
        '[broker]\nhosts = ["10.0.0.3", "mqtt.s.example"]\n'
    )
    provision(inventory, tmp_path / "out")
    mqtt = json.loads((tmp_path / "out" / "boards" / "room-1" / "config.json").read_text())["mqtt"]
    assert mqtt["port"] == 8883
    assert mqtt["tls"] == {"ca_file": "/ca.pem", "server_hostname": "mqtt.s.example"}
    pem = (tmp_path / "out" / "broker" / "server.pem").read_bytes()
    san = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "mqtt.s.example" in san.value.get_values_for_type(x509.DNSName)


def test_rotate_unknown_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="--rotate room-999: expected a device id"):
        provision(INVENTORY, tmp_path / "out", ["room-999"])


def test_cli_prints_web_logins_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "site"
    assert main(["provision", "-i", str(INVENTORY), "-o", str(out)]) == 0
    first = capsys.readouterr().out
    initial = (out / "operator" / "initial-passwords.txt").read_text()
    admin_pw = next(line.split()[1] for line in initial.splitlines() if line.startswith("admin "))
    assert admin_pw in first and str(out / "operator" / "initial-passwords.txt") in first
    assert main(["provision", "-i", str(INVENTORY), "-o", str(out)]) == 0
    second = capsys.readouterr().out
    assert admin_pw not in second and "unchanged" in second
    assert main(["provision", "-i", str(tmp_path / "missing.toml"), "-o", str(out)]) == 2
    assert "missing.toml: cannot read" in capsys.readouterr().err


def test_hash_format_is_mosquittos_own(tmp_path: Path) -> None:
    """Our $7$ verifier accepts what mosquitto_passwd writes (the broker accepting ours is
    proven by every connection of the integration tests below)."""
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "u", "pw-1"], check=True)
    stored = passwd.read_text().strip().rpartition(":")[2]
    assert mosquitto_verify("pw-1", stored) and not mosquitto_verify("pw-2", stored)
    ours = mosquitto_hash("pw-1", salt=b"0123456789ab")
    assert ours.startswith("$7$101$MDEyMzQ1Njc4OWFi$") and mosquitto_verify("pw-1", ours)


# -- against the real Mosquitto ---------------------------------------------------------------

T = "o2/test-site"


@pytest.mark.integration
def test_anonymous_and_plain_tcp_are_refused(provisioned_site: ProvisionedSite) -> None:
    site = provisioned_site
    for gateway in (False, True):
        with site.client(None, None, gateway=gateway) as anon:
            assert anon.connect() in BAD_LOGIN
            assert not anon.connected.is_set()
    user, _ = site.board_login("room-a")
    with site.client(user, "wrong-password") as wrong:
        assert wrong.connect() in BAD_LOGIN
    # Without TLS the broker never answers MQTT: the connection ends without a CONNACK.
    plain = MqttProbe(site.broker.port, username=user, password="x", timeout_s=5.0)
    with contextlib.suppress(OSError):
        assert plain.connect() != 0
    assert not plain.connected.is_set()
    plain.close()


def refused(
    site: ProvisionedSite,
    login: tuple[str, str],
    topic: str,
    payload: bytes = b"forged",
    *,
    retain: bool = False,
    protocol: int = 5,
) -> None:
    """Publish from a connection of its own and check the broker refused it (MQTT 5: PUBACK
    135). Mosquitto 2.0 then also ends that connection, so nothing else is sent on it."""
    with site.client(*login, protocol=protocol) as p:
        assert p.connect() == 0
        code = p.publish(topic, payload, retain=retain)
        assert code == (NOT_AUTHORIZED if protocol == 5 else 0), topic  # fmt: skip


@pytest.mark.integration
def test_board_cannot_publish_as_another_board(provisioned_site: ProvisionedSite) -> None:
    site = provisioned_site
    a_login = site.board_login("room-a")
    with (
        site.client("gateway", site.service_password("gateway"), gateway=True) as gw,
        site.client(*a_login) as a,
        site.client(*site.board_login("room-b")) as b,
    ):
        assert gw.connect() == 0 and a.connect() == 0 and b.connect() == 0
        assert gw.subscribe("o2/#") == 1
        assert a.publish(f"{T}/room-a/telemetry", b"a-own") == 0
        refused(site, a_login, f"{T}/room-b/telemetry", b"forged")
        refused(site, a_login, f"{T}/room-b/status", b'{"state":"offline"}', retain=True)
        refused(site, a_login, f"{T}/gateway/gw-test/alarm/room-b/x", b"fake", retain=True)
        refused(site, a_login, f"{T}/gateway/gw-test/alarm/room-b/x", b"", retain=True)
        refused(site, a_login, f"{T}/room-b/cmd", b"reboot")
        refused(site, a_login, f"{T}/room-b/telemetry", b"forged-311", protocol=4)
        # room-b's own message after those: the gateway got everything that was allowed.
        assert b.publish(f"{T}/room-b/telemetry", b"marker") == 0
        gw.wait_for(f"{T}/room-b/telemetry", b"marker")
        payloads = [m[1] for m in gw.messages]
        assert b"a-own" in payloads
        assert not {b"forged", b"fake", b"forged-311", b'{"state":"offline"}'} & set(payloads)
    # Nothing was retained: a new reader sees only the marker it waits for.
    with site.client("dashboard", site.service_password("dashboard")) as d:
        assert d.connect() == 0 and d.subscribe("o2/#") == 1
        with site.client(*site.board_login("room-b")) as b2:
            assert b2.connect() == 0
            assert b2.publish(f"{T}/room-b/telemetry", b"marker-2") == 0
        d.wait_for(f"{T}/room-b/telemetry", b"marker-2")
        assert [m for m in d.messages if m[2]] == []


@pytest.mark.integration
def test_board_cannot_read_others_data(provisioned_site: ProvisionedSite) -> None:
    site = provisioned_site
    with (
        site.client(*site.board_login("room-a")) as a,
        site.client(*site.board_login("room-b")) as b,
        site.client("operator", site.service_password("operator")) as op,
    ):
        assert a.connect() == 0 and b.connect() == 0 and op.connect() == 0
        a.subscribe("o2/#")  # granted or not, nothing of room-b's may come through it
        a.subscribe(f"{T}/room-b/cmd")
        assert b.publish(f"{T}/room-b/telemetry", b"b-data") == 0
        assert op.publish(f"{T}/room-b/cmd", b"for-b") == 0
        assert op.publish(f"{T}/room-a/cmd", b"for-a") == 0  # after the others
        a.wait_for(f"{T}/room-a/cmd", b"for-a")
        assert {m[1] for m in a.messages} == {b"for-a"}


@pytest.mark.integration
def test_will_on_another_boards_status_is_not_published(provisioned_site: ProvisionedSite) -> None:
    site = provisioned_site
    with (
        site.client("dashboard", site.service_password("dashboard")) as d,
        site.client(*site.board_login("room-b")) as b,
    ):
        assert d.connect() == 0 and b.connect() == 0 and d.subscribe("o2/#") == 1
        for topic, payload in (
            (f"{T}/room-b/status", b"forged-will"),
            (f"{T}/room-a/status", b"own-will"),
        ):
            p = site.client(*site.board_login("room-a"), will=(topic, payload, True))
            assert p.connect() == 0
            p.client.loop_stop()
            p.client.socket().close()  # type: ignore[union-attr]  # no DISCONNECT: the will fires
        d.wait_for(f"{T}/room-a/status", b"own-will")  # the allowed will comes through ...
        assert b.publish(f"{T}/room-b/telemetry", b"marker") == 0
        d.wait_for(f"{T}/room-b/telemetry", b"marker")
        assert b"forged-will" not in [m[1] for m in d.messages]  # ... the forged one never


@pytest.mark.integration
def test_nobody_takes_another_accounts_client_id(provisioned_site: ProvisionedSite) -> None:
    site = provisioned_site
    gateway_id = f"o2chain-{site.gateway_id}"
    with (
        site.client(
            "gateway", site.service_password("gateway"), gateway=True, client_id=gateway_id
        ) as gw,
        site.client(*site.board_login("room-b"), client_id="o2-test-site-room-b") as b,
    ):
        assert gw.connect() == 0 and b.connect() == 0
        for stolen in (gateway_id, "o2-test-site-room-b", "test-site/room-b"):
            for login in (
                site.board_login("room-a"),
                ("dashboard", site.service_password("dashboard")),
            ):
                with site.client(*login, client_id=stolen) as a:
                    assert a.connect() == 0
                    assert a.subscribe(f"{T}/room-a/cmd") == 1  # a round trip: fully connected
        # Both victims are still connected: a round trip each, and no disconnect seen.
        assert gw.publish(f"{T}/gateway/{site.gateway_id}/alarm", b"{}") == 0
        assert b.publish(f"{T}/room-b/telemetry", b"still-here") == 0
        assert not gw.disconnected.is_set() and not b.disconnected.is_set()
    # A board's password is not valid on the gateway's listener at all.
    with site.client(*site.board_login("room-a"), gateway=True, client_id=gateway_id) as a:
        assert a.connect() in BAD_LOGIN


@pytest.mark.integration
def test_operator_commands_gateway_alarms_dashboard_reads(
    provisioned_site: ProvisionedSite,
) -> None:
    site = provisioned_site
    alarm = f"{T}/gateway/{site.gateway_id}/alarm/room-a/o2-high"
    op_login = ("operator", site.service_password("operator"))
    dash_login = ("dashboard", site.service_password("dashboard"))
    with (
        site.client("gateway", site.service_password("gateway"), gateway=True) as gw,
        site.client(*op_login) as op,
        site.client(*site.board_login("room-a")) as a,
    ):
        assert gw.connect() == 0 and op.connect() == 0 and a.connect() == 0
        assert a.subscribe(f"{T}/room-a/cmd") == 1 and op.subscribe("o2/+/+/cmd/ack") == 1
        assert op.publish(f"{T}/room-a/cmd", b'{"id":"1","cmd":"report_config"}') == 0
        a.wait_for(f"{T}/room-a/cmd")
        assert a.publish(f"{T}/room-a/cmd/ack", b'{"id":"1","ok":true}') == 0
        op.wait_for(f"{T}/room-a/cmd/ack")
        assert gw.publish(alarm, b'{"event":"raise"}', retain=True) == 0
    refused(site, op_login, f"{T}/room-a/telemetry", b"{}")
    refused(site, op_login, alarm, b"fake", retain=True)
    refused(site, dash_login, f"{T}/room-a/cmd", b"x")
    refused(site, dash_login, alarm, b"", retain=True)  # cannot erase it either
    with site.client(*dash_login) as d:
        assert d.connect() == 0 and d.subscribe("o2/#") == 1
        assert d.wait_for(alarm)[1:] == (b'{"event":"raise"}', True)


@pytest.mark.integration
def test_simulated_fleet_logs_in_with_each_boards_account(
    provisioned_site: ProvisionedSite,
) -> None:
    """The fleet simulator (``o2chain sim run`` in the demo) connects each board over TLS with
    its provisioned account: both boards' readings arrive, each under its own username."""
    import asyncio

    from simulators.fleet import Fleet, FleetConfig

    site = provisioned_site
    config = FleetConfig(
        host="127.0.0.1", port=site.broker.port, site="test-site", boards=2, interval_s=0.0,
        readings=5, device_format="room-{n}", first_board=0, provision_dir=str(site.dir),
        timeout_s=60.0,
    )  # fmt: skip
    with site.client("gateway", site.service_password("gateway"), gateway=True) as gw:
        assert gw.connect() == 0 and gw.subscribe("o2/+/+/telemetry") == 1
        summary = asyncio.run(Fleet(config, device_ids=["room-a", "room-b"]).run())
        assert summary.complete and summary.readings_sent == 10
        gw.wait_for(f"{T}/room-a/telemetry")
        gw.wait_for(f"{T}/room-b/telemetry")
    log = site.broker.log_path.read_text()
    assert "u'test-site/room-a'" in log and "u'test-site/room-b'" in log
    # Without its provisioned files a board says which file it needs.
    bad = FleetConfig(
        host="127.0.0.1", port=site.broker.port, site="test-site", boards=1, interval_s=0.0,
        readings=1, provision_dir=str(site.dir / "nowhere"), timeout_s=5.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"board room-0001: .*nowhere/boards/room-0001"):
        asyncio.run(Fleet(bad).run())


@pytest.mark.integration
def test_broker_snippet_works_from_a_debian_style_include_dir(tmp_path: Path) -> None:
    """``broker/o2chain.conf`` as written for a site, dropped into a conf.d directory that a main
    config like Debian's includes: Mosquitto starts with it, refuses anonymous clients and
    takes a board's provisioned login."""
    port, gateway_port = free_ports(2)
    inventory = write_site_inventory(
        tmp_path / "inv.toml", {"room-a": {"kind": "room"}}, port=port, gateway_port=gateway_port
    )
    out = tmp_path / "site"
    provision(inventory, out)
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    shutil.copy(out / "broker" / "o2chain.conf", conf_d / "o2chain.conf")
    main_conf = tmp_path / "mosquitto.conf"
    main_conf.write_text(
        # Debian's /etc/mosquitto/mosquitto.conf, with our paths (and `user root` as in
        # o2base/templates/mosquitto.conf.tmpl, so a root test run can read its temp dir).
        f"persistence true\npersistence_location {tmp_path}/\nlog_dest stderr\n"
        f"{'user root' if os.geteuid() == 0 else ''}\ninclude_dir {conf_d}\n"
    )
    ca = ssl.create_default_context(cafile=str(out / "ca" / "ca.pem"))
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen(["mosquitto", "-c", str(main_conf)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while not mqtt_handshake(HOST, port, 0.5, ssl_context=ca, refused_is_answer=True):
            assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
            assert time.monotonic() < deadline, "broker not ready in 15 s"
            with contextlib.suppress(subprocess.TimeoutExpired):  # returns early if it dies
                proc.wait(timeout=0.05)
        assert not mqtt_handshake(HOST, port, 2.0, ssl_context=ca)  # anonymous: refused
        board = json.loads((out / "boards" / "room-a" / "config.json").read_text())["mqtt"]
        with MqttProbe(
            port,
            username=board["username"],
            password=board["password"],
            ca_file=out / "ca" / "ca.pem",
        ) as probe:
            assert probe.connect() == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
