"""The path of one run: the live ``Run`` subscribers receive, the result tree it builds, and
the spans that are current while its work runs (so spans opened by a tool or by an HTTP
client's instrumentation nest where they happened)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from decimal import Decimal

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan

from xzatoma import (
    Agent,
    Batch,
    Completion,
    Hooks,
    Instrument,
    Message,
    ModelCall,
    Run,
    Runtime,
    SubagentConfig,
    ToolContext,
    ToolResult,
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


def _parent_name(span: ReadableSpan, spans: Sequence[ReadableSpan]) -> str | None:
    if span.parent is None:
        return None
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    found = by_id.get(span.parent.span_id)
    return found.name if found is not None else "(not exported)"


# -- spans are current while their work runs -------------------------------------------------
class SpanInProvider:
    """A provider that opens a span of its own inside every call, as an HTTP client's
    instrumentation would, and answers from a script."""

    name, model = "spanning", "m"

    def __init__(self, replies: Sequence[Completion | str], tracer: trace.Tracer) -> None:
        self.inner = ScriptedProvider(list(replies))
        self.tracer = tracer

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        with self.tracer.start_as_current_span("POST /chat/completions"):
            return await self.inner.complete(messages, tools)


async def test_a_span_opened_inside_a_tool_or_a_provider_call_nests_under_xzatoma_spans(
    captured: TelemetryCapture,
) -> None:
    user_tracer = captured.tracer_provider.get_tracer("user-code")

    @tool
    async def lookup(query: str) -> str:
        """Look something up."""
        with user_tracer.start_as_current_span("user-span"):
            await anyio.lowlevel.checkpoint()
            return "found"

    provider = SpanInProvider(
        [tool_calls(call("lookup", query="q")), reply("done")],
        captured.tracer_provider.get_tracer("http-client"),
    )
    agent = Agent(provider, tools=[lookup], hooks=[TelemetrySubscriber()])
    caller = captured.tracer_provider.get_tracer("caller")
    with caller.start_as_current_span("caller") as outer:
        result = await agent.run("x")
        # The caller's span is current again afterwards: every attach was detached.
        assert trace.get_current_span() is outer
    assert result.status == "complete"

    spans = captured.spans
    (user_span,) = captured.spans_named("user-span")
    assert _parent_name(user_span, spans) == "execute_tool lookup"
    http_spans = captured.spans_named("POST /chat/completions")
    assert len(http_spans) == 2
    assert {_parent_name(s, spans) for s in http_spans} == {"chat m"}
    (tool_span,) = captured.spans_named("execute_tool lookup")
    assert _parent_name(tool_span, spans) == "invoke_agent agent"
    (run_span,) = captured.spans_named("invoke_agent agent")
    assert _parent_name(run_span, spans) == "caller"


async def test_concurrent_tool_calls_each_nest_their_spans_under_their_own_tool_span(
    captured: TelemetryCapture,
) -> None:
    seen: dict[str, int] = {}
    user_tracer = captured.tracer_provider.get_tracer("user-code")

    @tool
    async def work(name: str) -> str:
        """Do some work."""
        with user_tracer.start_as_current_span(f"inner {name}") as span:
            seen[name] = span.get_span_context().trace_id
            await anyio.lowlevel.checkpoint()  # let the other call run in between
            return name

    calls = tool_calls(call("work", name="a"), call("work", name="b"))
    provider = ScriptedProvider([calls, reply("done")])
    await Agent(provider, tools=[work], hooks=[TelemetrySubscriber()]).run("x")

    spans = captured.spans
    tool_spans = {s.context.span_id: s for s in captured.spans_named("execute_tool work")}
    assert len(tool_spans) == 2
    parents = set()
    for name in ("a", "b"):
        (inner,) = captured.spans_named(f"inner {name}")
        assert inner.parent is not None
        assert inner.parent.span_id in tool_spans
        parents.add(inner.parent.span_id)
    assert len(parents) == 2  # each under its own call's span, not its sibling's
    assert _parent_name(next(iter(tool_spans.values())), spans) == "invoke_agent agent"


async def test_a_batch_from_python_nests_its_runs_under_the_callers_current_span(
    captured: TelemetryCapture,
) -> None:
    runtime = Runtime(
        ScriptedProvider(["one", "two"]), subagents=NO_SUMMARY, telemetry=TelemetrySubscriber()
    )
    with captured.tracer_provider.get_tracer("caller").start_as_current_span(
        "nightly job"
    ) as outer:
        batch = await runtime.run_batch(
            [{"label": "a", "task_prompt": "x"}, {"label": "b", "task_prompt": "y"}]
        )
        assert trace.get_current_span() is outer
    assert batch.status == "complete"
    runs = captured.subagent_spans()
    assert len(runs) == 2
    assert {_parent_name(s, captured.spans) for s in runs} == {"nightly job"}


async def test_a_cancelled_run_leaves_the_callers_span_current(
    captured: TelemetryCapture,
) -> None:
    started = anyio.Event()

    @tool
    async def hang() -> str:
        """Never returns."""
        started.set()
        await anyio.sleep_forever()
        return "unreachable"

    provider = ScriptedProvider([tool_calls(call("hang"))])
    agent = Agent(provider, tools=[hang], hooks=[TelemetrySubscriber()])
    with captured.tracer_provider.get_tracer("caller").start_as_current_span("caller") as outer:
        async with anyio.create_task_group() as tg:

            async def run_it() -> None:
                await agent.run("x")

            tg.start_soon(run_it)
            await started.wait()
            tg.cancel_scope.cancel()
        assert trace.get_current_span() is outer
    names = [s.name for s in captured.spans]
    assert {"execute_tool hang", "chat scripted", "invoke_agent agent"} <= set(names)


# -- instruments receive the live run --------------------------------------------------------
class Recorder(Instrument):
    """Implements three of the methods; the others must never be called."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []
        self.results: list[str] = []

    def run_started(self, run: Run) -> None:
        self.calls.append(("run_started", run.depth, run.label))

    def model_call_ended(self, run: Run, call: ModelCall) -> None:
        assert call.completion is not None
        self.calls.append(("model_call_ended", run.depth, call.completion.content or ""))

    def subagent_ended(self, run: Run) -> None:
        self.calls.append(("subagent_ended", run.depth, run.label))
        self.results.append(run.result().output)


def test_which_methods_an_instrument_implements_is_worked_out_when_it_is_added() -> None:
    hooks = Hooks([Recorder()])
    assert len(hooks._run_started) == 1
    assert len(hooks._subagent_ended) == 1
    assert (hooks._run_ended, hooks._tool_call_started, hooks._batch_started) == ((), (), ())

    class OnlyBatches:  # not a subclass: any object with some of the methods
        def batch_ended(self, run: Run, batch: Batch) -> None: ...

    hooks.add(OnlyBatches())
    assert len(hooks._batch_ended) == 1
    with pytest.raises(TypeError, match="Instrument methods"):
        hooks.add(42)


async def test_an_instrument_sees_the_live_run_and_the_childs_result() -> None:
    recorder = Recorder()
    provider = ScriptedProvider(
        [tool_calls(call("subagent", label="child", task_prompt="go")), reply("leaf"), reply("top")]
    )
    runtime = Runtime(provider, subagents=NO_SUMMARY, telemetry=False, hooks=[recorder])
    result = await runtime.run("x")

    assert result.output == "top"
    assert recorder.calls == [
        ("run_started", 0, "agent"),
        ("model_call_ended", 0, ""),
        ("run_started", 1, "child"),
        ("model_call_ended", 1, "leaf"),
        ("subagent_ended", 1, "child"),
        ("model_call_ended", 0, "top"),
    ]
    assert recorder.results == ["leaf"]


async def test_a_raising_instrument_is_dropped_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Instrument):
        def run_started(self, run: Run) -> None:
            raise RuntimeError("bug in a subscriber")

    recorder = Recorder()
    hooks = Hooks([Broken(), recorder])
    agent = Agent(ScriptedProvider(["a", "b"]), hooks=hooks)
    first, second = await agent.run("1"), await agent.run("2")
    assert (first.status, second.status) == ("complete", "complete")
    assert [c[0] for c in recorder.calls].count("run_started") == 2
    assert sum("has been disabled" in r.getMessage() for r in caplog.records) == 1
    assert hooks._run_started == (recorder.run_started,)


# -- the result tree -------------------------------------------------------------------------
class OutOfOrder:
    """The root asks for ``first`` and a batch of ``second`` and ``third`` in one reply;
    ``first`` answers only after ``third`` has, so the children end in another order."""

    name, model = "ordered", "m"

    def __init__(self) -> None:
        self.third_answered = anyio.Event()
        self.ended: list[str] = []

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        last = messages[-1]
        if last.role == "tool":
            return reply("done")
        prompt = last.content or ""
        if prompt == "top":
            return tool_calls(
                call("subagent", label="first", task_prompt="first"),
                call("parallel_subagent", tasks=[
                    {"label": "second", "task_prompt": "second"},
                    {"label": "third", "task_prompt": "third"},
                ]),
            )  # fmt: skip
        if prompt == "first":
            await self.third_answered.wait()
        elif prompt == "third":
            self.third_answered.set()
        self.ended.append(prompt)
        return reply(prompt)


async def test_children_come_in_the_order_their_calls_were_given_not_the_order_they_ended() -> None:
    provider = OutOfOrder()
    runtime = Runtime(provider, subagents=NO_SUMMARY, telemetry=False)
    result = await runtime.run("top")
    assert provider.ended.index("first") > provider.ended.index("third")
    assert [c.label for c in result.children] == ["first", "second", "third"]
    assert [c.output for c in result.children] == ["first", "second", "third"]


async def test_run_child_and_result() -> None:
    root = Run(label="root", hooks=Hooks(), quota=None, provider=ScriptedProvider())
    late = root.child("late", 1, call_id=10)
    early = root.child("early", 0, call_id=10)
    other = root.child("other", 0, call_id=5)
    for child, text in ((late, "L"), (early, "E"), (other, "O")):
        assert (child.depth, child.parent, child.deadline) == (1, root, root.deadline)
        child.output = text
        child.finish("complete", None, None)
        child.attach()
    assert root.status is None
    snapshot = root.result()
    assert (snapshot.status, snapshot.error_type) == ("cancelled", "cancelled")  # still running
    assert [c.output for c in snapshot.children] == ["O", "E", "L"]
    root.finish("complete", None, None)
    assert root.result() is root.result()  # made once, once it has ended
    assert root.result().status == "complete"


async def test_tool_context_is_keyword_only_and_shows_the_run() -> None:
    seen: list[ToolContext] = []

    @tool
    async def peek(ctx: ToolContext) -> ToolResult:
        """Look at the context."""
        seen.append(ctx)
        return ToolResult("ok")

    agent = Agent(ScriptedProvider([tool_calls(call("peek")), reply("done")]), tools=[peek])
    await agent.run("x")
    (ctx,) = seen
    assert isinstance(ctx.run, Run)
    assert (ctx.depth, ctx.label, ctx.run_id, ctx.event_id) == (0, "agent", ctx.run.id, ctx.id)
    assert ctx.agent is agent
    with pytest.raises(TypeError):
        ToolContext(ctx.run, agent, ctx.call, 1, 0.0)  # type: ignore[call-arg]


async def test_metrics_recorded_while_spans_are_current_carry_no_exemplars(
    captured: TelemetryCapture,
) -> None:
    provider = ScriptedProvider(
        [
            tool_calls(call("subagent", label="child", task_prompt="go")),
            reply("leaf"),
            reply("top"),
        ],
        usage=Usage(1, 8, 2, 10),
    )
    runtime = Runtime(provider, subagents=NO_SUMMARY, telemetry=TelemetrySubscriber())
    with captured.tracer_provider.get_tracer("caller").start_as_current_span("caller"):
        await runtime.run("x")
    assert captured.subagent_spans(), "no span: the check would prove nothing"
    names = ("subagent.duration", "gen_ai.client.operation.duration", "gen_ai.client.token.usage")
    for name in names:
        points = captured.points(name)
        assert points, name
        for _, point in points:
            assert not point.exemplars, name


async def test_a_batch_from_python_refuses_two_tools_of_one_name_before_anything_runs() -> None:
    from xzatoma import ConfigError

    @tool
    async def subagent() -> str:
        """A user tool that takes the subagent tool's name."""
        return ""

    provider = ScriptedProvider(["never"])
    runtime = Runtime(provider, subagents=NO_SUMMARY, telemetry=False)
    with pytest.raises(ConfigError, match="two tools are named 'subagent'"):
        await runtime.run_batch([{"label": "a", "task_prompt": "x"}], tools=[subagent])
    assert provider.requests == []


@pytest.mark.parametrize(
    ("cost", "leaf_costs", "total"),
    [
        (Decimal("0.5"), (Decimal("0.25"), Decimal("0.125")), Decimal("0.875")),
        (Decimal(0), (Decimal(0), Decimal("0.1")), Decimal("0.1")),
        (Decimal("0.5"), (None, Decimal("0.1")), None),  # one unknown part: unknown
        (None, (Decimal("0.25"), Decimal("0.1")), None),
    ],
)
def test_run_result_makes_what_the_constructor_makes(
    cost: Decimal | None, leaf_costs: tuple[Decimal | None, ...], total: Decimal | None
) -> None:
    from xzatoma import RunResult, Usage
    from xzatoma._result import run_result

    leaves = tuple(
        RunResult("leaf", "complete", 1, Usage(1, 2, 3, 5), label="a", depth=1, cost=c)
        for c in leaf_costs
    )
    usage = Usage(2, 10, 4, 14, True)
    made = run_result(
        "out", "failed", 3, usage, leaves, (), "timeout", "late", "root", 0, True, 1.5, cost
    )
    built = RunResult(
        "out", "failed", 3, usage, leaves, (), "timeout", "late", "root", 0, True, 1.5, cost
    )
    assert made == built
    assert made.total_usage == built.total_usage == Usage(4, 14, 10, 24, True)
    assert made.total_cost == built.total_cost == total
    assert hash(made.label) == hash(built.label)
    with pytest.raises(AttributeError):
        made.output = "changed"  # type: ignore[misc]


def test_adding_nothing_to_usage_gives_the_same_counts() -> None:
    from xzatoma import Usage

    some = Usage(1, 2, 3, 5)
    assert some + Usage() == Usage() + some == some
    assert Usage() + Usage() == Usage()
    assert some + some == Usage(2, 4, 6, 10)
    assert Usage(estimated=True) + Usage() == Usage(estimated=True)
    assert Usage() + Usage(estimated=True) == Usage(estimated=True)
