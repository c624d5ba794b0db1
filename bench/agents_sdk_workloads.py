"""The benchmark workloads on the OpenAI Agents SDK (run in ``bench/.venv-peers``).

``bench/.venv-peers/bin/python bench/agents_sdk_workloads.py --workload W2 --n 1000`` prints
one JSON line (see ``_harness.py``). The model is a subclass of the SDK's
``agents.models.interface.Model`` whose ``get_response`` builds a fresh ``ModelResponse`` on
every call (``ResponseFunctionToolCall`` / ``ResponseOutputMessage`` items and
``Usage(input_tokens=20, output_tokens=5)``), so every call goes through ``Runner.run``'s real
loop. Tracing is off (``set_tracing_disabled(True)``).

- W0: ``Runner.run(agent)``; one model call that answers with text; N runs in sequence.
- W1: the parent's first reply calls the child, exposed with ``child.as_tool("subagent")``;
  the child answers in one call; the parent answers. N parents in sequence.
- W2: the parent's first reply calls ``subagent`` N times at once (the SDK runs function
  tools concurrently); cost per child.
- W3: N ``Runner.run(child)`` in an anyio task group behind a ``CapacityLimiter(5)``: the
  semantics of xzatoma's ``Runtime.run_batch`` with its default ``max_concurrent``; cost per
  child.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping
from importlib.metadata import version
from typing import Any

import anyio
from _harness import Run, main
from agents import (
    Agent,
    AgentOutputSchemaBase,
    Handoff,
    ModelSettings,
    Runner,
    Tool,
    Usage,
    set_tracing_disabled,
)
from agents.items import ModelResponse, TResponseStreamEvent
from agents.models.interface import Model, ModelTracing
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)
from openai.types.responses.response_prompt_param import ResponsePromptParam

PARENT_PROMPT = "Delegate the work."
CHILD_PROMPT = "Do one piece of the work."
MAX_CONCURRENT = 5
"""W3's limit: the default ``max_concurrent`` of xzatoma's ``run_batch``."""


def _usage() -> Usage:
    return Usage(requests=1, input_tokens=20, output_tokens=5, total_tokens=25)


def _answer() -> ModelResponse:
    text = ResponseOutputText(annotations=[], text="done", type="output_text")
    message = ResponseOutputMessage(
        id="msg_1", content=[text], role="assistant", status="completed", type="message"
    )
    return ModelResponse(output=[message], usage=_usage(), response_id=None)


class BenchModel(Model):
    """An instant model: with ``fanout`` set it delegates first, otherwise it answers."""

    def __init__(self, fanout: int = 0) -> None:
        self.fanout = fanout

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[Any],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> ModelResponse:
        answered = isinstance(input, list) and input[-1].get("type") == "function_call_output"
        if not self.fanout or answered:
            return _answer()
        calls = [
            ResponseFunctionToolCall(
                arguments=f'{{"input": "{CHILD_PROMPT}"}}',
                call_id=f"call_{i}",
                name="subagent",
                type="function_call",
            )
            for i in range(self.fanout)
        ]
        return ModelResponse(output=calls, usage=_usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError("the benchmark does not stream")


def make(workload: str, n: int, telemetry: str) -> Run:
    """Set up ``workload`` and return the function that performs ``n`` of its units."""
    set_tracing_disabled(True)
    child = Agent(name="child", model=BenchModel())
    if workload == "W0":

        async def single(n: int) -> None:
            for _ in range(n):
                result = await Runner.run(child, "Answer.")
                usage = result.context_wrapper.usage
                _expect(result.final_output == "done" and usage.requests == 1, result)

        return single

    if workload == "W3":

        async def batch(n: int) -> None:
            limiter = anyio.CapacityLimiter(MAX_CONCURRENT)
            requests: list[int] = []

            async def run_one() -> None:
                async with limiter:
                    result = await Runner.run(child, CHILD_PROMPT)
                if result.final_output == "done":
                    requests.append(result.context_wrapper.usage.requests)

            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(run_one)
            _expect(sum(requests) == n, requests[:10])

        return batch

    model = BenchModel(fanout=1)
    tool = child.as_tool("subagent", "Delegate a self-contained task to a subagent.")
    parent = Agent(name="parent", model=model, tools=[tool])

    async def fan_out(n: int) -> None:
        model.fanout = n
        result = await Runner.run(parent, PARENT_PROMPT)
        usage = result.context_wrapper.usage
        _expect(result.final_output == "done" and usage.requests == n + 2, usage.requests)

    if workload == "W2":
        return fan_out

    async def sequential(n: int) -> None:
        for _ in range(n):
            await fan_out(1)

    return sequential


def _expect(ok: bool, result: object) -> None:
    if not ok:
        raise SystemExit(f"workload did not do its work: {result!r:.2000}")


def describe(telemetry: str) -> Mapping[str, Any]:
    """Versions of what was measured."""
    return {"versions": {name: version(name) for name in ("openai-agents", "openai", "pydantic")}}


if __name__ == "__main__":
    sys.exit(main("openai-agents", make, describe=describe))
