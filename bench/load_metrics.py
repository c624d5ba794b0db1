"""Load on ``/metrics`` while subagents run: no failed scrape, every scrape parses.

A server process (``--serve``) serves xzatoma's ``/metrics`` on 127.0.0.1 and keeps
``--subagents`` subagents in flight at once (parallel batches against a scripted model that
answers after 100-300 ms, as a real endpoint would, with a summary turn) until its stdin
closes; this process sends ``--requests`` GETs from ``--clients`` concurrent clients (each
a scraper with one kept-alive connection of its own), parses every answer with
prometheus_client's parser, and reports failures and latency percentiles. Bounded in count
and time, loopback only.

Usage: ``python bench/load_metrics.py [--requests 5000] [--clients 50] [--subagents 1000]``
(``make bench`` runs it with those figures, about 12 s on the 2-core bench machine); the
report gives the load generator's own CPU per request, to tell its queueing from the
server's; the test suite runs a smaller load through :func:`run_load`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import ssl
import subprocess
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio
import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class LoadReport:
    requests: int
    clients: int
    failed: int
    unparsable: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    seconds: float
    executions_seen: float
    """The largest ``subagent_executions_total`` (summed over depths) any scrape showed."""
    distinct_bodies: int
    """How many different expositions were parsed (identical ones are parsed once)."""
    client_cpu_ms: float
    """CPU the load generator spent per request (parsing aside): when it nears the latency
    figures, the generator, not the server, is what is being measured."""


def serve(subagents: int) -> None:
    """The server side: /metrics on an ephemeral port, batches of subagents until stdin ends."""
    from xzatoma import Runtime, SubagentConfig, Usage
    from xzatoma.telemetry import start_metrics_server
    from xzatoma.testing import ScriptedProvider

    rng = random.Random(7)

    async def answer(messages: object, tools: object) -> str:
        await anyio.sleep(rng.uniform(0.1, 0.3))  # the model "thinking": I/O wait, no CPU
        return "ok"

    async def main() -> None:
        with start_metrics_server(port=0) as server:
            print(server.url, flush=True)
            runtime = Runtime(
                ScriptedProvider(answer, usage=Usage(1, 20, 5, 25)),
                subagents=SubagentConfig(max_concurrent=subagents),
            )
            tasks = [{"label": f"t{i}", "task_prompt": "x"} for i in range(subagents)]
            async with anyio.create_task_group() as tg:

                async def batches() -> None:
                    while True:
                        await runtime.run_batch(tasks)

                tg.start_soon(batches)
                await anyio.to_thread.run_sync(sys.stdin.read)  # until the parent closes it
                tg.cancel_scope.cancel()

    anyio.run(main)


def _parse(body: bytes) -> float:
    """Parse one exposition (in the worker process); ``subagent_executions_total`` summed."""
    total = 0.0
    for family in text_string_to_metric_families(body.decode("utf-8")):
        if family.name == "subagent_executions":
            total = sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


async def _hammer(
    url: str, requests: int, clients: int, parser: ProcessPoolExecutor
) -> tuple[list[float], int, dict[bytes, Future[float]]]:
    """Send the requests; latency is the HTTP exchange alone (parsing happens elsewhere).

    Each client is a scraper of its own, with one kept-alive connection, as a Prometheus
    server is. Not one pool of ``clients`` connections: httpcore polls every idle connection
    of a pool each time a request enters or leaves it, so with 50 kept-alive connections in
    one pool the load generator spends about 10 ms of CPU a request on its own bookkeeping,
    becomes the bottleneck on a 2-core machine and reports its own queueing as the server's
    latency (p99 of seconds while the server answered in tens of milliseconds).
    """
    latencies: list[float] = []
    failed = 0
    remaining = requests
    parses: dict[bytes, Future[float]] = {}  # one parse per distinct body (by digest)
    tls = ssl.create_default_context()  # loaded once, not per client (the URL is http anyway)

    async def one_client() -> None:
        nonlocal remaining, failed
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=30, verify=tls) as client:
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                try:
                    response = await client.get(url)
                except httpx.HTTPError:
                    failed += 1
                    continue
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    failed += 1
                    continue
                digest = hashlib.blake2b(response.content, digest_size=16).digest()
                if digest not in parses:
                    parses[digest] = parser.submit(_parse, response.content)

    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(one_client)
    return latencies, failed, parses


def run_load(requests: int, clients: int, subagents: int) -> LoadReport:
    """Start the server process, load it, stop it; the report of what happened."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--subagents", str(subagents)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the metrics server did not start (it printed {url!r})")
        with ProcessPoolExecutor(max_workers=1) as parser:
            cpu_before = _cpu_seconds()
            started = time.perf_counter()
            latencies, failed, parses = anyio.run(_hammer, url, requests, clients, parser)
            seconds = time.perf_counter() - started
            client_cpu = _cpu_seconds() - cpu_before
            unparsable, executions = 0, 0.0
            for future in parses.values():
                try:
                    executions = max(executions, future.result())
                except ValueError:
                    unparsable += 1
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()
    latencies.sort()

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0
        )

    return LoadReport(
        requests, clients, failed, unparsable, round(pct(0.5), 2), round(pct(0.99), 2),
        round(latencies[-1] * 1000, 2) if latencies else 0.0, round(seconds, 2), executions,
        len(parses), round(client_cpu * 1000 / max(1, requests), 2),
    )  # fmt: skip


def _cpu_seconds() -> float:
    """CPU time of this process so far (user and system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--subagents", type=int, default=1000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if args.serve:
        serve(args.subagents)
        return
    report = run_load(args.requests, args.clients, args.subagents)
    if args.json:
        print(json.dumps(asdict(report)))
        return
    print(f"/metrics under load: {report.requests} requests from {report.clients} clients, "
          f"{args.subagents} subagents per batch running meanwhile")  # fmt: skip
    print(f"  failed {report.failed}, unparsable {report.unparsable}, took {report.seconds} s")
    print(f"  latency p50 {report.p50_ms} ms, p99 {report.p99_ms} ms, max {report.max_ms} ms")
    print(f"  load generator CPU {report.client_cpu_ms} ms a request")
    print(f"  every answer parsed: {report.distinct_bodies} distinct expositions; "
          f"subagent executions seen: {report.executions_seen:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
