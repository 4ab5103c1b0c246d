#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests: a fresh cluster in a folder, reachable only through
# a unix socket in that folder (no TCP port), trust authentication for the `postgres` user.
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user that
# Debian's package creates.
#
# Usage:
#   scripts/postgres.sh start DIR   create and start a cluster in DIR; prints its connection string
#                                   (fsync off, unless MCN_POSTGRES_DURABLE=1)
#   scripts/postgres.sh stop DIR    stop it and delete DIR
#   scripts/postgres.sh run CMD...  start one in a temporary folder, run CMD with
#                                   MCN_TEST_POSTGRES set to its connection string, stop it
#                                   (also when CMD fails or is interrupted); CMD's exit status
set -euo pipefail

bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
  done
  if command -v initdb >/dev/null; then dirname "$(command -v initdb)"; return 0; fi
  return 1
}

as_server() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local dir=$1 bin
  bin=$(bindir) || { echo "postgres.sh: PostgreSQL is not installed (run scripts/install-postgres.sh)" >&2; return 2; }
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
  as_server "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; return 1; }
  # fsync off: a test server's data need not survive a power cut, and it saves the disk;
  # MCN_POSTGRES_DURABLE=1 keeps PostgreSQL's defaults (the benchmark measures those).
  local durability="-c fsync=off"
  if [ "${MCN_POSTGRES_DURABLE:-}" = 1 ]; then durability=""; fi
  as_server "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -s \
    -o "-c listen_addresses='' -c unix_socket_directories='$dir' $durability -c max_connections=200" start \
    || { cat "$dir/server.log" >&2; return 1; }
  echo "host=$dir user=postgres dbname=postgres"
}

stop() {
  local dir=$1 bin
  bin=$(bindir) || return 0
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_server "$bin/pg_ctl" -D "$dir/data" -w -s -m fast stop || true
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start "$2" ;;
  stop) stop "$2" ;;
  run)
    shift
    dir=$(mktemp -d /tmp/mcn-postgres.XXXXXX)
    trap 'stop "$dir"' EXIT INT TERM
    MCN_TEST_POSTGRES=$(start "$dir")
    export MCN_TEST_POSTGRES
    echo "postgres.sh: test server at $MCN_TEST_POSTGRES"
    status=0
    "$@" || status=$?
    exit $status
    ;;
  *) echo "usage: scripts/postgres.sh start DIR | stop DIR | run CMD..." >&2; exit 64 ;;
esac
