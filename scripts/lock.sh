#!/usr/bin/env bash
# Regenerate requirements.lock: every package of pyproject.toml's [all] extra, plus pip and setuptools,
# at one version each with the sha256 of every file, for CPython 3.11 on Linux x86_64 (what setup.sh, CI
# and docker/Dockerfile install through scripts/install_lock.sh). Run it after changing a dependency in
# pyproject.toml, then review the diff. Versions already in the lock are kept where they still fit
# (uv reads the old file as its preferences); `bash scripts/lock.sh --upgrade` moves everything forward.
# torch: the CPU build, from PyTorch's CPU wheel page or, where that is unreachable, the same wheel on
# local disk (TORCH_WHEELS, default /opt/wheels); see scripts/install_lock.sh.
# scripts/lock_overrides.txt lifts the too-old pins of lerobot-dataset (the [lerobot] extra); see there.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
TORCH=2.13.0+cpu
TORCH_PAGE=https://download.pytorch.org/whl/cpu/torch/
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q "uv==$UV_VERSION"
if python3 -c "import urllib.request as u; u.urlopen('$TORCH_PAGE', timeout=15)" 2>/dev/null; then
  torch_src=$TORCH_PAGE
else
  torch_src=${TORCH_WHEELS:-/opt/wheels}
  compgen -G "$torch_src/torch-$TORCH-cp311-*.whl" >/dev/null \
    || { echo "[lock] cannot reach $TORCH_PAGE and no torch-$TORCH wheel in $torch_src (set TORCH_WHEELS)" >&2; exit 1; }
fi
# the old lock, as uv's preferences: unchanged requirements keep their versions
[ -f requirements.lock ] && cp requirements.lock "$tmp/lock.txt"
echo "torch==$TORCH" > "$tmp/constraints.txt"
printf 'pip==26.3\nsetuptools>=68\n' > "$tmp/tools.in"
"$tmp/venv/bin/uv" -q pip compile pyproject.toml "$tmp/tools.in" --all-extras "$@" \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes \
  --find-links "$torch_src" -c "$tmp/constraints.txt" --override scripts/lock_overrides.txt --no-header --no-annotate -o "$tmp/lock.txt"
{
  echo "# The whole stack, one version and the sha256 of every file: CPython 3.11, Linux x86_64."
  echo "# Made by scripts/lock.sh (uv $UV_VERSION) from pyproject.toml [all] + pip; torch $TORCH from $torch_src."
  echo "# Installed by scripts/install_lock.sh (pip --require-hashes) in setup.sh, CI and docker/Dockerfile."
  cat "$tmp/lock.txt"
} > requirements.lock
echo "[lock] wrote requirements.lock ($(grep -c '^[a-zA-Z]' requirements.lock) packages)"
