"""A parallel batch from Python: ``Runtime.run_batch`` runs independent tasks at once.

Each task is a subagent at depth 1 with its own execution slot of the shared quota; at most
``max_concurrent`` run at a time, and results come back in input order. Offline by default;
set XZATOMA_BASE_URL (and XZATOMA_MODEL, XZATOMA_API_KEY_ENV) to use a real endpoint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import anyio

from xzatoma import (
    Completion,
    Message,
    OpenAIProvider,
    QuotaLimits,
    Runtime,
    SubagentConfig,
    SubagentTask,
    ToolSpec,
    Usage,
)
from xzatoma.testing import ScriptedProvider, reply

TOPICS = ("quicksort", "mergesort", "heapsort", "timsort", "radix sort")


def scripted_model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
    """Offline: answer each task, then its summary prompt, from the task's own words."""
    task = messages[0].content or ""
    topic = task.removeprefix("In two sentences, explain ").removesuffix(".")
    if len(messages) == 1:
        return reply(f"{topic} is a sorting algorithm. Here is how it works in two sentences.")
    return reply(f"{topic}: explained.")


def endpoint() -> OpenAIProvider | None:
    """The real endpoint named by XZATOMA_BASE_URL, or None to run offline."""
    base_url = os.environ.get("XZATOMA_BASE_URL")
    if not base_url:
        return None
    key_env = os.environ.get("XZATOMA_API_KEY_ENV")
    api_key = os.environ[key_env] if key_env else None
    return OpenAIProvider(base_url, os.environ.get("XZATOMA_MODEL", "llama3.2"), api_key=api_key)


async def main() -> None:
    real = endpoint()
    runtime = Runtime(
        real or ScriptedProvider(scripted_model, usage=Usage(1, 60, 15, 75)),
        subagents=SubagentConfig(max_concurrent=3),
        quota=QuotaLimits(max_executions=10, max_total_tokens=100_000),
    )
    tasks = [
        SubagentTask(label=topic, task_prompt=f"In two sentences, explain {topic}.", max_turns=3)
        for topic in TOPICS
    ]
    try:
        batch = await runtime.run_batch(tasks, max_concurrent=3)
    finally:
        if real is not None:
            await real.aclose()
    for result in batch.results:
        print(f"[{result.status}] {result.label}: {result.output}")
    print(
        f"batch {batch.status}: {batch.successful} succeeded, {batch.failed} failed, "
        f"{batch.cancelled} cancelled, {batch.total_usage.total_tokens} tokens"
    )
    print(f"quota used: {runtime.tracker.statistics().executions} executions")


if __name__ == "__main__":
    anyio.run(main)
