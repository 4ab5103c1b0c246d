#!/usr/bin/env bash
# Install Debian's PostgreSQL server binaries for the store tests (initdb/pg_ctl; no cluster is
# created or started here: scripts/postgres.sh starts a throwaway one per test run), and the
# openssl CLI that makes the certificates of its TLS server (Debian's postgresql package pulls it
# in through ssl-cert, but a machine with PostgreSQL from elsewhere may lack it).
#
# Idempotent: does nothing when initdb and openssl are already installed.
#
# Usage: scripts/install-postgres.sh
set -euo pipefail

packages=()
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
  echo "install-postgres: PostgreSQL already installed ($(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | head -1))"
else
  packages+=(postgresql)
fi
command -v openssl >/dev/null || packages+=(openssl)
if [ ${#packages[@]} = 0 ]; then exit 0; fi

if [ "$(id -u)" != 0 ]; then
  echo "install-postgres: ${packages[*]} missing, and installing needs root (apt-get install ${packages[*]})" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${packages[@]}" >/dev/null
if [ "${packages[0]}" != postgresql ]; then echo "install-postgres: installed ${packages[*]}"; exit 0; fi
# The package starts a system cluster; the tests use their own, so leave the system one stopped.
if command -v pg_lsclusters >/dev/null; then
  pg_lsclusters --no-header 2>/dev/null | while read -r version name _; do
    pg_ctlcluster "$version" "$name" stop 2>/dev/null || true
  done
fi
echo "install-postgres: installed $(ls -d /usr/lib/postgresql/*/bin | head -1)"
