#!/usr/bin/env bash
# Refresh constraints.txt, the exact versions of the whole stack that scripts/setup.sh installs.
# Run it after changing a dependency in pyproject.toml: it rebuilds a throw-away venv from pyproject's
# (loose) requirements, so the lock records what a fresh machine would get today, then review the diff.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
# torch and torchvision stay pinned in pyproject (the CPU wheel on local disk); they are not locked
# here because the GPU image installs a CUDA build of the same versions (docker/constraints).
"$tmp/venv/bin/python" -m pip install -q torch==2.13.0 torchvision==0.28.0
"$tmp/venv/bin/python" -m pip install -q ".[test,cluster]"
{
  echo "# Exact versions of the whole stack; scripts/setup.sh installs with -c constraints.txt."
  echo "# Refresh: bash scripts/lock.sh (see README, 'A reproducible stack')."
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -viE '^(torch|torchvision|ablation)=='
} > constraints.txt
echo "[lock] wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
