"""Custom tools: a ``Tool`` subclass with a pydantic parameters model, and ``@tool`` with
``ToolContext``; the JSON schema the model sees comes from the parameters.

A subagent gets only the tools its task names in ``allowed_tools`` (it can never gain a tool
its parent lacks). A call with bad arguments comes back to the model as an ``Error:`` message
it can correct; the run goes on. Offline by default; set XZATOMA_BASE_URL (and
XZATOMA_MODEL, XZATOMA_API_KEY_ENV) to use a real endpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import anyio
import pydantic

from xzatoma import (
    Completion,
    Message,
    OpenAIProvider,
    Runtime,
    Tool,
    ToolContext,
    ToolResult,
    ToolSpec,
    Usage,
    tool,
)
from xzatoma.testing import ScriptedProvider, call, reply, tool_calls

ORDERS = {"A-1001": "shipped on 2024-05-02", "A-1002": "waiting for stock"}


class OrderArgs(pydantic.BaseModel):
    """The arguments of ``order_status``; field descriptions reach the model."""

    order_id: str = pydantic.Field(pattern=r"^A-\d{4}$", description="An order id like A-1001.")


class OrderStatus(Tool[OrderArgs]):
    """A tool as a class: name, description, parameters model and ``run``."""

    name = "order_status"
    description = "Look up the status of one order."
    parameters = OrderArgs

    async def run(self, args: OrderArgs, ctx: ToolContext) -> ToolResult | str:
        status = ORDERS.get(args.order_id)
        if status is None:
            return ToolResult.error(f"no order {args.order_id}")
        return f"{args.order_id}: {status}"


@tool
async def whoami(ctx: ToolContext) -> str:
    """Say which agent is calling and at what depth (the context is hidden from the model)."""
    return f"{ctx.label} at depth {ctx.depth}"


def scripted_model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
    """Offline: a bad call first (to show the error), then good ones, then a subagent."""
    first, last = messages[0].content or "", messages[-1]
    if first.startswith("Check order"):
        if last.role == "user" and len(messages) == 1:
            return tool_calls(call("order_status", order_id="A-1002"), call("whoami"))
        if last.role == "user":
            return reply("A-1002 is waiting for stock.")
        return reply(f"Checked: {last.content}")
    turn = sum(1 for m in messages if m.role == "assistant")
    if turn == 0:
        return tool_calls(call("order_status", order_id="1001"))  # not a valid id
    if turn == 1:
        return tool_calls(call("order_status", order_id="A-1001"))
    if turn == 2:
        task = {"label": "order-checker", "task_prompt": "Check order A-1002.",
                "allowed_tools": ["order_status", "whoami"]}  # fmt: skip
        return tool_calls(call("subagent", task))
    return reply(f"A-1001 has shipped. Subagent: {last.content}")


def endpoint() -> OpenAIProvider | None:
    """The real endpoint named by XZATOMA_BASE_URL, or None to run offline."""
    base_url = os.environ.get("XZATOMA_BASE_URL")
    if not base_url:
        return None
    key_env = os.environ.get("XZATOMA_API_KEY_ENV")
    api_key = os.environ[key_env] if key_env else None
    return OpenAIProvider(base_url, os.environ.get("XZATOMA_MODEL", "llama3.2"), api_key=api_key)


async def main() -> None:
    order_status = OrderStatus()
    print("What the model sees of order_status:")
    print(json.dumps(order_status.spec.to_openai(), indent=2))
    real = endpoint()
    runtime = Runtime(real or ScriptedProvider(scripted_model, usage=Usage(1, 60, 15, 75)))
    agent = runtime.agent(tools=[order_status, whoami], system_prompt="You answer about orders.")
    try:
        result = await agent.run("Where are orders A-1001 and A-1002?")
    finally:
        if real is not None:
            await real.aclose()
    for message in result.messages:
        if message.role == "tool":
            print(f"tool {message.name} -> {message.content}")
    print(f"status: {result.status}")
    print(f"answer: {result.output}")


if __name__ == "__main__":
    anyio.run(main)
