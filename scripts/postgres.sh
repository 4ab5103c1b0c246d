#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests: a fresh cluster in a folder, reachable through a unix
# socket in that folder, trust authentication for the `postgres` user. PostgreSQL refuses to run
# as root, so as root the server runs as the `postgres` user that Debian's package creates.
#
# Usage:
#   scripts/postgres.sh start DIR [tcp|tls]
#                     create and start a cluster in DIR; prints its connection string
#                     (fsync off, unless MCN_POSTGRES_DURABLE=1). Without a mode: the unix socket
#                     only. `tcp`: also loopback TCP on a free port, without TLS (`ssl = off`);
#                     `tls`: also loopback TCP with `ssl = on`, its certificates made with the
#                     openssl CLI in DIR/tls (below). With a mode it prints the TCP connection
#                     string (host=localhost port=P ...); the socket is DIR with port P.
#   scripts/postgres.sh stop DIR    stop it and delete DIR
#   scripts/postgres.sh run CMD...  start servers in a temporary folder, run CMD with them named
#                     in the environment, stop them (also when CMD fails or is interrupted);
#                     CMD's exit status. MCN_TEST_POSTGRES: the unix socket of a server without
#                     TLS, which also listens on TCP (MCN_TEST_POSTGRES_TCP); MCN_TEST_POSTGRES_TLS:
#                     a second server with TLS, over TCP, its files in MCN_TEST_POSTGRES_TLS_DIR.
#
# DIR/tls of a `tls` server: ca.crt (the test CA that signed server.crt), server.crt (names
# localhost, 127.0.0.1 and ::1), other-ca.crt (a CA that signed nothing here), client.crt and
# client.key (mode 0600; CN mcn_client, signed by the test CA; the role mcn_client, owner of the
# database mcn_client, may log in over TCP only with it: `hostssl ... cert`).
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

# A test CA, a server certificate it signs, a client certificate it signs, and a CA that signs
# nothing, in $1. EC P-256 keys: quick to make, and webpki and PostgreSQL both take them.
make_certs() {
  local t=$1
  command -v openssl >/dev/null || { echo "postgres.sh: the tls mode needs the openssl CLI (scripts/install-postgres.sh installs it)" >&2; return 2; }
  mkdir -p "$t"
  local key=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  local ca_ext=(-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign)
  openssl req -x509 "${key[@]}" -days 7 -subj "/CN=matrix-crypto-node test CA" "${ca_ext[@]}" \
    -keyout "$t/ca.key" -out "$t/ca.crt" 2>/dev/null
  openssl req -x509 "${key[@]}" -days 7 -subj "/CN=matrix-crypto-node other CA" "${ca_ext[@]}" \
    -keyout "$t/other-ca.key" -out "$t/other-ca.crt" 2>/dev/null
  local name ext
  for name in server client; do
    if [ $name = server ]; then
      ext="subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
extendedKeyUsage=serverAuth"
      subject="/CN=localhost"
    else
      ext="extendedKeyUsage=clientAuth"
      subject="/CN=mcn_client"
    fi
    openssl req -new "${key[@]}" -subj "$subject" -keyout "$t/$name.key" -out "$t/$name.csr" 2>/dev/null
    printf '%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n' "$ext" >"$t/$name.ext"
    openssl x509 -req -in "$t/$name.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" -CAcreateserial -days 7 \
      -extfile "$t/$name.ext" -out "$t/$name.crt" 2>/dev/null
  done
  chmod 600 "$t"/*.key
}

# A free loopback TCP port (the start retries with another if the server cannot bind it).
free_port() {
  local port
  while :; do
    port=$(( 20000 + RANDOM % 40000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return 0; fi
  done
}

start() {
  local dir=$1 mode=${2:-} bin
  bin=$(bindir) || { echo "postgres.sh: PostgreSQL is not installed (run scripts/install-postgres.sh)" >&2; return 2; }
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
  as_server "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; return 1; }
  # fsync off: a test server's data need not survive a power cut, and it saves the disk;
  # MCN_POSTGRES_DURABLE=1 keeps PostgreSQL's defaults (the benchmark measures those).
  local durability="-c fsync=off"
  if [ "${MCN_POSTGRES_DURABLE:-}" = 1 ]; then durability=""; fi
  local network="-c listen_addresses=''" port=5432
  case "$mode" in
    "") ;;
    tcp) network="-c listen_addresses=localhost -c ssl=off" ;;
    tls)
      make_certs "$dir/tls" || return $?
      if [ "$(id -u)" = 0 ]; then chown postgres "$dir/tls/server.key"; fi
      network="-c listen_addresses=localhost -c ssl=on -c ssl_cert_file=$dir/tls/server.crt -c ssl_key_file=$dir/tls/server.key -c ssl_ca_file=$dir/tls/ca.crt"
      # mcn_client logs in over TCP with its certificate only; everyone else as initdb set up.
      { printf 'hostssl all mcn_client 127.0.0.1/32 cert\nhostssl all mcn_client ::1/128 cert\nhost all mcn_client all reject\n'
        cat "$dir/data/pg_hba.conf"; } >"$dir/pg_hba.conf"
      cp "$dir/pg_hba.conf" "$dir/data/pg_hba.conf"
      ;;
    *) echo "postgres.sh: unknown mode $mode (tcp or tls)" >&2; return 64 ;;
  esac
  local attempt
  for attempt in 1 2 3 4 5; do
    if [ -n "$mode" ]; then port=$(free_port); fi
    if as_server "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -s \
      -o "$network -c port=$port -c unix_socket_directories='$dir' $durability -c max_connections=200" start; then
      break
    fi
    # Another process may have taken the port between the check and the bind: try another.
    if [ -z "$mode" ] || [ $attempt = 5 ]; then cat "$dir/server.log" >&2; return 1; fi
  done
  if [ -z "$mode" ]; then echo "host=$dir user=postgres dbname=postgres"; return 0; fi
  if [ "$mode" = tls ]; then
    "$bin/psql" -X -q -h "$dir" -p "$port" -U postgres -d postgres \
      -c "CREATE ROLE mcn_client LOGIN" -c "CREATE DATABASE mcn_client OWNER mcn_client" >/dev/null
  fi
  echo "host=localhost port=$port user=postgres dbname=postgres"
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
  start) start "$2" "${3:-}" ;;
  stop) stop "$2" ;;
  run)
    shift
    dir=$(mktemp -d /tmp/mcn-postgres.XXXXXX)
    chmod 755 "$dir" # the servers' own folders inside are theirs; as root they run as postgres
    trap 'stop "$dir/plain"; stop "$dir/tls"; rm -rf "$dir"' EXIT INT TERM
    MCN_TEST_POSTGRES_TCP=$(start "$dir/plain" tcp)
    port=${MCN_TEST_POSTGRES_TCP#*port=}; port=${port%% *}
    MCN_TEST_POSTGRES="host=$dir/plain port=$port user=postgres dbname=postgres"
    MCN_TEST_POSTGRES_TLS=$(start "$dir/tls" tls)
    MCN_TEST_POSTGRES_TLS_DIR=$dir/tls/tls
    export MCN_TEST_POSTGRES MCN_TEST_POSTGRES_TCP MCN_TEST_POSTGRES_TLS MCN_TEST_POSTGRES_TLS_DIR
    echo "postgres.sh: test server at $MCN_TEST_POSTGRES (TCP: $MCN_TEST_POSTGRES_TCP); with TLS at $MCN_TEST_POSTGRES_TLS"
    status=0
    "$@" || status=$?
    exit $status
    ;;
  *) echo "usage: scripts/postgres.sh start DIR [tcp|tls] | stop DIR | run CMD..." >&2; exit 64 ;;
esac
