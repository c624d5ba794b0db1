"""Edges of the run path found by attacking it: subscribers that make contexts current, a
span processor that breaks mid-run, a reader of ``run.result()`` in ``run_ended``, replies of
the wrong type, quotas given to a bare agent or to its subagent tool, odd subscribers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from types import SimpleNamespace

import anyio
import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from xzatoma import (
    Agent,
    Completion,
    ConfigError,
    Hooks,
    Instrument,
    Message,
    ParallelSubagentTool,
    QuotaLimits,
    QuotaTracker,
    Run,
    Runtime,
    SubagentConfig,
    SubagentTool,
    ToolContext,
    ToolSpec,
    Usage,
    tool,
)
from xzatoma.telemetry import TelemetrySubscriber
from xzatoma.testing import (
    ScriptedProvider,
    TelemetryCapture,
    call,
    capture_telemetry,
    reply,
    tool_calls,
)

pytestmark = pytest.mark.anyio

NO_SUMMARY = SubagentConfig(summary_prompt=None)


@pytest.fixture
def captured() -> Iterator[TelemetryCapture]:
    with capture_telemetry() as capture:
        yield capture


def spawn_then_answer(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
    """The root spawns one child; every run answers once it has a tool result or is a child."""
    first = next(m.content for m in messages if m.role == "user")
    if first == "root" and not any(m.role == "assistant" for m in messages):
        return tool_calls(call("subagent", label="child", task_prompt="child"))
    return reply("done")


class BaggageOfRun(Instrument):
    """A user's instrument that puts the run's label in baggage while the run works."""

    def __init__(self) -> None:
        self.tokens: dict[int, object] = {}

    def run_started(self, run: Run) -> None:
        self.tokens[run.id] = otel_context.attach(baggage.set_baggage("run", run.label))

    def run_ended(self, run: Run) -> None:
        otel_context.detach(self.tokens.pop(run.id))  # type: ignore[arg-type]


@pytest.mark.parametrize("baggage_first", [True, False], ids=["baggage first", "spans first"])
async def test_subscribers_that_make_contexts_current_give_the_callers_back_in_order(
    captured: TelemetryCapture, baggage_first: bool
) -> None:
    spans, bags = TelemetrySubscriber(), BaggageOfRun()
    hooks = [bags, spans] if baggage_first else [spans, bags]
    runtime = Runtime(
        ScriptedProvider(spawn_then_answer), subagents=NO_SUMMARY, telemetry=False, hooks=hooks
    )
    with captured.tracer_provider.get_tracer("caller").start_as_current_span("caller") as outer:
        result = await runtime.run("root")
        assert trace.get_current_span() is outer
        assert baggage.get_baggage("run") is None
    assert result.status == "complete"
    assert spans.in_flight == 0


class FailsOnce(SpanProcessor):
    """A span processor that raises once, at the end of the first ``execute_tool`` span."""

    def __init__(self) -> None:
        self.fired = False
        self.started: list[str] = []

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        self.started.append(span.name)

    def on_end(self, span: ReadableSpan) -> None:
        if span.name.startswith("execute_tool") and not self.fired:
            self.fired = True
            raise RuntimeError("exporter down")


async def test_spans_switched_off_mid_run_are_still_detached_and_ended(
    captured: TelemetryCapture, caplog: pytest.LogCaptureFixture
) -> None:
    @tool
    async def probe() -> str:
        """Answer at once."""
        return "ok"

    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        first = next(m.content for m in messages if m.role == "user")
        if not any(m.role == "assistant" for m in messages):
            if first == "root":
                return tool_calls(call("subagent", label="child", task_prompt="child"))
            return tool_calls(call("probe"))
        return reply("done")

    processor = FailsOnce()
    captured.tracer_provider.add_span_processor(processor)
    subscriber = TelemetrySubscriber()
    runtime = Runtime(ScriptedProvider(model), subagents=NO_SUMMARY, telemetry=subscriber)
    with captured.tracer_provider.get_tracer("caller").start_as_current_span("caller") as outer:
        result = await runtime.agent(tools=[probe]).run("root")
        assert trace.get_current_span() is outer
    assert result.status == "complete"
    assert processor.fired
    assert subscriber.in_flight == 0
    # Every span started was ended (the exporter got them all, the failing one included).
    assert sorted(s.name for s in captured.spans) == sorted(processor.started)
    assert sum("recording spans failed" in r.getMessage() for r in caplog.records) == 1


async def test_reading_the_result_in_run_ended_does_not_undo_the_output_limit() -> None:
    class Reader(Instrument):
        def run_ended(self, run: Run) -> None:
            run.result()

    long_answer = "x" * 5000

    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        first = next(m.content for m in messages if m.role == "user")
        if first == "root":
            if any(m.role == "tool" for m in messages):
                return reply("done")
            return tool_calls(call("subagent", label="child", task_prompt="child"))
        return reply(long_answer)

    config = SubagentConfig(summary_prompt=None, output_max_size=1024)
    runtime = Runtime(ScriptedProvider(model), subagents=config, telemetry=False, hooks=[Reader()])
    result = await runtime.run("root")
    (child,) = result.children
    assert child.truncated
    assert len(child.output.encode()) <= 1024
    assert len((result.messages[2].content or "").encode()) <= 1024


async def test_a_reply_whose_content_is_not_text_fails_the_call_and_every_start_ends() -> None:
    from test_properties import assert_every_start_has_exactly_one_end

    from xzatoma.testing import EventCapture

    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        first = next(m.content for m in messages if m.role == "user")
        if first == "root":
            if any(m.role == "tool" for m in messages):
                return reply("done")
            return tool_calls(call("subagent", label="child", task_prompt="child"))
        return Completion(content=b"not text")  # type: ignore[arg-type]

    events = EventCapture()
    runtime = Runtime(ScriptedProvider(model), subagents=NO_SUMMARY, hooks=[events])
    result = await runtime.run("root")
    (child,) = result.children
    assert (child.status, child.error_type) == ("failed", "execution_failed")
    assert "content is bytes" in (child.error or "")
    assert_every_start_has_exactly_one_end(events.events)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), True])
async def test_a_batch_from_python_refuses_a_bad_timeout_before_anything_runs(bad: float) -> None:
    provider = ScriptedProvider(["never"])
    runtime = Runtime(provider, subagents=NO_SUMMARY, telemetry=False)
    with pytest.raises(ConfigError, match="timeout must be a positive number"):
        await runtime.run_batch([{"label": "a", "task_prompt": "x"}], timeout=bad)
    assert provider.requests == []


def three_spawns(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
    first = next(m.content for m in messages if m.role == "user")
    if first == "root":
        if any(m.role == "tool" for m in messages):
            return reply("done")
        spawns = [call("subagent", label=f"c{i}", task_prompt="child") for i in range(3)]
        return tool_calls(*spawns)
    return Completion(content="leaf", usage=Usage(1, 100, 100, 200))


async def test_the_quota_of_a_bare_agent_governs_its_subagent_tools_spawns() -> None:
    agent = Agent(
        ScriptedProvider(three_spawns),
        tools=[SubagentTool(NO_SUMMARY)],
        quota=QuotaLimits(max_executions=1),
    )
    result = await agent.run("root")
    assert [c.error_type for c in result.children].count("quota_exceeded") == 2
    assert agent.quota is not None
    assert agent.quota.statistics().executions == 1


async def test_the_quota_of_a_subagent_tool_is_the_trees_and_is_charged_every_call() -> None:
    tracker = QuotaTracker(QuotaLimits(max_total_tokens=150))
    tool_ = SubagentTool(SubagentConfig(summary_prompt=None, max_concurrent=1), tracker)
    agent = Agent(ScriptedProvider(three_spawns), tools=[tool_])
    assert agent.quota is tracker  # the tree's one quota: the root's own calls count too
    result = await agent.run("root")
    assert tracker.statistics().total_tokens == result.total_usage.total_tokens > 0


def test_two_quotas_in_one_tree_are_a_config_error() -> None:
    limits = QuotaLimits(max_executions=2)
    provider = ScriptedProvider()
    with pytest.raises(ConfigError, match="different quota trackers"):
        Agent(
            provider,
            tools=[SubagentTool(NO_SUMMARY, limits), ParallelSubagentTool(NO_SUMMARY, limits)],
        )
    with pytest.raises(ConfigError, match="the agent's quota and its subagent tools' quota"):
        Agent(provider, tools=[SubagentTool(NO_SUMMARY, limits)], quota=QuotaLimits())
    shared = QuotaTracker(limits)
    agent = Agent(
        provider, tools=[SubagentTool(NO_SUMMARY, shared), ParallelSubagentTool(NO_SUMMARY, shared)]
    )
    assert agent.quota is shared


def test_a_class_is_not_a_subscriber() -> None:
    with pytest.raises(TypeError, match="an instance, not a class"):
        Hooks([TelemetrySubscriber])


async def test_a_subscriber_of_plain_functions_that_raises_is_dropped_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def broken(run: Run) -> None:
        calls.append(run.label)
        raise RuntimeError("bug")

    hooks = Hooks([SimpleNamespace(run_started=broken)])
    agent = Agent(ScriptedProvider(["a", "b"]), hooks=hooks)
    await agent.run("1")
    await agent.run("2")
    assert calls == ["agent"]
    assert sum("has been disabled" in r.getMessage() for r in caplog.records) == 1


def test_a_grandchild_cut_by_the_quotas_time_says_quota_exceeded() -> None:
    from trio.testing import MockClock

    started = []

    @tool
    async def wait() -> str:
        """Wait longer than the quota allows."""
        started.append(1)
        await anyio.sleep(60)
        return "late"

    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        first = next(m.content for m in messages if m.role == "user")
        if any(m.role == "tool" for m in messages):
            return reply("done")
        if first == "root":
            return tool_calls(call("subagent", label="mid", task_prompt="mid"))
        if first == "mid":
            return tool_calls(call("subagent", label="leaf", task_prompt="leaf"))
        return tool_calls(call("wait"))

    async def main() -> None:
        runtime = Runtime(
            ScriptedProvider(model), subagents=NO_SUMMARY, quota=QuotaLimits(max_total_time=5)
        )
        result = await runtime.agent(tools=[wait]).run("root")
        (mid,) = result.children
        (leaf,) = mid.children
        assert started
        assert (mid.error_type, leaf.error_type) == ("quota_exceeded", "quota_exceeded")
        assert leaf.error == "Resource quota exceeded: time limit reached (5.0s/5.0s)"

    anyio.run(main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})


async def test_a_provider_raising_a_group_of_stray_cancellations_fails_only_its_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Stray:
        name, model = "stray", "m"

        async def complete(
            self, messages: Sequence[Message], tools: Sequence[ToolSpec]
        ) -> Completion:
            first = next(m.content for m in messages if m.role == "user")
            if first == "root":
                if any(m.role == "tool" for m in messages):
                    return reply("done")
                return tool_calls(
                    call("parallel_subagent", tasks=[
                        {"label": "bad", "task_prompt": "bad"},
                        {"label": "sib", "task_prompt": "sib"},
                    ])
                )  # fmt: skip
            if first == "bad":
                raise BaseExceptionGroup("library", [asyncio.CancelledError()])
            return reply("fine")

    caplog.set_level(logging.CRITICAL)
    runtime = Runtime(Stray(), subagents=NO_SUMMARY, telemetry=False)
    result = await runtime.run("root")
    bad, sib = result.children
    assert (bad.status, bad.error_type) == ("failed", "execution_failed")
    assert "raised BaseExceptionGroup although nothing cancelled this run" in (bad.error or "")
    assert (sib.status, sib.output) == ("complete", "fine")


async def test_a_subagent_tool_takes_quota_limits_as_the_agent_and_runtime_do() -> None:
    tool_ = SubagentTool(NO_SUMMARY, QuotaLimits(max_executions=1))
    result = await Agent(ScriptedProvider(three_spawns), tools=[tool_]).run("root")
    assert [c.error_type for c in result.children] == [None, "quota_exceeded", "quota_exceeded"]
    assert "execution limit reached (1/1)" in (result.children[1].error or "")


async def test_two_subscribers_raising_in_one_dispatch_are_both_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Raises(Instrument):
        def __init__(self) -> None:
            self.calls = 0

        def run_ended(self, run: Run) -> None:
            self.calls += 1
            raise RuntimeError("bug")

    class Counts(Instrument):
        def __init__(self) -> None:
            self.calls = 0

        def run_ended(self, run: Run) -> None:
            self.calls += 1

    first, middle, last = Raises(), Counts(), Raises()
    hooks = Hooks([first, middle, last])
    agent = Agent(ScriptedProvider(["a", "b"]), hooks=hooks)
    await agent.run("1")
    await agent.run("2")
    assert (first.calls, middle.calls, last.calls) == (1, 2, 1)
    assert hooks._run_ended == (middle.run_ended,)
    assert sum("has been disabled" in r.getMessage() for r in caplog.records) == 2


async def test_children_of_one_run_share_their_agent_and_another_run_makes_its_own() -> None:
    seen: list[Agent] = []

    @tool
    async def note(ctx: ToolContext) -> str:
        """Remember which agent settings this child runs with."""
        seen.append(ctx.agent)
        return "ok"

    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        first = next(m.content for m in messages if m.role == "user")
        if any(m.role == "tool" for m in messages):
            return reply("done")
        if first == "root":
            return tool_calls(*(call("subagent", label=f"c{i}", task_prompt="c") for i in range(2)))
        return tool_calls(call("note"))

    runtime = Runtime(ScriptedProvider(model), subagents=NO_SUMMARY, telemetry=False)
    agent = runtime.agent(tools=[note])
    await agent.run("root")
    await agent.run("root")
    assert len(seen) == 4
    assert seen[0] is seen[1]  # siblings share settings
    assert seen[2] is seen[3]
    assert seen[0] is not seen[2]  # a later run of the same agent makes its own


def test_adding_to_a_usage_subclass_never_takes_the_shortcut() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True, slots=True)
    class Tagged(Usage):
        tag: str = "x"

    tagged = Tagged(1, 1, 1, 2)
    assert type(tagged + Usage()) is Usage  # summed, as for any other operand
    assert type(Usage() + tagged) is Usage


def test_a_tracker_made_outside_an_event_loop_counts_its_time_from_its_creation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from _clock import run_virtual

    from xzatoma import _limits

    real_seconds = iter([100.0, 103.0])  # made at 100 s; read first 3 s later, in the loop
    monkeypatch.setattr(_limits, "time", SimpleNamespace(monotonic=lambda: next(real_seconds)))
    tracker = QuotaTracker(QuotaLimits(max_total_time=10))  # no event loop yet

    async def first_reading() -> float | None:
        return tracker.remaining_time()

    assert run_virtual(first_reading, "asyncio") == 7.0
