"""httpx's own transport, httpx-aiohttp's, bare aiohttp and HTTP/2 on one chat request (issue 18).

``bench/.venv-peers/bin/python bench/http_transports.py [--quick]`` times N requests at 100
and at 1,000 at a time, each configuration in a fresh process, the order rotated each round,
the best wall of the rounds kept; it prints a table and one JSON line. Each request is the
2.7 kB body a batch child of xzatoma sends, answered 50 ms later. HTTP/1.1 goes to
``http_server.py`` (uvloop, httptools) and to hypercorn, h2 (h2c with prior knowledge) to
hypercorn only, so h2 and h1 are judged on one server.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from http_workloads import HEADERS, ServerProcess, raise_file_limit, run_workers, server_stats

LATENCY = 0.05
CONCURRENCIES = (100, 1000)
_TASK = (  # a subagent task's JSON schema, in both tools
    '{"additionalProperties":false,"description":"A task for a subagent: its instructions and '
    'the limits it runs under.","properties":{"label":{"description":"A short name for this '
    'subagent\'s task.","maxLength":200,"type":"string"},"task_prompt":{"description":"The '
    'complete instructions for the subagent; it sees nothing else.","type":"string"},'
    '"summary_prompt":{"type":"string","description":"What the subagent is asked after its task, '
    'to shape what you receive."},"allowed_tools":{"items":{"type":"string"},"type":"array",'
    '"description":"Names of your own tools the subagent may use (default: all of them); never '
    'subagent or parallel_subagent, which it gets by itself."},"max_turns":{"maximum":50,'
    '"minimum":1,"type":"integer","description":"Model calls the subagent may make (1-50)."}},'
    '"required":["label","task_prompt"],"type":"object"}'
)
BODY = (
    (
        '{"model":"bench-model","messages":[{"role":"user","content":"Do one piece of the '
        'work."}],"tools":[{"type":"function","function":{"name":"subagent",'
        '"description":"Delegate a self-contained task to a subagent with a fresh context. It '
        "can use your tools (or the subset in allowed_tools) and returns its summarized "
        'findings.","parameters":"TASK"}},{"type":"function","function":{"name":"parallel_subagent",'
        '"description":"Run several independent tasks at once, each in its own subagent. Returns '
        "JSON with each task's output and status, in the order given.\","
        '"parameters":{"additionalProperties":false,"description":"Independent tasks to run at '
        'the same time, each in its own subagent.","properties":{"tasks":{"description":"The '
        'tasks, each run by its own subagent.","items":"TASK","minItems":1,"type":"array"},'
        '"max_concurrent":{"minimum":1,"type":"integer","description":"How many subagents run at '
        'once."},"fail_fast":{"default":false,"description":"Cancel the remaining tasks at the '
        'first failure.","type":"boolean"}},"required":["tasks"],"type":"object"}}}]}'
    )
    .replace('"TASK"', _TASK)
    .encode()
)
"""Byte for byte what xzatoma's ``OpenAIProvider`` sent for a batch child (2,711 bytes)."""

Send = Callable[[], Awaitable[str]]
"""Posts one chat request; returns the reply's HTTP version once it said ``done``."""
CONFIGS = [(client, "uvloop") for client in ("httpx", "httpx-aiohttp", "aiohttp")]
CONFIGS += [(client, "hypercorn") for client in ("httpx", "aiohttp", "httpx-h2")]
"""(client, server): HTTP/1.1 to both servers, then h2 to hypercorn."""


@asynccontextmanager
async def open_sender(client: str, url: str, concurrency: int) -> AsyncIterator[Send]:
    """The client a configuration names, with ``concurrency`` connections all kept alive."""
    if client == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def send_aiohttp() -> str:
                async with session.post(url, data=BODY, headers=HEADERS) as reply:
                    _expect(reply.status, await reply.json())
                return f"HTTP/{reply.version.major}.{reply.version.minor}"

            yield send_aiohttp
        return
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    options: dict[str, Any] = {"limits": limits, "timeout": 30.0}
    if client == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        options["transport"] = AiohttpTransport(limits=limits)
    elif client == "httpx-h2":
        options.update(http1=False, http2=True)  # h2c with prior knowledge on plain http
    async with httpx.AsyncClient(**options) as http:

        async def send_httpx() -> str:
            reply = await http.post(url, content=BODY, headers=HEADERS)
            _expect(reply.status_code, reply.json())
            return reply.http_version

        yield send_httpx


def _expect(status: int, body: Any) -> None:
    if status != 200 or body["choices"][0]["message"]["content"] != "done":
        raise RuntimeError(f"status {status}, not 'done'")


def server_cpu_s(pid: int) -> float:
    """Another process's user and system CPU so far (``/proc``, in clock ticks of 10 ms)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration here: C requests to warm up, then N timed. A batch stops at ``--budget``
    s (httpx's own pool takes 10-60 ms of CPU a request here), its figures over those done."""
    c, errors, versions, done = args.concurrency, Counter[str](), Counter[str](), [0]
    record: dict[str, Any] = {"client": args.client, "server": args.server, "concurrency": c}

    def conns() -> int | None:  # connections the server opened since the last call
        stats = server_stats(args.control_url, reset=True) if args.control_url else {}
        return stats.get("connections_opened")

    async with open_sender(args.client, args.url, c) as send:

        async def one() -> bool:
            try:
                versions[await send()] += 1
            except Exception as exc:  # counted and shown: a failed request is a result here
                errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
            done[0] += 1
            return True

        async def batch(n: int, phase: str) -> tuple[float, float, int]:
            done[0], wall, cpu, end = 0, time.perf_counter(), time.process_time(), []

            def stop() -> None:  # the figures first: cancelling 1,000 requests takes seconds
                end.extend((time.perf_counter() - wall, time.process_time() - cpu, done[0]))
                group.cancel_scope.cancel()

            async def workers() -> None:
                await run_workers(n, c, one)
                stop()

            async with anyio.create_task_group() as group:
                group.start_soon(workers)
                await anyio.sleep(args.budget)
                record[f"{phase}_cut"] = f"after {done[0]} of {n} ({args.budget:g} s)"
                stop()
            return end[0], end[1], max(end[2], 1)

        conns()
        await batch(c, "warmup")
        record["warmup_conns"], server_cpu = conns(), server_cpu_s(args.server_pid)
        wall, cpu, n = await batch(args.n, "timed")
        server_cpu = server_cpu_s(args.server_pid) - server_cpu
        record["timed_conns"] = conns()
    record.update(n=n, wall_us=wall / n * 1e6, cpu_us=cpu / n * 1e6, wall_s=wall)
    record.update(server_cpu_us=server_cpu / n * 1e6, server_busy=server_cpu / wall)
    record.update(errors=dict(errors), http_versions=dict(versions))
    return record


def serve_hypercorn(latency: float, streams: int) -> None:
    """Hypercorn on uvloop: the same completion after ``latency`` s, h1 and h2c on one port."""
    import uvloop
    from http_server import completion_body
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    listener = socket.create_server(("127.0.0.1", 0))
    config = Config()
    config.bind = [f"fd://{listener.fileno()}"]
    config.backlog = 4096  # 1,000 connections arrive at once
    config.h2_max_concurrent_streams = streams
    # by default h2 gets a GOAWAY after 1,000 requests, which httpcore fails on at C=1,000
    # (WriteError, then "Max outbound streams is 100, 100 open" on the next connection)
    config.keep_alive_max_requests = 10**9
    numbers = itertools.count(1)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            if (message := await receive())["type"] == "http.disconnect":
                return  # a request cancelled at the budget
            body, more = body + message.get("body", b""), message.get("more_body", False)
        answer = completion_body(next(numbers), json.loads(body)["model"])
        await asyncio.sleep(latency)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    async def run() -> None:
        stop, loop = asyncio.Event(), asyncio.get_running_loop()
        threading.Thread(
            target=lambda: (sys.stdin.buffer.read(), loop.call_soon_threadsafe(stop.set)),
            daemon=True,
        ).start()
        print(json.dumps({"port": listener.getsockname()[1]}), flush=True)
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    uvloop.run(run())


def run_one(client: str, server: str, c: int, n: int, servers: dict[str, Any]) -> dict[str, Any]:
    """One configuration in a fresh process; its record, or one that says how it failed."""
    process, base_url, control_url = servers[server]
    command = [sys.executable, __file__, "--client", client, "--server", server, "--n", str(n)]
    command += ["--concurrency", str(c), "--url", base_url + "/chat/completions"]
    command += ["--server-pid", str(process.pid), "--control-url", control_url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=150, check=False)
    if done.returncode:
        said = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return {"client": client, "server": server, "concurrency": c, "failed": said[0]}
    return dict(json.loads(done.stdout.splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="N=400, one round (else 2000, two)")
    parser.add_argument("--n", type=int, help="requests in the timed batch (2000)")
    parser.add_argument("--serve-hypercorn", action="store_true", help=argparse.SUPPRESS)
    for name in ("--client", "--server", "--url", "--control-url"):
        parser.add_argument(name, default="", help=argparse.SUPPRESS)
    for name in ("--concurrency", "--server-pid"):
        parser.add_argument(name, type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=12.0, help="seconds a batch may take")
    parser.add_argument("--h2-streams", type=int, default=100, help="hypercorn's stream limit")
    args = parser.parse_args()
    raise_file_limit()
    if args.serve_hypercorn:
        serve_hypercorn(LATENCY, args.h2_streams)
    elif args.client:
        print(json.dumps(anyio.run(measure, args)), flush=True)
    else:
        n, rounds = args.n or (400 if args.quick else 2000), 2 - args.quick
        compare(n, rounds, args.h2_streams)


def compare(n: int, rounds: int, streams: int) -> None:
    """Both servers up, every configuration at each C in each round, then the table."""
    began, load_start = time.perf_counter(), os.getloadavg()
    uvloop_server = ServerProcess(sys.executable, LATENCY)
    command = [sys.executable, __file__, "--serve-hypercorn", "--h2-streams", str(streams)]
    hypercorn = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert hypercorn.stdout is not None
    port = json.loads(hypercorn.stdout.readline())["port"]
    servers = {
        "uvloop": (uvloop_server.process, uvloop_server.base_url, uvloop_server.control_url),
        "hypercorn": (hypercorn, f"http://127.0.0.1:{port}/v1", ""),
    }
    passes: list[dict[str, Any]] = []
    try:
        for round_ in range(rounds):
            order = CONFIGS[round_ % len(CONFIGS) :] + CONFIGS[: round_ % len(CONFIGS)]
            for c, (client, server) in itertools.product(CONCURRENCIES, order):
                passes.append({**run_one(client, server, c, n, servers), "round": round_})
    finally:
        uvloop_server.stop()
        hypercorn.communicate(timeout=10)  # closes its stdin: it stops
    load_end, seconds = os.getloadavg(), time.perf_counter() - began
    print(f"N={n} per run, {rounds} round(s), latency 50 ms, body {len(BODY)} B, {seconds:.0f} s")
    print(f"load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end")
    print("C | client | server | proto | µs/req wall | CPU | server CPU | busy | new conns", end="")
    print(" warm-up/timed | all walls | errors")
    best = []
    for c, (client, server) in itertools.product(CONCURRENCIES, CONFIGS):
        mine = [p for p in passes if p["concurrency"] == c and p["client"] == client]
        mine = [p for p in mine if p["server"] == server]
        if not (ok := [p for p in mine if "wall_us" in p]):
            print(f"{c} | {client} | {server} | failed: {mine[0]['failed'] if mine else '?'}")
            continue
        best.append(top := min(ok, key=lambda p: (bool(p["errors"]), p["wall_us"])))
        conns = f"{top['warmup_conns']}/{top['timed_conns']}" if server == "uvloop" else "-"
        cut = [top[k] for k in ("warmup_cut", "timed_cut") if k in top]
        print(f"{c} | {client} | {server} | {','.join(top['http_versions'])}", end=" | ")
        print(f"{top['wall_us']:.0f} | {top['cpu_us']:.0f} | {top['server_cpu_us']:.0f}", end=" | ")
        walls = " ".join(f"{p['wall_us']:.0f}" for p in ok)
        print(f"{top['server_busy']:.0%} | {conns} | {walls}", end=" | ")
        print(json.dumps(top["errors"]) if top["errors"] else "none", *(f"cut {x}" for x in cut))
    summary = {"bench": "http_transports", "n": n, "rounds": rounds, "seconds": round(seconds, 1)}
    summary.update(load_start=load_start, load_end=load_end, body_bytes=len(BODY))
    print(json.dumps({**summary, "best": best, "passes": passes}))


if __name__ == "__main__":
    main()
