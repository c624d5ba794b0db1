"""Security properties: a subagent never gains a tool its parent lacks.

(The API-key canary, metric cardinality and metrics-server hardening tests live beside the
pieces they check: test_secrets.py and test_metrics_server_hardening.py.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from xzatoma import Completion, Message, Runtime, SubagentConfig, Tool, ToolSpec, tool
from xzatoma.events import Event, RunStarted, ToolCallStarted
from xzatoma.testing import ScriptedProvider, call, reply, tool_calls


def make_tool(name: str) -> Tool[Any]:
    async def impl() -> str:
        return name

    impl.__doc__ = f"The {name} tool."
    return tool(name=name)(impl)


ALL_TOOLS = {name: make_tool(name) for name in ("read", "write", "delete", "shell", "search")}
NAMES = [*ALL_TOOLS, "subagent", "parallel_subagent", "missing"]


# A plan says, per depth, which tools the agent asks its child for and which it tries to call.
plans = st.lists(
    st.tuples(
        st.one_of(st.none(), st.lists(st.sampled_from(NAMES), max_size=4)),
        st.lists(st.sampled_from(NAMES), max_size=3),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(
    root_tools=st.sets(st.sampled_from(list(ALL_TOOLS))), plan=plans, max_depth=st.integers(1, 4)
)
def test_a_child_never_gains_a_tool_its_parent_lacks(
    root_tools: set[str], plan: list[tuple[list[str] | None, list[str]]], max_depth: int
) -> None:
    offered: dict[int, set[str]] = {}
    called_ok: dict[int, set[str]] = {}
    runs: dict[int, int] = {}  # run id -> depth

    def watch(event: Event) -> None:
        if isinstance(event, RunStarted):
            runs[event.id] = event.depth
        elif isinstance(event, ToolCallStarted):
            called_ok.setdefault(event.depth, set())

    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        level = int(json.loads(messages[0].content or "{}")["level"])
        offered.setdefault(level, set()).update(t.name for t in tools)
        if messages[-1].role != "user" or level >= len(plan):
            if messages[-1].role == "tool":
                for m in messages:
                    if m.role == "tool" and not (m.content or "").startswith("Error:"):
                        called_ok.setdefault(level, set()).add(m.name or "")
            return reply("done")
        allowed, attempts = plan[level]
        spawn: dict[str, Any] = {
            "label": f"l{level}",
            "task_prompt": json.dumps({"level": level + 1}),
        }
        if allowed is not None:
            spawn["allowed_tools"] = allowed
        calls = [call("subagent", spawn)] + [call(name) for name in attempts]
        return tool_calls(*calls)

    runtime = Runtime(
        ScriptedProvider(model),
        subagents=SubagentConfig(max_depth=max_depth, summary_prompt=None),
        telemetry=False,
        hooks=[watch],
    )
    agent = runtime.agent(tools=[ALL_TOOLS[n] for n in sorted(root_tools)])
    anyio.run(agent.run, json.dumps({"level": 0}))

    subagent_tools = {"subagent", "parallel_subagent"}
    previous = root_tools
    for level in sorted(offered):
        plain = offered[level] - subagent_tools
        assert plain <= previous, f"depth {level} was offered {plain - previous}"
        assert called_ok.get(level, set()) - subagent_tools <= plain
        if level >= max_depth:
            assert not offered[level] & subagent_tools
        previous = plain
