#!/usr/bin/env python3
"""statemachine-engine's `start_fsm`, for the ratio with Turnstile's instances
(`exporter/examples/instances_scale.rs`): runs its `StartFsmAction` N times in one event
loop (each spawns a `statemachine` process for a two-state machine, `fsm-I`, with its own
event socket), then waits until N rows `fsm-*` are in its `machine_state` table (each
process writes its row when its machine has started). Prints the actions' rate and the
rate of instances actually started. Runs in a temp dir (its `data/pipeline.db`); the
processes it spawned are stopped at the end.

    python3 bench/sme_start_fsm.py 50
"""
import asyncio
import os
import signal
import sqlite3
import sys
import tempfile
import time

from statemachine_engine.actions.builtin.start_fsm_action import StartFsmAction

JOB = """name: job
initial_state: a
states: [a, b]
events: [flip]
transitions:
  - {from: a, to: b, event: flip}
  - {from: b, to: a, event: flip}
"""


async def run(n, here, pids):
    t0 = time.time()
    for i in range(n):
        a = StartFsmAction({
            "type": "start_fsm", "yaml_path": "job.yaml", "machine_name": f"fsm-{i}",
            "store_pid": True,
            "additional_args": ["--event-socket-path", f"{here}/ev-{i}.sock",
                                "--control-socket-prefix", f"{here}/ctl"],
        })
        ctx = {}
        ev = await a.execute(ctx)
        if ev != "success":
            sys.exit(f"start_fsm {i}: {ev}")
        pids.extend(ctx["spawned_pids"])
    t_action = time.time() - t0
    k = 0
    while time.time() - t0 < 120:
        try:
            c = sqlite3.connect("data/pipeline.db")
            k = c.execute(
                "SELECT count(*) FROM machine_state WHERE machine_name LIKE 'fsm-%'"
            ).fetchone()[0]
            c.close()
        except sqlite3.Error:
            k = 0
        if k >= n:
            break
        time.sleep(0.02)
    t_ready = time.time() - t0
    print(f"statemachine-engine start_fsm: {n} actions in {t_action:.3f} s "
          f"({n / t_action:.0f}/s); {k} started after {t_ready:.2f} s "
          f"({k / t_ready:.1f} instances/s)")


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    pids = []
    with tempfile.TemporaryDirectory() as here:
        os.chdir(here)
        with open("job.yaml", "w") as f:
            f.write(JOB)
        try:
            asyncio.run(run(n, here, pids))
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for p in pids:
                    try:
                        os.kill(p, sig)
                    except ProcessLookupError:
                        pass
                time.sleep(1)


if __name__ == "__main__":
    main()
