#!/usr/bin/env bash
# End-to-end job throughput, Turnstile and statemachine-engine in one run: N jobs are added
# while four workers claim and complete them. The figure is N divided by the time from the
# first add to the last completion (add, claim, complete, all durable).
#
#   bench/jobs_e2e.sh [N]        default 5000
#   CASES="full normal procs sme"  the cases to run (default: these four, in that order;
#                                  also `pg` and `pgprocs`: the first and third on PostgreSQL,
#                                  and `graphile`: graphile-worker on the same server)
#   ADDS=bulk                      adds in arrays of 1000 jobs per request (default: one job
#                                  per request, by wrk over 4 connections)
#   CLAIM_BATCH=N                  `turnstile run --claim-batch N` (default: run's default)
#   PG_URL=postgres://...          the server for the `pg` cases (default: one started by
#                                  bench/pg_server.sh in the temp dir, durable settings)
#   LOG_LEVEL=warn,turnstile::store=debug  also prints the writes and transactions of each
#                                          Turnstile process when it stops
#
# Turnstile (target/release/turnstile; `cargo build --release -p turnstile`):
#   jobs are added through the sidecar's `POST /jobs` by wrk (4 connections, N/4 requests
#   each, exactly; bench/post_jobs.lua); workers are four machines of bench/job_worker.yaml
#   (claim with check_database_queue, complete with complete_job).
#   - one process, four worker machines, --db-sync full (the default: fsync per commit,
#     group commit shares it among the process's concurrent writes);
#   - the same with --db-sync normal (fsync at checkpoints only);
#   - four processes, one worker machine each, --db-sync full (jobs posted to the first).
# statemachine-engine 1.0.91 (pip): four `statemachine` worker processes on the same YAML
#   (bench/job_worker.yaml) and its data/pipeline.db; jobs added by its own
#   JobModel.create_job in a Python loop.
#
# Needs: wrk, python3, statemachine-engine==1.0.91. Completion is watched with sqlite3 from
# Python every 10 ms.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${TURNSTILE_BIN:-target/release/turnstile}")
LUA=$(realpath bench/post_jobs.lua)
N=${1:-5000}
PER=$(( (N + 3) / 4 ))
N=$(( PER * 4 ))
TMP=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true
  if [ -n "${PG_DIR:-}" ]; then bash bench/pg_server.sh stop "$PG_DIR/pg"; rm -rf "$PG_DIR"; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

for i in 1 2 3 4; do
  sed "s/machine_name: worker$/machine_name: worker$i/" bench/job_worker.yaml > "$TMP/w$i.yaml"
done

# Waits until N jobs are completed in DB (a SQLite file or a postgres:// URL; QUERY, when
# given, counts them instead); prints seconds since START (a float). PostgreSQL is asked
# through one psql process that stays open (starting psql every 10 ms took a core).
# Without QUERY, it looks for one job still pending or processing and counts the completed
# ones only when there is none (counting the completed jobs every 10 ms took 4 ms of the
# PostgreSQL server's CPU each time with 20,000 jobs, a fifth of a core).
wait_done() { # db start [query]
  python3 - "$1" "$N" "$2" "${3:-}" <<'EOF'
import sqlite3, subprocess, sys, time
db, n, start, query = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
psql = None
if db.startswith("postgres"):
    psql = subprocess.Popen(["psql", "-XAtq", db], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
def ask(q):
    if psql:
        psql.stdin.write(q + ";\n")
        psql.stdin.flush()
        return int(psql.stdout.readline().strip() or 0)
    c = sqlite3.connect(db, timeout=30)
    try:
        return c.execute(q).fetchone()[0]
    finally:
        c.close()
def completed():
    if query:
        return ask(query)
    if ask("select count(*) from (select 1 from jobs where status in ('pending', 'processing') limit 1) s") > 0:
        return 0
    return ask("select count(*) from jobs where status = 'completed'")
while True:
    try:
        done = completed()
    except sqlite3.OperationalError:
        done = 0
    if done >= n:
        print(f"{time.time() - start:.3f}")
        break
    if time.time() - start > 600:
        print("timeout")
        break
    time.sleep(0.01)
if psql:
    psql.stdin.close()
    psql.wait()
EOF
}

free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }

wait_ready() { # port
  for _ in $(seq 200); do
    curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "sidecar on $1 did not come up" >&2
  return 1
}

# Adds the N jobs to the sidecar on PORT, in the background: one job per request by wrk (4
# connections), or, with ADDS=bulk, in arrays of 1000 jobs per request (one transaction
# each) from one client. Sets ADDER to its pid.
add_jobs() { # port
  if [ "${ADDS:-each}" = bulk ]; then
    python3 - "$1" "$N" > "$TMP/wrk.out" 2>&1 <<'EOF' &
import json, sys, urllib.request
port, n = sys.argv[1], int(sys.argv[2])
for lo in range(0, n, 1000):
    body = json.dumps([{"job_type": "task", "data": {"n": i}} for i in range(lo, min(n, lo + 1000))])
    req = urllib.request.Request(f"http://127.0.0.1:{port}/jobs", body.encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        if r.status != 201:
            print("POST /jobs:", r.status, file=sys.stderr)
EOF
  else
    JOBS_PER_THREAD=$PER wrk -t4 -c4 -d600s -s "$LUA" "http://127.0.0.1:$1/jobs" > "$TMP/wrk.out" 2>&1 &
  fi
  ADDER=$!
}

report() { # label seconds
  python3 -c "import sys; n=$N; t=float('$2'); print(f'{\"$1, adds ${ADDS:-each}\":<72} {n} jobs in {t:6.2f} s = {n/t:7.0f} jobs/s')"
}

# A fresh database on the PostgreSQL server; prints its URL.
pg_database() {
  local name="bench_$RANDOM$RANDOM"
  psql -XAtq "$PG_URL" -c "CREATE DATABASE $name" >/dev/null
  echo "${PG_URL%/*}/$name"
}

turnstile_one_process() { # sync [db]
  local db="${2:-$TMP/t-$1-$RANDOM$RANDOM.db}" port
  port=$(free_port)
  "$BIN" --log-level "${LOG_LEVEL:-warn}" run "$TMP"/w{1,2,3,4}.yaml --db "$db" --db-sync "$1" \
    --listen "127.0.0.1:$port" --strict-port --trace-buffer 0 ${CLAIM_BATCH:+--claim-batch $CLAIM_BATCH} &
  local pid=$!
  wait_ready "$port"
  local start
  start=$(date +%s.%N)
  add_jobs "$port"
  local wrk=$ADDER
  local t
  t=$(wait_done "$db" "$start")
  kill "$wrk" "$pid" 2>/dev/null || true
  wait "$wrk" "$pid" 2>/dev/null || true
  case $db in
    postgres*) report "Turnstile, 1 process x 4 worker machines, PostgreSQL" "$t" ;;
    *) report "Turnstile, 1 process x 4 worker machines, --db-sync $1" "$t" ;;
  esac
}

turnstile_four_processes() { # [db]
  local db="${1:-$TMP/t-procs-$RANDOM$RANDOM.db}" pids=() port first=""
  for i in 1 2 3 4; do
    port=$(free_port)
    "$BIN" --log-level "${LOG_LEVEL:-warn}" run "$TMP/w$i.yaml" --db "$db" --db-sync full \
      --listen "127.0.0.1:$port" --strict-port --trace-buffer 0 ${CLAIM_BATCH:+--claim-batch $CLAIM_BATCH} &
    pids+=($!)
    wait_ready "$port"
    [ -z "$first" ] && first=$port
  done
  local start
  start=$(date +%s.%N)
  add_jobs "$first"
  local wrk=$ADDER
  local t
  t=$(wait_done "$db" "$start")
  kill "$wrk" "${pids[@]}" 2>/dev/null || true
  wait "$wrk" "${pids[@]}" 2>/dev/null || true
  case $db in
    postgres*) report "Turnstile, 4 processes x 1 worker machine, PostgreSQL" "$t" ;;
    *) report "Turnstile, 4 processes x 1 worker machine, --db-sync full" "$t" ;;
  esac
}

sme() {
  local dir="$TMP/sme" pids=()
  mkdir -p "$dir/data"
  (cd "$dir" && python3 -c "from statemachine_engine.database.models import get_job_model; get_job_model()")
  for i in 1 2 3 4; do
    (cd "$dir" && exec statemachine "$TMP/w$i.yaml" \
      --event-socket-path "$dir/events$i.sock" --control-socket-prefix "$dir/control$i" \
      > "$dir/w$i.log" 2>&1) &
    pids+=($!)
  done
  sleep 3 # Python start-up
  local start
  start=$(date +%s.%N)
  (cd "$dir" && python3 - "$N" <<'EOF'
import sys
from statemachine_engine.database.models import get_job_model
m = get_job_model()
for i in range(int(sys.argv[1])):
    m.create_job(job_id=f"j{i}", job_type="task", data={"n": i})
EOF
  ) &
  local producer=$!
  local t
  t=$(wait_done "$dir/data/pipeline.db" "$start")
  kill "$producer" "${pids[@]}" 2>/dev/null || true
  pkill -P "$$" statemachine 2>/dev/null || true
  wait 2>/dev/null || true
  local dup
  dup=$(cat "$dir"/w*.log | grep -c "retrieved from queue" || true)
  report "statemachine-engine 1.0.91, 4 worker processes" "$t"
  echo "  (statemachine-engine workers logged $dup claims for $N jobs)"
}

# graphile-worker 0.17.3 (npm; bench/graphile, installed there by `npm ci` when missing) on
# the same PostgreSQL server: four `node worker.js` processes, concurrency 1 each, a no-op
# task; the N jobs are added in batches of 1000 by its addJobs (one statement each). The
# figure is N divided by the time from the first add to its jobs table emptying.
graphile() {
  local db gw=bench/graphile pids=()
  db=$(pg_database)
  [ -d "$gw/node_modules" ] || (cd "$gw" && npm ci --no-audit --no-fund >/dev/null)
  node "$gw/worker.js" "$db" add 0 # the schema
  for i in 1 2 3 4; do
    node "$gw/worker.js" "$db" 1 > "$TMP/gw$i.log" 2>&1 &
    pids+=($!)
  done
  sleep 2 # Node start-up
  local start
  start=$(date +%s.%N)
  node "$gw/worker.js" "$db" add "$N"
  local t
  t=$(wait_done "$db" "$start" "select $N - count(*) from graphile_worker._private_jobs")
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  ADDS=bulk report "graphile-worker 0.17.3, 4 processes x concurrency 1, PostgreSQL" "$t"
}

case " ${CASES:-} " in
  *" graphile"* | *" pg"*)
    if [ -z "${PG_URL:-}" ]; then
      # Its own folder: the server runs as nobody, who cannot enter $TMP.
      PG_DIR=$(mktemp -d) && chmod 755 "$PG_DIR"
      PG_URL=$(bash bench/pg_server.sh start "$PG_DIR/pg" "$(free_port)")
    fi ;;
esac
echo "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for c in ${CASES:-full normal procs sme}; do
  case $c in
    full | normal) turnstile_one_process "$c" ;;
    procs) turnstile_four_processes ;;
    pg) turnstile_one_process full "$(pg_database)" ;;
    pgprocs) turnstile_four_processes "$(pg_database)" ;;
    sme) sme ;;
    graphile) graphile ;;
    *) echo "unknown case $c" >&2; exit 2 ;;
  esac
done
