#!/usr/bin/env bash
# Turnstile vs statemachine-engine (Python, PyPI 1.0.91) on the same ping-pong YAML.
#
# Runs, in one go and pinned to one core (taskset, when available):
#   1. the Criterion bench `engine_throughput` — (a) `external`, (b) `action`
#   2. bench/python_baseline.py --n $N --json — the same two modes in statemachine-engine
# and prints transitions/s for both engines and the ratios. Criterion results are read
# from target/criterion/engine_throughput/<bench>/new/estimates.json (median point
# estimate, ns per iteration; one iteration = one transition).
#
# Usage: bench/compare.sh
# Environment:
#   RUNS=3        repeat the whole comparison; the summary gives the median of the runs
#   N=20000       transitions per Python run (python_baseline.py takes the median of 3)
#   CPU=1         core to pin both engines to (CPU=none: no pinning)
#   MULTI=1       also run (c) `external_16x2t` (16 machines, 2 worker threads), unpinned
#   CARGO_TARGET_DIR is honoured.
# Needs: cargo, python3, `pip install statemachine-engine==1.0.91`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${RUNS:-1}
N=${N:-20000}
CPU=${CPU:-1}
MULTI=${MULTI:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
CRIT="$TARGET_DIR/criterion/engine_throughput"

PIN=()
if [[ "$CPU" != none ]] && command -v taskset >/dev/null 2>&1; then
    PIN=(taskset -c "$CPU")
    echo "pinned to CPU $CPU with taskset"
else
    echo "not pinned (taskset missing or CPU=none)"
fi

python3 -c 'import statemachine_engine' 2>/dev/null || {
    echo "statemachine-engine is not installed: pip install statemachine-engine==1.0.91" >&2
    exit 1
}

# Build first, unpinned (compiling on one core is slow and is not what is measured).
cargo bench -p turnstile-engine --bench engine_throughput --no-run

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

for run in $(seq 1 "$RUNS"); do
    echo "=== run $run of $RUNS"
    touch "$WORK/stamp"
    sleep 1 # mtime granularity: estimates written below must be newer than the stamp
    ${PIN[@]+"${PIN[@]}"} cargo bench -p turnstile-engine --bench engine_throughput -- \
        --noplot '^engine_throughput/(external|action)$'
    if [[ "$MULTI" == 1 ]]; then
        cargo bench -p turnstile-engine --bench engine_throughput -- \
            --noplot '^engine_throughput/external_16x2t$'
    fi
    ${PIN[@]+"${PIN[@]}"} python3 bench/python_baseline.py --n "$N" --json >"$WORK/py.json"
    cat "$WORK/py.json"
    for b in external action $([[ "$MULTI" == 1 ]] && echo external_16x2t); do
        f="$CRIT/$b/new/estimates.json"
        if [[ ! "$f" -nt "$WORK/stamp" ]]; then
            echo "no fresh Criterion result in $f" >&2
            exit 1
        fi
        cp "$f" "$WORK/rust-$b.json"
    done
    python3 - "$WORK" "$run" <<'EOF'
import json, os, sys
work, run = sys.argv[1], int(sys.argv[2])
py = json.load(open(os.path.join(work, "py.json")))
row = {"run": run, "python_n": py["n"], "python_version": py["version"]}
for b in ("external", "action", "external_16x2t"):
    p = os.path.join(work, f"rust-{b}.json")
    if os.path.exists(p):
        ns = json.load(open(p))["median"]["point_estimate"]  # ns per transition
        row[f"rust_{b}_tps"] = 1e9 / ns
for m in ("external", "action"):
    row[f"python_{m}_tps"] = py[f"{m}_tps"]
    row[f"ratio_{m}"] = row[f"rust_{m}_tps"] / py[f"{m}_tps"]
with open(os.path.join(work, "runs.jsonl"), "a") as f:
    f.write(json.dumps(row) + "\n")
print(json.dumps(row))
EOF
done

python3 - "$WORK" <<'EOF'
import json, os, statistics, sys
rows = [json.loads(l) for l in open(os.path.join(sys.argv[1], "runs.jsonl"))]
med = lambda k: statistics.median(r[k] for r in rows)
print()
print(f"Summary: median of {len(rows)} run(s); Turnstile = Criterion median, "
      f"statemachine-engine {rows[0]['python_version']} = median of 3 x {rows[0]['python_n']}")
print(f"{'mode':<24}{'Turnstile tr/s':>16}{'Python tr/s':>14}{'ratio':>9}{'goal':>7}")
targets = {"external": 2_000_000, "action": 1_000_000}
for m, label in (("external", "(a) external events"), ("action", "(b) set_context action")):
    r, p, q = med(f"rust_{m}_tps"), med(f"python_{m}_tps"), med(f"ratio_{m}")
    ok = "met" if r >= targets[m] and q >= 20 else "MISSED"
    print(f"{label:<24}{r:>16,.0f}{p:>14,.0f}{q:>8.1f}x{ok:>7}")
if all("rust_external_16x2t_tps" in r for r in rows):
    print(f"{'(c) 16 machines, 2 thr':<24}{med('rust_external_16x2t_tps'):>16,.0f}")
print("targets: (a) >= 2,000,000/s, (b) >= 1,000,000/s on one core; ratio >= 20x")
if len(rows) > 1:
    for m in ("external", "action"):
        print(f"per-run ratio {m}: " + ", ".join(f"{r[f'ratio_{m}']:.1f}" for r in rows))
EOF
