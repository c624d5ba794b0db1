"""Quickstart: one agent, one tool.

Runs offline with a scripted model. To use a real OpenAI-compatible endpoint instead:

    XZATOMA_BASE_URL=http://127.0.0.1:11434/v1 XZATOMA_MODEL=llama3.2 python examples/quickstart.py

For an endpoint that needs a key, also set XZATOMA_API_KEY_ENV to the *name* of the variable
that holds it (for example XZATOMA_API_KEY_ENV=OPENAI_API_KEY).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import anyio

from xzatoma import Agent, Completion, Message, OpenAIProvider, ToolSpec, Usage, tool
from xzatoma.testing import ScriptedProvider, call, reply, tool_calls

SENTENCE = "the quick brown fox jumps over the lazy dog"


@tool
async def word_count(text: str) -> str:
    """Count the words of a text."""
    return str(len(text.split()))


def scripted_model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
    """The offline stand-in for a model: call the tool once, then answer with its result."""
    last = messages[-1]
    if last.role == "user":
        return tool_calls(call("word_count", text=SENTENCE))
    return reply(f"The sentence has {last.content} words.")


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
    agent = Agent(
        real or ScriptedProvider(scripted_model, usage=Usage(1, 60, 15, 75)),
        tools=[word_count],
        system_prompt="Answer with the help of your tools.",
    )
    try:
        result = await agent.run(f"How many words are in '{SENTENCE}'?")
    finally:
        if real is not None:
            await real.aclose()
    print(f"status: {result.status}")
    print(f"answer: {result.output}")
    print(f"turns: {result.turns}, tokens: {result.usage.total_tokens}")


if __name__ == "__main__":
    anyio.run(main)
