"""`o2chain board cmd` without a board: one clear line and exit 2 for every usage mistake,
exit 1 when nobody answers, counters that only grow and survive in the state file, and a
signature the firmware's own verifier accepts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from o2base.services import Mosquitto
from o2chain import board_cli
from o2chain.cli import main

from .conftest import load_firmware_module

auth = load_firmware_module("o2.auth")
KEY = "ab" * 32


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    path = tmp_path / "command_keys.json"
    path.write_text(json.dumps({"lhasa-hotel/room-101": KEY}))
    path.chmod(0o600)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["board", "cmd", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


BASE = ("--site", "lhasa-hotel", "--device", "room-101", "--mqtt", "mqtt://127.0.0.1:1")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--device": "room-999"}, "no key for lhasa-hotel/room-999"),
        ({"--device": "Room 1"}, "--device 'Room 1': expected 1..32 characters"),
        ({"--mqtt": "http://x"}, "--mqtt 'http://x': expected mqtt://HOST"),
        ({"args": "[1]"}, "JSON-ARGS '[1]': expected a JSON object"),
        ({"args": "{interval"}, "JSON-ARGS '{interval': not valid JSON"),
        ({"--ca": "/nonexistent/ca.pem"}, "--ca /nonexistent/ca.pem: no such file"),
        ({"--keys": "/nonexistent/keys.json"}, "/nonexistent/keys.json: cannot read"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], keys: Path, change: dict[str, str], message: str
) -> None:
    opts = dict(zip(BASE[::2], BASE[1::2], strict=True))
    opts["--keys"] = str(keys)
    args = change.pop("args", '{"interval_s": 30}')
    opts.update(change)
    argv = [x for kv in opts.items() for x in kv] + ["set_interval", args]
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_missing_option_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["board", "cmd", "--site", "s", "report_config"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.count("\n") == 1 and "the following arguments are required: --keys" in err, err


def test_keys_file_must_be_private(capsys: pytest.CaptureFixture[str], keys: Path) -> None:
    keys.chmod(0o644)
    rc, _, err = run(capsys, "--keys", str(keys), *BASE, "report_config")
    assert rc == 2 and "mode 644, expected 600" in err, err
    keys.chmod(0o600)
    keys.write_text(json.dumps({"lhasa-hotel/room-101": "abc"}))
    rc, _, err = run(capsys, "--keys", str(keys), *BASE, "report_config")
    assert rc == 2 and "expected 64 hex characters" in err, err


def test_no_ack_exits_1(
    capsys: pytest.CaptureFixture[str], keys: Path, mosquitto: Mosquitto
) -> None:
    url = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    argv = ["--keys", str(keys), *BASE[:4], "--mqtt", url, "--timeout", "1", "report_config"]
    rc, out, err = run(capsys, *argv)
    assert rc == 1 and out == ""
    assert "no ack from lhasa-hotel/room-101 within 1 s" in err, err
    state = json.loads((keys.parent / "command_counters.json").read_text())
    assert state["lhasa-hotel/room-101"] > 1_700_000_000_000  # used and kept even so
    assert os.stat(keys.parent / "command_counters.json").st_mode & 0o777 == 0o600


def test_counters_only_grow_and_signatures_verify_on_the_firmware_side(keys: Path) -> None:
    name = "lhasa-hotel/room-101"
    a = board_cli.next_counter(keys, name, now_ms=1000)
    b = board_cli.next_counter(keys, name, now_ms=1000)  # clock unchanged: still + 1
    c = board_cli.next_counter(keys, name, now_ms=500)  # clock stepped back: still + 1
    d = board_cli.next_counter(keys, name, now_ms=10_000)
    assert (a, b, c, d) == (1000, 1001, 1002, 10_000)
    body = {"id": "x", "ctr": d, "site": "lhasa-hotel", "device": "room-101", "cmd": "reboot"}
    payload = board_cli.sign(board_cli.load_key(keys, "lhasa-hotel", "room-101"), body)
    got = auth.verify(bytes.fromhex(KEY), payload, "lhasa-hotel", "room-101", d - 1)
    assert got == body
    with pytest.raises(auth.Refused, match="replayed or old counter"):
        auth.verify(bytes.fromhex(KEY), payload, "lhasa-hotel", "room-101", d)
