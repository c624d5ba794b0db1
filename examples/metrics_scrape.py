"""Metrics: serve Prometheus ``/metrics``, run a tree of subagents, scrape it, print the series.

``start_metrics_server`` sets up an OpenTelemetry SDK meter provider with a Prometheus reader
when none is configured, and serves it on 127.0.0.1 (port 0 picks a free port). Every
``Runtime`` records to it. Needs the ``prometheus`` extra. Offline by default; set
XZATOMA_BASE_URL (and XZATOMA_MODEL, XZATOMA_API_KEY_ENV) to use a real endpoint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import anyio
import httpx

from xzatoma import Completion, Message, OpenAIProvider, QuotaLimits, Runtime, ToolSpec, Usage
from xzatoma.telemetry import start_metrics_server
from xzatoma.testing import ScriptedProvider, reply


def scripted_model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
    """Offline: every task answers at once, at a fixed token cost."""
    return reply(f"done: {messages[0].content}", usage=Usage(1, 30, 10, 40))


def endpoint() -> OpenAIProvider | None:
    """The real endpoint named by XZATOMA_BASE_URL, or None to run offline."""
    base_url = os.environ.get("XZATOMA_BASE_URL")
    if not base_url:
        return None
    key_env = os.environ.get("XZATOMA_API_KEY_ENV")
    api_key = os.environ[key_env] if key_env else None
    return OpenAIProvider(base_url, os.environ.get("XZATOMA_MODEL", "llama3.2"), api_key=api_key)


async def run_tree() -> None:
    real = endpoint()
    # Three executions allowed, four tasks: the last one is refused (quota_exceeded).
    runtime = Runtime(real or ScriptedProvider(scripted_model), quota=QuotaLimits(max_executions=3))
    tasks = [{"label": f"task-{i}", "task_prompt": f"Say hello number {i}."} for i in range(4)]
    try:
        batch = await runtime.run_batch(tasks, max_concurrent=1)
    finally:
        if real is not None:
            await real.aclose()
    print(f"batch {batch.status}: {batch.successful} succeeded, {batch.failed} failed")


def main() -> None:
    with start_metrics_server(port=0) as server:
        print(f"serving {server.url}")
        anyio.run(run_tree)
        text = httpx.get(server.url).text
    for line in text.splitlines():
        if line.startswith("subagent_") and "_bucket" not in line and "_created" not in line:
            print(line)


if __name__ == "__main__":
    main()
