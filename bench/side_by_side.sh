#!/usr/bin/env bash
# Old code against new, alternating on the same machine state: the Criterion benches
# `engine_throughput` and `telemetry_overhead`, and bench/jobs_e2e.sh (the Turnstile cases).
# For a refactoring that must not change speed: the figure is the ratio new/old of the
# medians over the rounds, each round running both builds back to back (the order
# alternates from round to round, so drift in the machine's load hits both alike).
#
#   bench/side_by_side.sh OLD_TREE NEW_TREE
#     OLD_TREE, NEW_TREE: checkouts whose release builds are done:
#       cargo build --release --bins
#       cargo bench --no-run -p turnstile-engine --bench engine_throughput
#       cargo bench --no-run -p turnstile-exporter --bench telemetry_overhead
#   ROUNDS=5          rounds of the Criterion benches
#   E2E_ROUNDS=3      rounds of jobs_e2e.sh (CASES="full normal procs", N=5000)
#   MEASURE=3         Criterion measurement seconds per bench and build
#
# Needs: wrk and python3 for jobs_e2e.sh.
set -euo pipefail
OLD=$(realpath "$1")
NEW=$(realpath "$2")
ROUNDS=${ROUNDS:-5}
E2E_ROUNDS=${E2E_ROUNDS:-3}
MEASURE=${MEASURE:-3}
HERE=$(cd "$(dirname "$0")/.." && pwd)
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 2; }
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

bench_exe() { # tree bench: the newest executable of that bench
  ls -t "$1"/target/release/deps/"$2"-* 2>/dev/null | grep -v '\.d$' | head -1
}

run_criterion() { # side tree bench
  local exe
  exe=$(bench_exe "$2" "$3")
  [ -x "$exe" ] || { echo "no $3 bench in $2 (cargo bench --no-run)" >&2; exit 2; }
  # One scratch directory per build: Criterion keeps its baselines under ./target.
  mkdir -p "$OUT/$1"
  (cd "$OUT/$1" && "$exe" --bench --output-format bencher --noplot \
    --warm-up-time 1 --measurement-time "$MEASURE" 2>/dev/null) |
    awk -v side="$1" '/^test /{gsub(",", "", $5); print side, $2, $5}' >> "$OUT/criterion.txt"
}

run_e2e() { # side tree
  TURNSTILE_BIN="$2/target/release/turnstile" CASES="full normal procs" \
    bash "$HERE/bench/jobs_e2e.sh" 5000 |
    awk -v side="$1" '/jobs\/s/{n=split($0, w, " "); label=$0; sub(/ +[0-9]+ jobs in.*/, "", label); gsub(/ /, "_", label); print side, label, w[n-1]}' >> "$OUT/e2e.txt"
}

echo "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "old: $OLD ($(git -C "$OLD" rev-parse --short HEAD))"
echo "new: $NEW ($(git -C "$NEW" rev-parse --short HEAD))"
for r in $(seq 1 "$ROUNDS"); do
  for b in engine_throughput telemetry_overhead; do
    if (( r % 2 )); then order="old new"; else order="new old"; fi
    for side in $order; do
      tree=$OLD; [ "$side" = new ] && tree=$NEW
      run_criterion "$side" "$tree" "$b"
    done
  done
  echo "criterion round $r of $ROUNDS done" >&2
done
for r in $(seq 1 "$E2E_ROUNDS"); do
  if (( r % 2 )); then order="old new"; else order="new old"; fi
  for side in $order; do
    tree=$OLD; [ "$side" = new ] && tree=$NEW
    run_e2e "$side" "$tree"
  done
  echo "jobs_e2e round $r of $E2E_ROUNDS done" >&2
done

python3 - "$OUT/criterion.txt" "$OUT/e2e.txt" <<'PY'
import statistics, sys
from collections import defaultdict

def table(path, unit, higher_is_better):
    runs = defaultdict(lambda: defaultdict(list))
    for line in open(path):
        side, name, value = line.split()
        runs[name][side].append(float(value))
    print(f"\n{'benchmark':<58} {'old median':>12} {'new median':>12} {'new/old':>8}   spread old / new")
    for name, sides in runs.items():
        o, n = sides["old"], sides["new"]
        mo, mn = statistics.median(o), statistics.median(n)
        spread = lambda v: f"{min(v):.0f}-{max(v):.0f}"
        print(f"{name:<58} {mo:>10.0f}{unit} {mn:>10.0f}{unit} {mn / mo:>8.3f}   {spread(o)} / {spread(n)}")
    print(f"({'higher' if higher_is_better else 'lower'} is better; {len(o)} runs per side)")

import os
for path, unit, better in ((sys.argv[1], "ns", False), (sys.argv[2], "/s", True)):
    if os.path.exists(path):
        table(path, unit, better)
PY
