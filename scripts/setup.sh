#!/usr/bin/env bash
# One-shot set-up on a fresh machine: system packages for headless MuJoCo rendering,
# a virtualenv in .venv/ with the pinned stack, and LIBERO's offline config + assets link.
# Safe to re-run: every step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# --- system packages: EGL (Mesa) for offscreen rendering, OSMesa as the fallback; a compiler and cmake
# for egl_probe and hf-egl-probe, which robomimic and hf-libero need and which ship as sources only ---
APT_PKGS="libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 libglfw3 build-essential cmake"
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
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ requirements.lock -nt "$STAMP" ]; then
  echo "[setup] installing the locked stack into .venv (a few minutes on first run)"
  # requirements.lock: every package of pyproject's [all] extra (test, cluster, ui, postgres, video, rdt, lerobot),
  # one version and its sha256 each, the CPU torch included (refresh: scripts/lock.sh). The same script
  # installs it in the Docker image, so a fresh machine next year trains on the same files as today.
  bash scripts/install_lock.sh .venv/bin/python
  # the project itself, editable; its dependencies are all in the lock, and setuptools comes from it too
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  # pip check, allowing only lerobot-dataset's pins that scripts/lock_overrides.txt lifts ([lerobot] extra)
  bash scripts/pip_check.sh .venv/bin/python
  touch "$STAMP"
fi

# --- bytecode for the project's own modules (pip compiles the installed packages, not an editable
# project). Every process of a plan or of the tests imports them: plan, rollout and Ray workers, CLI
# drivers. Where PYTHONDONTWRITEBYTECODE is set (these machines set it) none is ever cached, and each
# process compiled ~22k lines from source again: 0.3-0.45 CPU-s apiece (docs/measurements.md).
# Up-to-date files are skipped, so a re-run costs well under a second. ---
.venv/bin/python -m compileall -q -j 0 ablation tests benchmarks run_ablation.py >/dev/null

# --- LIBERO: write its config (import needs no TTY) and link the PyPI scene assets ---
.venv/bin/python -m ablation.sim.libero_setup
echo "[setup] ready: $ROOT/.venv"
