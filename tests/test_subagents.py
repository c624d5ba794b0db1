"""Subagents: depth, quota reservation, batches, fail_fast, deadlines, cancellation, results."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from _clock import on_virtual_time
from _trees import USAGE, TreeModel, spec_json, task

from xzatoma import (
    Agent,
    Completion,
    ConfigError,
    Message,
    Provider,
    ProviderError,
    QuotaLimits,
    Runtime,
    SubagentConfig,
    SubagentTask,
    SubagentTool,
    ToolSpec,
    Usage,
    tool,
)
from xzatoma._spawn import Spawner
from xzatoma.events import (
    Event,
    ModelCallEnded,
    ModelCallStarted,
    RunEnded,
    RunStarted,
    SubagentEnded,
    SubagentStarted,
)
from xzatoma.testing import EventCapture, ScriptedProvider, call, reply, tool_calls

pytestmark = pytest.mark.anyio


@tool
async def search(query: str) -> str:
    """Search for something."""
    return f"found {query}"


@tool
async def fetch(url: str) -> str:
    """Fetch a page."""
    return f"page {url}"


def runtime(provider: Provider, capture: EventCapture | None = None, **options: Any) -> Runtime:
    subagents = options.pop("subagents", SubagentConfig(summary_prompt=None))
    return Runtime(
        provider,
        subagents=subagents,
        telemetry=False,
        hooks=[capture] if capture else [],
        **options,
    )


def by_depth(capture: EventCapture, kind: type[Event]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for event in capture.of(kind):
        counts[event.depth] = counts.get(event.depth, 0) + 1
    return counts


# -- depth ----------------------------------------------------------------------------------


def recursive_model(parallel: bool) -> ScriptedProvider:
    """Every agent delegates once more (offered or not), then reports what it was told."""

    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if messages[-1].role == "user":
            if parallel:
                return tool_calls(call("parallel_subagent", tasks=[task({"id": "deeper"})]))
            return tool_calls(call("subagent", task({"id": "deeper"})))
        return reply(f"told: {messages[-1].content}")

    return ScriptedProvider(model)


@pytest.mark.parametrize("parallel", [False, True], ids=["subagent", "parallel"])
@pytest.mark.parametrize("max_depth", [1, 3, 10])
async def test_depth_rule(max_depth: int, parallel: bool) -> None:
    capture = EventCapture()
    provider = recursive_model(parallel)
    rt = runtime(
        provider, capture, subagents=SubagentConfig(max_depth=max_depth, summary_prompt=None)
    )
    result = await rt.agent().run("start")
    assert result.status == "complete"
    runs = by_depth(capture, RunStarted)
    assert runs == dict.fromkeys(range(max_depth + 1), 1)  # nothing ever ran past max_depth
    offered = [r.tool_names for r in provider.requests if r.last.role == "user"]
    assert all("subagent" in names for names in offered[:max_depth])
    assert offered[max_depth] == ()  # the agent at max_depth is not offered the tools
    refusal = (
        f"Maximum subagent recursion depth ({max_depth}) exceeded. Current depth: {max_depth}."
    )
    deepest_answer = next(r for r in provider.requests if r.last.role == "tool").last.content
    assert deepest_answer == f"Error: {refusal}"
    ends = [e for e in capture.events if isinstance(e, SubagentEnded)]
    refused = [e.depth for e in ends if e.error_type == "max_depth_reached"]
    assert refused == [max_depth + 1]


# -- quota reservation ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["subagent", "parallel"])
async def test_fifty_concurrent_spawns_against_one_free_slot_start_exactly_one(how: str) -> None:
    capture = EventCapture()
    tasks = [task({"id": f"t{i}"}) for i in range(50)]

    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        first = messages[1].content if messages[0].role == "system" else messages[0].content
        if first == "root" and messages[-1].role == "user":
            if how == "subagent":
                return tool_calls(*[call("subagent", t) for t in tasks])
            return tool_calls(call("parallel_subagent", tasks=tasks, max_concurrent=50))
        return reply("done")

    rt = runtime(ScriptedProvider(model), capture, quota=QuotaLimits(max_executions=1))
    result = await rt.agent().run("root")
    assert by_depth(capture, RunStarted) == {0: 1, 1: 1}
    assert rt.tracker.statistics().executions == 1
    refused = [c for c in result.children if c.error_type == "quota_exceeded"]
    assert len(refused) == 49
    assert refused[0].error == "Resource quota exceeded: execution limit reached (1/1)"
    assert len(capture.of(SubagentStarted)) == 50  # every attempt is an execution event


# -- tokens ---------------------------------------------------------------------------------


async def test_running_subagent_stops_before_its_next_call_when_tokens_run_out() -> None:
    capture = EventCapture()

    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if messages[0].content == "root":  # the root reports zero tokens, so none are estimated
            if messages[-1].role == "user":
                spawn = call("subagent", label="worker", task_prompt="work")
                return tool_calls(spawn, usage=Usage(1, 0, 0, 0))
            return reply(f"root saw: {messages[-1].content}", usage=Usage(1, 0, 0, 0))
        return tool_calls(
            call("search", query="x"), text="still working", usage=Usage(1, 40, 10, 50)
        )

    rt = runtime(ScriptedProvider(model), capture, quota=QuotaLimits(max_total_tokens=120))
    result = await rt.agent(tools=[search]).run("root")
    worker = result.children[0]
    assert (worker.status, worker.error_type) == ("failed", "quota_exceeded")
    assert worker.turns == 3  # 50 + 50 + 50 >= 120: the fourth call never happens
    assert worker.output == "still working"
    assert result.status == "complete"  # the root is never stopped by the quota
    assert "token limit reached (150/120 tokens)" in result.output


# -- refusals and failures reach the parent model as Error: ---------------------------------


class NoModelSwitch:
    """A provider without ``with_model``, so a model override cannot be applied."""

    name, model = "plain", "m"

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if messages[-1].role == "user":
            return FAILURE_CASES[self.case][0]
        return reply("final")

    def __init__(self, case: str) -> None:
        self.case = case


FAILURE_CASES: dict[str, tuple[Completion, str, dict[str, Any]]] = {
    "quota": (
        tool_calls(call("subagent", label="a", task_prompt="x")),
        "Error: Resource quota exceeded: execution limit reached (0/0)",
        {"quota": QuotaLimits(max_executions=0)},
    ),
    "blank label": (
        tool_calls(call("subagent", label="  ", task_prompt="x")),
        "Error: Invalid arguments for tool 'subagent': label: Value error, must not be blank",
        {},
    ),
    "not json": (
        tool_calls(call("subagent", "{oops")),
        "Error: Invalid arguments for tool 'subagent': arguments are not valid JSON",
        {},
    ),
    "max_turns out of range": (
        tool_calls(call("subagent", label="a", task_prompt="x", max_turns=51)),
        "Error: Invalid arguments for tool 'subagent': max_turns: Input should be less than",
        {},
    ),
    "unknown allowed tool": (
        tool_calls(call("subagent", label="a", task_prompt="x", allowed_tools=["nope"])),
        "Error: allowed_tools names 'nope', which this agent does not have (it has: search)",
        {},
    ),
    "subagent tool in allowed_tools": (
        tool_calls(call("subagent", label="a", task_prompt="x", allowed_tools=["subagent"])),
        "Error: allowed_tools may not name 'subagent'",
        {},
    ),
    "empty batch": (
        tool_calls(call("parallel_subagent", tasks=[])),
        "Error: Invalid arguments for tool 'parallel_subagent': tasks: List should have at least 1",
        {},
    ),
    "batch max_concurrent 0": (
        tool_calls(call("parallel_subagent", tasks=[task({})], max_concurrent=0)),
        "Error: Invalid arguments for tool 'parallel_subagent': max_concurrent: Input should be",
        {},
    ),
    "batch under quota": (
        tool_calls(call("parallel_subagent", tasks=[task({})])),
        "Error: Resource quota exceeded: execution limit reached (0/0)",
        {"quota": QuotaLimits(max_executions=0)},
    ),
}


@pytest.mark.parametrize("case", list(FAILURE_CASES))
async def test_every_refusal_reaches_the_parent_model_as_an_error(case: str) -> None:
    provider = NoModelSwitch(case)
    _, expected, options = FAILURE_CASES[case]
    result = await runtime(provider, **options).agent(tools=[search]).run("go")
    assert result.status == "complete"
    assert result.output == "final"
    tool_message = result.messages[2]
    assert tool_message.role == "tool"
    assert (tool_message.content or "").startswith(expected)


async def test_a_model_override_the_provider_cannot_take_is_refused_when_the_runtime_is_built() -> (
    None
):
    with pytest.raises(ConfigError, match="cannot switch provider 'plain' to model 'small'"):
        runtime(NoModelSwitch("x"), subagents=SubagentConfig(model="small"))


async def test_a_standalone_subagent_tool_that_cannot_switch_models_refuses_at_spawn() -> None:
    provider = NoModelSwitch("quota")  # its first reply spawns, its second answers
    tool = SubagentTool(SubagentConfig(model="small", summary_prompt=None))
    result = await Agent(provider, tools=[search, tool]).run("go")
    assert (result.messages[2].content or "").startswith(
        "Error: could not start the subagent: cannot switch provider 'plain' to model 'small'"
    )
    assert result.children[0].error_type == "initialization_failed"


@on_virtual_time
async def test_child_failures_reach_the_parent_model_as_errors() -> None:
    model = TreeModel()
    root = {
        "id": "root",
        "spawn": [{"id": "broken", "fault": "error"}, {"id": "slow", "fault": "hang"}],
        "parallel": [{"id": "p-ok"}, {"id": "p-broken", "fault": "error"}],
    }
    rt = runtime(model.provider(), subagents=SubagentConfig(timeout=5, summary_prompt=None))
    result = await rt.agent().run(spec_json(root))
    assert result.status == "complete"
    tool_messages = [m.content or "" for m in result.messages if m.role == "tool"]
    assert tool_messages[0].startswith(
        "Error: subagent 'broken' failed (execution_failed): provider 'scripted' failed: "
        "injected provider failure"
    )
    assert tool_messages[1].startswith("Error: subagent 'slow' failed (timeout): timeout reached")
    batch = json.loads(tool_messages[2])
    assert (batch["status"], batch["successful"], batch["failed"]) == ("partial", 1, 1)
    assert [t["error_type"] for t in batch["tasks"]] == [None, "execution_failed"]
    assert [c.label for c in result.children] == ["broken", "slow", "p-ok", "p-broken"]
    assert [c.duration for c in result.children] == [0.0, 5.0, 0.0, 0.0]


@on_virtual_time
async def test_a_timed_out_child_returns_its_partial_output() -> None:
    async def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if messages[0].content == "root":
            if messages[-1].role == "user":
                return tool_calls(call("subagent", label="w", task_prompt="work"))
            return reply("root done")
        if messages[-1].role == "user":
            return tool_calls(call("search", query="q"), text="half way", usage=USAGE)
        await anyio.sleep_forever()
        raise AssertionError

    rt = runtime(ScriptedProvider(model), subagents=SubagentConfig(timeout=5))
    result = await rt.agent(tools=[search]).run("root")
    child = result.children[0]
    assert (child.status, child.error_type, child.output) == ("failed", "timeout", "half way")
    assert child.duration == 5.0
    assert child.usage == USAGE
    assert "Partial output:\nhalf way" in (result.messages[2].content or "")


@on_virtual_time
async def test_quota_time_limit_bounds_a_child_and_is_reported_as_quota() -> None:
    model = TreeModel()
    root = {"id": "root", "spawn": [{"id": "slow", "fault": "hang"}]}
    rt = runtime(model.provider(), quota=QuotaLimits(max_total_time=5))
    result = await rt.agent().run(spec_json(root))
    assert result.status == "complete"  # the root is not bound by the quota's clock
    child = result.children[0]
    assert (child.error_type, child.duration) == ("quota_exceeded", 5.0)


def test_child_deadline_is_the_earliest_bound() -> None:
    from trio.testing import MockClock

    from xzatoma import Hooks, QuotaTracker, Run

    async def check() -> None:
        now = anyio.current_time()  # a MockClock that only moves when told: exact values
        parent = Run(
            label="r", hooks=Hooks(), quota=None, provider=ScriptedProvider(), deadline=now + 100
        )
        cases = [
            (None, None, (now + 100, "timeout")),  # the parent's remaining time
            (5.0, None, (now + 5, "timeout")),  # its own timeout
            (5.0, 2.0, (now + 2, "quota_exceeded")),  # the quota's remaining time
            (1.0, 2.0, (now + 1, "timeout")),
        ]
        for timeout, quota_time, expected in cases:
            tracker = QuotaTracker(QuotaLimits(max_total_time=quota_time)) if quota_time else None
            spawner = Spawner(SubagentConfig(timeout=timeout), tracker)
            child = spawner._child(parent, "c", 0, None)
            spawner._set_deadline(child)
            assert (child.deadline, child.deadline_error) == expected

    anyio.run(check, backend="trio", backend_options={"clock": MockClock()})


# -- fail_fast ------------------------------------------------------------------------------


async def test_fail_fast_cancels_slow_siblings_and_no_model_call_follows() -> None:
    capture = EventCapture()
    model = TreeModel()
    model.expected_hangs = 4
    gate_open = model.all_hanging

    async def gated(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        user = next(m for m in messages if m.role == "user")
        if json.loads(user.content or "{}").get("fault") == "late_error":
            await gate_open.wait()  # fail only once the four slow ones are inside their call
            raise ProviderError("fails at once")
        return await model(messages, tools)

    root = {
        "id": "root",
        "parallel": [{"id": "bad", "fault": "late_error"}]
        + [{"id": f"slow{i}", "fault": "hang"} for i in range(4)],
        "fail_fast": True,
    }
    rt = runtime(ScriptedProvider(gated, usage=USAGE), capture)
    result = await rt.agent().run(spec_json(root))
    assert result.status == "complete"
    statuses = {c.label: c.status for c in result.children}
    assert statuses == {
        "bad": "failed",
        "slow0": "cancelled",
        "slow1": "cancelled",
        "slow2": "cancelled",
        "slow3": "cancelled",
    }
    failure = next(
        i
        for i, e in enumerate(capture.events)
        if isinstance(e, ModelCallEnded) and e.error_type == "execution_failed"
    )
    later_calls = [
        e for e in capture.events[failure:] if isinstance(e, ModelCallStarted) and e.depth > 0
    ]
    assert later_calls == []
    header, _, body = (result.messages[2].content or "").partition("\n")
    assert header == "Error: parallel batch failed: none of the 5 tasks succeeded."
    batch = json.loads(body)
    assert (batch["status"], batch["failed"], batch["cancelled"]) == ("failed", 1, 4)


async def test_fail_fast_reports_pending_tasks_as_cancelled() -> None:
    model = TreeModel()
    root = {
        "id": "root",
        "parallel": [{"id": "bad", "fault": "error"}] + [{"id": f"t{i}"} for i in range(5)],
        "fail_fast": True,
    }
    rt = runtime(model.provider(), subagents=SubagentConfig(max_concurrent=1, summary_prompt=None))
    result = await rt.agent().run(spec_json(root))
    assert [c.status for c in result.children] == ["failed"] + ["cancelled"] * 5
    assert all(c.turns == 0 for c in result.children[1:])
    assert rt.tracker.statistics().executions == 1  # pending tasks never reserved a slot


# -- concurrency limit, order, batch from Python --------------------------------------------


async def test_max_concurrent_bounds_a_batch_and_results_keep_input_order() -> None:
    in_flight = 0
    peak = 0
    release = anyio.Event()
    entered = 0

    async def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        nonlocal in_flight, peak, entered
        in_flight += 1
        entered += 1
        peak = max(peak, in_flight)
        if entered == 3:
            release.set()
        await release.wait()
        in_flight -= 1
        return reply(f"answer to {messages[0].content}", usage=USAGE)

    rt = runtime(ScriptedProvider(model))
    batch = await rt.run_batch(
        [{"label": f"t{i}", "task_prompt": f"q{i}"} for i in range(10)], max_concurrent=3
    )
    assert peak == 3
    assert [r.output for r in batch.results] == [f"answer to q{i}" for i in range(10)]
    assert [r.depth for r in batch.results] == [1] * 10
    assert (batch.status, batch.successful, batch.failed, batch.cancelled) == ("complete", 10, 0, 0)
    assert batch.total_usage == Usage(10, 200, 50, 250)


async def test_run_batch_validates_its_input() -> None:
    rt = runtime(ScriptedProvider())
    with pytest.raises(ConfigError, match="at least one task"):
        await rt.run_batch([])
    with pytest.raises(ConfigError, match="task 1"):
        await rt.run_batch([{"label": "a", "task_prompt": "x"}, {"label": "b"}])
    with pytest.raises(ConfigError, match="max_concurrent"):
        await rt.run_batch([SubagentTask(label="a", task_prompt="x")], max_concurrent=0)


# -- children's tools, summary, turns, truncation, overrides --------------------------------


async def test_allowed_tools_are_a_subset_and_nested_tools_follow_depth() -> None:
    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if messages[0].content == "root" and messages[-1].role == "user":
            return tool_calls(
                call("subagent", label="a", task_prompt="child-a", allowed_tools=["fetch"]),
                call("subagent", label="b", task_prompt="child-b"),
            )
        return reply("ok")

    provider = ScriptedProvider(model)
    rt = runtime(provider, subagents=SubagentConfig(max_depth=1, summary_prompt=None))
    await rt.agent(tools=[search, fetch]).run("root")
    seen = {r.messages[0].content: r.tool_names for r in provider.requests}
    assert seen["root"] == ("search", "fetch", "subagent", "parallel_subagent")
    assert seen["child-a"] == ("fetch",)  # at max_depth: no subagent tools offered
    assert seen["child-b"] == ("search", "fetch")
    rt2 = runtime(provider, subagents=SubagentConfig(max_depth=2, summary_prompt=None))
    provider.requests.clear()
    await rt2.agent(tools=[search, fetch]).run("root")
    seen = {r.messages[0].content: r.tool_names for r in provider.requests}
    assert seen["child-a"] == ("fetch", "subagent", "parallel_subagent")


async def test_summary_turn_and_turn_budget() -> None:
    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        first = messages[0].content
        if first and first.startswith("root"):
            if messages[-1].role == "user":
                turns = int(first.split()[1])
                return tool_calls(call("subagent", label="w", task_prompt="task", max_turns=turns))
            return reply(messages[-1].content or "")
        if messages[-1].content == "task":
            return reply("long task answer")
        return reply(f"summary after: {messages[-2].content}")

    rt = runtime(ScriptedProvider(model), subagents=SubagentConfig())
    result = await rt.agent().run("root 2")
    child = result.children[0]
    assert (child.status, child.turns, child.output) == (
        "complete", 2, "summary after: long task answer",
    )  # fmt: skip
    assert child.messages[2] == Message.user("Summarize your findings concisely")
    short = await rt.agent().run("root 1")
    child = short.children[0]
    assert (child.status, child.turns, child.output) == ("incomplete", 1, "long task answer")
    assert short.output.startswith("[subagent 'w' ended incomplete: no turn left for the summary]")


async def test_output_is_cut_to_the_limit_on_a_utf8_boundary() -> None:
    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if messages[0].content == "root":
            if messages[-1].role == "user":
                return tool_calls(call("subagent", label="big", task_prompt="write"))
            return reply("ok")
        return reply("日本語" * 1000)

    config = SubagentConfig(output_max_size=1024, summary_prompt=None)
    result = await runtime(ScriptedProvider(model), subagents=config).agent().run("root")
    child = result.children[0]
    received = result.messages[2].content or ""
    assert child.truncated
    assert len(received.encode("utf-8")) <= 1024
    assert received == child.output
    assert received.startswith("日本語日")


async def test_provider_and_model_override_for_children() -> None:
    parent = ScriptedProvider(
        [tool_calls(call("subagent", label="a", task_prompt="x")), reply("parent done")]
    )
    child = ScriptedProvider(["child answer"], model="child-model")
    config = SubagentConfig(provider=child, summary_prompt=None)
    result = await runtime(parent, subagents=config).agent().run("go")
    assert result.children[0].output == "child answer"
    assert len(child.requests) == 1
    assert len(parent.requests) == 2
    small = ScriptedProvider(
        [tool_calls(call("subagent", label="a", task_prompt="x")), "child", "parent"]
    )
    capture = EventCapture()
    config = SubagentConfig(model="small", summary_prompt=None)
    await runtime(small, capture, subagents=config).agent().run("go")
    models = {e.depth: e.model for e in capture.of(RunStarted)}
    assert models == {0: "scripted", 1: "small"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_depth": 0}, "agent.subagent.max_depth must be greater than 0"),
        ({"max_depth": 11}, "agent.subagent.max_depth cannot exceed 10 (stack overflow risk)"),
        ({"default_max_turns": 0}, "agent.subagent.default_max_turns must be greater than 0"),
        ({"default_max_turns": 101}, "agent.subagent.default_max_turns cannot exceed 100"),
        ({"output_max_size": 1023}, "agent.subagent.output_max_size must be at least 1024 bytes"),
        ({"max_concurrent": 0}, "agent.subagent.max_concurrent must be greater than 0"),
    ],
)
def test_subagent_config_messages(options: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        SubagentConfig(**options)  # type: ignore[arg-type]
    assert str(info.value) == message


# -- cancellation ---------------------------------------------------------------------------


async def test_cancelling_the_root_with_twenty_descendants_in_a_model_call() -> None:
    capture = EventCapture()
    model = TreeModel()
    model.expected_hangs = 20
    root = {
        "id": "root",
        "parallel": [
            {
                "id": f"mid{i}",
                "parallel": [{"id": f"leaf{i}.{j}", "fault": "hang"} for j in range(4)],
            }
            for i in range(5)
        ],
    }
    rt = runtime(model.provider(), capture)
    before = asyncio.all_tasks()
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(rt.agent().run, spec_json(root))
            await model.all_hanging.wait()
            scope.cancel()
    assert scope.cancelled_caught
    assert asyncio.all_tasks() - before == set()  # nothing of the tree is still running
    for start, end in ((RunStarted, RunEnded), (SubagentStarted, SubagentEnded)):
        started = [e.id for e in capture.of(start)]
        ended = [e.id for e in capture.of(end)]
        assert sorted(started) == sorted(ended)
        assert len(set(ended)) == len(ended)
    ends = capture.of(SubagentEnded)
    assert len(ends) == 25
    assert {e.status for e in ends} == {"cancelled"}
    assert by_depth(capture, SubagentEnded) == {1: 5, 2: 20}
    assert rt.tracker.statistics().executions == 25


# -- regressions found in review ------------------------------------------------------------


async def test_a_cancelled_childs_output_is_cut_too() -> None:
    gate = anyio.Event()

    @tool
    async def wait() -> str:
        """Waits for the sibling to fail."""
        gate.set()
        await anyio.sleep_forever()
        return "never"

    async def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        first = messages[0].content
        if first == "root":
            if messages[-1].role == "user":
                tasks = [
                    {"label": "big", "task_prompt": "big"},
                    {"label": "bad", "task_prompt": "bad"},
                ]
                return tool_calls(call("parallel_subagent", tasks=tasks, fail_fast=True))
            return reply("root done")
        if first == "big":
            return tool_calls(call("wait"), text="x" * 5000)
        await gate.wait()
        raise ProviderError("fails")

    config = SubagentConfig(output_max_size=1024, summary_prompt=None)
    result = (
        await runtime(ScriptedProvider(model), subagents=config).agent(tools=[wait]).run("root")
    )
    big = result.children[0]
    assert (big.status, big.truncated) == ("cancelled", True)
    assert len(big.output.encode()) <= 1024
    body = (result.messages[2].content or "").partition("\n")[2]
    assert len(json.loads(body)["tasks"][0]["output"].encode()) <= 1024


@on_virtual_time
async def test_run_batch_starts_nothing_after_its_deadline() -> None:
    async def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        await anyio.sleep_forever()
        raise AssertionError

    rt = runtime(ScriptedProvider(model))
    tasks = [{"label": f"t{i}", "task_prompt": "x"} for i in range(6)]
    batch = await rt.run_batch(tasks, max_concurrent=1, timeout=5)
    first, *rest = batch.results
    assert (first.status, first.error_type, first.duration) == ("failed", "timeout", 5.0)
    assert {(r.status, r.error) for r in rest} == {("cancelled", "cancelled before it started")}
    assert rt.tracker.statistics().executions == 1


@on_virtual_time
async def test_quota_time_limit_message_and_check_order_in_a_batch() -> None:
    rt = Runtime(ScriptedProvider(["a"]), quota=QuotaLimits(max_executions=0), telemetry=False)
    batch = await rt.run_batch([{"label": "t", "task_prompt": "x", "allowed_tools": ["nope"]}])
    # quota is checked before the arguments (allowed_tools), as in a single spawn
    assert batch.results[0].error_type == "quota_exceeded"
    model = TreeModel()
    root = {"id": "root", "spawn": [{"id": "slow", "fault": "hang"}]}
    rt = runtime(model.provider(), quota=QuotaLimits(max_total_time=5))
    result = await rt.agent().run(spec_json(root))
    assert result.children[0].error == "Resource quota exceeded: time limit reached (5.0s/5.0s)"


@on_virtual_time
async def test_a_child_cut_by_its_parents_deadline_is_a_timeout() -> None:
    model = TreeModel()
    root = {"id": "root", "spawn": [{"id": "slow", "fault": "hang"}]}
    result = await runtime(model.provider()).agent(timeout=5).run(spec_json(root))
    assert (result.status, result.error_type, result.duration) == ("failed", "timeout", 5.0)
    child = result.children[0]
    assert (child.status, child.error_type, child.duration) == ("failed", "timeout", 5.0)
