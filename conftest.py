"""Root of the test suite: shared fixtures, and a check that every tool the tests need is here.

A missing tool fails the run at once with the set-up command that installs it: a test that
skipped itself for want of a browser or a serial-port bridge would leave CI green while the
thing it guards went untested.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["o2chain.testing"]

# Tool -> what needs it. `scripts/bootstrap.sh --test-tools` (run by ./run-tests) installs them.
REQUIRED_TOOLS = {
    "mosquitto": "every integration test (the broker)",
    "influxd": "every integration test (the database)",
    "victoria-metrics": "the second real database the InfluxDB writers are tested against",
    "socat": "RTU over pseudo-terminals, the fake board for flashing",
    "chromium": "the live page tests (Playwright drives Debian's chromium)",
    "mosquitto_sub": "the benchmark baseline and broker-side checks",
    "mosquitto_passwd": "the broker password-file format the provisioning writes",
    "openssl": "TLS tests (certificates)",
    "micropython": "the firmware on the real MicroPython interpreter",
    "mpy-cross": "compiling the firmware as it ships",
    "losetup": "the power-cut test (a loop device whose page cache is lost)",
    "mkfs.ext4": "the power-cut test's file system",
    "ip": "the region WAN test's network namespaces and veth links",
    "tc": "the region WAN test's bandwidth cap (and delay/loss where the kernel has netem)",
    "nft": "the region WAN test's packet loss and partitions",
    "mbpoll": "reading the simulated Modbus equipment with an independent client",
}
# Fonts (fontconfig patterns) -> what needs them; scripts/bootstrap.sh installs them too.
REQUIRED_FONTS = {
    ":lang=zh-cn": "the live page's zh-CN tests and screenshots (Chinese glyphs, fonts-noto-cjk)",
}
_SBIN = ("/usr/sbin", "/usr/bin", "/sbin")


def _found(tool: str) -> bool:
    venv_bin = Path(sys.executable).parent
    return bool(
        shutil.which(tool)
        or shutil.which(tool, path=str(venv_bin))
        or any(Path(d, tool).exists() for d in _SBIN)
    )


def _font_found(pattern: str) -> bool:
    try:
        out = subprocess.run(
            ["fc-list", pattern, "family"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(out.strip())


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [f"{tool} ({why})" for tool, why in REQUIRED_TOOLS.items() if not _found(tool)]
    missing += [
        f"a font for {pattern} ({why})"
        for pattern, why in REQUIRED_FONTS.items()
        if not _font_found(pattern)
    ]
    if missing:
        pytest.exit(
            "missing test tools: " + "; ".join(missing) + ". Run scripts/bootstrap.sh "
            "--test-tools (./run-tests does) to install them.",
            returncode=4,
        )
