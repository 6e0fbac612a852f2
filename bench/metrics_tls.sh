#!/usr/bin/env bash
# /metrics over HTTPS with basic auth (--web-config) against plain HTTP, side by side in
# one run: two `turnstile run` processes on the same 50 machines x 20 states
# (bench/gen_many.py), one plain and one with TLS (ECDSA P-256 certificate from a test CA
# made here by openssl) and basic auth (a bcrypt hash of cost 10, as `htpasswd -B` makes),
# scraped in turn by wrk (keep-alive connections, as Prometheus scrapes), ROUNDS times each,
# then scraped one at a time by curl on one keep-alive connection while the server's CPU
# time is counted (what TLS and basic auth cost the sidecar, apart from the client, which
# shares the two cores under wrk).
#
#   bench/metrics_tls.sh                 # builds the release binary first
#   TURNSTILE=/path/to/turnstile bench/metrics_tls.sh
#   BASELINE=/path/to/old/turnstile bench/metrics_tls.sh   # before/after in one run
#
# With BASELINE, a third process runs that binary with the same web config, measured in
# the same rounds (`tls+basic before`), so a change to the TLS or auth path is compared
# with what it replaced on the same load.
#
# Settings (environment): MACHINES (50), STATES (20), DURATION (10s per wrk run),
# THREADS (2), CONNECTIONS (8), ROUNDS (3). Prints each run and the medians of requests/s
# and of the median latency, and their ratio. Needs wrk (built with TLS), openssl, curl,
# python3.
set -euo pipefail
cd "$(dirname "$0")/.."

MACHINES=${MACHINES:-50}
STATES=${STATES:-20}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-8}
ROUNDS=${ROUNDS:-3}

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install -y wrk)" >&2; exit 2; }
if [ -z "${TURNSTILE:-}" ]; then
  cargo build --release -p turnstile --bin turnstile >&2
  TURNSTILE=target/release/turnstile
fi
TURNSTILE=$(realpath "$TURNSTILE")

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

python3 bench/gen_many.py --machines "$MACHINES" --states "$STATES" --out "$work/configs" >/dev/null
(
  cd "$work"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt \
    -days 2 -subj /CN=bench-ca 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr \
    -subj /CN=localhost 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > server.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
    -days 2 -extfile server.ext 2>/dev/null
  hash=$(echo bench-password | "$TURNSTILE" hash-password --cost 10)
  printf 'tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prometheus: %s\n' \
    "'$hash'" > web.yml
)

# start NAME EXTRA...: a process serving the configs; sets ADDR to its address.
start() {
  local name=$1; shift
  "$TURNSTILE" --log-format json --log-level warn,turnstile::sidecar=info run "$work"/configs/*.yaml \
    --listen 127.0.0.1:0 "$@" 2>"$work/$name.log" &
  pids+=($!)
  local addr=
  for _ in $(seq 1 100); do
    addr=$(grep -o '"addr":"[^"]*"' "$work/$name.log" | head -1 | cut -d'"' -f4 || true)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "no sidecar address in $name's log:" >&2; cat "$work/$name.log" >&2; exit 1; }
  ADDR=$addr
}
start plain
plain=$ADDR
start tls --web-config "$work/web.yml"
tls=$ADDR
port=${tls##*:}
plain_url="http://$plain/metrics"
tls_url="https://localhost:$port/metrics"
base_url=
if [ -n "${BASELINE:-}" ]; then
  ours=$TURNSTILE
  TURNSTILE=$(realpath "$BASELINE")
  start before --web-config "$work/web.yml"
  TURNSTILE=$ours
  base_url="https://localhost:${ADDR##*:}/metrics"
fi
auth="Authorization: Basic $(printf 'prometheus:bench-password' | base64)"
sleep 3

code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$work/ca.crt" -H "$auth" "$tls_url")
[ "$code" = 200 ] || { echo "the TLS scrape answered $code" >&2; exit 1; }
echo "machines=$MACHINES states=$STATES turnstile=$TURNSTILE${BASELINE:+ baseline=$BASELINE}"
echo "exposition: $(curl -s "$plain_url" | wc -c) bytes"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# run URL EXTRA...: one wrk run; prints "requests/s median-latency-ms".
run() {
  local url=$1; shift
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" > "$work/wrk.out"
  local rps lat
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.out")
  lat=$(awk '$1 == "50%" {print $2}' "$work/wrk.out")
  # wrk prints latencies with a unit: us, ms or s.
  lat=$(python3 -c "import re,sys; v,u=re.match(r'([0-9.]+)(us|ms|s)', sys.argv[1]).groups(); print(float(v)*{'us':0.001,'ms':1,'s':1000}[u])" "$lat")
  echo "$rps $lat"
}

: > "$work/plain.res"
: > "$work/tls.res"
: > "$work/before.res"
for r in $(seq 1 "$ROUNDS"); do
  p=$(run "$plain_url")
  t=$(run "$tls_url" -H "$auth")
  b=
  if [ -n "$base_url" ]; then
    b=$(run "$base_url" -H "$auth")
    echo "$b" >> "$work/before.res"
  fi
  echo "round $r: plain $p | tls+basic $t${b:+ | tls+basic before $b}   (requests/s, median latency ms)"
  echo "$p" >> "$work/plain.res"
  echo "$t" >> "$work/tls.res"
done
python3 - "$work/plain.res" "$work/tls.res" "$work/before.res" <<'EOF'
import statistics, sys
def load(f):
    rows = [list(map(float, l.split())) for l in open(f) if l.strip()]
    if not rows:
        return None
    return statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
(prps, plat), (trps, tlat), before = load(sys.argv[1]), load(sys.argv[2]), load(sys.argv[3])
print(f"median requests/s: plain {prps:.0f}, tls+basic {trps:.0f} (tls/plain {trps/prps:.2f})")
print(f"median of median latency: plain {plat:.2f} ms, tls+basic {tlat:.2f} ms (tls/plain {tlat/plat:.2f})")
if before:
    brps, blat = before
    print(f"before: tls+basic {brps:.0f} requests/s (tls/plain {brps/prps:.2f}), median latency {blat:.2f} ms (tls/plain {blat/plat:.2f})")
EOF
# What the server spends per scrape, apart from the client: one keep-alive connection
# (as Prometheus scrapes), SCRAPES scrapes in a row by curl, the process's CPU time
# (utime + stime from /proc) before and after, divided by the scrapes. The machines'
# own work while it runs is counted too, the same for both.
SCRAPES=${SCRAPES:-300}
cpu_per_scrape() { # PID URL [CURL ARGS...]
  local pid=$1 url=$2; shift 2
  python3 -c '
import os, subprocess, sys
pid, url, n, ca, extra = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]
tick = os.sysconf("SC_CLK_TCK")
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
args = ["curl", "-s", "--cacert", ca] + extra
for _ in range(n):
    args += ["-o", "/dev/null", url]
c0 = cpu(); subprocess.run(args, check=True); c1 = cpu()
print(f"{(c1 - c0) / n * 1000:.3f}")
' "$pid" "$url" "$SCRAPES" "$work/ca.crt" "$@"
}
: > "$work/cpu.res"
for r in $(seq 1 "$ROUNDS"); do
  p=$(cpu_per_scrape "${pids[0]}" "$plain_url")
  t=$(cpu_per_scrape "${pids[1]}" "$tls_url" -H "$auth")
  b=
  if [ -n "$base_url" ]; then
    b=$(cpu_per_scrape "${pids[2]}" "$base_url" -H "$auth")
  fi
  echo "round $r: server CPU per scrape, plain $p ms | tls+basic $t ms${b:+ | tls+basic before $b ms}"
  echo "$p $t $b" >> "$work/cpu.res"
done
python3 -c '
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
p, t = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
print(f"median server CPU per scrape: plain {p:.2f} ms, tls+basic {t:.2f} ms (tls/plain {t/p:.2f})")
if all(len(r) > 2 for r in rows):
    b = statistics.median(r[2] for r in rows)
    print(f"before: tls+basic {b:.2f} ms (tls/plain {b/p:.2f})")
' "$work/cpu.res"
names=(plain tls before)
for i in "${!pids[@]}"; do
  echo "${names[$i]}: RSS $(grep VmRSS /proc/"${pids[$i]}"/status | awk '{print $2, $3}')"
done
