"""One type per field and measurement: InfluxDB refuses a point whose field has another type
than the one it already holds, so a configuration whose sources disagree is refused at start
(`gateway check`, `gateway run`), naming the devices, the field and both types."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w

from gateway.config import parse_config
from gateway.modbus import field_type_conflicts
from o2base.registers import PROFILE_PATH_ENV, load_profile, parse_profile, profile_names
from o2chain.cli import main

BUNDLED = Path(__file__).resolve().parents[2] / "o2base" / "profiles"

SKELETON = {
    "gateway": {"id": "gw", "state_dir": "/tmp/o2-field-types"},
    "mqtt": {"url": "mqtt://127.0.0.1:1883"},
    "influx": {"url": "http://127.0.0.1:8086", "database": "o2"},
    "site": [{"id": "s", "altitude_m": 3650}],
}


def modbus(dev_id: str, kind: str, profile: str) -> dict[str, object]:
    return {
        "id": dev_id,
        "site": "s",
        "kind": kind,
        "transport": "modbus",
        "url": "tcp://127.0.0.1:1502",
        "unit": 1,
        "profile": profile,
    }


def modular_as_decoded(tmp_path: Path) -> Path:
    """psa-plant-modular without its ``field_type`` on run_h (hours x10: a float)."""
    data = tomllib.loads((BUNDLED / "psa-plant-modular.toml").read_text())
    for row in data["register"]:
        row.pop("field_type", None)
    data["profile"]["name"] = "modular-raw"
    (tmp_path / "modular-raw.toml").write_bytes(tomli_w.dumps(data).encode())
    return tmp_path / "modular-raw.toml"


def test_the_bundled_profiles_agree_with_each_other_and_the_boards() -> None:
    devices = [
        modbus(f"d{n}", load_profile(name).kind, name)
        for n, name in enumerate(sorted(profile_names()))
    ]
    config = parse_config({**SKELETON, "device": devices})
    pairs = [(dev, load_profile(dev.profile or "")) for dev in config.device]
    assert field_type_conflicts(pairs) == []


def test_a_float_run_h_beside_an_integer_one_is_named(tmp_path: Path) -> None:
    raw = parse_profile(tomllib.loads(modular_as_decoded(tmp_path).read_text()), "modular-raw")
    config = parse_config(
        {
            **SKELETON,
            "device": [
                modbus("conc-1", "concentrator", "medical-concentrator"),
                modbus("psa-1", "plant", "psa-plant-modular"),
            ],
        }
    )
    conc, psa = config.device
    ok = [(conc, load_profile("medical-concentrator")), (psa, load_profile("psa-plant-modular"))]
    assert field_type_conflicts(ok) == []
    (problem,) = field_type_conflicts([ok[0], (psa, raw)])
    assert problem == (
        "psa-1 (profile modular-raw) writes concentrator.run_h as float, conc-1 (profile "
        "medical-concentrator) as integer: InfluxDB keeps one type per field (set field_type "
        "in the profile's row)"
    )


def test_a_profile_against_the_boards_schema_is_named(tmp_path: Path) -> None:
    data = tomllib.loads((BUNDLED / "medical-concentrator.toml").read_text())
    for row in data["register"]:
        if row["name"] == "flow_lpm":
            row.update(type="uint16", scale=1.0)
    data["profile"]["name"] = "whole-litres"
    profile = parse_profile(data, "whole-litres")
    (dev,) = parse_config({**SKELETON, "device": [modbus("c", "concentrator", "x")]}).device
    (problem,) = field_type_conflicts([(dev, profile)])
    assert problem.startswith(
        "c (profile whole-litres) writes concentrator.flow_lpm as integer, the boards' "
        "telemetry schema as float"
    )


def test_gateway_check_refuses_such_a_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    modular_as_decoded(tmp_path)
    monkeypatch.setenv(PROFILE_PATH_ENV, str(tmp_path))
    cfg = tmp_path / "gw.toml"
    devices = [
        modbus("conc-1", "concentrator", "medical-concentrator"),
        modbus("psa-1", "plant", "modular-raw"),
    ]
    state = {**SKELETON["gateway"], "state_dir": str(tmp_path / "st")}  # type: ignore[dict-item]
    cfg.write_bytes(tomli_w.dumps({**SKELETON, "gateway": state, "device": devices}).encode())
    assert main(["gateway", "check", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "psa-1 (profile modular-raw) writes concentrator.run_h as float" in err
    assert str(cfg) in err
