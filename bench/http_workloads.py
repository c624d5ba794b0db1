"""The HTTP benchmark's client side: xzatoma and the bare-client floors, one batch per process.

``python bench/http_workloads.py --system xzatoma --base-url http://127.0.0.1:P/v1
--control-url http://127.0.0.1:Q --n 1000 --concurrency 100`` runs N one-call tasks, at most
``--concurrency`` at once, against ``http_server.py`` and prints one JSON line. The measuring
part (:func:`main`) is shared with ``http_peers.py``, so it imports only the standard library
and anyio; each system imports its client when it is chosen.

A run is: a warm-up batch of ``min(N, 200)`` tasks at the same concurrency (imports, code
paths, the first connections), then the timed batch of N. The server's counters are reset
around each, so the result carries both: ``warmup`` (the connections the client opened to
start with) and ``server`` (what the timed batch did: requests, most in flight at once, the
connections it opened, the server's CPU). A pool that keeps what it opens needs no new
connection in the timed batch at 100 at a time and at most ``concurrency - 200`` at 1000 at a
time; one that keeps fewer alive than it uses reconnects all along, N or so in the timed
batch, which is what that figure shows. ``wall_us`` and ``cpu_us`` are the timed batch's
wall and process CPU time over N.

Systems here (project ``.venv``, except ``aiohttp``: ``bench/.venv-peers``):

- ``xzatoma``: ``OpenAIProvider`` with its own client, ``Runtime(telemetry=False)``,
  ``run_batch(tasks, max_concurrent=C)``; no summary turn, so one model call per subagent.
- ``httpx``: a bare ``httpx.AsyncClient`` with ``Limits(max_connections=C,
  max_keepalive_connections=C)``; ``aiohttp``: a ``ClientSession`` on ``TCPConnector(limit=C)``.
  Both run C workers that take the next task until none is left (what "C at a time" costs
  at the least), send a chat request and read ``choices[0].message.content`` from the JSON.

:class:`ServerProcess` starts the server for the runner (``http_bench.py``) and
:func:`run_probe` measures its capacity with the probe clients of ``http_server.py``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import resource
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio

MODEL = "bench-model"
PROMPT = "Do one piece of the work."
REQUEST_BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]})
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer x"}

WARMUP_TASKS = 200
"""Tasks run before timing: imports, first connections and pools settle first."""

Batch = Callable[[int], Awaitable[int]]
"""Runs n tasks and returns how many were answered ``done``."""
System = Callable[[argparse.Namespace], AbstractAsyncContextManager[Batch]]
"""Sets a system up (inside the event loop, untimed) and yields its batch function."""


def server_stats(control_url: str, *, reset: bool) -> dict[str, Any]:
    """The server's counters since its last reset (and a reset, if asked), on the control port."""
    url = f"{control_url}/stats" + ("?reset=1" if reset else "")
    with urllib.request.urlopen(url, timeout=30) as answer:
        stats: dict[str, Any] = json.loads(answer.read())
    return stats


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def raise_file_limit() -> None:
    """Allow as many sockets as the hard limit does: 1,000 connections need 1,000 files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def chat_url(base_url: str) -> str:
    return base_url.rstrip("/") + "/chat/completions"


async def run_workers(n: int, concurrency: int, one: Callable[[], Awaitable[bool]]) -> int:
    """``n`` calls of ``one``, at most ``concurrency`` at a time; how many returned True."""
    left, answered = n, 0

    async def worker() -> None:
        nonlocal left, answered
        while left > 0:
            left -= 1
            if await one():
                answered += 1

    async with anyio.create_task_group() as group:
        for _ in range(min(n, concurrency)):
            group.start_soon(worker)
    return answered


@asynccontextmanager
async def xzatoma_system(args: argparse.Namespace) -> AsyncIterator[Batch]:
    import xzatoma
    from xzatoma.providers import OpenAIProvider

    provider = OpenAIProvider(args.base_url, MODEL, api_key="x")
    runtime = xzatoma.Runtime(
        provider,
        telemetry=False,
        quota=xzatoma.QuotaLimits(),
        subagents=xzatoma.SubagentConfig(summary_prompt=None),  # one model call per subagent
    )

    async def batch(n: int) -> int:
        tasks = [xzatoma.SubagentTask(label=f"task-{i}", task_prompt=PROMPT) for i in range(n)]
        result = await runtime.run_batch(tasks, max_concurrent=args.concurrency)
        return sum(1 for r in result.results if r.succeeded and r.output == "done")

    try:
        yield batch
    finally:
        await provider.aclose()


@asynccontextmanager
async def httpx_system(args: argparse.Namespace) -> AsyncIterator[Batch]:
    import httpx

    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    url = chat_url(args.base_url)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:

        async def one() -> bool:
            reply = await client.post(url, content=REQUEST_BODY, headers=HEADERS)
            content: str = reply.json()["choices"][0]["message"]["content"]
            return reply.status_code == 200 and content == "done"

        yield lambda n: run_workers(n, args.concurrency, one)


@asynccontextmanager
async def aiohttp_system(args: argparse.Namespace) -> AsyncIterator[Batch]:
    import aiohttp

    url = chat_url(args.base_url)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> bool:
            async with session.post(url, data=REQUEST_BODY, headers=HEADERS) as reply:
                body = await reply.json()
            content: str = body["choices"][0]["message"]["content"]
            return reply.status == 200 and content == "done"

        yield lambda n: run_workers(n, args.concurrency, one)


SYSTEMS: dict[str, System] = {
    "xzatoma": xzatoma_system,
    "httpx": httpx_system,
    "aiohttp": aiohttp_system,
}
VERSIONS = {"xzatoma": ("xzatoma", "httpx", "anyio"), "httpx": ("httpx",), "aiohttp": ("aiohttp",)}


def _watchdog(budget: float, record: dict[str, Any], phase: str, n: int) -> threading.Timer:
    """A timer that, past ``budget`` seconds, prints lower bounds and ends the process."""
    began_wall, began_cpu = time.perf_counter(), time.process_time()

    def give_up() -> None:
        try:
            stats = server_stats(record["control_url"], reset=False)
        except OSError:
            stats = {}
        record.update(
            timed_out=phase,
            wall_us=(time.perf_counter() - began_wall) / n * 1e6,
            cpu_us=(time.process_time() - began_cpu) / n * 1e6,
            peak_rss_mib=round(peak_rss_mib(), 1),
            server=stats,
        )
        print(json.dumps(record), flush=True)
        os._exit(0)  # the event loop is busy with the batch; nothing of it needs cleaning up

    timer = threading.Timer(budget, give_up)
    timer.daemon = True
    timer.start()
    return timer


async def _timed(system: System, args: argparse.Namespace, record: dict[str, Any]) -> None:
    """Warm up, then time one batch of N, with the server's counters reset around each."""
    warmup = min(args.n, WARMUP_TASKS)
    async with system(args) as batch:
        server_stats(args.control_url, reset=True)
        watchdog = _watchdog(args.budget, record, "warm-up", warmup)
        answered = await batch(warmup)
        watchdog.cancel()
        _expect(answered, warmup, "warm-up")
        record["warmup"] = server_stats(args.control_url, reset=True)
        gc.collect()
        watchdog = _watchdog(args.budget, record, "timed", args.n)
        wall, cpu = time.perf_counter(), time.process_time()
        answered = await batch(args.n)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        watchdog.cancel()
        record["server"] = server_stats(args.control_url, reset=True)
    _expect(answered, args.n, "timed batch")
    record.update(wall_us=wall / args.n * 1e6, cpu_us=cpu / args.n * 1e6, wall_s=wall)


def _expect(answered: int, n: int, phase: str) -> None:
    if answered != n:
        raise SystemExit(f"{phase}: {answered} of {n} tasks answered 'done'")


def parse_args(systems: Mapping[str, object]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--system", choices=list(systems), required=True)
    parser.add_argument("--base-url", required=True, help="the server's API root (…/v1)")
    parser.add_argument("--control-url", required=True, help="the server's control port")
    parser.add_argument("--n", type=int, default=1000, help="tasks in the timed batch")
    parser.add_argument("--concurrency", type=int, default=100, help="tasks at once at most")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds each batch may take")
    return parser.parse_args()


def main(systems: Mapping[str, System], versions: Mapping[str, tuple[str, ...]]) -> None:
    """Run the system the command line names and print its result as one JSON line."""
    args = parse_args(systems)
    raise_file_limit()
    record: dict[str, Any] = {
        "system": args.system,
        "n": args.n,
        "concurrency": args.concurrency,
        "control_url": args.control_url,
        "import_rss_mib": round(peak_rss_mib(), 1),
        "versions": {name: version(name) for name in versions[args.system]},
    }
    if args.system == "xzatoma":  # which checkout: PYTHONPATH may point at another one
        spec = importlib.util.find_spec("xzatoma")
        record["xzatoma_source"] = str(Path(spec.origin).parent) if spec and spec.origin else ""
    anyio.run(_timed, systems[args.system], args, record)
    record.update(peak_rss_mib=round(peak_rss_mib(), 1), timed_out=False)
    print(json.dumps(record), flush=True)


class ServerProcess:
    """``http_server.py`` in its own process (the peers' interpreter, which has uvloop and
    httptools): ``base_url`` for the clients, ``control_url`` for the counters. It stops when
    its stdin closes, so it cannot outlive the runner."""

    def __init__(self, python: str, latency: float) -> None:
        script = str(Path(__file__).with_name("http_server.py"))
        self.process = subprocess.Popen(
            [python, script, "--port", "0", "--latency", str(latency)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        ports = json.loads(self.process.stdout.readline())
        self.base_url = f"http://127.0.0.1:{ports['port']}/v1"
        self.control_url = f"http://127.0.0.1:{ports['control_port']}"

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.terminate()  # our own child, by its handle
            self.process.wait()


def run_probe(python: str, processes: int, connections: int, seconds: float) -> dict[str, Any]:
    """The server's capacity: ``processes`` probe clients (``http_server.py --probe``) load a
    server at latency 0 for ``seconds``, all starting at one moment; their answers per second
    and the server's CPU per request and busy fraction meanwhile."""
    server = ServerProcess(python, 0.0)
    try:
        start_at = time.time() + 2.0  # time for the clients' imports and connections
        command = [python, str(Path(__file__).with_name("http_server.py")), "--probe"]
        command += [server.base_url, "--connections", str(connections)]
        command += ["--duration", str(seconds), "--start-at", str(start_at)]
        clients = [
            subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)
        ]
        server_stats(server.control_url, reset=True)
        outputs = [client.communicate(timeout=60)[0] for client in clients]
        stats = server_stats(server.control_url, reset=True)
    finally:
        server.stop()
    answered = sum(json.loads(out.splitlines()[-1])["answered"] for out in outputs)
    return {
        "processes": processes,
        "connections": connections,
        "seconds": seconds,
        "answered": answered,
        "requests_per_s": answered / seconds,
        "server_cpu_us_per_request": stats["cpu_s"] / max(stats["requests"], 1) * 1e6,
        "server_busy": stats["cpu_s"] / seconds,
    }


if __name__ == "__main__":
    sys.exit(main(SYSTEMS, VERSIONS))
