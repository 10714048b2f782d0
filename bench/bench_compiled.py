"""The commit path compiled with mypyc against the same code as plain Python, in process.

    .venv/bin/python bench/bench_compiled.py [--readings 40000] [--rounds 2] [--keep]

A trial, not a build step: the gateway ships as plain Python. This copies ``gateway/``,
``o2base/`` and ``o2core/`` to a temp dir, compiles the hot modules there with mypyc (the
.venv's, with gcc and the Python headers; about 3 minutes on 2 cores), then runs
``bench_gateway.stage_costs`` (pipeline stages and the whole commit path, CPU time, best of 3
rounds on fresh state) in a child process per round, plain and compiled alternated, and prints
the figures and their ratio. Measured so far: gateway/README.md, "Tried: mypyc".
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# The committer's modules that mypyc accepts as they are. mqtt_fast.py is left out: its client
# subclasses paho's (a native class cannot), and paho's thread is not the bottleneck.
MODULES = [
    "telemetry",
    "lineproto",
    "alarms",
    "rules",
    "enrich",
    "observe",
    "dedup",
    "readings",
    "mqtt_ingest",
    "pipeline",
    "outbox",
    "links",
]

# One round in a fresh interpreter: ROOT first on sys.path (the compiled copy, or the repo).
CHILD = """
import json, pathlib, sys, tempfile
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import gateway.alarms
from bench.bench_gateway import stage_costs
with tempfile.TemporaryDirectory() as d:
    costs = stage_costs(pathlib.Path(d), int(sys.argv[3]))
compiled = (gateway.alarms.__file__ or "").endswith(".so")
print(json.dumps({"compiled": compiled, **costs}))
"""


def build(dest: Path) -> None:
    for pkg in ("gateway", "o2base", "o2core"):
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("tests", "*.pyc"))
    # mypyc runs setuptools in ``dest``: no pyproject.toml there, the type check's own options.
    (dest / "mypy.ini").write_text(
        "[mypy]\npython_version = 3.11\nexplicit_package_bases = True\n"
        "ignore_missing_imports = True\n"
    )
    argv = [str(VENV_BIN / "mypyc"), *(f"gateway/{m}.py" for m in MODULES)]
    log = dest / "mypyc.log"
    with log.open("wb") as out:
        rc = subprocess.run(argv, cwd=dest, stdout=out, stderr=subprocess.STDOUT, timeout=1200)
    if rc.returncode != 0:
        sys.exit(f"mypyc failed (exit {rc.returncode}); its output: {log}")


def one_round(root: Path, readings: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(REPO), str(readings)],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description="mypyc-compiled commit path against plain Python")
    ap.add_argument("--readings", type=int, default=40_000)
    ap.add_argument("--rounds", type=int, default=2, help="pairs of plain, compiled rounds")
    ap.add_argument("--keep", action="store_true", help="keep the compiled copy and say where")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="o2compiled-"))
    try:
        print(f"compiling {len(MODULES)} modules with mypyc ...", flush=True)
        build(tmp)
        rows: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for _ in range(args.rounds):
            for root, compiled in ((REPO, False), (tmp, True)):
                r = one_round(root, args.readings)
                if bool(r["compiled"]) != compiled:
                    sys.exit(f"round meant {'compiled' if compiled else 'plain'} ran the other")
                rows[compiled].append(r)
                print(
                    f"{'compiled' if compiled else 'plain   '}  commit {r['commit']:.1f} "
                    f"us/reading, stages {r['per_run']:.1f} (one message a call "
                    f"{r['per_message']:.1f})",
                    flush=True,
                )
        for key in ("commit", "per_run", "per_message"):
            plain = statistics.median(r[key] for r in rows[False])
            comp = statistics.median(r[key] for r in rows[True])
            print(f"{key:12} plain {plain:.1f}  compiled {comp:.1f}  ratio {plain / comp:.2f}x")
    finally:
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
