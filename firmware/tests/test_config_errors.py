"""Config and wiring mistakes on the board: unknown keys and impossible ESP32 pins are refused
by the firmware's own schema (``lib/o2/config.py``, the same code the host runs for
``o2chain firmware config`` and ``flash``); the board publishes a retained ``config_error``
status with the reason and keeps its local alarm armed whenever the sensor and thresholds are
usable, on the compiled firmware under ``micropython`` with a real Mosquitto."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from o2base.services import Mosquitto
from o2chain.firmware_runner import BoardRunner, load_firmware_file

from .board_helpers import Recorder, powered
from .test_acceptance import BUZZER, LED, PREFIX, board_config

schema = load_firmware_file("config")


def config(**changes: Any) -> dict[str, Any]:
    """A valid board config with dotted ``changes`` (``alarm__pin=34`` sets alarm.pin)."""
    cfg: dict[str, Any] = {
        "site": "s",
        "device": "d",
        "site_altitude_m": 3650,
        "mqtt": {"host": "127.0.0.1"},
    }
    for key, value in changes.items():
        node = cfg
        *tables, leaf = key.split("__")
        for table in tables:
            node = node.setdefault(table, {})
        node[leaf] = value
    return cfg


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"intervall_s": 5}, "intervall_s: unknown key (did you mean interval_s?)"),
        (
            {"alarm__o2_hihg_alarm_pct": 27.5},
            "alarm.o2_hihg_alarm_pct: unknown key (did you mean alarm.o2_high_alarm_pct?)",
        ),
        ({"mqtt__ssid": "x"}, "mqtt.ssid: unknown key (did you mean wifi.ssid?)"),
        ({"colour": "red"}, "colour: unknown key"),
        ({"alarm": 5}, "alarm: expected a table of alarm.* keys, got 5"),
        (
            {"alarm__pin": 34},
            "alarm.pin: expected a GPIO that can drive an output (34-39 are input-only), got 34",
        ),
        ({"alarm__warn_pin": 39}, "alarm.warn_pin: expected a GPIO that can drive an output"),
        ({"sensors__env__sda": 36}, "sensors.env.sda: expected a GPIO that can drive an output"),
        ({"alarm__pin": 7}, "alarm.pin: expected a GPIO other than 6-11 (they are wired to"),
        ({"sensors__o2__rx": 11}, "sensors.o2.rx: expected a GPIO other than 6-11"),
        ({"sensors__o2__tx": 40}, "sensors.o2.tx: expected an ESP32 GPIO (0-19, 21-23, 25-27"),
        ({"alarm__pin": 24}, "alarm.pin: expected an ESP32 GPIO (0-19, 21-23, 25-27, 32-39, -1"),
        ({"alarm__pin": 17}, "alarm.pin: expected a GPIO of its own, got 17 (also sensors.o2.tx)"),
        (
            {"sensors__co2__type": "mhz19", "sensors__co2__rx": 16},
            "sensors.co2.rx: expected a GPIO of its own, got 16 (also sensors.o2.rx)",
        ),
        ({"mqtt__host": ""}, "mqtt.host: expected a broker IP address (not empty), got ''"),
    ],
)
def test_schema_refuses_unknown_keys_and_impossible_pins(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(schema.ConfigError) as caught:
        schema.validate(config(**changes))
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"sensors__o2__rx": 35},  # input-only pins are fine for a UART RX
        {"alarm__pin": 17, "sensors__o2__type": "ads1115"},  # UART pins unused: free
        {"sensors__o2__type": "ads1115"},  # ADC and BME280 share one I2C bus
        {"sensors__co2__type": "mhz19", "alarm__pin": 32, "alarm__warn_pin": 33},
    ],
)
def test_schema_accepts_valid_wiring(changes: dict[str, Any]) -> None:
    schema.validate(config(**changes))


def test_salvage_keeps_the_alarm_where_it_can() -> None:
    assert schema.salvage(config(alarm__pin=34))["alarm.pin"] == -1  # buzzer off, alarm on
    assert schema.salvage(config(mqtt__host=""))["mqtt.host"] is None  # no network, alarm on
    broken_co2 = schema.salvage(config(sensors__co2__type="mhz19", sensors__co2__tx=36))
    assert broken_co2["sensors.co2.type"] == "none"
    assert schema.salvage(config(sensors__o2__tx=40)) is None  # no O2 sensor: no alarm
    assert schema.salvage(config(alarm__o2_high_alarm_pct="27")) is None  # threshold unknown
    assert schema.salvage(config(site_altitude_m=None)) is None


def statuses(rec: Recorder) -> list[dict[str, Any]]:
    return [d for t, d, _ in rec.messages if t == PREFIX + "status" and isinstance(d, dict)]


def retained_status(broker: Mosquitto) -> dict[str, Any]:
    """What a technician who subscribes after the board published gets: its retained status."""
    live = Recorder(broker, PREFIX + "status")
    try:  # published (live or retained) ...
        live.wait_message("status", lambda t, d, r: isinstance(d, dict))
    finally:
        live.close()
    late = Recorder(broker, PREFIX + "status")  # ... and kept for whoever comes next
    try:
        found = late.wait_message("retained status", lambda t, d, r: r)
        return dict(found[0][1])
    finally:
        late.close()


@pytest.mark.integration
def test_unknown_key_is_a_retained_config_error_and_the_alarm_stays_armed(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    cfg = board_config(mosquitto, intervall_s=1)
    rec = Recorder(mosquitto, PREFIX + "#")
    board = BoardRunner(cfg, tmp_path / "board", o2_pct=22.0)
    with powered(board, rec):
        board.wait_for_log(r"config error: intervall_s: unknown key \(did you mean interval_s\?\)")
        board.wait_for_log(r"local alarm armed")
        status = retained_status(mosquitto)
        assert status["state"] == "config_error", status
        assert "intervall_s: unknown key" in status["error"] and status["local_alarm"] == "armed"
        board.set_o2_pct(26.0)  # over the board's 24 % high alarm
        board.wait_for_log(rf"^pin {BUZZER}=1 ", timeout_s=10)
        rec.wait_message(
            "alarm event", lambda t, d, r: t == PREFIX + "alarm" and d["state"] == "raise"
        )
        assert not [t for t, _, _ in rec.messages if t.endswith("/telemetry")]
        assert "reading seq=" not in board.log_text()


@pytest.mark.integration
def test_buzzer_on_an_input_only_pin_keeps_the_led(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = board_config(mosquitto)
    cfg["alarm"]["pin"] = 34
    board = BoardRunner(cfg, tmp_path / "board", o2_pct=22.0)
    try:
        board.start()
        board.wait_for_log(r"config error: alarm.pin: expected a GPIO that can drive an output")
        status = retained_status(mosquitto)
        assert status["state"] == "config_error" and "alarm.pin" in status["error"], status
        assert status["local_alarm"] == "armed"
        board.set_o2_pct(26.0)
        board.wait_for_log(rf"^pin {LED}=1 ", timeout_s=10)  # the warning LED still lights
        assert not board.pin_events(34) and not board.pin_events(BUZZER)
    finally:
        board.kill()


@pytest.mark.integration
def test_o2_sensor_on_a_missing_pin_is_network_only(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = board_config(mosquitto, sensors={"o2": {"tx": 40}})
    board = BoardRunner(cfg, tmp_path / "board")
    try:
        board.start()
        board.wait_for_log(r"config error: sensors.o2.tx: expected an ESP32 GPIO")
        board.wait_for_log(r"local alarm off")
        status = retained_status(mosquitto)
        assert status["state"] == "config_error" and "sensors.o2.tx" in status["error"], status
        assert status["local_alarm"] == "off"
        assert "reading seq=" not in board.log_text()
    finally:
        board.kill()


@pytest.mark.integration
def test_empty_broker_host_keeps_the_alarm_without_network(tmp_path: Path) -> None:
    cfg = {"site": "s", "device": "d", "site_altitude_m": 3650, "mqtt": {"host": ""},
           "alarm": {"pin": BUZZER, "o2_high_alarm_pct": 24.0}}  # fmt: skip
    board = BoardRunner(cfg, tmp_path / "board", o2_pct=22.0)
    try:
        board.start()
        board.wait_for_log(r"config error: mqtt.host: expected a broker IP address")
        board.wait_for_log(r"local alarm armed")
        board.set_o2_pct(26.0)
        board.wait_for_log(rf"^pin {BUZZER}=1 ", timeout_s=10)
        assert "mqtt: connected" not in board.log_text()
    finally:
        board.kill()


def test_example_configs_are_valid() -> None:
    from o2chain.firmware_runner import FIRMWARE_DIR

    schema.validate(json.loads((FIRMWARE_DIR / "config.example.json").read_text()))
