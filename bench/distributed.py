"""``python bench/distributed.py``: the scale-out parts (issue 15) measured on real servers.

1. Batches: N one-call tasks against a model that answers after 50 ms, run in-process
   (``run_batch(max_concurrent=C)``) and on Ray (``RayExecutor(workers=2, per_worker=C/2)``),
   the same C in flight (full: N=10,000, C=200; quick: 1,000 and 100): tasks/s, and the
   overhead per task over the ideal ``N * latency / C``; then Ray's own floor, bare async
   actors whose method only sleeps, dispatched the same way.
2. The quota: one ``areserve()`` timed from 1, 8 and 64 concurrent clients, each a
   ``RedisQuota`` of its own (as separate processes would have) on a real ``redis-server``,
   against the in-memory ``QuotaTracker``: reservations/s, p50 and p99.
3. A simulation of 100 workers (100 ``RedisQuota`` objects in this one process, each with its
   own connection pool and its own ``Runtime.run_batch``) offered 100 x 50 tasks against one
   quota of E executions: the executions that started, which must be exactly E (exit 1
   otherwise).

A section whose server or extra is missing is skipped with the reason. ``--quick`` runs
smaller figures (a smoke run); ``--json PATH`` writes the figures there. The models are
classes of this file (a provider like any adapter, building a fresh ``Completion`` on every
call), sent to the Ray workers by value (cloudpickle).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio

from xzatoma import (
    Completion,
    Message,
    QuotaExceeded,
    QuotaLimits,
    QuotaTracker,
    Runtime,
    SubagentConfig,
    SubagentTask,
    ToolSpec,
    Usage,
)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench.__main__ import machine  # noqa: E402 - the repository's root, put on the path above

LATENCY = 0.05
SIZES: dict[str, dict[str, Any]] = {
    "full": {"tasks": 10_000, "concurrency": 200, "rounds": 2, "reserves": 20_000},
    "quick": {"tasks": 1_000, "concurrency": 100, "rounds": 1, "reserves": 2_000},
}
CLIENTS = (1, 8, 64)
SIM_WORKERS, SIM_TASKS, SIM_CONCURRENT, SIM_EXECUTIONS = 100, 50, 10, 1_000
Record = dict[str, Any]


class SleepyModel:
    """Answers ``done`` after ``LATENCY`` seconds: a model endpoint, without the network."""

    name = "bench"
    model = "bench-model"

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        await anyio.sleep(LATENCY)
        return Completion(content="done", usage=Usage(1, 10, 5, 15), model=self.model)


class InstantModel:
    """Answers ``done`` at once and counts its calls: each call is an execution that started."""

    name = "bench"
    model = "bench-model"

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        self.calls += 1
        return Completion(content="done", usage=Usage(1, 10, 5, 15), model=self.model)


def _runtime(provider: Any, quota: Any = None) -> Runtime:
    return Runtime(
        provider,
        subagents=SubagentConfig(summary_prompt=None),  # one model call per task
        quota=quota if quota is not None else QuotaLimits(),
        telemetry=False,
    )


def _tasks(n: int) -> list[SubagentTask]:
    return [SubagentTask(label=f"task-{i}", task_prompt="Do one piece.") for i in range(n)]


def _cpu_of(pid: int) -> float:
    """Seconds of CPU (user + system) process ``pid`` has used, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpus_of(pids: Sequence[int]) -> float:
    with contextlib.suppress(OSError):
        return sum(_cpu_of(pid) for pid in pids)
    return float("nan")


# -- 1. batches in-process and on Ray ---------------------------------------------------------
class BareActor:
    """Ray's floor: an async actor method that sleeps ``LATENCY`` (no xzatoma in it)."""

    async def run(self, index: int) -> int:
        await anyio.sleep(LATENCY)
        return index

    def pid(self) -> int:
        return os.getpid()


async def _timed(n: int, concurrency: int, pids: Sequence[int], work: Any) -> Record:
    """``await work()`` (``n`` tasks, ``concurrency`` in flight, returning how many succeeded
    and how many model calls they made): wall, tasks/s, overhead over the ideal, CPU."""
    cpu, remote_cpu, began = time.process_time(), _cpus_of(pids), time.perf_counter()
    successful, calls = await work()
    wall = time.perf_counter() - began
    cpu, remote_cpu = time.process_time() - cpu, _cpus_of(pids) - remote_cpu
    ideal = n * LATENCY / concurrency
    return {
        "tasks": n,
        "successful": successful,
        "model_calls": calls,
        "ok": successful == n and calls == n,
        "wall_s": round(wall, 3),
        "tasks_per_s": round(n / wall, 1),
        "ideal_s": ideal,
        "overhead_ms_per_task": round((wall - ideal) / n * 1000, 3),
        "driver_cpu_ms_per_task": round(cpu / n * 1000, 3),
        "workers_cpu_ms_per_task": round(remote_cpu / n * 1000, 3) if pids else None,
    }


async def _batches(size: Record, executor: Any, pids: Sequence[int]) -> list[Record]:
    """A warm-up wave, then ``rounds`` timed batches of ``Runtime.run_batch``."""
    concurrency = size["concurrency"]

    def batch(n: int) -> Any:
        async def work() -> tuple[int, int]:
            runtime = _runtime(SleepyModel())
            tasks = _tasks(n)
            result = await runtime.run_batch(tasks, max_concurrent=concurrency, executor=executor)
            return result.successful, result.total_usage.requests

        return work

    await _timed(concurrency, concurrency, pids, batch(concurrency))
    n = size["tasks"]
    return [await _timed(n, concurrency, pids, batch(n)) for _ in range(size["rounds"])]


async def _floor(size: Record) -> list[Record]:
    """The same dispatch (one slot per task in flight, half on each actor) on bare actors."""
    import ray

    concurrency, n = size["concurrency"], size["tasks"]
    options = {"max_concurrency": concurrency // 2 + 8, "num_cpus": 0}  # as RayExecutor's
    actor_class: Any = ray.remote(BareActor)
    actors = [actor_class.options(**options).remote() for _ in range(2)]
    pids = [await actor.pid.remote() for actor in actors]

    def batch(n: int) -> Any:
        async def work() -> tuple[int, int]:
            pending, done = iter(range(n)), [0]

            async def slot(actor: Any) -> None:
                for index in pending:
                    answer = await actor.run.remote(index)  # before the +=, which reads first
                    done[0] += answer == index

            async with anyio.create_task_group() as tg:
                for k in range(concurrency):
                    tg.start_soon(slot, actors[k % 2])
            return done[0], done[0]

        return work

    try:
        await _timed(concurrency, concurrency, pids, batch(concurrency))
        return [await _timed(n, concurrency, pids, batch(n)) for _ in range(size["rounds"])]
    finally:
        for actor in actors:
            ray.kill(actor)


def bench_batches(size: Record) -> Record:
    """In-process, then (when the extra is there) on a local Ray of 2 workers, and Ray's floor."""
    concurrency = size["concurrency"]
    section: Record = {"concurrency": concurrency, "latency_s": LATENCY}
    section["in_process"] = anyio.run(_batches, size, None, (), backend="asyncio")
    try:
        import ray

        from xzatoma import RayExecutor
    except ImportError as exc:
        section["ray_skipped"] = f"the ray extra is not installed ({exc})"
        return section
    if __name__ != "__main__":  # imported: the workers cannot import this file by its name
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # type: ignore[no-untyped-call]
    try:  # address="local": a Ray of our own, never a cluster another process here runs
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as exc:
        section["ray_skipped"] = f"a local Ray could not start: {exc}"
        return section
    try:
        workers = RayExecutor(workers=2, per_worker=concurrency // 2, metrics_host=None)
        with workers:

            async def on_ray() -> list[Record]:
                pids = [info.pid for info in await workers.start()]  # before any timing
                return await _batches(size, workers, pids)

            section["ray"] = anyio.run(on_ray, backend="asyncio")
        section["ray_floor"] = anyio.run(_floor, size, backend="asyncio")
    finally:
        ray.shutdown()
    return section


# -- a redis-server of our own ----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_ping(port: int) -> bool:
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=1) as conn,
    ):
        conn.sendall(b"PING\r\n")
        return conn.recv(16).startswith(b"+PONG")
    return False


@contextlib.contextmanager
def redis_server(binary: str) -> Iterator[tuple[str, int]]:
    """A redis-server on a free 127.0.0.1 port, keeping nothing on disk: (url, pid)."""
    folder = tempfile.mkdtemp(prefix="xz-bench-redis-")
    port = _free_port()
    options = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder)
    process = subprocess.Popen(
        [binary, "--port", str(port), *options, "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not _answers_ping(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.02)  # a readiness poll
        yield f"redis://127.0.0.1:{port}/0", process.pid
    finally:
        process.kill()
        process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


# -- 2. one reservation, from 1, 8 and 64 clients ---------------------------------------------
def _percentile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _reserve_from(quotas: Sequence[Any], calls: int, server_pid: int | None) -> Record:
    """``calls`` reservations spread over ``quotas`` (one client each), all clients at once."""
    latencies: list[float] = []
    per_client = max(1, calls // len(quotas))

    async def client(quota: Any) -> None:
        for _ in range(per_client):
            began = time.perf_counter()
            await quota.areserve()
            latencies.append(time.perf_counter() - began)

    for quota in quotas:  # connect every client before the timing
        await quota.areserve()
    server_cpu = _cpus_of([server_pid]) if server_pid else 0.0
    cpu, began = time.process_time(), time.perf_counter()
    async with anyio.create_task_group() as tg:
        for quota in quotas:
            tg.start_soon(client, quota)
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    done = len(latencies)
    latencies.sort()
    record = {
        "clients": len(quotas),
        "reservations": done,
        "per_s": round(done / wall, 1),
        "p50_us": round(_percentile(latencies, 0.50) * 1e6, 2),
        "p99_us": round(_percentile(latencies, 0.99) * 1e6, 2),
        "client_cpu_us": round(cpu / done * 1e6, 2),
    }
    if server_pid:
        record["server_cpu_us"] = round((_cpus_of([server_pid]) - server_cpu) / done * 1e6, 2)
    return record


async def _reservations(url: str | None, server_pid: int | None, calls: int) -> list[Record]:
    from xzatoma import RedisQuota

    rows = []
    for clients in CLIENTS:
        if url is None:
            tracker = QuotaTracker(QuotaLimits())
            rows.append(
                {"quota": "in-memory", **await _reserve_from([tracker] * clients, calls, None)}
            )
            continue
        tree = f"bench-reserve-{uuid.uuid4().hex[:8]}"
        quotas = [RedisQuota(url, tree=tree, limits=QuotaLimits()) for _ in range(clients)]
        try:
            rows.append({"quota": "redis", **await _reserve_from(quotas, calls, server_pid)})
        finally:
            for quota in quotas:
                await quota.aclose()
    return rows


# -- 3. 100 workers on one quota --------------------------------------------------------------
async def _simulate(url: str) -> Record:
    from xzatoma import RedisQuota

    tree, limits = f"bench-sim-{uuid.uuid4().hex[:8]}", QuotaLimits(max_executions=SIM_EXECUTIONS)
    quotas = [RedisQuota(url, tree=tree, limits=limits) for _ in range(SIM_WORKERS)]
    models = [InstantModel() for _ in range(SIM_WORKERS)]
    results: list[Any] = []

    async def worker(index: int) -> None:
        runtime = _runtime(models[index], quotas[index])
        tasks = _tasks(SIM_TASKS)
        results.append(await runtime.run_batch(tasks, max_concurrent=SIM_CONCURRENT))

    try:
        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for index in range(SIM_WORKERS):
                tg.start_soon(worker, index)
        wall = time.perf_counter() - began
        stats = await quotas[0].astatistics()
        try:  # one more, past the limit: Redis refuses it too
            await quotas[0].areserve()
            refused_after = False
        except QuotaExceeded:
            refused_after = True
    finally:
        for quota in quotas:
            await quota.aclose()
    outcomes = [r for batch in results for r in batch.results]
    started = sum(m.calls for m in models)
    refused = sum(1 for r in outcomes if r.error_type == "quota_exceeded" and r.turns == 0)
    return {
        "workers": SIM_WORKERS,
        "tasks_offered": SIM_WORKERS * SIM_TASKS,
        "max_executions": SIM_EXECUTIONS,
        "started": started,
        "successful": sum(batch.successful for batch in results),
        "refused_quota": refused,
        "other_outcomes": len(outcomes) - refused - sum(1 for r in outcomes if r.succeeded),
        "redis_executions": stats.executions,
        "redis_remaining": stats.remaining_executions,
        "refused_after_the_limit": refused_after,
        "overshoot": started - SIM_EXECUTIONS,
        "wall_s": round(wall, 3),
    }


def bench_redis(size: Record) -> Record:
    """Sections 2 and 3; the Redis half skipped (the in-memory rows kept) without a server."""
    section: Record = {}
    memory = anyio.run(_reservations, None, None, size["reserves"], backend="asyncio")
    binary = shutil.which("redis-server")
    reason = None
    if binary is None:
        reason = "redis-server is not installed (make test installs it with .ci/ensure-redis)"
    else:
        try:
            import redis  # noqa: F401 - only whether the extra is there
        except ImportError as exc:
            reason = f"the redis extra is not installed ({exc})"
    if reason is not None:
        section["reservations"] = memory
        section["redis_skipped"] = reason
        return section
    assert binary is not None
    with redis_server(binary) as (url, pid):
        rows = anyio.run(_reservations, url, pid, size["reserves"], backend="asyncio")
        section["reservations"] = [row for pair in zip(rows, memory, strict=True) for row in pair]
        section["simulation"] = anyio.run(_simulate, url, backend="asyncio")
    return section


# -- the report -------------------------------------------------------------------------------
def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    return [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [columns, *rows]
    ]


def _best(runs: Sequence[Record]) -> Record:
    return min(runs, key=lambda run: run["wall_s"])


def render(report: Record) -> str:
    facts = report["machine"]
    out = [
        f"xzatoma distributed bench ({report['mode']} run, {report['date']}, "
        f"{report['duration_s']:.0f} s): {facts['cpu']}, {facts['cores']} cores, load average "
        f"{facts['load_average_at_start'][0]} at the start, "
        f"{facts['load_average_at_end'][0]} at the end",
    ]
    batches = report["batches"]
    c, n = batches["concurrency"], batches["in_process"][0]["tasks"]
    out += [
        "",
        f"1. Batches: {n:,} one-call tasks, model latency {LATENCY * 1000:.0f} ms, {c} in flight "
        f"(ideal {n * LATENCY / c:.2f} s); best of {len(batches['in_process'])} run(s)",
    ]
    rows = []
    names = {
        "in_process": "xzatoma in-process",
        "ray": f"xzatoma on Ray, 2 workers x {c // 2}",
        "ray_floor": f"Ray floor: 2 bare actors x {c // 2}",
    }
    for key, name in names.items():
        if key not in batches:
            continue
        run = _best(batches[key])
        remote = run["workers_cpu_ms_per_task"]
        rows.append(
            [
                name,
                f"{run['successful']:,}/{run['tasks']:,}",
                f"{run['wall_s']:.2f}",
                f"{run['tasks_per_s']:,.0f}",
                f"{run['overhead_ms_per_task']:.3f}",
                f"{run['driver_cpu_ms_per_task']:.3f}",
                "" if remote is None else f"{remote:.3f}",
                ", ".join(f"{r['wall_s']:.2f}" for r in batches[key]),
            ]
        )
    columns = ["executor", "succeeded", "wall s", "tasks/s", "overhead ms/task"]
    columns += ["driver CPU ms/task", "workers CPU ms/task", "every run's wall s"]
    out += _table(columns, rows)
    if "ray_skipped" in batches:
        out.append(f"Ray skipped: {batches['ray_skipped']}")
    out += [
        "",
        "overhead: (wall - ideal) / tasks. CPU: this process's, and the Ray workers' (from "
        "/proc). Ray floor: an async actor method that only sleeps the latency, dispatched "
        "the same way: what Ray itself costs.",
    ]

    redis = report["redis"]
    rows = [
        [
            row["quota"],
            str(row["clients"]),
            f"{row['reservations']:,}",
            f"{row['per_s']:,.0f}",
            f"{row['p50_us']:,.1f}",
            f"{row['p99_us']:,.1f}",
            f"{row['client_cpu_us']:,.1f}",
            f"{row['server_cpu_us']:,.1f}" if "server_cpu_us" in row else "",
        ]
        for row in redis["reservations"]
    ]
    out += [
        "",
        "2. One areserve(): Redis, each client its own RedisQuota (its own connection pool, as "
        "separate processes would have); in-memory, one QuotaTracker the clients share",
    ]
    columns = ["quota", "clients", "reservations", "per s", "p50 µs", "p99 µs"]
    out += _table([*columns, "client CPU µs", "redis-server CPU µs"], rows)
    out.append(
        "The clients share this process's one event loop: with Redis its CPU bounds the rate; "
        "the in-memory tracker never yields, so its clients take turns."
    )
    if "redis_skipped" in redis:
        out += [f"Redis skipped (its rows of section 2, and section 3): {redis['redis_skipped']}"]
        return "\n".join(out)
    sim = redis["simulation"]
    out += [
        "",
        f"3. Simulation: {sim['workers']} workers in one process, each its own RedisQuota "
        f"(its own connection pool) and Runtime.run_batch of {SIM_TASKS} tasks "
        f"({SIM_CONCURRENT} at a time), instant model, one quota of max_executions="
        f"{sim['max_executions']:,}",
        f"   offered {sim['tasks_offered']:,}; started (model calls) {sim['started']:,}; "
        f"succeeded {sim['successful']:,}; refused by the quota {sim['refused_quota']:,}; "
        f"other {sim['other_outcomes']}; in {sim['wall_s']:.2f} s",
        f"   Redis's statistics: executions {sim['redis_executions']:,}, remaining "
        f"{sim['redis_remaining']}; one more areserve() refused: {sim['refused_after_the_limit']}",
        f"   overshoot = started - max_executions = {sim['overshoot']}"
        + (" (OK)" if sim["overshoot"] == 0 else " (FAILED: must be 0)"),
    ]
    return "\n".join(out)


def failures(report: Record) -> list[str]:
    """What makes the run fail: a batch with a task that did not succeed, any overshoot."""
    found = [
        f"{key} batch: {run['successful']}/{run['tasks']} succeeded, {run['model_calls']} calls"
        for key in ("in_process", "ray", "ray_floor")
        for run in report["batches"].get(key, ())
        if not run["ok"]
    ]
    sim = report["redis"].get("simulation")
    if sim is not None:
        if sim["overshoot"] != 0 or sim["redis_executions"] != sim["max_executions"]:
            found.append(f"simulation: started {sim['started']}, Redis {sim['redis_executions']}")
        if sim["other_outcomes"] or not sim["refused_after_the_limit"]:
            found.append(f"simulation: {sim['other_outcomes']} tasks neither ran nor were refused")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller figures: a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    size = SIZES[mode]
    started, load = time.monotonic(), [round(x, 2) for x in os.getloadavg()]
    report: Record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "command": "python bench/distributed.py" + (" --quick" if args.quick else ""),
    }
    print("distributed bench: batches (in-process, then Ray)...", file=sys.stderr, flush=True)
    report["batches"] = bench_batches(size)
    print("distributed bench: quota reservations and the simulation...", file=sys.stderr)
    report["redis"] = bench_redis(size)
    report["machine"] = {**machine(), "load_average_at_start": load}
    report["duration_s"] = round(time.monotonic() - started, 1)
    report["failures"] = failures(report)
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"\ndistributed bench: figures written to {args.json}")
    for failure in report["failures"]:
        print(f"distributed bench: FAILED: {failure}", file=sys.stderr)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
