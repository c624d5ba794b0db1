"""The benchmark workloads on pydantic-ai (run in the peers' virtualenv, ``bench/.venv-peers``).

``bench/.venv-peers/bin/python bench/pydantic_ai_workloads.py --workload W2 --n 1000`` prints
one JSON line (see ``_harness.py``). The model is pydantic-ai's own ``FunctionModel`` with an
``async`` function (a sync one would run in a worker thread) that builds a fresh
``ModelResponse`` on every call, reporting ``RequestUsage(input_tokens=20, output_tokens=5)``;
it goes through the real agent loop (graph, tool manager, argument validation, usage limits).
Instrumentation is off (pydantic-ai's default).

- W0: ``agent.run()``; one model call that answers with text; N runs in sequence.
- W1: the parent's first reply calls the ``subagent`` tool once; the tool runs the child agent
  with ``usage=ctx.usage, usage_limits=ctx.usage_limits`` (pydantic-ai's documented agent
  delegation); the child answers in one call; the parent answers. N parents in sequence.
- W2: the parent's first reply calls ``subagent`` N times at once (pydantic-ai runs them
  concurrently); cost per child.
- W3: N child ``agent.run()`` in an anyio task group behind a ``CapacityLimiter(5)``: the
  semantics of xzatoma's ``Runtime.run_batch`` with its default ``max_concurrent``; cost per
  child.

Every run gets ``UsageLimits(request_limit=None)``: pydantic-ai's default limit of 50 requests
per run (which the children share through ``ctx.usage``) would stop W2 at 50 children, while
the xzatoma runs have no execution limit either.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from importlib.metadata import version
from typing import Any

import anyio
from _harness import Run, main
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import (
    ModelMessage,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage, RunUsage, UsageLimits

PARENT_PROMPT = "Delegate the work."
CHILD_PROMPT = "Do one piece of the work."
MAX_CONCURRENT = 5
"""W3's limit: the default ``max_concurrent`` of xzatoma's ``run_batch``."""


def _answer() -> ModelResponse:
    return ModelResponse(
        parts=[TextPart("done")], usage=RequestUsage(input_tokens=20, output_tokens=5)
    )


async def child_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """The child (and W0's agent) answers at once."""
    return _answer()


class ParentModel:
    """The parent asks for ``fanout`` subagents, then answers once their results are back."""

    def __init__(self) -> None:
        self.fanout = 1
        self.__name__ = "parent_model"

    async def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if any(isinstance(part, ToolReturnPart) for part in messages[-1].parts):
            return _answer()
        return ModelResponse(
            parts=[
                ToolCallPart(
                    "subagent",
                    f'{{"label": "child-{i}", "task_prompt": "{CHILD_PROMPT}"}}',
                    tool_call_id=f"call_{i}",
                )
                for i in range(self.fanout)
            ],
            usage=RequestUsage(input_tokens=20, output_tokens=5),
        )


UNLIMITED = UsageLimits(request_limit=None)


def make(workload: str, n: int, telemetry: str) -> Run:
    """Set up ``workload`` and return the function that performs ``n`` of its units."""
    child = Agent(FunctionModel(child_model), name="child")
    if workload == "W0":

        async def single(n: int) -> None:
            for _ in range(n):
                result = await child.run("Answer.", usage_limits=UNLIMITED)
                _expect(result.output == "done" and result.usage.requests == 1, result)

        return single

    if workload == "W3":

        async def batch(n: int) -> None:
            limiter = anyio.CapacityLimiter(MAX_CONCURRENT)
            usage = RunUsage()
            outputs: list[str] = []

            async def run_one() -> None:
                async with limiter:
                    result = await child.run(CHILD_PROMPT, usage=usage, usage_limits=UNLIMITED)
                outputs.append(result.output)

            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(run_one)
            _expect(outputs.count("done") == n and usage.requests == n, usage)

        return batch

    model = ParentModel()
    parent = Agent(FunctionModel(model), name="parent")

    @parent.tool
    async def subagent(ctx: RunContext[None], label: str, task_prompt: str) -> str:
        """Delegate a self-contained task to a subagent."""
        result = await child.run(task_prompt, usage=ctx.usage, usage_limits=ctx.usage_limits)
        return result.output

    if workload == "W1":

        async def sequential(n: int) -> None:
            for _ in range(n):
                result = await parent.run(PARENT_PROMPT, usage_limits=UNLIMITED)
                _expect(result.output == "done" and result.usage.requests == 3, result)

        return sequential

    async def fan_out(n: int) -> None:
        model.fanout = n
        result = await parent.run(PARENT_PROMPT, usage_limits=UNLIMITED)
        _expect(result.output == "done" and result.usage.requests == n + 2, result.usage)

    return fan_out


def _expect(ok: bool, result: object) -> None:
    if not ok:
        raise SystemExit(f"workload did not do its work: {result!r:.2000}")


def describe(telemetry: str) -> Mapping[str, Any]:
    """Versions of what was measured."""
    return {"versions": {name: version(name) for name in ("pydantic-ai-slim", "pydantic")}}


if __name__ == "__main__":
    sys.exit(main("pydantic-ai", make, describe=describe))
