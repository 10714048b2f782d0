"""Signed commands end to end: the compiled firmware on `micropython`, a real Mosquitto, and
`o2chain board cmd` as a subprocess. Accepted commands change the running board (and persist);
forged (bad MAC), replayed (old counter, also after a reboot), retained and out-of-band ones are
refused with a reason on cmd/ack and change nothing; a board without a command_key refuses all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from o2base.procs import o2chain_argv
from o2base.services import Mosquitto
from o2chain.firmware_runner import BoardRunner

from .board_helpers import Recorder, powered
from .test_acceptance import DEVICE, PREFIX, SITE, board_config

pytestmark = pytest.mark.integration


def write_keys(tmp_path: Path, key_hex: str) -> Path:
    path = tmp_path / "operator" / "command_keys.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({f"{SITE}/{DEVICE}": key_hex}))
    path.chmod(0o600)
    return path


def board_cmd(
    broker: Mosquitto, keys: Path, name: str, args: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any] | None, str]:
    """``o2chain board cmd`` -> (exit status, ack or None, stderr)."""
    argv = o2chain_argv(
        "board",
        "cmd",
        "--keys",
        str(keys),
        "--site",
        SITE,
        "--device",
        DEVICE,
        "--mqtt",
        f"mqtt://{broker.host}:{broker.port}",
        "--timeout",
        "15",
        name,
    )
    if args is not None:
        argv.append(json.dumps(args))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    ack = json.loads(done.stdout) if done.stdout.strip() else None
    return done.returncode, ack, done.stderr


def signed(key_hex: str, cmd: str, args: dict[str, Any], ctr: int, cmd_id: str) -> bytes:
    """An independent signer (the envelope of firmware/README.md "Commands")."""
    body = json.dumps(
        {"id": cmd_id, "ctr": ctr, "site": SITE, "device": DEVICE, "cmd": cmd, "args": args}
    )
    mac = hmac.new(bytes.fromhex(key_hex), body.encode(), hashlib.sha256).hexdigest()
    return json.dumps({"body": body, "mac": mac}).encode()


def publish(broker: Mosquitto, payload: bytes, retain: bool = False) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish(PREFIX + "cmd", payload, qos=1, retain=retain).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def ack(rec: Recorder, cmd_id: str, count: int = 1) -> dict[str, Any]:
    found = rec.wait_message(
        f"ack {cmd_id}",
        lambda t, d, r: t.endswith("/cmd/ack") and isinstance(d, dict) and d.get("id") == cmd_id,
        count,
    )
    return found[count - 1][1]


def now_ms() -> int:
    return int(time.time() * 1000)


def test_signed_commands(tmp_path: Path, mosquitto: Mosquitto) -> None:
    key = os.urandom(32).hex()
    keys = write_keys(tmp_path, key)
    rec = Recorder(mosquitto, PREFIX + "#")
    cfg = board_config(mosquitto, command_key=key, stable_after_s=15)
    board = BoardRunner(cfg, tmp_path / "board", o2_pct=24.6)
    with powered(board, rec):
        board.wait_for_log(r"mqtt: connected")
        rec.wait_seqs(1, 2)

        # A reboot right after boot is refused: a command can never feed a reboot loop.
        rc, doc, _ = board_cmd(mosquitto, keys, "reboot")
        assert rc == 1 and doc and "refused during the first 15 s" in doc["error"], doc

        rc, doc, err = board_cmd(mosquitto, keys, "report_config")
        assert rc == 0, err
        assert doc and doc["ok"] and doc["result"]["site"] == SITE, doc
        assert doc["result"]["command_key"] == "***", "the key never leaves the board"

        # Forged: signed with another key. Refused; its (huge) counter is not consumed.
        publish(
            mosquitto,
            signed(os.urandom(32).hex(), "set_interval", {"interval_s": 99}, 10**15, "forged"),
        )
        assert ack(rec, "forged")["error"] == "bad mac"

        accepted = signed(key, "set_interval", {"interval_s": 2}, now_ms(), "p1")
        publish(mosquitto, accepted)
        assert ack(rec, "p1")["result"] == {"interval_s": 2.0}
        publish(mosquitto, accepted)  # replayed byte for byte
        assert ack(rec, "p1", 2)["error"].startswith("replayed or old counter")

        # Out of the safe bands, or not settable at all: refused, with the reason.
        for args, reason in (
            ({"thresholds": {"o2_high_alarm_pct": 100}}, "outside the safe band 24.39..28.89"),
            ({"thresholds": {"o2_deficient_pct": 0}}, "outside the safe band 19.50..20.50"),
            ({"thresholds": {"pin": -1}}, "alarm.pin: refused, not settable"),
            ({"thresholds": {"alarm.warn_pin": 4}}, "alarm.warn_pin: refused, not settable"),
            ({"interval_s": 0.01}, "interval_s: refused"),
        ):
            name = "set_interval" if "interval_s" in args else "set_thresholds"
            rc, doc, _ = board_cmd(mosquitto, keys, name, args)
            assert rc == 1 and doc and reason in doc["error"], (args, doc)
        rc, doc, _ = board_cmd(
            mosquitto, keys, "set_thresholds", {"thresholds": {"o2_high_alarm_pct": 27.5}}
        )
        assert rc == 0 and doc and doc["result"]["o2_high"] == 27.5, doc

        # Fresh-air calibration in an enriched room (24.6 %) would make it read 20.95 %.
        rc, doc, _ = board_cmd(mosquitto, keys, "calibrate", {"mode": "fresh_air"})
        # (0.1 % module resolution and simulated noise: 24.5..24.7 %)
        assert rc == 1 and doc, doc
        assert re.fullmatch(
            r"calibrate: refused, reading 24\.\d\d % is not within 2\.0 % of 20\.95 %", doc["error"]
        ), doc
        board.set_o2_pct(20.95)  # windows open, enrichment off
        seq = max(rec.seqs(1))
        rec.wait_seqs(1, seq + 2)
        rc, doc, _ = board_cmd(mosquitto, keys, "calibrate", {"mode": "fresh_air"})
        assert rc == 0 and doc, doc
        assert abs(doc["result"]["cal_kpa"] - 64.5) < 0.2, doc  # the pressure in use
        seq = max(rec.seqs(1))
        rec.wait_seqs(1, seq + 3)
        later = [r for r in rec.readings if r["boot"] == 1 and r["seq"] > seq + 1]
        assert abs(later[-1]["o2_pct"] - 20.95) < 0.25, later[-1]
        assert not later[-1].get("quality", 0) & 0x100, "calibrated: no longer flagged"

        board.wait_for_log(r"^run: stable$", timeout_s=30)
        rc, doc, _ = board_cmd(mosquitto, keys, "reboot")
        assert rc == 0 and doc and doc["result"] == {"in_s": 1}, doc
        board.wait_for_log(r"reboot \(command\)")
        assert board.wait(10) == 75  # the stand-in reset exits 75

        # While the board is down a valid, fresh command is left retained on the broker: at
        # the next connection it arrives with RETAIN set and is ignored (a retained reboot
        # rebooted a board every ~3 s for ever).
        publish(mosquitto, signed(key, "reboot", {}, now_ms(), "retained"), retain=True)
        board.start()  # "power comes back": counter, settings and calibration persisted
        board.wait_for_log(r"mqtt: connected \(boot 2")
        assert ack(rec, "retained")["error"] == "retained command ignored"
        publish(mosquitto, b"", retain=True)  # clear it
        publish(mosquitto, accepted)  # the old command, after a reboot
        assert ack(rec, "p1", 3)["error"].startswith("replayed or old counter")
        rc, doc, _ = board_cmd(mosquitto, keys, "report_config")
        assert rc == 0 and doc, doc
        assert doc["result"]["interval_s"] == 2.0
        assert doc["result"]["alarm.o2_high_alarm_pct"] == 27.5
        assert doc["result"]["alarm.o2_deficient_pct"] == 19.5
        assert doc["result"]["alarm.pin"] == cfg["alarm"]["pin"]
        assert "crash" not in board.log_text()
        board.stop()


def test_board_without_command_key_refuses_all_commands(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    key = os.urandom(32).hex()
    keys = write_keys(tmp_path, key)
    rec = Recorder(mosquitto, PREFIX + "#")
    board = BoardRunner(board_config(mosquitto), tmp_path / "board")
    with powered(board, rec):
        status = rec.wait_message(
            "status", lambda t, d, r: t.endswith("/status") and d.get("state") == "online"
        )[0][1]
        assert status["commands"] == "disabled: no command_key", status
        rc, doc, _ = board_cmd(mosquitto, keys, "report_config")
        assert rc == 1 and doc, doc
        assert doc["error"] == "commands disabled: no command_key in config.json", doc


def test_command_at_110k_never_starves_the_alarm(tmp_path: Path, mosquitto: Mosquitto) -> None:
    # At the strict heap a command cannot be loaded on this 64-bit port (firmware/README.md
    # "Memory"): it is answered "out of memory" without loading anything, and the board keeps
    # sampling and sounding its alarm. (Loading it anyway used to end in a MemoryError in the
    # sampling loop and a reset.)
    key = os.urandom(32).hex()
    rec = Recorder(mosquitto, PREFIX + "#")
    cfg = board_config(mosquitto, command_key=key)
    board = BoardRunner(cfg, tmp_path / "board", heap="110K", o2_pct=22.0)
    with powered(board, rec):
        board.wait_for_log(r"mqtt: connected")
        for i in range(3):
            publish(mosquitto, signed(key, "report_config", {}, i + 1, f"c{i}"))
            doc = ack(rec, f"c{i}")
            assert doc["ok"] or doc["error"].startswith("out of memory: "), doc
        seq = max(rec.seqs(1))
        rec.wait_seqs(1, seq + 10)
        board.set_o2_pct(26.0)  # above the test's 24.0 % high alarm
        board.wait_for_log(r"^pin 25=1 t=", timeout_s=5)
        assert "crash" not in board.log_text() and board.running
        # The margin, lowest free heap after a cycle: ~12 KB whatever the test's temp path
        # (the board sees fixed short paths: BoardRunner._short_dir).
        low = min(board.heap_free())
        print(f"110K with commands refused: lowest free heap {low} B")
        assert low >= 8 * 1024, board.log_tail()
