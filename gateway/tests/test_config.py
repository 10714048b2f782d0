"""Config validation: errors name the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config

SITE = [{"id": "lhasa", "altitude_m": 3650}]
# A Modbus plant of SITE without its url.
PLANT = {"id": "c", "site": "lhasa", "kind": "plant", "transport": "modbus", "profile": "psa-plant"}


def test_example_config_is_valid() -> None:
    config = load_config(Path(__file__).parents[1] / "example.toml")
    assert config.mqtt.topic_prefix == "o2"
    assert {d.transport for d in config.device} == {"mqtt", "modbus"}


@pytest.mark.parametrize(
    ("data", "mentions"),
    [
        ({"mqtt": {"url": "http://x"}}, "mqtt.url: expected mqtt://"),
        ({"influx": {"api": "v9"}}, "influx.api"),
        ({"influx": {"api": "v2"}}, "bucket and org"),
        ({"influx": {"batch_sise": 5}}, "influx.batch_sise: Extra inputs"),
        ({"site": [{"id": "Lhasa!", "altitude_m": 1}]}, "site[0].id"),
        (
            {
                "site": SITE,
                "device": [{"id": "r", "site": "nagqu", "kind": "room", "transport": "mqtt"}],
            },
            "'nagqu' is not a configured",
        ),
        ({"site": SITE, "device": [PLANT]}, "needs url"),
        ({"site": SITE, "device": [{**PLANT, "url": "udp://h:1"}]}, "expected tcp://host:port"),
        (
            {
                "site": SITE,
                "device": [{"id": "c", "site": "lhasa", "kind": "tank", "transport": "mqtt"}],
            },
            "device[0].kind",
        ),
    ],
)
def test_errors_name_the_key(data: dict[str, object], mentions: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data, "gw.toml")
    assert mentions in str(err.value)
    assert str(err.value).startswith("gw.toml: invalid configuration")


def test_secrets_come_from_files_and_never_show(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    config = parse_config({"mqtt": {"username": "gw", "password_file": str(secret)}})
    password = config.mqtt.password()
    assert password is not None and password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config) and "s3cret" not in str(password)
