#!/usr/bin/env bash
# One-shot set-up on a fresh machine: system packages for headless MuJoCo rendering,
# a virtualenv in .venv/ with the pinned stack, and LIBERO's offline config + assets link.
# Safe to re-run: every step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# --- system packages: EGL (Mesa) for offscreen rendering, OSMesa as the fallback ---
APT_PKGS="libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 libglfw3"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "[setup] installing system packages:$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

# --- python environment ---
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
STAMP=.venv/.ablation-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ constraints.txt -nt "$STAMP" ]; then
  echo "[setup] installing the locked stack into .venv (a few minutes on first run)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and pinned: the CPU wheel on local disk; an unpinned torch pulls GBs of CUDA.
  .venv/bin/python -m pip install -q torch==2.13.0 torchvision==0.28.0
  # constraints.txt holds the exact version of every other package (refresh: scripts/lock.sh), so a
  # fresh machine next year trains on the same code as today.
  # [cluster]: Ray, for `--executor ray` and its tests (CI runs them).
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test,cluster]"
  touch "$STAMP"
fi

# --- LIBERO: write its config (import needs no TTY) and link the PyPI scene assets ---
.venv/bin/python -m ablation.sim.libero_setup
echo "[setup] ready: $ROOT/.venv"
