"""What `o2chain gateway check` and `run` refuse before starting (state dir, ports, CA and
secret files, one line each naming the key), and URLs printed without their password."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from gateway.config import ConfigError, parse_config, preflight, redact_url
from o2base.procs import o2chain_argv

SITE = [{"id": "lhasa", "altitude_m": 3650}]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mqtt://gw:s3cret@broker:1883", "mqtt://gw:***@broker:1883"),
        ("http://admin:s3cret@influx:8086/x?y=1", "http://admin:***@influx:8086/x?y=1"),
        ("mqtts://gw@broker", "mqtts://gw@broker"),
        ("http://influx:8086", "http://influx:8086"),
        ("mqtt://gw:s3cret@broker:99999", "mqtt://gw:***@broker:99999"),
        ("http://a:s3cret@[::1", "http://(unparsable URL)"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("section", "url", "key"),
    [
        ("mqtt", "mqtt://gw:s3cret@broker:99999", "mqtt.url"),
        ("mqtt", "mqtt://broker:0", "mqtt.url"),
        ("influx", "http://u:s3cret@influx:70000", "influx.url"),
        ("gateway", {"public_url": "https://o2.example:65536"}, "gateway.public_url"),
    ],
)
def test_a_port_out_of_range_is_a_config_error(section: str, url: Any, key: str) -> None:
    values = url if isinstance(url, dict) else {"url": url}
    with pytest.raises(ConfigError) as err:
        parse_config({section: values}, "gw.toml")
    text = str(err.value)
    assert f"{key}: port of" in text and "expected 1..65535" in text
    assert "s3cret" not in text


def secret(path: Path, mode: int) -> Path:
    path.write_text("s3cret\n")
    path.chmod(mode)
    return path


def test_preflight_refuses_secret_files_open_to_others(tmp_path: Path) -> None:
    pw = secret(tmp_path / "mqtt-password", 0o644)
    token = secret(tmp_path / "influx-token", 0o640)
    hook = secret(tmp_path / "hook-url", 0o604)
    good = secret(tmp_path / "smtp-password", 0o600)
    gone = tmp_path / "signing-secret"  # never written
    hook.write_text("https://hooks.example/x?key=abc\n")
    config = parse_config(
        {
            "gateway": {"state_dir": str(tmp_path / "state")},
            "mqtt": {"username": "gw", "password_file": str(pw)},
            "influx": {"token_file": str(token)},
            "notify": [
                {"id": "hook", "kind": "webhook", "url_file": str(hook)},
                {"id": "ding", "kind": "dingtalk", "url": "https://oapi.example/robot/send"},
                {"id": "mail", "kind": "email", "smtp_host": "smtp.example", "from": "gw@x.org",
                 "to": ["ops@x.org"], "username": "gw", "password_file": str(good)},
            ],
        }
    )  # fmt: skip
    # A file removed after the config was validated (the schema checks notify files): the
    # preflight still names it.
    config = config.model_copy(
        update={
            "notify": [
                *config.notify,
                config.notify[1].model_copy(update={"id": "ding2", "secret_file": gone}),
            ]
        }
    )
    problems = preflight(config)
    assert problems == [
        f"mqtt.password_file: {pw} holds a secret and is open to group/others (mode 0644): "
        f"chmod 600 {pw}",
        f"influx.token_file: {token} holds a secret and is open to group/others (mode 0640): "
        f"chmod 600 {token}",
        f"notify[0] (hook).url_file: {hook} holds a secret and is open to group/others "
        f"(mode 0604): chmod 600 {hook}",
        f"notify[3] (ding2).secret_file: cannot read {gone}: No such file or directory",
    ]
    for path in (pw, token, hook):
        path.chmod(0o600)
    assert preflight(config) == [problems[-1]]


def test_preflight_state_dir_and_ca_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    sub = afile / "sub"
    for state, expected in [
        (afile, f"gateway.state_dir: {afile} is a file, not a directory"),
        (sub, f"gateway.state_dir: {sub} cannot be created: {afile} is a file, not a directory"),
    ]:
        config = parse_config(
            {
                "gateway": {"state_dir": str(state)},
                "mqtt": {"url": "mqtts://broker", "ca_file": str(tmp_path / "ca.pem")},
            }
        )
        assert preflight(config) == [
            expected,
            f"mqtt.ca_file: cannot read the CA certificate {tmp_path / 'ca.pem'}",
        ]


def test_preflight_state_dir_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root here, who may write anywhere: the permission answer is faked.
    state = tmp_path / "state"
    state.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == state else real_access(p, m))
    config = parse_config({"gateway": {"state_dir": str(state)}})
    assert preflight(config) == [f"gateway.state_dir: {state} is not writable for this user"]
    config = parse_config({"gateway": {"state_dir": str(state / "a" / "b")}})
    assert preflight(config) == [
        f"gateway.state_dir: {state / 'a' / 'b'} cannot be created: {state} is not writable "
        "for this user"
    ]


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_bytes(tomli_w.dumps(doc).encode())
    return path


def check(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        o2chain_argv("gateway", "check", "-c", str(cfg)), capture_output=True, text=True
    )


def test_check_catches_what_run_would_trip_on(tmp_path: Path) -> None:
    afile = tmp_path / "state"
    afile.write_text("")
    pw = secret(tmp_path / "pw", 0o644)
    cfg = write(
        tmp_path / "gw.toml",
        {
            "gateway": {"state_dir": str(afile)},
            "mqtt": {
                "url": "mqtts://gw:s3cret@127.0.0.1:8883",
                "username": "gw",
                "password_file": str(pw),
                "ca_file": str(tmp_path / "missing-ca.pem"),
            },
        },
    )
    out = check(cfg)
    assert out.returncode == 2, out
    lines = out.stderr.splitlines()
    assert lines == [  # one line, every problem in it
        f"o2chain gateway: {cfg}: gateway.state_dir: {afile} is a file, not a directory; "
        f"mqtt.password_file: {pw} holds a secret and is open to "
        f"group/others (mode 0644): chmod 600 {pw}; "
        f"mqtt.ca_file: cannot read the CA certificate {tmp_path / 'missing-ca.pem'}"
    ]
    # `run` refuses the same config the same way, before it starts anything.
    run = subprocess.run(
        o2chain_argv("gateway", "run", "-c", str(cfg)), capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and run.stderr.splitlines() == lines

    port = write(tmp_path / "port.toml", {"mqtt": {"url": "mqtt://gw:s3cret@127.0.0.1:99999"}})
    out = check(port)
    assert out.returncode == 2 and "mqtt.url: port of '127.0.0.1:99999' out of range" in out.stderr
    assert "s3cret" not in out.stderr + out.stdout


def test_check_prints_urls_without_passwords(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "gw.toml",
        {
            "gateway": {"state_dir": str(tmp_path / "state")},
            "mqtt": {"url": "mqtt://gw:mqtt-s3cret@127.0.0.1:1883"},
            "influx": {"url": "http://admin:influx-s3cret@127.0.0.1:8086"},
        },
    )
    out = check(cfg)
    assert out.returncode == 0, out
    assert "mqtt://gw:***@127.0.0.1:1883" in out.stdout
    assert "http://admin:***@127.0.0.1:8086" in out.stdout
    assert "s3cret" not in out.stdout + out.stderr


def test_a_modbus_port_out_of_range_is_a_config_error() -> None:
    device = {"id": "c", "site": "lhasa", "kind": "plant", "transport": "modbus",
              "url": "tcp://u:s3cret@plc:99999", "profile": "psa-plant"}  # fmt: skip
    with pytest.raises(ConfigError) as err:
        parse_config({"site": SITE, "device": [device]}, "gw.toml")
    assert "device[0]: port of 'plc:99999' out of range: expected 1..65535" in str(err.value)
    assert "s3cret" not in str(err.value)
