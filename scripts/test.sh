#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, simulator and service tests included.
# Quick local loop without the simulator and services: .venv/bin/python -m pytest -m "not sim and not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# PostgreSQL server binaries: the distributed-tuning test starts its own cluster on 127.0.0.1.
bash scripts/ci_services.sh
# Headless Chromium: the MLflow UI test loads the experiment page in it.
if ! command -v chromium >/dev/null 2>&1; then
  echo "[test] installing Debian's chromium for the MLflow UI test"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
# Two pytest workers (pytest-xdist), one per core: the suite is mostly single-threaded simulator and
# training work. --dist loadfile keeps each file's module fixtures (a trained tiny plan, a warm env) in
# one worker. --no-loadscope-reorder: hand the files out in collection order, longest first
# (tests/conftest.py LONG_FILES_FIRST), not xdist's default of most tests first, which left the few-test
# but minutes-long files (tune, train, train_arm) to run alone at the end. PYTEST_WORKERS=0 runs
# everything in this process.
exec .venv/bin/python -m pytest -q --durations=15 -n "${PYTEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
