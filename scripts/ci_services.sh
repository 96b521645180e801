#!/usr/bin/env bash
# Installs the PostgreSQL *server binaries* that the distributed-tuning tests need, and nothing else.
#
# tests/pg_server.py starts its own throwaway cluster (initdb + pg_ctl) in a temp dir, on 127.0.0.1, on a
# free port, with a private socket dir; it never touches a system cluster. So all this script must do
# is make `initdb` exist. Idempotent: it does nothing when the binaries are already there.
#
# The Debian package would normally create and start a `main` cluster on port 5432. We stop that from
# being *started* during the install (a temporary policy-rc.d, only if the machine has none), and stop
# it if it runs anyway: the tests do not use it, and nothing of ours listens on 5432.
#
# Usage (from .ci/run, before the tests):   bash scripts/ci_services.sh
set -euo pipefail

find_initdb() {
  if command -v initdb >/dev/null 2>&1; then command -v initdb; return 0; fi
  local f
  for f in $(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V -r); do
    [ -x "$f" ] && { echo "$f"; return 0; }
  done
  return 1
}

if p=$(find_initdb); then
  echo "[ci_services] PostgreSQL server binaries present: $(dirname "$p")"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "[ci_services] need root or sudo to apt-get install postgresql" >&2; exit 1; }
  SUDO="sudo"
fi

# Do not let the package start its cluster while installing (Docker-style policy-rc.d: deny all starts).
added_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  added_policy=1
fi
cleanup() { [ "$added_policy" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d; return 0; }
trap cleanup EXIT

echo "[ci_services] installing the Debian 'postgresql' package (server binaries for tests/pg_server.py)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null

# If a main cluster got started anyway (e.g. systemd ignored policy-rc.d), stop it: unused by the tests.
if command -v pg_lsclusters >/dev/null 2>&1; then
  pg_lsclusters --no-header 2>/dev/null | while read -r ver name port status _; do
    if [ "$status" = "online" ]; then
      echo "[ci_services] stopping the package's auto-started cluster $ver/$name (port $port; unused)"
      $SUDO pg_ctlcluster "$ver" "$name" stop || true
    fi
  done
fi

p=$(find_initdb) || { echo "[ci_services] postgresql installed but no initdb found under /usr/lib/postgresql/*/bin" >&2; exit 1; }
echo "[ci_services] PostgreSQL server binaries ready: $(dirname "$p")"
