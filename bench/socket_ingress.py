#!/usr/bin/env python3
"""Socket ingress: Turnstile's per-machine Unix datagram socket against statemachine-engine's
control socket, in the same run, on bench/pingpong_external.yaml (two states, `go` flips).

Both engines take statemachine-engine's message, one JSON datagram
{"type": "go", "payload": {...}, "job_id": "..."}. For each engine:

(a) throughput: N `go` datagrams are sent as fast as the socket accepts them (non-blocking
    sendto; EAGAIN/ENOBUFS -> tiny sleep and retry; only accepted datagrams count). Linux
    queues at most net.unix.max_dgram_qlen (10 by default) datagrams per socket, so the
    sender hits EAGAIN often and the sleep matters: the default is time.sleep(0) (a yield);
    --sensitivity repeats the Turnstile run with 20 us and 200 us sleeps. statemachine-engine's
    sender sleeps 200 us (SME_RETRY_SLEEP): its 50 ms tick is the limit, and a spinning sender
    would only take a core. The clock stops when the engine has made N transitions.
      Turnstile: run with the sidecar on a free port; GET /machines/<name> (`transitions`)
      is polled every 2 ms after the last send (not during sending, so the poll does not
      compete with the sender).
      statemachine-engine: run with --event-socket-path pointing at a socket this script
      binds; the engine emits one `state_change` datagram per transition, which is counted.
(b) latency at a paced rate (default 1,000 events/s): each datagram's send time
    (time.time() just before its sendto) against the time the engine made the matching
    transition (the k-th transition belongs to the k-th datagram: one sender, datagrams
    keep their order, every `go` flips the machine).
      Turnstile: `--log-format json --log-level warn,turnstile::transition=info`; each
      transition's log line carries a microsecond RFC 3339 timestamp taken when the line
      is written (synchronously, to stderr redirected to a file). Overhead: one JSON line
      formatted and written per transition (a few microseconds), inside the measured path.
      statemachine-engine: the `timestamp` (time.time()) in its `state_change` datagram,
      taken right after the transition; it is the engine's normal behaviour, no extra cost.
    statemachine-engine reads one datagram per 50 ms tick (~20 events/s), so at 1,000/s
    its queue only grows: it is measured at 1,000/s offered for a bounded number of events
    (--sme-events, default 200; the socket holds only ~10 datagrams, so the sender is
    throttled to the engine's pace and the latency, measured from each send attempt, is the
    wait behind a full socket queue) and also at a rate it can
    keep up with (--sme-slow-rate, default 10/s) to show its pickup latency.

stdlib only. Usage:
  cargo build --release -p turnstile --bin turnstile
  python3 bench/socket_ingress.py [--n 200000] [--runs 3] [--json-only]
"""

import argparse
import datetime
import errno
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "bench", "pingpong_external.yaml")
MACHINE = "pingpong_external"
TURNSTILE = os.path.join(ROOT, "target", "release", "turnstile")
SME_RETRY_SLEEP = 0.0002
RETRY_SLEEP = 0.0  # seconds to wait when the socket buffer is full (0: a bare yield); --retry-sleep


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def message(i):
    return json.dumps({"type": "go", "payload": {"seq": i}, "job_id": f"b-{i}"}).encode()


class Sender:
    """Non-blocking datagram sender; counts only accepted datagrams and full-buffer retries."""

    def __init__(self, path, retry_sleep=None):
        self.path = path
        self.retry_sleep = RETRY_SLEEP if retry_sleep is None else retry_sleep
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(path)
        self.retries = 0

    def send(self, data):
        while True:
            try:
                self.sock.send(data)
                return
            except BlockingIOError:
                self.retries += 1
                time.sleep(self.retry_sleep)
            except OSError as e:
                if e.errno in (errno.ENOBUFS, errno.EAGAIN):
                    self.retries += 1
                    time.sleep(self.retry_sleep)
                else:
                    raise

    def close(self):
        self.sock.close()


def pct(xs, p):
    """Nearest-rank percentile."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def lat_summary(lat_s):
    ms = [x * 1000.0 for x in lat_s]
    return {
        "count": len(ms),
        "p50_ms": round(pct(ms, 50), 3),
        "p90_ms": round(pct(ms, 90), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def paced_send(sender, n, rate, first_seq):
    """Sends n datagrams at `rate`/s on an absolute schedule; returns their send times."""
    msgs = [message(first_seq + i) for i in range(n)]
    times = []
    t0 = time.perf_counter() + 0.01
    for i, m in enumerate(msgs):
        due = t0 + i / rate
        while True:
            d = due - time.perf_counter()
            if d <= 0:
                break
            if d > 0.0015:
                time.sleep(d - 0.001)
        times.append(time.time())
        sender.send(m)
    return times


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.01)
    raise RuntimeError(f"timed out waiting for {what}")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rfc3339_to_epoch(ts):
    # "2026-11-26T16:20:05.536453Z"
    base, frac = ts.rstrip("Z").split(".")
    dt = datetime.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return dt.timestamp() + int(frac) / (10 ** len(frac))


# ---------------------------------------------------------------- Turnstile


def turnstile_throughput(tmp, n):
    port = free_port()
    sockdir = os.path.join(tmp, "ts-socks")
    err = open(os.path.join(tmp, "ts-throughput.log"), "wb")
    proc = subprocess.Popen(
        [TURNSTILE, "run", CONFIG, "--socket-dir", sockdir, "--listen", f"127.0.0.1:{port}",
         "--strict-port", "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}/machines/{MACHINE}"
    path = os.path.join(sockdir, MACHINE + ".sock")

    def machine():
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)

    def ready():
        if not os.path.exists(path):
            return False
        try:
            machine()
            return True
        except OSError:
            return False

    try:
        wait_for(ready, 30, "Turnstile's socket and sidecar")
        before = machine()["transitions"]
        msgs = [message(i) for i in range(n)]
        s = Sender(path)
        t0 = time.perf_counter()
        for m in msgs:
            s.send(m)
        t_sent = time.perf_counter()
        polls = 0
        while True:
            m = machine()
            polls += 1
            if m["transitions"] - before >= n:
                t_done = time.perf_counter()
                break
            if time.perf_counter() - t_sent > 120:
                raise RuntimeError(f"Turnstile processed only {m['transitions'] - before} of {n}")
            time.sleep(0.002)
        s.close()
        final = machine()
        return {
            "events": n,
            "seconds": round(t_done - t0, 4),
            "events_per_s": round(n / (t_done - t0)),
            "send_seconds": round(t_sent - t0, 4),
            "sender_rate_per_s": round(n / (t_sent - t0)),
            "full_buffer_retries": s.retries,
            "transitions": final["transitions"] - before,
            "machine_errors": final.get("errors"),
            "polls_after_send": polls,
        }
    finally:
        stop(proc)
        err.close()


def turnstile_latency(tmp, n, rate, warmup):
    sockdir = os.path.join(tmp, "ts-socks-lat")
    logpath = os.path.join(tmp, "ts-latency.log")
    err = open(logpath, "wb")
    proc = subprocess.Popen(
        [TURNSTILE, "run", CONFIG, "--socket-dir", sockdir, "--no-sidecar", "--log-format", "json",
         "--log-level", "warn,turnstile::transition=info"],
        stdout=subprocess.DEVNULL, stderr=err)
    path = os.path.join(sockdir, MACHINE + ".sock")
    try:
        wait_for(lambda: os.path.exists(path), 30, "Turnstile's socket")
        time.sleep(0.2)
        s = Sender(path)
        times = paced_send(s, warmup + n, rate, 0)
        total = warmup + n

        def count():
            with open(logpath, "rb") as f:
                return sum(1 for line in f if b'"turnstile::transition"' in line)

        wait_for(lambda: count() >= total, 60, "Turnstile's transition log lines")
        s.close()
    finally:
        stop(proc)
        err.close()
    done = []
    with open(logpath) as f:
        for line in f:
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if j.get("target") == "turnstile::transition" and j.get("machine") == MACHINE:
                done.append(rfc3339_to_epoch(j["timestamp"]))
    lat = [d - t for d, t in zip(done[warmup:total], times[warmup:total])]
    out = lat_summary(lat)
    out.update({"rate_per_s": rate, "warmup_events": warmup, "full_buffer_retries": s.retries,
                "achieved_send_rate_per_s": round((n - 1) / (times[-1] - times[warmup]))})
    return out


# ---------------------------------------------------------------- statemachine-engine


class SmeRun:
    """statemachine-engine on the ping-pong config, with its real-time events captured."""

    def __init__(self, tmp, tag):
        self.dir = os.path.join(tmp, "sme-" + tag)
        os.makedirs(self.dir)
        self.events_path = os.path.join(self.dir, "ev.sock")
        self.rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.rx.bind(self.events_path)  # before the engine starts: it connects at start
        self.rx.settimeout(0.2)
        self.changes = []  # (engine timestamp, receive time)
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._recv, daemon=True)
        self.thread.start()
        self.log = open(os.path.join(self.dir, "sme.log"), "wb")
        prefix = os.path.join(self.dir, "ctl")
        exe = shutil.which("statemachine") or "statemachine"
        self.proc = subprocess.Popen(
            [exe, CONFIG, "--event-socket-path", self.events_path, "--control-socket-prefix", prefix],
            cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT)
        self.ctl = f"{prefix}-{MACHINE}.sock"
        wait_for(lambda: os.path.exists(self.ctl), 60, "statemachine-engine's control socket")
        time.sleep(0.5)  # the engine's first tick

    def _recv(self):
        while self.running:
            try:
                data = self.rx.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            now = time.time()
            try:
                j = json.loads(data)
            except ValueError:
                continue
            if j.get("type") == "state_change":
                with self.lock:
                    self.changes.append((j["payload"]["timestamp"], now))

    def count(self):
        with self.lock:
            return len(self.changes)

    def close(self):
        stop(self.proc)
        self.running = False
        self.rx.close()
        self.log.close()


def sme_throughput(tmp, n):
    r = SmeRun(tmp, "throughput")
    try:
        before = r.count()
        s = Sender(r.ctl, SME_RETRY_SLEEP)
        msgs = [message(i) for i in range(n)]
        t0 = time.perf_counter()
        w0 = time.time()
        for m in msgs:
            s.send(m)
        t_sent = time.perf_counter()
        wait_for(lambda: r.count() - before >= n, n * 0.2 + 30, "statemachine-engine's transitions")
        with r.lock:
            last_engine_ts = r.changes[before + n - 1][0]
        s.close()
        secs = last_engine_ts - w0  # engine's own time of the N-th transition
        return {
            "events": n,
            "seconds": round(secs, 3),
            "events_per_s": round(n / secs, 2),
            "send_seconds": round(t_sent - t0, 3),
            "full_buffer_retries": s.retries,
            "transitions": r.count() - before,
        }
    finally:
        r.close()


def sme_latency(tmp, n, rate, tag):
    r = SmeRun(tmp, tag)
    try:
        before = r.count()
        s = Sender(r.ctl, SME_RETRY_SLEEP)
        times = paced_send(s, n, rate, 0)
        wait_for(lambda: r.count() - before >= n, n * 0.2 + 30, "statemachine-engine's transitions")
        s.close()
        with r.lock:
            done = [c[0] for c in r.changes[before:before + n]]
    finally:
        r.close()
    lat = [d - t for d, t in zip(done, times)]
    out = lat_summary(lat)
    out.update({"rate_per_s": rate, "full_buffer_retries": s.retries,
                "achieved_send_rate_per_s": round((n - 1) / (times[-1] - times[0]), 1),
                "processed_per_s": round((n - 1) / (done[-1] - done[0]), 2)})
    return out


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="Turnstile throughput events per run")
    ap.add_argument("--runs", type=int, default=3, help="Turnstile throughput runs (median reported)")
    ap.add_argument("--rate", type=float, default=1000.0, help="paced rate for latency, events/s")
    ap.add_argument("--lat-events", type=int, default=5000, help="Turnstile latency events measured")
    ap.add_argument("--warmup", type=int, default=500, help="Turnstile latency warm-up events")
    ap.add_argument("--sme-events", type=int, default=200, help="statemachine-engine events per measurement")
    ap.add_argument("--sme-slow-rate", type=float, default=10.0, help="statemachine-engine sustainable rate")
    ap.add_argument("--retry-sleep", type=float, default=0.0,
                    help="sleep after EAGAIN/ENOBUFS, seconds (0: time.sleep(0), a yield)")
    ap.add_argument("--sensitivity", type=float, nargs="*", default=[0.00002, 0.0002],
                    help="extra Turnstile throughput runs with these retry sleeps")
    ap.add_argument("--json-only", action="store_true")
    a = ap.parse_args()
    global RETRY_SLEEP
    RETRY_SLEEP = a.retry_sleep

    if not os.access(TURNSTILE, os.X_OK):
        sys.exit(f"{TURNSTILE} missing: cargo build --release -p turnstile --bin turnstile")
    tmp = tempfile.mkdtemp(prefix="ingress-", dir="/tmp")
    with open("/proc/sys/net/unix/max_dgram_qlen") as f:
        qlen = int(f.read())
    res = {"machine": {"nproc": os.cpu_count(), "loadavg_start": loadavg(), "max_dgram_qlen": qlen},
           "retry_sleep_s": a.retry_sleep,
           "config": "bench/pingpong_external.yaml", "turnstile": {}, "statemachine_engine": {}}
    try:
        runs = [turnstile_throughput(tmp, a.n) for _ in range(a.runs)]
        med = sorted(runs, key=lambda r: r["events_per_s"])[len(runs) // 2]
        res["turnstile"]["throughput"] = dict(med, runs=[r["events_per_s"] for r in runs],
                                              sender_rates=[r["sender_rate_per_s"] for r in runs])
        sens = {}
        for rs in a.sensitivity:
            RETRY_SLEEP = rs
            r = turnstile_throughput(tmp, a.n // 2)
            sens[f"{rs * 1e6:g}us"] = {"events_per_s": r["events_per_s"], "retries": r["full_buffer_retries"]}
        RETRY_SLEEP = a.retry_sleep
        res["turnstile"]["throughput_vs_retry_sleep"] = sens
        res["turnstile"]["latency"] = turnstile_latency(tmp, a.lat_events, a.rate, a.warmup)
        res["statemachine_engine"]["throughput"] = sme_throughput(tmp, a.sme_events)
        res["statemachine_engine"]["latency"] = sme_latency(tmp, a.sme_events, a.rate, "lat")
        res["statemachine_engine"]["latency_sustainable"] = sme_latency(
            tmp, max(20, a.sme_events // 2), a.sme_slow_rate, "slow")
    finally:
        res["machine"]["loadavg_end"] = loadavg()
        shutil.rmtree(tmp, ignore_errors=True)

    t, p = res["turnstile"], res["statemachine_engine"]
    res["ratios"] = {
        "throughput": round(t["throughput"]["events_per_s"] / p["throughput"]["events_per_s"], 1),
        "p50_latency_at_rate": round(p["latency"]["p50_ms"] / t["latency"]["p50_ms"], 1),
        "p99_latency_at_rate": round(p["latency"]["p99_ms"] / t["latency"]["p99_ms"], 1),
        "p99_latency_vs_sme_sustainable": round(p["latency_sustainable"]["p99_ms"] / t["latency"]["p99_ms"], 1),
    }
    res["targets"] = {
        "throughput_ge_20000": t["throughput"]["events_per_s"] >= 20000,
        "p99_lt_2ms_at_1000": a.rate == 1000.0 and t["latency"]["p99_ms"] < 2.0,
    }
    print(json.dumps(res, indent=2))
    if a.json_only:
        return
    rows = [
        ("throughput, events/s", f'{t["throughput"]["events_per_s"]:,}', f'{p["throughput"]["events_per_s"]:,}',
         f'{res["ratios"]["throughput"]}x'),
        (f"p50 at {a.rate:g}/s, ms", t["latency"]["p50_ms"], p["latency"]["p50_ms"], f'{res["ratios"]["p50_latency_at_rate"]}x'),
        (f"p99 at {a.rate:g}/s, ms", t["latency"]["p99_ms"], p["latency"]["p99_ms"], f'{res["ratios"]["p99_latency_at_rate"]}x'),
        (f"p50/p99 at {a.sme_slow_rate:g}/s (SME only), ms", "-",
         f'{p["latency_sustainable"]["p50_ms"]} / {p["latency_sustainable"]["p99_ms"]}', "-"),
    ]
    print()
    print(f'{"measure":<38} {"Turnstile":>14} {"statemachine-engine":>22} {"ratio":>8}')
    for r in rows:
        print(f"{r[0]:<38} {str(r[1]):>14} {str(r[2]):>22} {str(r[3]):>8}")


if __name__ == "__main__":
    main()
