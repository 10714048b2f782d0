"""The pure firmware modules against DOMAIN.md / datasheet / MQTT spec vectors, run twice:
under CPython on the sources and under `micropython` on the mpy-cross build."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import TESTS_DIR, load_checks

CHECKS = load_checks()
NAMES = sorted(name for name in dir(CHECKS) if name.startswith("check_"))


@pytest.mark.parametrize("name", NAMES)
def test_cpython(name: str) -> None:
    getattr(CHECKS, name)()


@pytest.fixture(scope="module")
def micropython_results(
    run_micropython: Callable[..., subprocess.CompletedProcess[str]], firmware_build: Path
) -> dict[str, str]:
    # Only compiled modules on the path: a stray .py would shadow the .mpy (MICROPYTHON.md).
    assert not list((firmware_build / "lib").rglob("*.py"))
    result = run_micropython(TESTS_DIR / "run_checks.py", heap="110K")
    assert result.returncode == 0, result.stdout + result.stderr
    return {
        m.group(2): m.group(1) + (m.group(3) or "")
        for m in re.finditer(r"^(PASS|FAIL) (\w+)(: .*)?$", result.stdout, re.M)
    }


@pytest.mark.parametrize("name", NAMES)
def test_micropython(name: str, micropython_results: dict[str, str]) -> None:
    assert micropython_results.get(name) == "PASS", micropython_results.get(name, "not run")
