"""The pure firmware modules and o2core against their vectors (o2core/vectors.json, datasheets,
the MQTT spec), run twice: under CPython on the sources and under `micropython` on the mpy-cross
build."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from o2chain.firmware_runner import find_tool

from .conftest import TESTS_DIR, VECTORS_FILE, load_checks

CHECKS = load_checks()
NAMES = sorted(name for name in dir(CHECKS) if name.startswith("check_"))


@pytest.mark.parametrize("name", NAMES)
def test_cpython(name: str) -> None:
    getattr(CHECKS, name)()


@pytest.fixture(scope="module")
def micropython_results(
    run_micropython: Callable[..., subprocess.CompletedProcess[str]],
    firmware_build: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    # Only compiled modules on the path: a stray .py would shadow the .mpy (an import takes the
    # .py when both sit together).
    assert not list((firmware_build / "lib").rglob("*.py"))
    # The checks are compiled too: loaded from source they alone take ~40 KB of the 110K heap.
    work = tmp_path_factory.mktemp("checks")
    for name in ("checks", "mqtt_peer"):
        subprocess.run(
            [
                find_tool("mpy-cross"),
                "-o",
                str(work / f"{name}.mpy"),
                str(TESTS_DIR / f"{name}.py"),
            ],
            check=True,
        )
    shutil.copy2(TESTS_DIR / "run_checks.py", work / "run_checks.py")
    # 220K: every firmware module plus all checks at once is more than a board ever loads
    # (functional runs at 220K; the strict 110K run is the heap soak).
    result = run_micropython(work / "run_checks.py", str(VECTORS_FILE), heap="220K")
    assert result.returncode == 0, result.stdout + result.stderr
    return {
        m.group(2): m.group(1) + (m.group(3) or "")
        for m in re.finditer(r"^(PASS|FAIL) (\w+)(: .*)?$", result.stdout, re.M)
    }


@pytest.mark.parametrize("name", NAMES)
def test_micropython(name: str, micropython_results: dict[str, str]) -> None:
    assert micropython_results.get(name) == "PASS", micropython_results.get(name, "not run")
