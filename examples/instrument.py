"""Your own subscriber: an ``Instrument`` that sees every run live, and spans that nest.

``SpendLog`` overrides three of the ``Instrument`` methods (the others cost nothing) and is
handed the live ``Run`` of the root and of every subagent: it prints each subagent's end and
keeps the tokens per depth. The tool opens a span of its own; because xzatoma makes its
``invoke_agent``, ``execute_tool`` and ``chat`` spans current while their work runs, the
tool's span nests under ``execute_tool lookup`` in the span tree printed at the end.

Runs offline with a scripted model; set XZATOMA_BASE_URL (and XZATOMA_MODEL,
XZATOMA_API_KEY_ENV) to use a real OpenAI-compatible endpoint, as in quickstart.py.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence

import anyio
from opentelemetry.sdk.trace import ReadableSpan

from xzatoma import (
    Completion,
    Instrument,
    Message,
    ModelCall,
    OpenAIProvider,
    Run,
    Runtime,
    SubagentConfig,
    ToolSpec,
    Usage,
    tool,
)
from xzatoma.telemetry import TelemetrySubscriber
from xzatoma.testing import ScriptedProvider, call, capture_telemetry, reply, tool_calls


class SpendLog(Instrument):
    """Tokens per depth, and one line per subagent that ended."""

    def __init__(self) -> None:
        self.tokens: Counter[int] = Counter()

    def model_call_ended(self, run: Run, call: ModelCall) -> None:
        self.tokens[run.depth] += call.usage.total_tokens

    def subagent_ended(self, run: Run) -> None:
        result = run.result()
        print(f"ended: {run.label} (depth {run.depth}) {result.status}, {result.turns} turns")


def scripted_model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
    """The root delegates; the subagent looks something up, then everyone answers."""
    task = next(m.content for m in messages if m.role == "user")
    if messages[-1].role == "user" and task == "Find the capital of France.":
        return tool_calls(call("subagent", label="geographer", task_prompt="Look it up."))
    if messages[-1].role == "user":
        return tool_calls(call("lookup", query="capital of France"))
    if task == "Find the capital of France.":
        return reply(f"The geographer says: {messages[-1].content}")
    return reply("Paris, by the atlas.")


def endpoint() -> OpenAIProvider | None:
    base_url = os.environ.get("XZATOMA_BASE_URL")
    if not base_url:
        return None
    key_env = os.environ.get("XZATOMA_API_KEY_ENV")
    api_key = os.environ[key_env] if key_env else None
    return OpenAIProvider(base_url, os.environ.get("XZATOMA_MODEL", "llama3.2"), api_key=api_key)


def print_tree(spans: Sequence[ReadableSpan]) -> None:
    """The spans as a tree, parents first."""
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent, []).append(span)

    def show(parent: int | None, indent: str) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s.start_time or 0):
            print(f"{indent}{span.name}")
            if span.context is not None:
                show(span.context.span_id, indent + "  ")

    show(None, "")


async def main() -> None:
    real = endpoint()
    with capture_telemetry() as captured:  # an in-memory SDK: metrics and spans
        tracer = captured.tracer_provider.get_tracer("example")

        @tool
        async def lookup(query: str) -> str:
            """Look something up."""
            with tracer.start_as_current_span("lookup in the atlas"):
                return "found it"

        spend = SpendLog()
        runtime = Runtime(
            real or ScriptedProvider(scripted_model, usage=Usage(1, 40, 10, 50)),
            subagents=SubagentConfig(summary_prompt=None),
            telemetry=TelemetrySubscriber(),
            hooks=[spend],
        )
        try:
            result = await runtime.agent(tools=[lookup]).run("Find the capital of France.")
        finally:
            if real is not None:
                await real.aclose()
        print(f"answer: {result.output}")
        print(f"tokens by depth: {dict(sorted(spend.tokens.items()))}")
        print("spans:")
        print_tree(captured.spans)


if __name__ == "__main__":
    anyio.run(main)
