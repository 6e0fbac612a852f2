#!/usr/bin/env bash
# Instructions per event of the telemetry_overhead ping-pong machine, without an observer
# and with the metrics only, counted by callgrind: repeatable on a busy machine, where
# wall times are not. Only the sending and processing of the events is counted (after a
# warm-up: start-up and the clock's calibration are left out); each variant runs twice
# (N1 and N2 events), and the difference of the counts over N2 - N1 is the cost per event.
#
#   bench/callgrind_overhead.sh                     # builds the bench first
#   BENCH=/path/to/telemetry_overhead-binary bench/callgrind_overhead.sh
#
# Settings (environment): N1 (20000), N2 (120000), OVERHEAD_TIMING_SAMPLE (the metrics
# variant's --metrics-timing-sample, 32). Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-20000}
N2=${N2:-120000}
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }
if [ -z "${BENCH:-}" ]; then
  BENCH=$(cargo bench -p turnstile-exporter --bench telemetry_overhead --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "telemetry_overhead" and m.get("executable"):
        print(m["executable"])')
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
count() { # variant events -> instructions
  (cd exporter && OVERHEAD_VARIANT=$1 OVERHEAD_EVENTS=$2 valgrind --tool=callgrind \
    --collect-atstart=no --toggle-collect='*overhead_measured*' --callgrind-out-file="$work/cg.out" "$BENCH" >/dev/null 2>"$work/log") || { cat "$work/log" >&2; exit 1; }
  grep -o 'Collected : [0-9]*' "$work/log" | awk '{print $3}'
}
declare -A per
for v in none metrics; do
  a=$(count "$v" "$N1"); b=$(count "$v" "$N2")
  per[$v]=$(python3 -c "print(($b - $a) / ($N2 - $N1))")
  echo "$v: $a instructions for $N1 events, $b for $N2: ${per[$v]} per event"
done
python3 -c "print(f'metrics / none: {${per[metrics]} / ${per[none]}:.4f} ({${per[metrics]} - ${per[none]}:.1f} instructions per event)')"
