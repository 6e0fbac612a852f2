#!/usr/bin/env bash
# A throwaway PostgreSQL server for benchmarks: initdb in DIR, postgres on 127.0.0.1:PORT
# with fsync and synchronous_commit on (the durable defaults), trust authentication for
# user `turnstile`, database `bench`. Runs as `nobody` when started as root (PostgreSQL
# refuses root). Prints the URL; `bench/pg_server.sh stop DIR` stops it.
#
#   bench/pg_server.sh start /tmp/pgbench 55432
#   bench/pg_server.sh stop /tmp/pgbench
set -euo pipefail
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_server() { if [ "$(id -u)" = 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi; }
case ${1:-} in
  start)
    dir=$2 port=$3
    mkdir -p "$dir" && chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown nobody:nogroup "$dir"
    as_server "$bin/initdb" -D "$dir/data" -U turnstile --auth=trust -E UTF8 --no-instructions >/dev/null
    as_server "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on -c max_connections=200" start >/dev/null
    as_server "$bin/psql" -h 127.0.0.1 -p "$port" -U turnstile -d postgres -qc "CREATE DATABASE bench"
    echo "postgres://turnstile@127.0.0.1:$port/bench"
    ;;
  stop)
    as_server "$bin/pg_ctl" -D "$2/data" -m fast -w stop >/dev/null
    rm -rf "$2"
    ;;
  *) echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
