"""Board firmware benchmark: heap high-water mark and cycle time over many fast cycles, and the
flash spool's write rate, on the real `micropython` with the compiled firmware.

    .venv/bin/python bench/bench_firmware.py                      # 10,000 cycles at 110K
    .venv/bin/python bench/bench_firmware.py --cycles 2000 --heap 110K,128K

Part 1 runs the emulated board (o2chain.firmware_runner.BoardRunner) connected to a private
Mosquitto, sampling and taking a reading every 10 ms (a test-only rate; on site it is 0.5 s
and 10 s), and reports per heap size: free heap when the board is built (end of start-up),
lowest ``gc.mem_free()`` after the per-reading collection (high-water mark = heap - lowest
free; the heap size includes the GC's own block table, ~1.3 %), the fitted trend of free heap
(bytes per 1000 cycles; ~0 = no leak), and the busy time of one sample+reading cycle (median,
p99, max). A MemoryError is reported, not raised.

Part 2 appends telemetry-sized records to the spool (compiled o2.spool) in a temp dir and
reports records/s and KiB/s, including segment rotation and drop-oldest.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from o2base.services import Mosquitto
from o2chain.firmware_runner import BoardRunner, FirmwareError, build_firmware, find_tool

SPOOL_BENCH = """
import time, os
from o2 import spool, telemetry
d = "%(dir)s"
sp = spool.Spool(d, 16384, 8)
sp.open()
payload = telemetry.encode(12, 123456, 1732400000123, (24.5, 64.5, 20.0, 30.0, 15.8, 2400.0), 0)
n = %(n)d
t0 = time.ticks_ms()
for i in range(n):
    sp.append(payload)
dt = time.ticks_diff(time.ticks_ms(), t0)
print("SPOOL", n, len(payload), dt, sp.dropped, sp.segments)
"""


def board_run(heap: str, cycles: int, build: Path, work: Path, broker: Mosquitto) -> dict:
    cfg = {
        "site": "bench",
        "device": f"heap-{heap.lower()}",
        "site_altitude_m": 3650,
        "interval_s": 0.01,
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive_s": 5},
        "alarm": {"sample_s": 0.01, "pin": 25},
    }
    board = BoardRunner(cfg, work / heap, heap=heap, o2_pct=24.5, build_dir=build)
    t0 = time.monotonic()
    error = ""
    try:
        board.start()
        board.wait_for_log(rf"^reading seq={cycles} ", timeout_s=60 + cycles / 25)
    except FirmwareError as e:
        error = str(e).splitlines()[-1]
    finally:
        elapsed = time.monotonic() - t0
        text = board.log_text()
        board.kill()
    free = [int(m) for m in re.findall(r"^reading .* free=(\d+)", text, re.M)]
    busy = sorted(int(m) for m in re.findall(r"busy_us=(\d+)", text))
    out: dict = {"heap": heap, "cycles": len(free), "elapsed_s": round(elapsed, 1)}
    built = re.search(r"^reset cause: .*; heap free (\d+)", text, re.M)
    if built:
        out["free_after_start_b"] = int(built.group(1))
    if "MemoryError" in text:
        error = "MemoryError: " + (error or "see " + str(board.log_path))
    if free:
        half = free[len(free) // 2 :]
        slope = statistics.linear_regression(range(len(half)), half).slope if len(half) > 2 else 0
        heap_b = int(heap.rstrip("K")) * 1024
        out.update(
            free_min_b=min(free),
            high_water_b=heap_b - min(free),
            trend_b_per_1000=round(slope * 1000, 1),
        )
    if busy:
        out.update(
            busy_median_ms=round(busy[len(busy) // 2] / 1000, 2),
            busy_p99_ms=round(busy[int(len(busy) * 0.99)] / 1000, 2),
            busy_max_ms=round(busy[-1] / 1000, 2),
        )
    if error:
        out["error"] = error
    return out


def spool_rate(build: Path, records: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="o2chain-spool-bench-") as tmp:
        script = Path(tmp) / "spool_bench.py"
        (Path(tmp) / "spool").mkdir()
        script.write_text(SPOOL_BENCH % {"dir": f"{tmp}/spool", "n": records})
        env = dict(os.environ, MICROPYPATH=f"{build / 'lib'}:.frozen")
        result = subprocess.run(
            [find_tool("micropython"), "-X", "heapsize=110K", str(script)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
    m = re.search(r"SPOOL (\d+) (\d+) (\d+) (\d+) (\d+)", result.stdout)
    if not m:
        return {"error": result.stdout + result.stderr}
    n, size, ms, dropped, segments = (int(g) for g in m.groups())
    secs = max(ms, 1) / 1000
    return {
        "records": n,
        "record_b": size,
        "records_per_s": round(n / secs),
        "kib_per_s": round(n * (size + 8) / 1024 / secs, 1),
        "dropped_oldest": dropped,
        "segments": segments,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10000)
    parser.add_argument("--heap", default="110K", help="comma-separated heap sizes")
    parser.add_argument("--spool-records", type=int, default=5000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="o2chain-bench-fw-") as tmp:
        work = Path(tmp)
        build = work / "build"
        build_firmware(build)
        print("spool append (flash spool on the host's disk, compiled o2.spool, 110K heap):")
        print("  ", spool_rate(build, args.spool_records), flush=True)
        with Mosquitto(work / "svc") as broker:
            for heap in args.heap.split(","):
                print(f"board, {args.cycles} cycles of 10 ms at -X heapsize={heap}:", flush=True)
                print("  ", board_run(heap.strip(), args.cycles, build, work, broker), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
