"""The HTTP benchmark's peers: pydantic-ai and the OpenAI Agents SDK over their own clients.

``bench/.venv-peers/bin/python bench/http_peers.py --system pydantic-ai --base-url
http://127.0.0.1:P/v1 --control-url http://127.0.0.1:Q --n 1000 --concurrency 100`` prints one
JSON line, measured exactly as ``http_workloads.py`` measures xzatoma (warm-up, then one timed
batch, the server's counters reset around each). Each peer is set up the way its documentation
shows for an OpenAI-compatible endpoint, with every default left alone (its own ``AsyncOpenAI``
client and connection pool, retries, timeouts), and a batch is N agent runs of one model call
each in an anyio task group behind a ``CapacityLimiter(C)``: the semantics of xzatoma's
``run_batch(max_concurrent=C)``, written as a user of that library would.

- ``pydantic-ai``: ``Agent(OpenAIChatModel(model, provider=OpenAIProvider(base_url=...,
  api_key=...)))`` and ``agent.run(prompt)``; instrumentation off (its default).
- ``openai-agents``: ``Agent(model=OpenAIChatCompletionsModel(model=...,
  openai_client=AsyncOpenAI(base_url=..., api_key=...)))`` and ``Runner.run(agent, prompt)``,
  with ``set_tracing_disabled(True)`` (its tracing would export to OpenAI's servers).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
from http_workloads import MODEL, PROMPT, Batch, System, main


async def limited_batch(n: int, concurrency: int, one: Callable[[], Awaitable[bool]]) -> int:
    """``n`` tasks in one task group, each behind a ``CapacityLimiter(concurrency)``."""
    limiter = anyio.CapacityLimiter(concurrency)
    answered = 0

    async def task() -> None:
        nonlocal answered
        async with limiter:
            done = await one()
        answered += done

    async with anyio.create_task_group() as group:
        for _ in range(n):
            group.start_soon(task)
    return answered


@asynccontextmanager
async def pydantic_ai_system(args: argparse.Namespace) -> AsyncIterator[Batch]:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    provider = OpenAIProvider(base_url=args.base_url, api_key="x")
    agent = Agent(OpenAIChatModel(MODEL, provider=provider))

    async def one() -> bool:
        result = await agent.run(PROMPT)
        return result.output == "done"

    yield lambda n: limited_batch(n, args.concurrency, one)


@asynccontextmanager
async def agents_sdk_system(args: argparse.Namespace) -> AsyncIterator[Batch]:
    from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=args.base_url, api_key="x")
    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    agent = Agent(name="worker", model=model)

    async def one() -> bool:
        result = await Runner.run(agent, PROMPT)
        return result.final_output == "done"

    try:
        yield lambda n: limited_batch(n, args.concurrency, one)
    finally:
        await client.close()


SYSTEMS: dict[str, System] = {
    "pydantic-ai": pydantic_ai_system,
    "openai-agents": agents_sdk_system,
}
VERSIONS = {
    "pydantic-ai": ("pydantic-ai-slim", "openai", "httpx2"),
    "openai-agents": ("openai-agents", "openai", "httpx2"),
}

if __name__ == "__main__":
    main(SYSTEMS, VERSIONS)
