"""A scripted model that acts out a tree spec, so tests can generate random agent trees.

Each agent's task prompt is a JSON spec::

    {"id": "n3", "spawn": [spec, ...], "parallel": [spec, ...], "fault": null | "error" |
     "bad_args" | "hang" | "unknown_tool", "fail_fast": false}

On its first turn the agent asks for one ``subagent`` call per ``spawn`` entry and one
``parallel_subagent`` call for the ``parallel`` list (all in one reply); once the tool results
are in, it answers. A summary turn is answered with a short text. ``fault`` replaces the
first turn's behaviour: ``error`` raises ProviderError, ``hang`` waits forever (until
cancelled or timed out), ``bad_args`` sends invalid JSON arguments, ``unknown_tool`` calls a
tool that does not exist. Every reply reports ``USAGE``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import anyio
from hypothesis import strategies as st

from xzatoma import Completion, Message, ToolSpec, Usage
from xzatoma.errors import ProviderError
from xzatoma.events import Event, ModelCallStarted
from xzatoma.testing import ScriptedProvider, call, reply, tool_calls

USAGE = Usage(1, 20, 5, 25)


def spec_json(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True)


def task(spec: dict[str, Any]) -> dict[str, Any]:
    return {"label": spec.get("id", "node"), "task_prompt": spec_json(spec)}


class TreeModel:
    """The model function; counts calls and records whether any call came after ``stop``."""

    def __init__(self) -> None:
        self.calls = 0
        self.returned = 0
        self.in_flight = 0
        self.entered = anyio.Event()
        self.hang_started = 0
        self.all_hanging = anyio.Event()
        self.expected_hangs: int | None = None

    def usage(self) -> Usage:
        """What the provider reported in all: one ``USAGE`` per reply that came back."""
        n = self.returned
        return Usage(
            n, USAGE.prompt_tokens * n, USAGE.completion_tokens * n, USAGE.total_tokens * n
        )

    def provider(self) -> ScriptedProvider:
        return ScriptedProvider(self, usage=USAGE)

    async def __call__(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        self.calls += 1
        completion = await self._answer(messages)
        self.returned += 1
        return completion

    async def _answer(self, messages: Sequence[Message]) -> Completion:
        user = next(m for m in messages if m.role == "user")
        spec: dict[str, Any] = json.loads(user.content or "{}")
        last = messages[-1]
        first_turn = last is user
        if last.role == "user" and not first_turn:
            return reply(f"summary of {spec.get('id')}")
        if first_turn:
            fault = spec.get("fault")
            if fault == "error":
                raise ProviderError("injected provider failure")
            if fault == "hang":
                self.hang_started += 1
                if self.expected_hangs is not None and self.hang_started >= self.expected_hangs:
                    self.all_hanging.set()
                await anyio.sleep_forever()
            if fault == "bad_args":
                return tool_calls(call("subagent", "{not json"))
            if fault == "unknown_tool":
                return tool_calls(call("no_such_tool", {}))
            calls = [call("subagent", task(child)) for child in spec.get("spawn", [])]
            if spec.get("parallel"):
                calls.append(
                    call(
                        "parallel_subagent",
                        tasks=[task(c) for c in spec["parallel"]],
                        fail_fast=spec.get("fail_fast", False),
                    )
                )
            if calls:
                return tool_calls(*calls)
        return reply(f"answer of {spec.get('id')}")


class CancelAfter:
    """A hook that cancels ``scope`` when the ``at``-th model call starts (``None``: never).

    Enter the scope as ``with anyio.CancelScope() as hook.scope:`` around the run.
    """

    def __init__(self, at: int | None) -> None:
        self.at = at
        self.calls = 0
        self.scope: anyio.CancelScope | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, ModelCallStarted):
            self.calls += 1
            if self.calls == self.at and self.scope is not None:
                self.scope.cancel()


FAULTS = st.sampled_from([None, None, None, "error", "bad_args", "hang", "unknown_tool"])


def trees(faults: bool = True, max_leaves: int = 14) -> st.SearchStrategy[dict[str, Any]]:
    """Random tree specs; the root itself never carries a fault."""
    fault = FAULTS if faults else st.just(None)
    leaf = st.fixed_dictionaries({"fault": fault})
    tree = st.recursive(
        leaf,
        lambda kids: st.fixed_dictionaries(
            {
                "spawn": st.lists(kids, max_size=3),
                "parallel": st.lists(kids, max_size=4),
                "fail_fast": st.booleans(),
                "fault": fault,
            }
        ),
        max_leaves=max_leaves,
    )
    return tree.map(_root).map(_number)


def _root(spec: dict[str, Any]) -> dict[str, Any]:
    return {**spec, "fault": None}


def _number(spec: dict[str, Any]) -> dict[str, Any]:
    counter = iter(range(10**6))

    def walk(node: dict[str, Any]) -> dict[str, Any]:
        node = {k: v for k, v in node.items() if v not in (None, [], False)}
        node["id"] = f"n{next(counter)}"
        for key in ("spawn", "parallel"):
            if key in node:
                node[key] = [walk(child) for child in node[key]]
        return node

    return walk(spec)
