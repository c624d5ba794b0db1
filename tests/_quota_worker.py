"""One process of a quota tree shared on Redis, for ``tests/test_redis_quota.py``.

``python tests/_quota_worker.py SPEC`` (SPEC: a JSON object) runs one ``Runtime.run_batch``
of ``tasks`` subagents, at most ``concurrent`` at once, on a ``ScriptedProvider``: every
subagent calls the ``noop`` tool ``turns`` times (default 0), then answers ``done``, and
every model call reports ``tokens`` tokens. The quota is a ``RedisQuota`` on ``url`` and
``tree`` with ``limits`` (``QuotaLimits`` keywords) and ``timeout``, or the pickled one in
``pickle`` (base64), as a Ray worker receives it.

With ``ready`` and ``go`` (Redis list keys), the worker makes everything first, pushes its pid
onto ``ready``, and blocks on ``BLPOP go``: the test pushes one item per worker once every
worker is ready, so they start their batches together, with no sleep anywhere.

It prints one JSON line: ``results`` (the tasks by ``error_type``, or by status when there
is none), ``messages`` (the distinct error messages) and ``calls`` (model calls made).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pickle
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

import redis

from xzatoma import (
    Message,
    QuotaLimits,
    RedisQuota,
    Runtime,
    SubagentConfig,
    ToolSpec,
    Usage,
    tool,
)
from xzatoma.testing import ScriptedProvider, call, tool_calls

GO_SECONDS = 120
"""How long a worker waits for the test's go before it gives up (a test that died)."""


@tool
async def noop() -> str:
    """Do nothing."""
    return "nothing"


def scripted(turns: int, tokens: int) -> ScriptedProvider:
    """A model that calls ``noop`` ``turns`` times, then answers; ``tokens`` per call."""

    def answer(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Any:
        made = sum(1 for m in messages if m.role == "assistant")
        return tool_calls(call("noop")) if made < turns else "done"

    return ScriptedProvider(answer, usage=Usage(1, tokens - tokens // 2, tokens // 2, tokens))


def quota_of(spec: dict[str, Any]) -> RedisQuota:
    if "pickle" in spec:
        quota = pickle.loads(base64.b64decode(spec["pickle"]))
        assert isinstance(quota, RedisQuota), type(quota)
        return quota
    return RedisQuota(
        spec["url"],
        tree=spec["tree"],
        limits=QuotaLimits(**spec.get("limits", {})),
        timeout=spec.get("timeout", 5.0),
    )


async def run(runtime: Runtime, quota: RedisQuota, spec: dict[str, Any]) -> dict[str, Any]:
    tasks = [{"label": f"t{i}", "task_prompt": f"task {i}"} for i in range(spec["tasks"])]
    try:
        batch = await runtime.run_batch(tasks, max_concurrent=spec["concurrent"], tools=[noop])
    finally:
        await quota.aclose()
    return {
        "results": dict(Counter(r.error_type or r.status for r in batch.results)),
        "messages": sorted({r.error for r in batch.results if r.error}),
    }


def main() -> None:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    quota = quota_of(spec)
    provider = scripted(spec.get("turns", 0), spec.get("tokens", 0))
    runtime = Runtime(
        provider, subagents=SubagentConfig(summary_prompt=None), quota=quota, telemetry=False
    )
    if "go" in spec:
        client = redis.Redis.from_url(spec["url"], socket_timeout=GO_SECONDS + 30)
        try:
            client.rpush(spec["ready"], os.getpid())
            if client.blpop([spec["go"]], timeout=GO_SECONDS) is None:
                raise SystemExit(f"no go from the test within {GO_SECONDS}s")
        finally:
            client.close()
    counts = asyncio.run(run(runtime, quota, spec))
    counts["calls"] = len(provider.requests)
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
