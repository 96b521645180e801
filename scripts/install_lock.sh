#!/usr/bin/env bash
# Install requirements.lock, exactly and hash-checked, into the virtualenv of the given python:
#   bash scripts/install_lock.sh .venv/bin/python        (scripts/setup.sh, CI and docker/Dockerfile)
# The lock names every package with its version and sha256 (made by scripts/lock.sh for CPython 3.11 on
# Linux x86_64), so pip installs the same files everywhere or stops. The project itself is not in it.
#
# torch is the CPU build 2.13.0+cpu, which PyPI does not carry (PyPI's torch 2.13.0 for Linux is the CUDA
# build, GBs of nvidia-* wheels). It comes from PyTorch's CPU wheel page where that is reachable, else from
# a local directory holding the same wheel (TORCH_WHEELS, default /opt/wheels), else we stop. Either way the
# lock's sha256 of that file is checked, so both sources install the same bytes or fail.
set -euo pipefail
PY=${1:?usage: install_lock.sh PATH/TO/venv/bin/python}
cd "$(dirname "$0")/.."
LOCK=requirements.lock
TORCH_PAGE=https://download.pytorch.org/whl/cpu/torch/
TORCH_WHEEL_GLOB="torch-$(sed -n 's/^torch==\([^ ]*\).*/\1/p' "$LOCK")-cp311-*.whl"

if "$PY" -c "import urllib.request as u; u.urlopen('$TORCH_PAGE', timeout=15)" 2>/dev/null; then
  torch_src=$TORCH_PAGE
elif compgen -G "${TORCH_WHEELS:-/opt/wheels}/$TORCH_WHEEL_GLOB" >/dev/null; then
  torch_src=${TORCH_WHEELS:-/opt/wheels}
else
  echo "[lock] cannot reach $TORCH_PAGE and no $TORCH_WHEEL_GLOB in ${TORCH_WHEELS:-/opt/wheels}:" \
       "give TORCH_WHEELS=DIR holding that wheel (its sha256 is in $LOCK)" >&2
  exit 1
fi
echo "[lock] torch from $torch_src"

# pip first, at the lock's version and hash: the venv's own pip varies with the Python patch release.
pip_req=$(mktemp)
trap 'rm -f "$pip_req"' EXIT
awk '/^pip==/{on=1} on{print} on && !/\\$/{exit}' "$LOCK" > "$pip_req"
"$PY" -m pip install -q --require-hashes --no-deps -r "$pip_req"
# --no-deps: the lock is the whole closure (pip check below proves it); sdists (egl_probe) are built
# from their hashed archives, with cmake and a compiler from the system.
"$PY" -m pip install -q --require-hashes --no-deps --find-links "$torch_src" -r "$LOCK"
