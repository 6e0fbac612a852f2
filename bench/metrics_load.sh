#!/usr/bin/env bash
# /metrics under load: 50 machines x 20 states (bench/gen_many.py) cycling through their
# states, scraped by wrk in Prometheus text and in OpenMetrics.
#
#   bench/metrics_load.sh                 # builds the release binary first
#   TURNSTILE=/path/to/turnstile bench/metrics_load.sh
#
# Settings (environment): MACHINES (50), STATES (20), DURATION (20s), THREADS (2),
# CONNECTIONS (8), WARMUP seconds before measuring (5), DETAIL (passed as
# --metrics-detail when set, e.g. `all`; unset: the default level, and a binary older than
# the flag works). Needs wrk and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

MACHINES=${MACHINES:-50}
STATES=${STATES:-20}
DURATION=${DURATION:-20s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-8}
WARMUP=${WARMUP:-5}

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install -y wrk)" >&2; exit 2; }
if [ -z "${TURNSTILE:-}" ]; then
  cargo build --release -p turnstile --bin turnstile >&2
  TURNSTILE=target/release/turnstile
fi

work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

python3 bench/gen_many.py --machines "$MACHINES" --states "$STATES" --out "$work/configs" >/dev/null
detail=()
[ -n "${DETAIL:-}" ] && detail=(--metrics-detail "$DETAIL")
"$TURNSTILE" --log-format json --log-level warn,turnstile::sidecar=info run "$work"/configs/*.yaml \
  --listen 127.0.0.1:0 "${detail[@]}" 2>"$work/log" &
pid=$!
addr=
for _ in $(seq 1 100); do
  addr=$(grep -o '"addr":"[^"]*"' "$work/log" | head -1 | cut -d'"' -f4 || true)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "no sidecar address in the log:" >&2; cat "$work/log" >&2; exit 1; }
url="http://$addr/metrics"
sleep "$WARMUP"

om='Accept: application/openmetrics-text'
pb='Accept: application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3'
text_bytes=$(curl -s "$url" | wc -c)
om_bytes=$(curl -s -H "$om" "$url" | wc -c)
pb_bytes=$(curl -s -H "$pb" "$url" | wc -c)
text_lines=$(curl -s "$url" | wc -l)
series=$(curl -s "$url" | grep -vc '^#')
echo "machines=$MACHINES states=$STATES detail=${DETAIL:-default} turnstile=$TURNSTILE pid=$pid"
echo "exposition: text $text_bytes bytes ($text_lines lines, $series samples), openmetrics $om_bytes bytes, protobuf $pb_bytes bytes"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "== Prometheus text (wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency $url)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url"
echo
echo "== OpenMetrics (-H '$om')"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "$om" "$url"
echo
echo "== protobuf, native histograms (-H '$pb')"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "$pb" "$url"
echo
echo "transitions during the run: $(curl -s "http://$addr/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["processed_events"], "events,", round(s["uptime_seconds"]), "s uptime")')"
echo "RSS at the end: $(grep VmRSS /proc/$pid/status | awk '{print $2, $3}')"
