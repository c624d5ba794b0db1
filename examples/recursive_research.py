"""Recursive delegation: the root hands research to a subagent, which delegates again.

The root runs at depth 0, the ``researcher`` at depth 1 and its ``specialist`` at depth 2.
With ``max_depth=2`` the specialist is not offered the subagent tools at all, so the tree
cannot grow deeper. Each subagent answers its task and then a summary prompt; the summary is
what its parent receives. Offline by default; set XZATOMA_BASE_URL (and XZATOMA_MODEL,
XZATOMA_API_KEY_ENV) to use a real endpoint.
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
    RunResult,
    Runtime,
    SubagentConfig,
    ToolSpec,
    Usage,
)
from xzatoma.testing import ScriptedProvider, call, reply, tool_calls

SYSTEM = "You answer questions; delegate research to a subagent with the subagent tool."
QUESTION = "Why do B-trees suit databases better than binary search trees?"
RESEARCH = "Research why B-trees suit disk-based databases; ask a specialist about page sizes."
SPECIALIST = "Explain how disk page size relates to B-tree node size."


def scripted_model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
    """Offline: who is asking is the first message; how far along, the last one."""
    first, last = messages[0].content, messages[-1]
    offered = {t.name for t in tools}
    if last.role == "user" and last.content == "Summarize your findings concisely":
        return reply("Summary: one B-tree node per disk page, so few reads per lookup.")
    if first == SYSTEM:
        if last.role == "user":
            return tool_calls(call("subagent", label="researcher", task_prompt=RESEARCH))
        return reply(f"B-trees keep the tree shallow and read whole pages. ({last.content})")
    if first == RESEARCH:
        if last.role == "user":
            return tool_calls(call("subagent", label="specialist", task_prompt=SPECIALIST))
        return reply(f"A B-tree node fills a page; the specialist says: {last.content}")
    # The specialist runs at max_depth: it is not offered the subagent tools.
    assert "subagent" not in offered
    return reply("A node is sized to one page (4-16 KiB), holding hundreds of keys.")


def endpoint() -> OpenAIProvider | None:
    """The real endpoint named by XZATOMA_BASE_URL, or None to run offline."""
    base_url = os.environ.get("XZATOMA_BASE_URL")
    if not base_url:
        return None
    key_env = os.environ.get("XZATOMA_API_KEY_ENV")
    api_key = os.environ[key_env] if key_env else None
    return OpenAIProvider(base_url, os.environ.get("XZATOMA_MODEL", "llama3.2"), api_key=api_key)


def show(result: RunResult, indent: str = "") -> None:
    """Print the result tree: label, depth, status, turns and tokens of every run."""
    print(
        f"{indent}{result.label} (depth {result.depth}): {result.status}, "
        f"{result.turns} turns, {result.usage.total_tokens} tokens"
    )
    for child in result.children:
        show(child, indent + "    ")


async def main() -> None:
    real = endpoint()
    runtime = Runtime(
        real or ScriptedProvider(scripted_model, usage=Usage(1, 60, 15, 75)),
        subagents=SubagentConfig(max_depth=2, default_max_turns=6),
        quota=QuotaLimits(max_executions=5),
    )
    agent = runtime.agent(system_prompt=SYSTEM, name="root")
    try:
        result = await agent.run(QUESTION)
    finally:
        if real is not None:
            await real.aclose()
    show(result)
    print(f"answer: {result.output}")
    print(f"total tokens, whole tree: {result.total_usage.total_tokens}")


if __name__ == "__main__":
    anyio.run(main)
