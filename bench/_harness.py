"""The measuring code every system's workload script shares.

A workload is an async function ``run(n)`` that performs ``n`` units of work (``n`` agent
runs in sequence, or one parent with ``n`` children, or a batch of ``n`` children) and checks
that the work really happened. :func:`main` parses the command line every workload script
takes, warms the workload up (50 units), collects garbage, times it with the collector on and
prints one JSON line: microseconds of wall time and of process CPU per unit, and the peak RSS
of this process. It imports nothing outside the standard library and anyio, so it runs in the
project's virtualenv and in the peers' alike.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

__all__ = ("WARMUP_UNITS", "Run", "main", "peak_rss_mib")

WARMUP_UNITS = 50
"""Units run before timing: imports, caches and the allocator settle first."""

MIN_TIMED_SECONDS = 2.0
"""A workload is timed repeatedly until this much wall time was timed; the median counts."""
MIN_REPEATS = 3
"""Timed runs at least, unless they take longer than ``CAP`` times the minimum wall time."""
CAP = 7.5
MAX_REPEATS = 200

WORKLOADS = ("W0", "W1", "W2", "W3")
TELEMETRY_MODES = ("off", "metrics", "tracing")

Run = Callable[[int], Awaitable[None]]
"""Performs ``n`` units of a workload and raises if any of them did not do its work."""


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _give_up(record: dict[str, Any], n: int, wall: float, cpu: float) -> None:
    """The budget ran out in the first timed run: report lower bounds and stop the process."""
    record.update(
        timed_out=True,
        repeats=0,
        wall_us=(time.perf_counter() - wall) / n * 1e6,
        cpu_us=(time.process_time() - cpu) / n * 1e6,
        peak_rss_mib=round(peak_rss_mib(), 1),
    )
    print(json.dumps(record), flush=True)
    os._exit(0)  # the event loop is busy with the run; nothing of it needs cleaning up


def _enough(walls: list[float], repeats: int, min_seconds: float) -> bool:
    """Whether to stop timing: the runs asked for, or enough runs and time for a median."""
    if repeats:
        return len(walls) >= repeats
    timed = sum(walls)
    if len(walls) >= MAX_REPEATS or timed >= CAP * min_seconds:
        return True
    return timed >= min_seconds and len(walls) >= MIN_REPEATS


async def _measure(
    run: Run, n: int, repeats: int, min_seconds: float, budget: float, record: dict[str, Any]
) -> dict[str, Any]:
    await run(WARMUP_UNITS)
    walls: list[float] = []
    cpus: list[float] = []
    while True:
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        watchdog = None
        if budget and not walls:
            watchdog = threading.Timer(budget, _give_up, (record, n, wall, cpu))
            watchdog.daemon = True
            watchdog.start()
        await run(n)
        if watchdog is not None:
            watchdog.cancel()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        if _enough(walls, repeats, min_seconds):
            break
    return {
        "repeats": len(walls),
        "wall_us": statistics.median(walls) / n * 1e6,
        "cpu_us": statistics.median(cpus) / n * 1e6,
        "wall_us_min": min(walls) / n * 1e6,
        "wall_s_total": sum(walls),
    }


def main(
    system: str,
    make: Callable[[str, int, str], Run],
    *,
    telemetry_modes: tuple[str, ...] = ("off",),
    describe: Callable[[str], Mapping[str, Any]] | None = None,
    check: Callable[[str], Mapping[str, Any]] | None = None,
) -> None:
    """Run one workload as the command line says and print its result as one JSON line.

    Args:
        system: The system's name in the results (``xzatoma``, ``pydantic-ai``, ...).
        make: ``make(workload, n, telemetry)`` sets the system up (outside the timing) and
            returns the ``run`` function to time.
        telemetry_modes: The ``--telemetry`` values this system supports.
        describe: Extra facts about the setup for the result (versions, options).
        check: Called after timing; returns facts proving the work was recorded (for example
            the executions Prometheus would scrape).
    """
    parser = argparse.ArgumentParser(description=f"One benchmark workload on {system}.")
    parser.add_argument("--workload", choices=WORKLOADS, required=True)
    parser.add_argument("--n", type=int, required=True, help="units to time")
    parser.add_argument("--telemetry", choices=telemetry_modes, default=telemetry_modes[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=0,
        help=f"timed runs (default: at least {MIN_REPEATS} and --min-seconds of wall time, "
        f"stopping after {CAP:g} times that or {MAX_REPEATS} runs)",
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=MIN_TIMED_SECONDS,
        help="wall time to time at least, over repeated runs",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=0.0,
        help="seconds the first timed run may take; past it, report lower bounds and stop",
    )
    args = parser.parse_args()

    record: dict[str, Any] = {
        "system": system,
        "workload": args.workload,
        "n": args.n,
        "telemetry": args.telemetry,
        "import_rss_mib": round(peak_rss_mib(), 1),
    }
    if describe is not None:
        record.update(describe(args.telemetry))
    run = make(args.workload, args.n, args.telemetry)
    result = anyio.run(_measure, run, args.n, args.repeats, args.min_seconds, args.budget, record)
    record.update(result, peak_rss_mib=round(peak_rss_mib(), 1), timed_out=False)
    if check is not None:
        record.update(check(args.telemetry))
    print(json.dumps(record), flush=True)
