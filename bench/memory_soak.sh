#!/usr/bin/env bash
# Resident memory over a long run: one `turnstile run` process with the sidecar and
# telemetry on (metrics and the /trace ring buffer at its default size) drives
# bench/pingpong_action.yaml (two states whose set_context actions return `go` for ever)
# through EVENTS events, while VmRSS is sampled from /proc/PID/status every INTERVAL
# seconds and the event count from /stats. Prints every sample, then the RSS at the end
# of the warm-up (the first WARMUP events), its peak after that, at the end, and the
# growth.
#
#   bench/memory_soak.sh                    # builds the release binary first
#   TURNSTILE=/path/to/turnstile EVENTS=10000000 bench/memory_soak.sh
#   SPANS=1 bench/memory_soak.sh            # also a span per event, exported over OTLP
#                                           # to a local sink that answers 200
#
# Settings (environment): EVENTS (10,000,000), WARMUP (1,000,000), INTERVAL (1),
# LIMIT_MB (10: exit status 1 when the growth after warm-up is larger), SPANS (0).
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS=${EVENTS:-10000000}
WARMUP=${WARMUP:-1000000}
INTERVAL=${INTERVAL:-1}
LIMIT_MB=${LIMIT_MB:-10}
SPANS=${SPANS:-0}

if [ -z "${TURNSTILE:-}" ]; then
  cargo build --release -p turnstile --bin turnstile >&2
  TURNSTILE=target/release/turnstile
fi

work=$(mktemp -d)
pid=
sink=
cleanup() {
  for p in $pid $sink; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

extra=()
if [ "$SPANS" = 1 ]; then
  # An OTLP/HTTP endpoint that reads each request and answers 200 with an empty body.
  python3 - "$work/sink_port" <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(s.server_address[1]))
s.serve_forever()
PY
  sink=$!
  for _ in $(seq 1 50); do [ -s "$work/sink_port" ] && break; sleep 0.1; done
  extra=(--otlp-endpoint "http://127.0.0.1:$(cat "$work/sink_port")")
fi

"$TURNSTILE" --log-format json --log-level warn,turnstile::sidecar=info run bench/pingpong_action.yaml \
  --listen 127.0.0.1:0 "${extra[@]}" 2>"$work/log" &
pid=$!
addr=
for _ in $(seq 1 100); do
  addr=$(grep -o '"addr":"[^"]*"' "$work/log" | head -1 | cut -d'"' -f4 || true)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "no sidecar address in the log:" >&2; cat "$work/log" >&2; exit 1; }

events() {
  curl -s "http://$addr/stats" | grep -o '"processed_events":[0-9]*' | cut -d: -f2
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"; }

echo "turnstile=$TURNSTILE pid=$pid events=$EVENTS warmup=$WARMUP spans=$SPANS"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%8s %14s %10s\n' seconds events rss_kb
t0=$EPOCHREALTIME
start_kb= peak_kb=0 end_kb= n=0
while :; do
  kill -0 "$pid" 2>/dev/null || { echo "turnstile exited:" >&2; cat "$work/log" >&2; exit 1; }
  n=$(events); kb=$(rss_kb)
  t=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')
  printf '%8s %14s %10s\n' "$t" "$n" "$kb"
  if [ "$n" -ge "$WARMUP" ]; then
    [ -z "$start_kb" ] && start_kb=$kb
    [ "$kb" -gt "$peak_kb" ] && peak_kb=$kb
  fi
  if [ "$n" -ge "$EVENTS" ]; then end_kb=$kb; break; fi
  sleep "$INTERVAL"
done
elapsed=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')
stats=$(curl -s "http://$addr/metrics" | grep -E '^turnstile_spans_(exported|dropped)_total ' | tr '\n' ' ' || true)

growth_kb=$((end_kb - start_kb))
peak_growth_kb=$((peak_kb - start_kb))
echo
echo "events: $n in ${elapsed} s ($(awk -v n="$n" -v t="$elapsed" 'BEGIN {printf "%.0f", n / t}') events/s)"
[ "$SPANS" = 1 ] && echo "spans: $stats"
echo "RSS after warm-up ($WARMUP events): $start_kb kB"
echo "RSS peak after warm-up:             $peak_kb kB (+$peak_growth_kb kB)"
echo "RSS at the end:                     $end_kb kB"
echo "growth after warm-up:               $growth_kb kB (limit ${LIMIT_MB} MB)"
if [ "$peak_growth_kb" -gt $((LIMIT_MB * 1024)) ]; then
  echo "FAIL: resident memory grew by more than ${LIMIT_MB} MB" >&2
  exit 1
fi
