#!/usr/bin/env bash
# Resident memory of idle instances: one `turnstile run` process (sidecar and telemetry
# on, defaults: metrics and the /trace ring) runs a two-state definition; VmRSS is read
# from /proc/PID/status with no instance, then after POST /machines started N instances
# of it (one keep-alive HTTP connection; each instance idle in its initial state, with an
# empty context beyond the definition's one key). Prints both and the difference per
# instance. With FINISH=1 it then sends each one the event to its final state and times
# until every one is retired.
#
#   bench/instances.sh                  # builds the release binary first; N=100000
#   N=10000 TURNSTILE=/path/to/turnstile bench/instances.sh
#   N=40000 FINISH=1 bench/instances.sh
#   RUN_ARGS="--db $(bench/pg_server.sh start /tmp/pgb 55432) --persist --instance-id b1" \
#     N=3000 bench/instances.sh         # starts with --persist (each takes its name in the store)
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-100000}
PORT=${PORT:-18431}
FINISH=${FINISH:-0}

if [ -z "${TURNSTILE:-}" ]; then
  cargo build --release -p turnstile --bin turnstile >&2
  TURNSTILE=target/release/turnstile
fi

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/job.yaml" <<'EOF'
metadata: {machine_name: job}
initial_state: waiting
context: {n: 0}
states: [waiting, done]
events: [finish]
transitions:
  - {from: waiting, to: done, event: finish}
EOF

# shellcheck disable=SC2086 # RUN_ARGS is split into arguments on purpose
"$TURNSTILE" --log-level warn run "$work/job.yaml" --listen "127.0.0.1:$PORT" --strict-port \
  ${RUN_ARGS:-} 2>"$work/log" &
pid=$!

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$pid/status"; }

python3 - "$PORT" "$pid" "$N" "$FINISH" <<'EOF'
import http.client, json, sys, time
port, pid, n, finish = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"

def rss_kb():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

deadline = time.time() + 20
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/readyz")
        r = c.getresponse(); r.read()
        if r.status == 200:
            break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("the sidecar did not become ready")
    time.sleep(0.05)

time.sleep(0.5)
before = rss_kb()
t0 = time.time()
headers = {"Content-Type": "application/json"}
for i in range(n):
    c.request("POST", "/machines", json.dumps({"definition": "job", "name": f"w{i:06d}"}), headers)
    r = c.getresponse(); body = r.read()
    if r.status != 201:
        sys.exit(f"POST /machines {i}: {r.status} {body!r}")
took = time.time() - t0
time.sleep(1.0)
after = rss_kb()
c.request("GET", "/stats"); s = json.loads(c.getresponse().read())
running = s["instances"]["job"]["running"]
assert running == n, running
print(f"instances: {n} started in {took:.1f} s ({n / took:.0f}/s), all idle")
print(f"VmRSS: {before} kB with none, {after} kB with {n}")
print(f"per instance: {(after - before) * 1024 / n:.0f} bytes")
if finish:
    t0 = time.time()
    for i in range(n):
        c.request("POST", f"/machines/w{i:06d}/events", json.dumps({"type": "finish"}), headers)
        r = c.getresponse(); body = r.read()
        if r.status != 202:
            sys.exit(f"POST /machines/w{i:06d}/events: {r.status} {body!r}")
    while True:
        c.request("GET", "/stats"); s = json.loads(c.getresponse().read())
        if s["instances"]["job"]["retired"] == n:
            break
        time.sleep(0.05)
    print(f"finished and retired: {n} in {time.time() - t0:.1f} s")
EOF
