"""MQTT over TLS with a pinned CA and username/password, against a Mosquitto of this test's
own (TLS listener on 127.0.0.1, a CA generated here with openssl). A board given the wrong
CA must refuse the broker."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from o2base.services import free_ports
from o2chain.firmware_runner import BoardRunner

from .board_helpers import powered

pytestmark = pytest.mark.integration

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
OPENSSL = shutil.which("openssl") or "openssl"  # a REQUIRED_TOOL (conftest.py)


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA; returns (key, cert)."""
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}"],
        check=True,
        capture_output=True,
    )
    return key, cert


def make_server_cert(d: Path, ca_key: Path, ca_cert: Path) -> tuple[Path, Path]:
    key, csr, cert, ext = d / "srv.key", d / "srv.csr", d / "srv.pem", d / "srv.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    subprocess.run(
        [OPENSSL, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key)]
        + ["-out", str(csr), "-subj", "/CN=localhost"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [OPENSSL, "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key)]
        + ["-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext)],
        check=True,
        capture_output=True,
    )
    return key, cert


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """(port, ca.pem, other-ca.pem): Mosquitto with only a TLS listener and a password file."""
    d = tmp_path / "tls"
    d.mkdir()
    ca_key, ca_cert = make_ca(d, "o2chain-test-ca")
    _, other_ca = make_ca(d, "someone-else")
    key, cert = make_server_cert(d, ca_key, ca_cert)
    passwd = d / "passwd"
    passwd.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "board", "s3cret"], check=True)
    port = free_ports(1)[0]
    conf = d / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        f"cafile {ca_cert}\ncertfile {cert}\nkeyfile {key}\n"
        f"allow_anonymous false\npassword_file {passwd}\n"
        "user root\nlog_dest stderr\nlog_type all\n"
    )
    log = (d / "mosquitto.log").open("wb")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while b"Opening ipv4 listen socket" not in (d / "mosquitto.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((d / "mosquitto.log").read_text())
            time.sleep(0.05)
        yield port, ca_cert, other_ca
    finally:
        proc.terminate()
        proc.wait(5)
        log.close()


def tls_config(port: int, password: str) -> dict:
    return {
        "site": "lhasa-hotel",
        "device": "room-301",
        "site_altitude_m": 3650,
        "interval_s": 0.5,
        "mqtt": {
            "host": "127.0.0.1",
            "port": port,
            "keepalive_s": 5,
            "connect_timeout_s": 5,
            "backoff_max_s": 1,
            "username": "board",
            "password": password,
            "tls": {"ca_file": "/ca.pem", "server_hostname": "localhost"},
        },
    }


def test_tls_pinned_ca_and_password(tmp_path: Path, tls_broker: tuple[int, Path, Path]) -> None:
    port, ca, other_ca = tls_broker
    board = BoardRunner(
        tls_config(port, "s3cret"), tmp_path / "good", files={"ca.pem": ca.read_bytes()}
    )
    with powered(board):
        board.wait_for_log(r"mqtt: connected", timeout_s=20)
        board.wait_for_log(r"^reading seq=3 ")
        assert "s3cret" not in board.log_text()  # secrets masked in the boot log
    wrong_ca = BoardRunner(
        tls_config(port, "s3cret"), tmp_path / "bad-ca", files={"ca.pem": other_ca.read_bytes()}
    )
    with powered(wrong_ca):
        wrong_ca.wait_for_log(r"mqtt: connect to .* failed", timeout_s=20)
        assert "mqtt: connected" not in wrong_ca.log_text()
    wrong_pw = BoardRunner(
        tls_config(port, "nope"), tmp_path / "bad-pw", files={"ca.pem": ca.read_bytes()}
    )
    with powered(wrong_pw):
        wrong_pw.wait_for_log(r"mqtt: connect to .* failed: .*(not authorized|bad user)")
