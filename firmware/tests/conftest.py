"""Fixtures for the firmware tests.

The firmware's package ``o2`` lives in ``firmware/lib`` (the board's ``/lib``), not in the
installed distribution: it is loaded here by path under its board name, so the tests import
exactly what the board runs, without touching sys.path.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from o2chain.firmware_runner import CORE_DIR, FIRMWARE_DIR, build_firmware, find_tool

TESTS_DIR = Path(__file__).resolve().parent
VECTORS_FILE = CORE_DIR / "vectors.json"  # o2core's test vectors, shared with gateway/simulators


def _load(name: str, path: Path, package_dir: Path | None = None) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(package_dir)] if package_dir else None
    )
    if spec is None or spec.loader is None:
        raise ImportError(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_firmware_module(name: str) -> ModuleType:
    """``load_firmware_module("o2.ze03")``: a firmware module from firmware/lib (CPython)."""
    pkg = FIRMWARE_DIR / "lib" / "o2"
    _load("o2", pkg / "__init__.py", pkg)
    return importlib.import_module(name)


def load_checks() -> ModuleType:
    """The common-subset checks module (imports ``o2`` and ``o2core``), reading o2core's
    vectors from the source tree."""
    load_firmware_module("o2")
    _load("mqtt_peer", TESTS_DIR / "mqtt_peer.py")  # `import mqtt_peer` in checks.py
    checks = _load("firmware_checks", TESTS_DIR / "checks.py")
    checks.__dict__["VECTORS_FILE"] = str(VECTORS_FILE)
    return checks


@pytest.fixture(scope="session")
def firmware_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The firmware compiled with mpy-cross, as `o2chain firmware build` does it."""
    out = tmp_path_factory.mktemp("firmware-build")
    build_firmware(out)
    return out


@pytest.fixture(scope="session")
def run_micropython(firmware_build: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a script under ``micropython`` with the compiled ``lib`` (only .mpy) on its path."""
    micropython = find_tool("micropython")

    def run(script: Path, *args: str, heap: str = "220K") -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        # MICROPYPATH replaces the default path: keep .frozen or asyncio disappears.
        env["MICROPYPATH"] = f"{script.parent}:{firmware_build / 'lib'}:.frozen"
        return subprocess.run(
            [micropython, "-X", f"heapsize={heap}", str(script), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )

    return run
