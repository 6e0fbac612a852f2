#!/usr/bin/env python3
"""Throughput baseline for the Python `statemachine-engine` (PyPI, 1.0.91).

Mirrors Turnstile's ping-pong benchmark using the same YAML files:

  external  bench/pingpong_external.yaml -- N `go` events are fed through the
            engine's own in-process entry point, `await engine.process_event("go")`.
            Every call does one transition (ping <-> pong); no actions exist.

  action    bench/pingpong_action.yaml -- each state has one `set_context`
            action with `success: go`. One external `go` (process_event)
            starts the chain; after that every transition is caused by an
            action's returned event. In statemachine-engine actions are NOT run
            by process_event: the main loop (`execute_state_machine`) runs
            `_check_control_socket()`, its terminal-state check, then
            `_execute_state_actions()` once per tick and then sleeps 50 ms. The
            measurement drives exactly that tick body (the engine's own methods,
            unmodified) back to back without the 50 ms sleep, and stops once the
            engine's own transition counter (`_state_entry_gen`) has advanced by
            N (the kick counts as transition #1).

  action_real_loop (optional, --real-loop-seconds > 0)
            the unmodified `execute_state_machine()` loop run for a fixed time,
            i.e. what a deployed machine actually achieves (bounded by the
            50 ms tick: ~20 transitions/s).

No database is attached (no `job_model` in context, unlike the `statemachine`
CLI, which would do one SQLite upsert per transition), and the event socket
points at a non-existent path in a temp dir, so real-time UI emission fails
fast every transition as it would without a running UI server.

Engine logging is disabled during measurement (logging.disable): by default
every transition emits three WARNING records (lastResort handler -> stderr).

Usage:
    pip install statemachine-engine==1.0.91
    python3 bench/python_baseline.py --n 20000 [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from statemachine_engine.core.engine import StateMachineEngine

HERE = Path(__file__).resolve().parent
EXTERNAL_YAML = HERE / "pingpong_external.yaml"
ACTION_YAML = HERE / "pingpong_action.yaml"
EXPECTED_VERSION = "1.0.91"
# execute_state_machine() leaves its loop when current_state is one of these.
TERMINAL_STATES = ["stopped", "shutdown", "completed"]


async def make_engine(yaml_path: Path, tmpdir: str) -> StateMachineEngine:
    """Construct and load an engine the way the CLI does, minus the DB."""
    engine = StateMachineEngine(
        event_socket_path=os.path.join(tmpdir, "no-ui-events.sock"),
        control_socket_prefix=os.path.join(tmpdir, "control"),
    )
    await engine.load_config(str(yaml_path))
    # Everything execute_state_machine({}) does before its loop, in order
    # (engine.py 1.0.91, execute_state_machine): context reset + machine_name,
    # _update_machine_state (no job_model: just a skipped DB write),
    # _start_timeout_tasks (no timeout(N) transitions here) and the `start` event
    # (no `start` transition here, so it must not change state).
    engine.context = {}
    engine.context["machine_name"] = engine.machine_name
    engine._update_machine_state(engine.current_state)
    engine._start_timeout_tasks(engine.current_state)
    gen = engine._state_entry_gen
    await engine.process_event("start", engine.context)
    if engine._state_entry_gen != gen or engine.current_state != "ping":
        raise RuntimeError(f"{yaml_path.name}: `start` changed state to {engine.current_state}")
    return engine


async def run_external(n: int, tmpdir: str) -> float:
    engine = await make_engine(EXTERNAL_YAML, tmpdir)
    try:
        process_event = engine.process_event
        gen0 = engine._state_entry_gen
        ok = 0
        t0 = time.perf_counter()
        for _ in range(n):
            if await process_event("go"):
                ok += 1
        dt = time.perf_counter() - t0
        done = engine._state_entry_gen - gen0
        if ok != n or done != n:
            raise RuntimeError(f"external: expected {n} transitions, got {ok}/{done}")
        expected_state = "ping" if n % 2 == 0 else "pong"
        if engine.current_state != expected_state:
            raise RuntimeError(f"external: ended in {engine.current_state}")
        return n / dt
    finally:
        engine._cleanup_sockets()


async def run_action(n: int, tmpdir: str) -> float:
    engine = await make_engine(ACTION_YAML, tmpdir)
    try:
        gen0 = engine._state_entry_gen
        t0 = time.perf_counter()
        # External kick: ping --go--> pong (transition #1).
        if not await engine.process_event("go"):
            raise RuntimeError("action: kick event did not transition")
        # Main-loop tick body of execute_state_machine(), minus the 50 ms sleep.
        while engine._state_entry_gen - gen0 < n:
            before = engine._state_entry_gen
            await engine._check_control_socket()
            if engine.current_state in TERMINAL_STATES:
                raise RuntimeError(f"action: reached terminal state {engine.current_state}")
            await engine._execute_state_actions()
            if engine._state_entry_gen == before:
                raise RuntimeError(
                    f"action: chain stalled in {engine.current_state} "
                    f"after {before - gen0} transitions"
                )
        dt = time.perf_counter() - t0
        done = engine._state_entry_gen - gen0
        if done != n:
            raise RuntimeError(f"action: expected {n} transitions, got {done}")
        expected_state = "ping" if n % 2 == 0 else "pong"
        if engine.current_state != expected_state:
            raise RuntimeError(f"action: ended in {engine.current_state}")
        # With n == 1 only the external kick ran; no action has executed yet.
        if n >= 2 and engine.context.get("side") != ("pong" if n % 2 == 0 else "ping"):
            raise RuntimeError("action: set_context did not run")
        return n / dt
    finally:
        engine._cleanup_sockets()


async def run_real_loop(seconds: float, tmpdir: str) -> float:
    """Unmodified execute_state_machine() for `seconds`; real tick-bound rate."""
    engine = StateMachineEngine(
        event_socket_path=os.path.join(tmpdir, "no-ui-events.sock"),
        control_socket_prefix=os.path.join(tmpdir, "control"),
    )
    await engine.load_config(str(ACTION_YAML))
    gen0 = engine._state_entry_gen
    task = asyncio.create_task(engine.execute_state_machine({}))
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    done = engine._state_entry_gen - gen0
    dt = time.perf_counter() - t0
    engine.is_running = False
    await task
    return done / dt


async def measure(n: int, repeat: int, warmup: int, real_loop_seconds: float) -> dict:
    tmpdir = tempfile.mkdtemp(prefix="sme-bench-")
    prev_disable = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        # Warm-up: first use imports the set_context module and builds the
        # (process-wide cached) ActionLoader; keep that out of the timing.
        if warmup:
            await run_external(warmup, tmpdir)
            await run_action(warmup, tmpdir)
        ext = [await run_external(n, tmpdir) for _ in range(repeat)]
        act = [await run_action(n, tmpdir) for _ in range(repeat)]
        real = await run_real_loop(real_loop_seconds, tmpdir) if real_loop_seconds > 0 else None
    finally:
        logging.disable(prev_disable)
        shutil.rmtree(tmpdir, ignore_errors=True)
    result = {
        "engine": "statemachine-engine",
        "version": importlib.metadata.version("statemachine-engine"),
        "n": n,
        "external_tps": round(statistics.median(ext), 1),
        "action_tps": round(statistics.median(act), 1),
        "repeat": repeat,
        "python": platform.python_version(),
    }
    if real is not None:
        result["action_tps_real_loop"] = round(real, 1)
        result["real_loop_seconds"] = real_loop_seconds
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="transitions per run")
    ap.add_argument("--json", action="store_true", help="print only a JSON object")
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode; median reported")
    ap.add_argument("--warmup", type=int, default=1000, help="warm-up transitions (0 = none)")
    ap.add_argument(
        "--real-loop-seconds",
        type=float,
        default=0.0,
        help="also time the unmodified 50 ms-tick main loop for this long (0 = skip)",
    )
    args = ap.parse_args()
    if args.n < 1 or args.repeat < 1:
        ap.error("--n and --repeat must be >= 1")

    result = asyncio.run(measure(args.n, args.repeat, args.warmup, args.real_loop_seconds))
    if result["version"] != EXPECTED_VERSION:
        print(
            f"warning: statemachine-engine {result['version']} installed, "
            f"baseline expects {EXPECTED_VERSION}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(result))
    else:
        print(f"statemachine-engine {result['version']} (Python {result['python']}), n={args.n}")
        print(f"  external: {result['external_tps']:>12,.1f} transitions/s")
        print(f"  action:   {result['action_tps']:>12,.1f} transitions/s")
        if "action_tps_real_loop" in result:
            print(f"  action (real 50 ms-tick loop): {result['action_tps_real_loop']:,.1f} transitions/s")
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
