#!/usr/bin/env bash
# `pip check` for the locked stack: fails on any broken requirement except the pins of lerobot-dataset
# that scripts/lock_overrides.txt lifts on purpose (the [lerobot] extra; see there and pyproject.toml).
#   bash scripts/pip_check.sh .venv/bin/python          (scripts/setup.sh, docker/Dockerfile)
set -uo pipefail
PY=${1:?usage: pip_check.sh PATH/TO/venv/bin/python}
out=$("$PY" -m pip check 2>&1)
# lerobot-dataset's lifted pins: the overridden packages, or the two dropped (converter-only) ones
allowed='^lerobot-dataset [0-9.]+ (has requirement (huggingface-hub|packaging|setuptools)[^ ]* |requires (cmake|opencv-python-headless), which is not installed)'
left=$(printf '%s\n' "$out" | grep -Ev "$allowed" | grep -Ev '^(No broken requirements found\.)?$')
if [ -n "$left" ]; then
  printf '%s\n' "$left" >&2
  exit 1
fi
echo "[pip check] ok (lerobot-dataset's pins lifted by scripts/lock_overrides.txt: $(printf '%s\n' "$out" | grep -Ec "$allowed"))"
