"""Hardening at the boundary, the core's items (issue 11: 2, 10, 14, 15).

Usage from any provider is untrusted (item 2); what the parent model reads is bounded whole
by ``output_max_size`` (item 10); a ``CancelledError`` a tool raises on its own is a tool
failure while a real cancellation still propagates (item 14); batch tasks that never
started are counted like refused spawns (item 15).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import anyio
import pytest
from _clock import on_virtual_time, virtual_time
from test_properties import assert_every_start_has_exactly_one_end

from xzatoma import (
    Agent,
    Completion,
    ConfigError,
    Message,
    ProviderError,
    QuotaLimits,
    QuotaTracker,
    RunResult,
    Runtime,
    SubagentConfig,
    Tool,
    ToolCall,
    ToolSpec,
    Usage,
    tool,
)
from xzatoma.events import ModelCallEnded, SubagentEnded, SubagentStarted, ToolCallEnded
from xzatoma.telemetry import TelemetrySubscriber
from xzatoma.telemetry import _names as n
from xzatoma.testing import (
    EventCapture,
    ScriptedProvider,
    TelemetryCapture,
    call,
    capture_telemetry,
    reply,
    tool_calls,
)

pytestmark = pytest.mark.anyio

HAVE_TRIO = importlib.util.find_spec("trio") is not None


def first_user(messages: Sequence[Message]) -> str:
    return next(m.content or "" for m in messages if m.role == "user")


def tool_message(result: RunResult, index: int = 0) -> str:
    """The content of the ``index``-th tool message the root's model read."""
    return [m.content or "" for m in result.messages if m.role == "tool"][index]


def assert_executions_balance(captured: TelemetryCapture) -> None:
    """executions = completions + errors and active = 0, at every depth."""
    depths = {a[n.DEPTH] for a in captured.attribute_sets(n.EXECUTIONS)}
    assert depths
    for depth in depths:
        executions = captured.value(n.EXECUTIONS, depth=depth)
        ended = captured.value(n.COMPLETIONS, depth=depth) + captured.value(n.ERRORS, depth=depth)
        assert executions == ended, f"depth {depth}: {executions} != {ended}"
        assert captured.value(n.ACTIVE_COUNT, depth=depth) == 0


# -- item 2: usage is untrusted; the quota never refunds -----------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize("tokens", [-5, True, 1.5, math.nan, math.inf, "5", None, 10**30 * -1])
def test_charge_refuses_what_would_refund_or_disable_the_token_limit(tokens: object) -> None:
    tracker = QuotaTracker(QuotaLimits(max_total_tokens=100))
    tracker.charge(60)
    with pytest.raises(ValueError, match="non-negative int token count") as info:
        tracker.charge(tokens)  # type: ignore[arg-type]
    assert isinstance(info.value, ConfigError)
    assert len(str(info.value)) < 200
    assert "\n" not in str(info.value)
    assert tracker.statistics().total_tokens == 60  # nothing charged, nothing refunded
    tracker.charge(40)
    with pytest.raises(Exception, match="token limit reached"):
        tracker.check()  # the limit still holds


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "limits",
    [
        {"max_total_tokens": math.nan},
        {"max_total_tokens": math.inf},
        {"max_total_tokens": "5"},
        {"max_total_tokens": 1.5},
        {"max_executions": True},
        {"max_total_time": math.inf},
        {"max_total_time": math.nan},
        {"max_total_time": "10"},
    ],
)
def test_quota_limits_that_would_switch_a_limit_off_are_refused(limits: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="must be a") as info:
        QuotaLimits(**limits)
    assert "\n" not in str(info.value)


def silent_provider(words: int) -> ScriptedProvider:
    """A custom provider that reports no usage at all (``Completion``'s default)."""

    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if first_user(messages) == "root":  # one child a turn, five turns
            spawned = sum(1 for m in messages if m.role == "tool")
            if spawned < 5:
                return tool_calls(call("subagent", label=f"c{spawned}", task_prompt="write"))
            return reply("root done")
        return Completion(content="word " * words)

    return ScriptedProvider(model)


@pytest.mark.timeout(20)
async def test_missing_usage_is_estimated_when_a_token_limit_depends_on_it() -> None:
    runtime = Runtime(
        silent_provider(10_000),
        subagents=SubagentConfig(summary_prompt=None),
        quota=QuotaLimits(max_total_tokens=1000),
        telemetry=False,
    )
    result = await runtime.agent().run("root")
    statuses = [child.status for child in result.children]
    # The first child's 50,000 bytes are about 12,500 tokens: over the limit, so the rest
    # are refused instead of every one of them costing nothing.
    assert statuses[0] == "complete"
    assert [c.error_type for c in result.children[1:]] == ["quota_exceeded"] * 4
    child = result.children[0]
    assert child.usage.estimated is True
    assert child.usage.completion_tokens == 12_500
    assert child.usage.requests == 1
    assert result.total_usage.estimated is True
    assert runtime.tracker.statistics().total_tokens == result.total_usage.total_tokens


@pytest.mark.timeout(20)
async def test_without_a_token_limit_missing_usage_counts_calls_but_no_tokens() -> None:
    runtime = Runtime(
        silent_provider(10), subagents=SubagentConfig(summary_prompt=None), telemetry=False
    )
    result = await runtime.agent().run("root")
    assert [child.status for child in result.children] == ["complete"] * 5
    assert result.total_usage == Usage(requests=11)  # every model call counted, none estimated


def usage_provider(bad: Usage) -> ScriptedProvider:
    """The root delegates once; the child's model reports ``bad`` usage; the root answers."""

    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if first_user(messages) == "root":
            if messages[-1].role == "user":
                spawn = call("subagent", label="child", task_prompt="work")
                return tool_calls(spawn, usage=Usage(1, 0, 0, 0))  # reported: zero tokens
            return reply("root done", usage=Usage(1, 1, 1, 2))
        return Completion(content="child answer", usage=bad)

    return ScriptedProvider(model)


BAD_USAGES = [
    (Usage(1, -5, 0, 0), "prompt_tokens=-5"),
    (Usage(1, 10, 5, -1000), "total_tokens=-1000"),
    (Usage(1, 1.5, 0, 2), "prompt_tokens=1.5"),  # type: ignore[arg-type]
    (Usage(1, 0, True, 1), "completion_tokens=True"),
    (Usage(1, 0, 0, math.nan), "total_tokens=nan"),  # type: ignore[arg-type]
    (Usage(1, "10", 0, 10), "prompt_tokens=a str"),  # type: ignore[arg-type]
    (Usage(1, 0, 0, -(10**5000)), "total_tokens=about -2**16609"),
    (Usage(1, 0, 0, 2**60), "tokens for one model call"),
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("bad", "shown"), BAD_USAGES)
async def test_invalid_usage_from_any_provider_fails_the_call_and_charges_nothing(
    bad: Usage, shown: str
) -> None:
    capture = EventCapture()
    runtime = Runtime(
        usage_provider(bad),
        subagents=SubagentConfig(summary_prompt=None),
        quota=QuotaLimits(max_total_tokens=1000),
        telemetry=False,
        hooks=[capture],
    )
    result = await runtime.agent().run("root")
    child = result.children[0]
    assert (result.status, child.status, child.error_type) == (
        "complete",
        "failed",
        "execution_failed",
    )
    assert (child.error or "").startswith("provider 'scripted' returned invalid usage: ")
    assert shown in (child.error or "")
    assert len(child.error or "") < 300
    assert child.usage == Usage()
    assert child.turns == 0
    assert runtime.tracker.statistics().total_tokens == 2  # the root's own call only
    assert result.total_usage == Usage(2, 1, 1, 2)  # the root made two calls
    # The model read a failure, and no event carried the bad numbers to a subscriber.
    assert tool_message(result).startswith("Error: subagent 'child' failed (execution_failed)")
    ends = [e for e in capture.of(ModelCallEnded) if e.depth == 1]
    assert [(e.error_type, e.usage) for e in ends] == [("execution_failed", Usage())]


@pytest.mark.timeout(10)
async def test_invalid_usage_of_the_roots_own_call_fails_the_run() -> None:
    provider = ScriptedProvider([Completion(content="hi", usage=Usage(1, -7, 0, -7))])
    tracker = QuotaTracker(QuotaLimits(max_total_tokens=10))
    result = await Agent(provider, quota=tracker).run("x")
    assert (result.status, result.error_type) == ("failed", "execution_failed")
    assert result.error == (
        "provider 'scripted' returned invalid usage: prompt_tokens=-7, total_tokens=-7 "
        "(token counts must be non-negative integers)"
    )
    assert tracker.statistics().total_tokens == 0


@pytest.mark.timeout(10)
async def test_a_total_below_its_parts_is_charged_as_their_sum_and_marked_estimated() -> None:
    # A custom provider that forgot total_tokens must not slip past max_total_tokens.
    runtime = Runtime(
        usage_provider(Usage(1, 300, 200, 0)),
        subagents=SubagentConfig(summary_prompt=None),
        quota=QuotaLimits(max_total_tokens=400),
        telemetry=False,
    )
    result = await runtime.agent().run("root")
    child = result.children[0]
    assert child.status == "complete"
    assert child.usage == Usage(1, 300, 200, 500, estimated=True)
    assert result.total_usage.estimated  # carried up through +
    assert runtime.tracker.statistics().total_tokens == 502
    with pytest.raises(Exception, match=r"token limit reached \(502/400 tokens\)"):
        await runtime.tracker.acheck()


# -- item 10: output_max_size bounds the whole message the parent reads --------------------

LABEL = "界" * 200  # the longest label a model may send, 600 bytes of UTF-8
LIMITS = [1024, 1500, 4096]


def fits(content: str, limit: int) -> None:
    assert len(content.encode("utf-8")) <= limit, len(content.encode("utf-8"))


def one_child(child_turns: list[Completion | Exception], task: dict[str, Any]) -> ScriptedProvider:
    script = iter(child_turns)

    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if first_user(messages) == "root":
            if messages[-1].role == "user":
                return tool_calls(call("subagent", task))
            return reply("root done")
        answer = next(script)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return ScriptedProvider(model)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("limit", LIMITS)
async def test_an_incomplete_childs_note_and_output_fit_the_limit(limit: int) -> None:
    provider = one_child(
        [reply("日本語" * 2000)], {"label": LABEL, "task_prompt": "w", "max_turns": 1}
    )
    config = SubagentConfig(output_max_size=limit)  # the summary turn has no turn left
    result = await Runtime(provider, subagents=config, telemetry=False).agent().run("root")
    content = tool_message(result)
    fits(content, limit)
    assert content.startswith("[subagent '界")
    assert "ended incomplete: no turn left for the summary]\n日本語" in content
    assert content.endswith(f"[... output truncated to {limit} bytes]")
    child = result.children[0]  # the Python caller's tree keeps its own semantics
    assert child.truncated
    assert child.label == LABEL
    assert len(child.output.encode()) <= limit
    assert child.output.startswith("日本語")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("limit", LIMITS)
@on_virtual_time
async def test_a_failed_childs_error_and_partial_output_fit_the_limit(limit: int) -> None:
    gate = anyio.Event()

    @tool
    async def wait() -> str:
        """Waits until the child's deadline."""
        gate.set()
        await anyio.sleep_forever()
        return "never"

    long_error = ProviderError("upstream said: " + "ß" * 3000)
    provider = one_child(
        [tool_calls(call("wait"), text="Ωmega " * 1000)],
        {"label": LABEL, "task_prompt": "w"},
    )
    config = SubagentConfig(output_max_size=limit, timeout=5, summary_prompt=None)
    result = (
        await Runtime(provider, subagents=config, telemetry=False).agent(tools=[wait]).run("root")
    )
    assert gate.is_set()  # the child was in its tool when the deadline came
    (child,) = result.children
    assert (child.error_type, child.duration) == ("timeout", 5.0)
    content = tool_message(result)
    fits(content, limit)
    assert content.startswith("Error: subagent '界")
    assert "failed (timeout)" in content
    assert "\nPartial output:\nΩmega" in content
    # and a child whose provider failed with a very long message
    provider = one_child([long_error], {"label": LABEL, "task_prompt": "w"})
    result = await Runtime(provider, subagents=config, telemetry=False).agent().run("root")
    content = tool_message(result)
    fits(content, limit)
    assert content.startswith("Error: subagent '界")
    assert "(execution_failed): provider" in content
    assert content.endswith("…")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("limit", LIMITS)
async def test_a_refusal_quoting_a_long_name_fits_the_limit(limit: int) -> None:
    name = "ツール" * 1000  # allowed_tools entries have no length limit
    provider = one_child([], {"label": "a", "task_prompt": "w", "allowed_tools": [name]})
    config = SubagentConfig(output_max_size=limit)
    result = await Runtime(provider, subagents=config, telemetry=False).agent().run("root")
    content = tool_message(result)
    fits(content, limit)
    assert content.startswith("Error: allowed_tools names 'ツール")


def batch_provider(
    tasks: list[dict[str, Any]], child_reply: Callable[[str], str | Exception]
) -> ScriptedProvider:
    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if first_user(messages) == "root":
            if messages[-1].role == "user":
                return tool_calls(call("parallel_subagent", tasks=tasks))
            return reply("root done")
        answer = child_reply(first_user(messages))
        if isinstance(answer, Exception):
            raise answer
        return reply(answer)

    return ScriptedProvider(model)


def fifty_tasks() -> list[dict[str, Any]]:
    return [{"label": f"{i:02d}" + "標" * 198, "task_prompt": f"t{i}"} for i in range(50)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("limit", [1024, 8192, 65536, 1_048_576])
async def test_a_batch_of_fifty_big_outputs_is_valid_json_within_the_limit(limit: int) -> None:
    tasks = fifty_tasks()

    def answer(prompt: str) -> str | Exception:
        index = int(prompt[1:])
        if index % 7 == 3:
            return ProviderError('failed "badly" \\ ' + "\x01\u202e" * 2000)
        return f"<{index}>" + "出力\n" * 100_000

    config = SubagentConfig(output_max_size=limit, summary_prompt=None, max_concurrent=50)
    tracemalloc.start()
    try:
        result = (
            await Runtime(batch_provider(tasks, answer), subagents=config, telemetry=False)
            .agent()
            .run("root")
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * limit + 60_000_000  # the 50 outputs themselves, not copies of them
    content = tool_message(result)
    fits(content, limit)
    document = json.loads(content)
    shown = document["tasks"]
    omitted = document.get("omitted_tasks", 0)
    assert len(shown) + omitted == 50
    assert len(shown) >= 1
    assert (document["successful"], document["failed"], document["status"]) == (43, 7, "partial")
    for i, entry in enumerate(shown):
        real = result.children[i]
        assert real.label.startswith(entry["label"])
        assert entry["status"] == real.status
        assert real.output.startswith(entry["output"])
        if entry["label"] != real.label or entry["output"] != real.output:
            assert entry["truncated"] is True
    if limit >= 65536:  # room for every task, label and status in full
        assert omitted == 0
        assert [e["label"] for e in shown] == [t["label"] for t in tasks]
    if limit == 1_048_576:  # and for a fair share of every output and error
        assert all(len(e["output"]) > 5000 or e["status"] == "failed" for e in shown)
        assert all(e["error"].startswith("provider") for e in shown if e["status"] == "failed")


@pytest.mark.timeout(30)
async def test_a_failed_batch_keeps_its_error_line_within_the_limit() -> None:
    tasks = fifty_tasks()
    provider = batch_provider(tasks, lambda prompt: ProviderError("boom " * 500))
    config = SubagentConfig(output_max_size=1024, summary_prompt=None)
    result = await Runtime(provider, subagents=config, telemetry=False).agent().run("root")
    content = tool_message(result)
    fits(content, 1024)
    first, _, body = content.partition("\n")
    assert first == "Error: parallel batch failed: none of the 50 tasks succeeded."
    document = json.loads(body)
    assert document["failed"] == 50
    assert len(document["tasks"]) + document["omitted_tasks"] == 50


@pytest.mark.timeout(60)
def test_the_batch_document_always_fits_and_stays_valid_json() -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from xzatoma._subagent_models import BatchResult
    from xzatoma._tool_messages import _valid, batch_json_within

    text = st.text(
        st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=3000
    )
    status = st.sampled_from(["complete", "incomplete", "failed", "cancelled"])
    results = st.lists(
        st.builds(
            lambda label, output, error, status: RunResult(
                output,
                status,
                label=label or "x",
                error=error,
                error_type=None if status == "complete" else "execution_failed",
            ),
            text.map(lambda s: s[:200]),
            text,
            text,
            status,
        ),
        min_size=1,
        max_size=60,
    )

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(results=results, limit=st.integers(min_value=1024, max_value=20_000))
    def check(results: list[RunResult], limit: int) -> None:
        batch = BatchResult(tuple(results), "partial", 1, len(results) - 1, 0, 1.5)
        content = batch_json_within(batch, limit)
        assert len(content.encode("utf-8")) <= limit
        document = json.loads(content)
        assert len(document["tasks"]) + document.get("omitted_tasks", 0) == len(results)
        assert len(document["tasks"]) >= min(len(results), 4)  # 1024 bytes hold four at least
        for entry, real in zip(document["tasks"], results, strict=False):
            clean = {k: _valid(getattr(real, k) or "") for k in ("label", "output", "error")}
            assert entry["status"] == real.status
            for key, value in clean.items():
                shown = entry.get(key)
                if isinstance(shown, str):  # a complete task's error is null, or left out
                    assert value.startswith(shown), key
                    if shown != value:
                        assert entry["truncated"] is True

    check()


# -- item 14: a CancelledError nobody asked for is a tool failure --------------------------


@tool
async def flaky() -> str:
    """Calls a library that cancelled its own work."""
    await anyio.lowlevel.checkpoint()
    raise asyncio.CancelledError("inner task cancelled")


def calls_then_answers(name: str) -> ScriptedProvider:
    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if messages[-1].role == "user":
            return tool_calls(call(name))
        return reply(f"went on after: {messages[-1].content}")

    return ScriptedProvider(model)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "anyio_backend",
    [
        "asyncio",
        pytest.param(
            "trio",
            marks=pytest.mark.skipif(not HAVE_TRIO, reason="trio is not installed"),
        ),
    ],
)
async def test_a_stray_cancelled_error_from_a_tool_is_a_tool_failure(anyio_backend: str) -> None:
    capture = EventCapture()
    result = await Agent(calls_then_answers("flaky"), tools=[flaky], hooks=[capture]).run("go")
    assert result.status == "complete"
    assert result.output == (
        "went on after: Error: tool 'flaky' raised CancelledError (inner task cancelled) "
        "although nothing cancelled this run; the tool failed, and the run goes on"
    )
    (end,) = capture.of(ToolCallEnded)
    assert (end.is_error, end.cancelled) == (True, False)
    assert_every_start_has_exactly_one_end(capture.events)


@tool
async def stray_in_a_group() -> str:
    """A task group whose child raised a CancelledError nobody asked for (trio's shape)."""
    await anyio.lowlevel.checkpoint()
    raise BaseExceptionGroup("unhandled errors in a TaskGroup", [asyncio.CancelledError("x")])


@pytest.mark.timeout(10)
async def test_a_group_holding_a_stray_cancelled_error_is_a_tool_failure() -> None:
    agent = Agent(calls_then_answers("stray_in_a_group"), tools=[stray_in_a_group])
    result = await agent.run("go")
    assert result.status == "complete"
    assert result.output.startswith(
        "went on after: Error: tool 'stray_in_a_group' raised BaseExceptionGroup"
    )


@pytest.mark.timeout(10)
async def test_a_swallowed_cancel_left_behind_does_not_make_a_stray_look_real() -> None:
    task = asyncio.current_task()
    assert task is not None
    task.cancel()  # code from before 3.11 swallows this without uncancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(0)
    assert task.cancelling() == 1
    try:
        result = await Agent(calls_then_answers("flaky"), tools=[flaky]).run("go")
    finally:
        task.uncancel()
    assert result.status == "complete"
    assert "raised CancelledError (inner task cancelled)" in result.output


@pytest.mark.timeout(20)
async def test_a_subagent_whose_tool_raises_cancelled_error_and_the_tree_goes_on() -> None:
    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        prompt, last = first_user(messages), messages[-1]
        if prompt == "root":
            if last.role == "user":
                tasks = [{"label": f"t{i}", "task_prompt": "use flaky"} for i in range(3)]
                return tool_calls(
                    call("subagent", label="one", task_prompt="use flaky"),
                    call("parallel_subagent", tasks=tasks),
                )
            return reply("root done")
        if last.role == "user":
            return tool_calls(call("flaky"))
        return reply("child saw: " + (last.content or ""))

    capture = EventCapture()
    with capture_telemetry() as captured:
        runtime = Runtime(
            ScriptedProvider(model),
            subagents=SubagentConfig(summary_prompt=None),
            telemetry=TelemetrySubscriber(),
            hooks=[capture],
        )
        result = await runtime.agent(tools=[flaky]).run("root")
    assert (result.status, result.output) == ("complete", "root done")
    assert [c.status for c in result.children] == ["complete"] * 4
    assert all("raised CancelledError" in c.output for c in result.children)
    assert_every_start_has_exactly_one_end(capture.events)
    assert_executions_balance(captured)


@pytest.mark.timeout(10)
async def test_a_stray_cancelled_error_from_a_provider_fails_that_child_only() -> None:
    async def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if first_user(messages) == "root":
            if messages[-1].role == "user":
                return tool_calls(call("subagent", label="c", task_prompt="x"))
            return reply("root done")
        await anyio.lowlevel.checkpoint()
        raise asyncio.CancelledError

    capture = EventCapture()
    runtime = Runtime(ScriptedProvider(model), telemetry=False, hooks=[capture])
    result = await runtime.agent().run("root")
    child = result.children[0]
    assert (result.status, child.status, child.error_type) == (
        "complete",
        "failed",
        "execution_failed",
    )
    assert child.error == (
        "provider 'scripted' raised CancelledError although nothing cancelled this run"
    )
    assert_every_start_has_exactly_one_end(capture.events)


ToolMaker: TypeAlias = Callable[[anyio.Event], Tool[Any]]
"""Makes a tool that sets the event once it runs (``waits``, ``converts``)."""


async def cancelled_for_real(make_tool: ToolMaker, how: str) -> tuple[bool, list[Any]]:
    """Run an agent whose tool is cancelled ``how``; True when the cancellation propagated."""
    inside = anyio.Event()
    capture = EventCapture()
    agent = Agent(calls_then_answers("stuck"), tools=[make_tool(inside)], hooks=[capture])
    propagated = False
    if how == "task.cancel()":
        task = asyncio.ensure_future(agent.run("go"))
        await inside.wait()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            propagated = True
    else:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(agent.run, "go")
                await inside.wait()
                scope.cancel()
        propagated = scope.cancelled_caught
    assert_every_start_has_exactly_one_end(capture.events)
    return propagated, capture.of(ToolCallEnded)


def waits(inside: anyio.Event) -> Tool[Any]:
    @tool
    async def stuck() -> str:
        """Waits to be cancelled."""
        inside.set()
        await anyio.sleep_forever()
        return "never"

    return stuck


def converts(inside: anyio.Event) -> Tool[Any]:
    @tool
    async def stuck() -> str:
        """A library that turns the cancellation it got into a new CancelledError."""
        inside.set()
        try:
            await anyio.sleep_forever()
        except BaseException:
            raise asyncio.CancelledError("library cleanup") from None
        return "never"

    return stuck


@pytest.mark.timeout(10)
@pytest.mark.parametrize("how", ["scope.cancel()", "task.cancel()"])
@pytest.mark.parametrize("make_tool", [waits, converts])
async def test_a_real_cancellation_through_a_tool_still_propagates(
    make_tool: ToolMaker, how: str
) -> None:
    propagated, ends = await cancelled_for_real(make_tool, how)
    assert propagated
    assert [e.cancelled for e in ends] == [True]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("make_tool", [waits, converts])
@virtual_time("asyncio")  # ``converts`` raises asyncio's CancelledError
async def test_a_deadline_through_a_tool_is_still_a_timeout(make_tool: ToolMaker) -> None:
    inside = anyio.Event()
    agent = Agent(calls_then_answers("stuck"), tools=[make_tool(inside)], timeout=5)
    result = await agent.run("go")
    assert inside.is_set()
    assert (result.status, result.error_type, result.duration) == ("failed", "timeout", 5.0)


@pytest.mark.timeout(10)
async def test_a_tool_that_cancels_its_own_run_and_raises_is_a_cancellation() -> None:
    scope = anyio.CancelScope()

    @tool
    async def quit_run() -> str:
        """Cancels the run it belongs to, then raises before the cancellation arrives."""
        scope.cancel()
        raise asyncio.CancelledError

    provider = calls_then_answers("quit_run")
    with scope:
        await Agent(provider, tools=[quit_run]).run("go")
    assert scope.cancelled_caught
    assert len(provider.requests) == 1  # the model was never told a tool failed


# -- item 15: tasks that never started are counted like refused spawns ---------------------


@pytest.mark.timeout(20)
async def test_fail_fast_pending_tasks_are_counted_in_the_metrics() -> None:
    tasks = [{"label": f"t{i}", "task_prompt": f"t{i}"} for i in range(6)]

    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if first_user(messages) != "root":
            raise ProviderError("fails at once")
        if messages[-1].role == "user":
            return tool_calls(call("parallel_subagent", tasks=tasks, fail_fast=True))
        return reply("root done")

    capture = EventCapture()
    with capture_telemetry() as captured:
        runtime = Runtime(
            ScriptedProvider(model),
            subagents=SubagentConfig(summary_prompt=None, max_concurrent=1),
            telemetry=TelemetrySubscriber(),
            hooks=[capture],
        )
        result = await runtime.agent().run("root")
    assert [c.status for c in result.children] == ["failed"] + ["cancelled"] * 5
    document = json.loads(tool_message(result).partition("\n")[2])
    assert (document["failed"], document["cancelled"]) == (1, 5)
    assert captured.value(n.EXECUTIONS, depth=1) == 6 == len(tasks)
    assert captured.value(n.ERRORS, depth=1, error_type="cancelled") == 5
    assert captured.value(n.ERRORS, depth=1, error_type="execution_failed") == 1
    assert_executions_balance(captured)
    starts = [e for e in capture.of(SubagentStarted) if e.depth == 1]
    ends = [e for e in capture.of(SubagentEnded) if e.depth == 1]
    assert len(starts) == len(ends) == 6
    never_started = [(e.status, e.error_type, e.turns) for e in ends[1:]]
    assert never_started == [("cancelled", "cancelled", 0)] * 5
    assert_every_start_has_exactly_one_end(capture.events)


@pytest.mark.timeout(20)
@on_virtual_time
async def test_tasks_left_at_the_batch_deadline_are_counted_in_the_metrics() -> None:
    async def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        await anyio.sleep_forever()
        raise AssertionError

    capture = EventCapture()
    with capture_telemetry() as captured:
        runtime = Runtime(
            ScriptedProvider(model),
            subagents=SubagentConfig(summary_prompt=None),
            telemetry=TelemetrySubscriber(),
            hooks=[capture],
        )
        tasks = [{"label": f"t{i}", "task_prompt": "x"} for i in range(6)]
        batch = await runtime.run_batch(tasks, max_concurrent=1, timeout=5)
    assert (batch.failed, batch.cancelled) == (1, 5)
    assert [(r.error_type, r.duration) for r in batch.results[:1]] == [("timeout", 5.0)]
    assert batch.duration == 5.0
    assert captured.value(n.EXECUTIONS, depth=1) == 6 == len(tasks)
    assert captured.value(n.ERRORS, depth=1, error_type="timeout") == 1
    assert captured.value(n.ERRORS, depth=1, error_type="cancelled") == 5
    assert_executions_balance(captured)
    assert runtime.tracker.statistics().executions == 1  # they never took a quota slot
    assert_every_start_has_exactly_one_end(capture.events)


# -- the label of a refused call is whatever the model sent: bounded and encodable ---------


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "label", ["x" * 100_000, "bad \ud800 label", "\udfff" * 300], ids=["huge", "lone", "many"]
)
async def test_the_label_of_a_refused_call_is_bounded_and_encodable(label: str) -> None:
    arguments = json.dumps({"label": label, "task_prompt": "   "})  # refused: blank prompt

    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if messages[-1].role == "user":
            return tool_calls(ToolCall("c1", "subagent", arguments))
        return reply("done")

    runtime = Runtime(ScriptedProvider(model), telemetry=False)
    result = await runtime.agent().run("go")
    (child,) = result.children
    assert child.error_type == "invalid_input"
    assert len(child.label) <= 200
    child.label.encode("utf-8")  # raises on a lone surrogate
    assert child.label == "".join(
        "\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in label[:200]
    )


@tool
async def sloppy() -> str:
    """Swallows a cancellation of its own task without ``uncancel()`` (pre-3.11 style)."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().call_soon(task.cancel)
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:  # swallowed on purpose: the pattern under test
        return "ok"
    return "not cancelled"


@pytest.mark.timeout(10)
async def test_a_cancel_swallowed_by_an_earlier_tool_does_not_make_a_later_stray_real() -> None:
    provider = ScriptedProvider([tool_calls(call("sloppy")), tool_calls(call("flaky")), "done"])
    try:
        result = await Agent(provider, tools=[sloppy, flaky]).run("go")
    finally:
        task = asyncio.current_task()
        assert task is not None
        while task.cancelling():
            task.uncancel()
    assert result.status == "complete"
    assert "raised CancelledError (inner task cancelled)" in (result.messages[-2].content or "")
