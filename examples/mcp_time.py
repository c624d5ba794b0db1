"""A tool from an MCP server, used by a subagent: mcp-server-time's ``get_current_time``.

The root delegates the question to a ``clock`` subagent whose ``allowed_tools`` is
``["get_current_time"]``: the one tool it may call, from mcp-server-time (a real MCP server,
started once over stdio and shared by the whole tree). Needs the ``mcp`` extra and
mcp-server-time (``pip install '.[mcp]' mcp-server-time``). Offline by default; give
``--base-url URL --model NAME`` (or set XZATOMA_BASE_URL, XZATOMA_MODEL and
XZATOMA_API_KEY_ENV) to use a real endpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import anyio

from xzatoma import (
    Completion,
    Message,
    OpenAIProvider,
    Provider,
    RunResult,
    Runtime,
    SubagentConfig,
    ToolSpec,
    Usage,
)
from xzatoma.mcp import StdioServer, open_servers
from xzatoma.testing import ScriptedProvider, call, reply, tool_calls

SYSTEM = (
    "You answer questions about time. Delegate: call the subagent tool with "
    'allowed_tools ["get_current_time"] and a task_prompt that names the IANA timezone.'
)
QUESTION = "What time is it in Tokyo right now?"
TASK = "Find the current time in the IANA timezone Asia/Tokyo with get_current_time."


def scripted_model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
    """Offline: the root delegates, the clock calls the MCP tool, each answers with it."""
    first, last = messages[0].content, messages[-1]
    if first == SYSTEM:  # the root
        if last.role == "user":
            spawn = call("subagent", label="clock", task_prompt=TASK,
                         allowed_tools=["get_current_time"])  # fmt: skip
            return tool_calls(spawn)
        return reply(f"In Tokyo it is {last.content}.")
    if last.role == "user":  # the clock's first turn: it has the MCP tool, and only that
        assert "get_current_time" in {t.name for t in tools}
        return tool_calls(call("get_current_time", timezone="Asia/Tokyo"))
    now = json.loads(last.content or "{}")
    return reply(f"{now.get('datetime', 'unknown')} ({now.get('day_of_week', '?')})")


def endpoint(argv: Sequence[str]) -> OpenAIProvider | None:
    """The real endpoint of --base-url/--model (or XZATOMA_BASE_URL...), or None offline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=os.environ.get("XZATOMA_BASE_URL"))
    parser.add_argument("--model", default=os.environ.get("XZATOMA_MODEL", "llama3.2"))
    parser.add_argument("--api-key-env", default=os.environ.get("XZATOMA_API_KEY_ENV"))
    args = parser.parse_args(argv)
    if not args.base_url:
        return None
    api_key = os.environ[args.api_key_env] if args.api_key_env else None
    return OpenAIProvider(args.base_url, args.model, api_key=api_key)


def show(result: RunResult, indent: str = "") -> None:
    """The result tree: label, depth, status, turns, and the tools each run called."""
    called = [c.name for m in result.messages for c in m.tool_calls]
    print(
        f"{indent}{result.label} (depth {result.depth}): {result.status}, "
        f"{result.turns} turns, called {called or 'nothing'}"
    )
    for child in result.children:
        show(child, indent + "    ")


async def main(argv: Sequence[str]) -> None:
    real = endpoint(argv)
    provider: Provider = real or ScriptedProvider(scripted_model, usage=Usage(1, 40, 10, 50))
    # `python -m mcp_server_time` is its console script `mcp-server-time`, wherever it lives.
    clock = StdioServer(
        "time", sys.executable, ["-m", "mcp_server_time", "--local-timezone", "UTC"]
    )
    try:
        async with open_servers(clock) as tools:
            print(f"MCP tools: {', '.join(t.name for t in tools)}")
            runtime = Runtime(provider, tools=tools, subagents=SubagentConfig(summary_prompt=None))
            result = await runtime.agent(system_prompt=SYSTEM, name="root").run(QUESTION)
    finally:
        if real is not None:
            await real.aclose()
    show(result)
    for child in result.children:
        for message in child.messages:
            if message.role == "tool":
                print(f"tool result: {' '.join((message.content or '').split())}")
    print(f"answer: {result.output}")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
