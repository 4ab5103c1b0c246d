#!/usr/bin/env bash
# Install Debian's PostgreSQL server binaries for the store tests (initdb/pg_ctl; no cluster is
# created or started here: scripts/postgres.sh starts a throwaway one per test run).
#
# Idempotent: does nothing when initdb is already installed.
#
# Usage: scripts/install-postgres.sh
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
  echo "install-postgres: PostgreSQL already installed ($(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | head -1))"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "install-postgres: PostgreSQL is missing and installing it needs root (apt-get install postgresql)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq postgresql >/dev/null
# The package starts a system cluster; the tests use their own, so leave the system one stopped.
if command -v pg_lsclusters >/dev/null; then
  pg_lsclusters --no-header 2>/dev/null | while read -r version name _; do
    pg_ctlcluster "$version" "$name" stop 2>/dev/null || true
  done
fi
echo "install-postgres: installed $(ls -d /usr/lib/postgresql/*/bin | head -1)"
