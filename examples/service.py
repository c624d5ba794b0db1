"""Many runtimes in one service: each HTTP request runs its own tree, and one ``/metrics``
serves the whole process.

``POST /runs`` builds a ``Runtime`` for the request (its own session id and quota), lets the
root hand the request's tasks to subagents in one ``parallel_subagent`` batch, and answers
with the result and ``runtime.statistics()``: that tree's figures alone, with no series per
session in Prometheus. ``GET /metrics`` is one SDK meter provider for every runtime, so its
``subagent_*`` series add up all the trees. Needs the ``service`` extra
(``pip install 'xzatoma[service]'``).

Run with no arguments, it starts the service on a free port, sends it three requests at once,
prints what came back and the scraped total, and stops. To keep it serving::

    python examples/service.py --serve
    curl -X POST localhost:8000/runs -d '{"prompt": "Compare them.", "tasks": ["a", "b"]}'

Offline by default; set XZATOMA_BASE_URL (and XZATOMA_MODEL, XZATOMA_API_KEY_ENV) to use a
real endpoint, which may answer without delegating.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import prometheus_client
import uvicorn
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from xzatoma import (
    Completion,
    ConfigError,
    Message,
    OpenAIProvider,
    Provider,
    QuotaLimits,
    Runtime,
    ToolSpec,
    Usage,
)
from xzatoma.telemetry import configure
from xzatoma.testing import ScriptedProvider, call, reply, tool_calls

MAX_TASKS = 20
MAX_BODY = 64 * 1024  # bytes of a POST /runs body: a request cannot make the service hold more
SYSTEM = "You answer the user; hand the tasks you are given to subagents, then answer."
SCRIPTED_USAGE = Usage(1, 30, 10, 40)  # every offline model call, for tokens you can predict
DELEGATE = "Hand each of these tasks to a subagent in one parallel_subagent call:"
HOW_TO_SEND = 'send JSON: {"prompt": "...", "tasks": ["...", ...], "session_id": "..."}'


def scripted_model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
    """Offline: the root delegates the tasks listed in its prompt, then answers; each
    subagent answers its task (and then its summary prompt) at once."""
    first, last = messages[0].content or "", messages[-1]
    if first != SYSTEM:
        return reply(f"done: {first}")
    if last.role == "tool":
        return reply("All tasks are done.")
    listed = (last.content or "").partition(DELEGATE)[2].splitlines()
    tasks = [line.removeprefix("- ") for line in listed if line.startswith("- ")]
    if not tasks:
        return reply("Nothing to delegate.")
    batch = [{"label": f"task-{i}", "task_prompt": t} for i, t in enumerate(tasks, 1)]
    return tool_calls(call("parallel_subagent", tasks=batch))


def default_provider() -> Provider:
    """The real endpoint named by XZATOMA_BASE_URL, or the scripted model to run offline."""
    base_url = os.environ.get("XZATOMA_BASE_URL")
    if not base_url:
        return ScriptedProvider(scripted_model, usage=SCRIPTED_USAGE)
    key_env = os.environ.get("XZATOMA_API_KEY_ENV")
    api_key = os.environ[key_env] if key_env else None
    return OpenAIProvider(base_url, os.environ.get("XZATOMA_MODEL", "llama3.2"), api_key=api_key)


class BadRequest(ValueError):
    """The request body is not what ``POST /runs`` takes; the message says what is wrong."""


def parse_run(body: Any) -> tuple[str, list[str], str | None]:
    """The prompt, tasks and session id of a ``POST /runs`` body (the session id's own
    rules are the ``Runtime``'s, which raises ``ConfigError``)."""
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object; {HOW_TO_SEND}")
    prompt, tasks, session_id = body.get("prompt"), body.get("tasks", []), body.get("session_id")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest(f"prompt must be a non-empty string; {HOW_TO_SEND}")
    if not isinstance(tasks, list) or not all(isinstance(t, str) and t.strip() for t in tasks):
        raise BadRequest(f"tasks must be a list of non-empty strings; {HOW_TO_SEND}")
    if any("\n" in t or "\r" in t for t in tasks):
        raise BadRequest("each task must be one line (the tasks are listed one per line)")
    if "tasks" in body and not 1 <= len(tasks) <= MAX_TASKS:
        raise BadRequest(f"tasks must have 1 to {MAX_TASKS} entries, got {len(tasks)}")
    if session_id is not None and not isinstance(session_id, str):
        raise BadRequest("session_id must be a string (leave it out for a generated one)")
    return prompt, tasks, session_id


async def post_run(request: Request) -> JSONResponse:
    """Run one tree in a runtime of its own and answer with its result and statistics."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            return JSONResponse(
                {"error": f"the body is larger than {MAX_BODY} bytes"}, status_code=413
            )
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than Python recurses
        return JSONResponse({"error": f"the body is not JSON; {HOW_TO_SEND}"}, status_code=400)
    try:
        prompt, tasks, session_id = parse_run(body)
        runtime = Runtime(
            request.state.provider,
            session_id=session_id,
            quota=QuotaLimits(max_executions=MAX_TASKS),  # however deep the model delegates
        )
    except (BadRequest, ConfigError) as error:  # ConfigError: the session id's own rules
        return JSONResponse({"error": str(error)}, status_code=400)
    if tasks:
        prompt += f"\n\n{DELEGATE}\n" + "\n".join(f"- {task}" for task in tasks)
    result = await runtime.agent(system_prompt=SYSTEM, name="root", timeout=60).run(prompt)
    return JSONResponse(
        {
            "session_id": runtime.session_id,
            "status": result.status,
            "output": result.output,
            "error": result.error,
            "statistics": runtime.statistics().to_dict(),
        }
    )


async def healthz(request: Request) -> JSONResponse:
    """Liveness: the process answers (a load balancer's probe)."""
    return JSONResponse({"status": "ok"})


class PrometheusEndpoint:
    """``/metrics`` from prometheus_client's ASGI app, which negotiates OpenMetrics and gzip.

    The app is a plain function, which ``Route`` would take for a request handler, and a
    ``Mount`` would redirect ``/metrics`` to ``/metrics/``; as an object it is routed as ASGI.
    """

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.app = prometheus_client.make_asgi_app(registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def create_app(make_provider: Callable[[], Provider] = default_provider) -> Starlette:
    """The service: ``POST /runs``, ``GET /metrics`` and ``GET /healthz``.

    Its lifespan sets up the process-wide meter provider every runtime records to, and the
    one model provider every request shares (made by ``make_provider``, closed at the end).
    """
    registry = prometheus_client.CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Provider]]:
        provider = make_provider()
        reader = PrometheusMetricReader(registry=registry)
        meters = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
        configure(meters)
        try:
            yield {"provider": provider}  # request.state.provider in every request
        finally:
            if isinstance(provider, OpenAIProvider):
                await provider.aclose()
            configure()  # back to OpenTelemetry's global providers
            meters.shutdown()

    return Starlette(
        routes=[
            Route("/runs", post_run, methods=["POST"]),
            Route("/metrics", PrometheusEndpoint(registry)),
            Route("/healthz", healthz),
        ],
        lifespan=lifespan,
    )


async def demo() -> None:
    """Serve on a free port, send three requests at once, print the answers and the scrape."""
    # A socket bound and listening before the server starts: clients can connect at once,
    # and uvicorn answers them as soon as the lifespan has set everything up.
    sock = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(), log_level="warning", lifespan="on"))
    requests = [
        {"prompt": "Compare the sorts.", "tasks": ["quicksort"], "session_id": "alice"},
        {"prompt": "Compare the sorts.", "tasks": ["mergesort", "heapsort"], "session_id": "bob"},
        {"prompt": "Compare the sorts.", "tasks": ["timsort", "radix sort", "shellsort"]},
    ]
    answers: list[dict[str, Any]] = []

    async def post(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
        response = await client.post("/runs", json=body)
        answers.append(response.raise_for_status().json())

    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            async with anyio.create_task_group() as clients:
                for body in requests:
                    clients.start_soon(post, client, body)
            metrics = (await client.get("/metrics")).raise_for_status().text
        server.should_exit = True
    for answer in sorted(answers, key=lambda a: a["statistics"]["total"]["executions"]):
        depth_1 = answer["statistics"]["by_depth"].get("1", {}).get("executions", 0)
        session, status = answer["session_id"], answer["status"]
        print(f"session {session}: {status}, {depth_1} subagent executions at depth 1")
    for line in metrics.splitlines():
        if line.startswith("subagent_executions_total"):
            print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description="Many runtimes in one service.")
    parser.add_argument("--serve", action="store_true", help="serve until Ctrl-C")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.serve:
        uvicorn.run(create_app(), host=args.host, port=args.port, lifespan="on")
    else:
        anyio.run(demo)


if __name__ == "__main__":
    main()
