"""``o2chain region provision``: the central tier's secrets and access rules, and one bundle per
facility that the facility's own ``o2chain provision`` turns into a Mosquitto bridge.

    o2chain region provision -i REGION.toml -o DIR

The region inventory::

    [region]
    id = "tibet-east"                       # the region CA's name
    [broker]
    hosts = ["central.example"]             # the central broker's names/addresses (certificate;
                                            # the first is what bridges connect to)
    port = 8885                             # its TLS listener
    bind = ""                               # its address ("" = every interface)
    [database]
    url = "https://central.example:8086"    # the central InfluxDB (1.x, auth-enabled)
    database = "o2region"
    [facilities.lhasa-hotel]                # one table per facility (its id is its site id)
    [facilities.nyingchi-clinic]
    sites = ["nyingchi-clinic", "nyingchi-lab"]   # more sites behind one facility broker

What ``DIR`` holds afterwards (directories 0700, files 0600)::

    ca/ca.key, ca/ca.pem                 the region's private CA (not the sites' CAs)
    broker/server.key, server.pem, ca.pem   the central broker's certificate
    broker/region.passwd, region.acl     one account per facility (writes only
                                         region/<its sites>/#) and `region-viewer` (reads)
    broker/o2region.conf                 the listener that uses them (include it in Mosquitto)
    facilities/<id>/bridge.json          the facility's bridge account and where the central
                 region-ca.pem           broker is: give this folder to the facility, whose
                 central.toml            `o2chain provision` writes the bridge (inventory
                 central-password        [region] bundle = "<folder>"); central.toml is the
                                         gateway's [central] section (its database login)
    viewer/region.toml, mqtt-password,   the region view's logins (`o2chain region serve -c
           influx-password, ca.pem       viewer/region.toml`)
    influx/users.iql                     InfluxQL creating the database and the logins: one
                                         writer per facility, `region-viewer` reading

Re-running keeps every secret; ``--rotate NAME`` (a facility id, ``viewer``, ``server`` or
``ca``) replaces one. docs/scaling.md, "Region", explains what runs where.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from o2chain.provision import (
    ProvisionError,
    _acl,
    _ca_for,
    _is_name,
    _passwd,
    _port,
    _read_toml,
    _Run,
    _server_cert,
    _table,
)

REGION_PREFIX = "region"  # central topics: region/<site>/...
VIEWER_USER = "region-viewer"
DEFAULT_REGION_PORT = 8885
ROLE_TARGETS = ("viewer", "server", "ca")


@dataclass(frozen=True)
class Facility:
    id: str
    sites: tuple[str, ...]


@dataclass(frozen=True)
class RegionInventory:
    region_id: str
    hosts: tuple[str, ...]
    port: int
    bind: str
    database_url: str
    database: str
    facilities: tuple[Facility, ...]


def load_region(path: Path) -> RegionInventory:
    """The region inventory; raises ProvisionError naming the file, table and key."""
    doc = _read_toml(path)
    region = _table(doc, "region", path)
    broker = _table(doc, "broker", path)
    database = _table(doc, "database", path)
    facilities = _table(doc, "facilities", path)
    for name, table, keys in (
        ("region", region, {"id"}),
        ("broker", broker, {"hosts", "port", "bind"}),
        ("database", database, {"url", "database"}),
    ):
        unknown = sorted(set(table) - keys)
        if unknown:
            raise ProvisionError(f"{path}: [{name}] {unknown[0]}: unknown key")
    region_id = region.get("id", "region")
    if not isinstance(region_id, str) or not _is_name(region_id):
        raise ProvisionError(f"{path}: [region] id: expected 1..32 of [a-z0-9-], got {region_id!r}")
    hosts = broker.get("hosts")
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and h for h in hosts):
        raise ProvisionError(
            f"{path}: [broker] hosts: expected the central broker's names, e.g. "
            '["central.example"] (bridges connect to the first)'
        )
    url = database.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ProvisionError(f"{path}: [database] url: expected http(s)://host:port, got {url!r}")
    db_name = database.get("database", "o2region")
    if not isinstance(db_name, str) or not db_name:
        raise ProvisionError(f"{path}: [database] database: expected a name")
    if not facilities:
        raise ProvisionError(f"{path}: no [facilities.<id>] tables: nothing to provision")
    out: list[Facility] = []
    owner: dict[str, str] = {}
    for fid, table in facilities.items():
        if not _is_name(fid) or fid == VIEWER_USER or fid in ROLE_TARGETS:
            raise ProvisionError(
                f"{path}: facility {fid!r}: expected an id of 1..32 of [a-z0-9-] (its site id), "
                f"not {VIEWER_USER!r} or one of {', '.join(ROLE_TARGETS)}"
            )
        if not isinstance(table, dict) or set(table) - {"sites"}:
            raise ProvisionError(f"{path}: [facilities.{fid}]: the only key is sites")
        sites = table.get("sites", [fid])
        if not isinstance(sites, list) or not sites or not all(_is_name(str(s)) for s in sites):
            raise ProvisionError(f"{path}: [facilities.{fid}] sites: expected a list of site ids")
        for site in sites:
            if site in owner:
                raise ProvisionError(
                    f"{path}: site {site!r} is in facilities {owner[site]!r} and {fid!r}: "
                    "a site's topics have one writer"
                )
            owner[site] = fid
        out.append(Facility(fid, tuple(sites)))
    return RegionInventory(
        region_id=region_id,
        hosts=tuple(hosts),
        port=_port(broker.get("port", DEFAULT_REGION_PORT), f"{path}: [broker] port"),
        bind=str(broker.get("bind", "")),
        database_url=url.rstrip("/"),
        database=db_name,
        facilities=tuple(out),
    )


@dataclass
class RegionResult:
    out_dir: Path
    inventory: RegionInventory
    changed: list[Path] = field(default_factory=list)


def listener_conf(broker_dir: Path, *, port: int, bind: str) -> str:
    """The central broker's listener block using the files of ``broker_dir``."""
    return "\n".join(
        [
            "## o2chain central broker, written by `o2chain region provision`: re-run it instead",
            "## of editing this file. Facilities' bridges log in with their own account and may",
            "## write only region/<their sites>/#; region-viewer reads region/#.",
            "per_listener_settings true",
            f"listener {port} {bind}".rstrip(),
            f"certfile {broker_dir / 'server.pem'}",
            f"keyfile {broker_dir / 'server.key'}",
            "allow_anonymous false",
            f"password_file {broker_dir / 'region.passwd'}",
            f"acl_file {broker_dir / 'region.acl'}",
            "## A bridge's client id is its account: one facility cannot take over another's",
            "## session.",
            "use_username_as_clientid true",
            "",
        ]
    )


def provision_region(
    inventory: Path, out: Path, rotate: list[str] | tuple[str, ...] = ()
) -> RegionResult:
    """Generate (or bring up to date) everything ``out`` holds for the region (module doc)."""
    inv = load_region(inventory)
    wanted = set(rotate)
    unknown = sorted(wanted - {f.id for f in inv.facilities} - set(ROLE_TARGETS))
    if unknown:
        raise ProvisionError(
            f"--rotate {unknown[0]}: expected a facility id of {inventory} or one of "
            f"{', '.join(ROLE_TARGETS)}"
        )
    out = out.resolve()
    run = _Run(out, wanted, None, None)
    run.out.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key, ca_pem = _ca_for(run, [f"region {inv.region_id}"])
    _server_cert(run, ca_key, ca_pem, {"127.0.0.1", "localhost", *inv.hosts})

    accounts: list[tuple[str, str, list[str]]] = []
    users_iql = [
        "-- The central InfluxDB's logins, written by `o2chain region provision`. Run it once as",
        "-- the admin (influx -username admin -password ... -import -path users.iql), and again",
        "-- after a --rotate (SET PASSWORD). auth-enabled = true in influxdb.conf's [http].",
        f'CREATE DATABASE "{inv.database}"',
    ]
    https = inv.database_url.startswith("https://")
    for fac in inv.facilities:
        password = run.secret(f"facilities/{fac.id}/bridge-password", fac.id)
        accounts.append(
            (fac.id, password, [f"topic write {REGION_PREFIX}/{site}/#" for site in fac.sites])
        )
        bundle = run.out / "facilities" / fac.id
        run.write(
            f"facilities/{fac.id}/bridge.json",
            json.dumps(
                {
                    "facility": fac.id,
                    "sites": list(fac.sites),
                    "address": inv.hosts[0],
                    "port": inv.port,
                    "username": fac.id,
                    "password": password,
                    "prefix": REGION_PREFIX,
                },
                indent=2,
            )
            + "\n",
        )
        run.write(f"facilities/{fac.id}/region-ca.pem", ca_pem)
        db_password = run.secret(f"facilities/{fac.id}/central-password", fac.id)
        central: dict[str, Any] = {
            "url": inv.database_url,
            "database": inv.database,
            "username": fac.id,
            "password_file": str(bundle / "central-password"),
        }
        if https:
            central["ca_file"] = str(bundle / "region-ca.pem")
        run.write(
            f"facilities/{fac.id}/central.toml",
            "# The gateway's [central] section for this facility (`o2chain region provision`);\n"
            "# the paths are where this folder was written: adjust them where it is copied.\n"
            + tomli_w.dumps({"central": central}),
        )
        users_iql += [
            f"CREATE USER \"{fac.id}\" WITH PASSWORD '{db_password}'",
            f'GRANT WRITE ON "{inv.database}" TO "{fac.id}"',
        ]
    viewer_pw = run.secret("viewer/mqtt-password", "viewer")
    accounts.append((VIEWER_USER, viewer_pw, [f"topic read {REGION_PREFIX}/#"]))
    viewer_db_pw = run.secret("viewer/influx-password", "viewer")
    users_iql += [
        f"CREATE USER \"{VIEWER_USER}\" WITH PASSWORD '{viewer_db_pw}'",
        f'GRANT READ ON "{inv.database}" TO "{VIEWER_USER}"',
    ]
    _passwd(run, "broker/region.passwd", accounts)
    run.write("broker/region.acl", _acl(accounts))
    run.write(
        "broker/o2region.conf", listener_conf(run.out / "broker", port=inv.port, bind=inv.bind)
    )
    run.write("viewer/ca.pem", ca_pem)
    run.write(
        "viewer/region.toml",
        "# The region view's logins (`o2chain region serve -c THIS_FILE`), written by\n"
        "# `o2chain region provision`: the central broker (reads region/#) and database.\n"
        + tomli_w.dumps(
            {
                "url": f"mqtts://{inv.hosts[0]}:{inv.port}",
                "username": VIEWER_USER,
                "password_file": str(run.out / "viewer" / "mqtt-password"),
                "ca_file": str(run.out / "viewer" / "ca.pem"),
                "database_url": inv.database_url,
                "database": inv.database,
                "influx_username": VIEWER_USER,
                "influx_password_file": str(run.out / "viewer" / "influx-password"),
            }
        ),
    )
    run.write("influx/users.iql", "\n".join(users_iql) + "\n")
    return RegionResult(out, inv, run.changed)


# -- the facility's side: its `o2chain provision` with [region] bundle = "<folder>" -----------


def bridge_conf(bundle: Path, *, topic_prefix: str, ca_path: Path) -> str:
    """The Mosquitto bridge from a facility's broker to the central broker, from the bundle
    ``o2chain region provision`` wrote for it. ``ca_path``: where the facility broker reads
    the region CA. Raises ProvisionError when the bundle is incomplete."""
    try:
        doc = json.loads((bundle / "bridge.json").read_text())
        facility, sites = str(doc["facility"]), [str(s) for s in doc["sites"]]
        address, port = str(doc["address"]), int(doc["port"])
        username, password, prefix = str(doc["username"]), str(doc["password"]), doc["prefix"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ProvisionError(
            f"{bundle}: not a facility bundle of `o2chain region provision` (bridge.json: {e})"
        ) from e
    lines = [
        "## Bridge to the region's central broker, written by `o2chain provision` from the",
        "## bundle of `o2chain region provision`. Alarm and status events go out at QoS 1,",
        "## remapped under the facility; a persistent session (cleansession false) keeps them",
        '## queued here while the WAN is down. docs/scaling.md, "Region".',
        f"connection o2region-{facility}",
        f"address {address}:{port}",
        "bridge_protocol_version mqttv311",
        "try_private true",
        "cleansession false",
        f"remote_clientid {username}",
        f"local_clientid o2bridge-{facility}",
        f"remote_username {username}",
        f"remote_password {password}",
        f"bridge_cafile {ca_path}",
        "bridge_insecure false",
        "bridge_tls_version tlsv1.2",
        "keepalive_interval 20",
        "restart_timeout 1 30",
        "notifications true",
        f"notification_topic {prefix}/{sites[0]}/bridge/state",
    ]
    for site in sites:
        local, remote = f"{topic_prefix}/{site}/", f"{prefix}/{site}/"
        lines += [
            f"topic gateway/+/alarm/# out 1 {local} {remote}",
            f"topic +/status out 1 {local} {remote}",
        ]
    return "\n".join(lines) + "\n"


# -- command line -----------------------------------------------------------------------------


def add_arguments(p: Any) -> None:
    p.add_argument("-i", "--inventory", type=Path, required=True, help="region inventory TOML")
    p.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--rotate", action="append", default=[], metavar="NAME",
        help="replace a secret: a facility id, viewer, server or ca",
    )  # fmt: skip


def main(args: Any) -> int:
    rotate = [n.strip() for arg in args.rotate for n in arg.split(",") if n.strip()]
    try:
        result = provision_region(args.inventory, args.out, rotate)
    except (ProvisionError, OSError) as e:
        print(f"o2chain region provision: {e}", file=sys.stderr)
        return 2
    out = result.out_dir
    inv = result.inventory
    print(
        "\n".join(
            [
                f"o2chain region provision: {len(inv.facilities)} facilities in {out} "
                f"({len(result.changed)} files written)",
                f"  central broker   include {out / 'broker' / 'o2region.conf'} (TLS {inv.port})",
                f"  central database run {out / 'influx' / 'users.iql'} as its admin",
                f"  facilities       give {out / 'facilities'}/<id>/ to each; its inventory's "
                '[region] bundle = "<that folder>", then `o2chain provision`',
                f"  region view      o2chain region serve -c {out / 'viewer' / 'region.toml'}",
            ]
        )
    )
    return 0
