#!/usr/bin/env bash
# Job queue throughput: N jobs in one SQLite file, W `turnstile run` worker processes
# (claim + complete per job, as tests/jobs.rs does), wall time until every job is
# completed. Also the wake-up latency of a waiting worker for a job added by another
# process (`turnstile jobs add`).
#
#   bench/jobs_throughput.sh [N] [WORKERS...]      default: 5000 jobs, 1 and 4 workers
#
# Uses target/release/turnstile (cargo build --release -p turnstile).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${TURNSTILE_BIN:-target/release/turnstile}
N=${1:-5000}
shift || true
WORKERS=("$@")
[ ${#WORKERS[@]} -eq 0 ] && WORKERS=(1 4)
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT

cp bench/job_worker.yaml "$TMP/worker.yaml"

# True when no job is pending or processing (cheap: at most one row each).
drained() {
  [ "$("$BIN" jobs list --db "$1" --status pending --limit 1 --format json)" = "[]" ] &&
    [ "$("$BIN" jobs list --db "$1" --status processing --limit 1 --format json)" = "[]" ]
}
count() { "$BIN" jobs list --db "$1" --status "$2" --limit 1000000 --format json | grep -c '"job_id"' || true; }

for w in "${WORKERS[@]}"; do
  DB="$TMP/q$w.db"
  # Create the schema with Turnstile, then seed in one transaction.
  "$BIN" jobs list --db "$DB" > /dev/null
  python3 - "$DB" "$N" <<'EOF'
import sqlite3, sys, json
c = sqlite3.connect(sys.argv[1])
c.executemany("insert into jobs (job_id, job_type, data, status) values (?, 'task', ?, 'pending')",
              [(f"j{i}", json.dumps({"i": i})) for i in range(int(sys.argv[2]))])
c.commit()
EOF
  start=$(date +%s.%N)
  pids=()
  for _ in $(seq "$w"); do
    "$BIN" --log-level warn run "$TMP/worker.yaml" --db "$DB" --no-sidecar &
    pids+=($!)
  done
  until drained "$DB"; do sleep 0.05; done
  end=$(date +%s.%N)
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
  python3 -c "import sys; n=$N; t=$end-$start; print(f'{$w} worker(s): {n} jobs in {t:.2f} s = {n/t:.0f} jobs/s')"
done

# Wake-up latency: an idle worker, a job added by another process (noticed by the 250 ms
# data_version poll, so expect 0-250 ms plus process start-ups of the measuring loop).
DB="$TMP/lat.db"
"$BIN" --log-level warn run "$TMP/worker.yaml" --db "$DB" --no-sidecar &
W=$!
sleep 1
for i in $(seq 10); do
  t0=$(date +%s.%N)
  "$BIN" jobs add --db "$DB" --type task --job-id "lat$i" > /dev/null
  while [ "$(count "$DB" completed)" -lt "$i" ]; do sleep 0.005; done
  t1=$(date +%s.%N)
  python3 -c "print(f'{($t1-$t0)*1000:.0f}')"
  # A random pause, so that adds do not lock into the waiter's 250 ms poll phase.
  sleep "0.$((300 + RANDOM % 600))"
done | sort -n | awk '{a[NR]=$1} END {print "cross-process wake-up (jobs add -> completed), ms: min " a[1] ", median " a[int((NR+1)/2)] ", max " a[NR]}'
kill $W
