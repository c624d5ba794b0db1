"""Many runtimes in one process: providers of their own, statistics, and the session id.

Each runtime here records to a :class:`TelemetryCapture` of its own (an SDK meter provider
with an in-memory reader, a tracer provider with an in-memory exporter) through
``TelemetrySubscriber(meter_provider=..., tracer_provider=...)``, while a capture configured
as the process-wide one (``capture_telemetry()``) stands for everything else in the process:
it must see nothing of them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import pytest
from _clock import on_virtual_time
from _trees import USAGE, TreeModel, spec_json, task
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.metrics import NoOpMeterProvider

from xzatoma import (
    Agent,
    Completion,
    ConfigError,
    Message,
    QuotaLimits,
    Runtime,
    RuntimeStatistics,
    SubagentConfig,
    SubagentStatistics,
    ToolContext,
    ToolSpec,
    tool,
)
from xzatoma.telemetry import (
    SessionSpanProcessor,
    TelemetryCapture,
    TelemetrySubscriber,
    capture_telemetry,
)
from xzatoma.telemetry import _names as n
from xzatoma.telemetry._session_context import SESSION_KEY
from xzatoma.testing import ScriptedProvider, call, reply, tool_calls

pytestmark = pytest.mark.anyio

SESSION = n.XZ_SESSION_ID


@pytest.fixture
def process_wide() -> Iterator[TelemetryCapture]:
    """What the rest of the process records to: must stay empty of the runtimes' data."""
    with capture_telemetry() as capture:
        yield capture


def tree(index: int) -> dict[str, Any]:
    """Runtime ``index``'s tree: ``index % 4 + 1`` batch tasks, one of them with a child of
    its own, and every third runtime one child whose model call fails."""
    parallel: list[dict[str, Any]] = [{"id": f"r{index}-p{k}"} for k in range(index % 4 + 1)]
    parallel[0]["spawn"] = [{"id": f"r{index}-deep"}]
    spawn = [{"id": f"r{index}-bad", "fault": "error"}] if index % 3 == 0 else []
    return {"id": f"r{index}", "parallel": parallel, "spawn": spawn}


def executions_by_depth(spec: dict[str, Any], depth: int = 0) -> dict[int, int]:
    """Subagent executions the tree makes at each depth (the root is none)."""
    counts: dict[int, int] = {}
    for child in [*spec.get("spawn", []), *spec.get("parallel", [])]:
        counts[depth + 1] = counts.get(depth + 1, 0) + 1
        for d, c in executions_by_depth(child, depth + 1).items():
            counts[d] = counts.get(d, 0) + c
    return counts


class Gate:
    """Holds every root's first model call until ``count`` roots are waiting: the trees run
    at the same time, interleaved in one event loop."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.waiting = 0
        self.open = anyio.Event()

    async def wait(self) -> None:
        self.waiting += 1
        if self.waiting == self.count:
            self.open.set()
        await self.open.wait()


def gated(model: TreeModel, gate: Gate) -> ScriptedProvider:
    async def answer(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if len(messages) == 1 and '"parallel"' in first_user(messages):
            await gate.wait()  # a root's first call
        return await model(messages, tools)

    return ScriptedProvider(answer, usage=USAGE)


def assert_matches_capture(statistics: RuntimeStatistics, capture: TelemetryCapture) -> None:
    """The runtime's statistics are what its own metrics say, depth by depth."""
    depths = {a[n.DEPTH] for a in capture.attribute_sets(n.EXECUTIONS)}
    assert set(statistics.by_depth) == depths
    for depth, figures in statistics.by_depth.items():
        assert figures.executions == capture.value(n.EXECUTIONS, depth=depth)
        assert figures.active == capture.value(n.ACTIVE_COUNT, depth=depth) == 0
        for status, count in figures.completions.items():
            assert count == capture.value(n.COMPLETIONS, depth=depth, status=status)
        for error_type, count in figures.errors.items():
            assert count == capture.value(n.ERRORS, depth=depth, error_type=error_type)
        assert figures.completed == capture.value(n.COMPLETIONS, depth=depth)
        assert figures.failed == capture.value(n.ERRORS, depth=depth)
        assert figures.tokens == capture.histogram(n.TOKENS_CONSUMED, depth=depth).sum
        assert figures.turns == capture.histogram(n.TURNS_USED, depth=depth).sum
        durations = capture.histogram(n.DURATION, depth=depth)
        assert figures.duration_count == durations.count
        assert figures.duration_sum == pytest.approx(durations.sum, rel=1e-9)


async def test_twenty_runtimes_at_once_each_see_exactly_their_own(
    process_wide: TelemetryCapture,
) -> None:
    count = 20
    gate = Gate(count)
    captures = [TelemetryCapture() for _ in range(count)]
    runtimes = [
        Runtime(gated(TreeModel(), gate), telemetry=captures[i].subscriber()) for i in range(count)
    ]
    results: dict[int, Any] = {}

    async def run(i: int) -> None:
        results[i] = await runtimes[i].run(spec_json(tree(i)))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(run, i)

    assert len({r.session_id for r in runtimes}) == count
    for i, (runtime, capture) in enumerate(zip(runtimes, captures, strict=True)):
        spec = tree(i)
        assert results[i].status == "complete"
        statistics = runtime.statistics()
        assert statistics.session_id == runtime.session_id
        assert statistics.at_rest
        expected = executions_by_depth(spec)
        assert {d: s.executions for d, s in statistics.by_depth.items()} == expected
        failed = 1 if spec["spawn"] else 0
        assert dict(statistics.by_depth[1].errors) == ({"execution_failed": 1} if failed else {})
        assert statistics.total.completed == sum(expected.values()) - failed
        assert_matches_capture(statistics, capture)
        # Its spans: one invoke_agent per run of its tree, every span named by its session.
        spans = capture.spans
        agents = [s for s in spans if s.name.startswith("invoke_agent")]
        assert len(agents) == 1 + sum(expected.values())
        assert {s.attributes[SESSION] for s in spans if s.attributes} == {runtime.session_id}
        assert len({s.context.trace_id for s in spans}) == 1, "one trace per runtime's tree"
    assert process_wide.points(n.EXECUTIONS) == []
    assert process_wide.points(n.OPERATION_DURATION) == []
    assert process_wide.spans == ()


async def test_a_runtime_without_providers_of_its_own_records_process_wide(
    process_wide: TelemetryCapture,
) -> None:
    own = TelemetryCapture()
    isolated = Runtime(TreeModel().provider(), telemetry=own.subscriber())
    shared = Runtime(TreeModel().provider())
    await isolated.run(spec_json({"id": "a", "parallel": [{"id": "a1"}, {"id": "a2"}]}))
    await shared.run(spec_json({"id": "b", "parallel": [{"id": "b1"}]}))
    assert own.value(n.EXECUTIONS, depth=1) == 2
    assert process_wide.value(n.EXECUTIONS, depth=1) == 1
    assert {s.attributes[SESSION] for s in own.spans if s.attributes} == {isolated.session_id}
    assert {s.attributes[SESSION] for s in process_wide.spans if s.attributes} == {
        shared.session_id
    }


async def test_one_half_of_its_own_leaves_the_other_half_process_wide(
    process_wide: TelemetryCapture,
) -> None:
    own = TelemetryCapture()
    runtime = Runtime(
        TreeModel().provider(), telemetry=TelemetrySubscriber(meter_provider=own.meter_provider)
    )
    await runtime.run(spec_json({"id": "a", "parallel": [{"id": "a1"}]}))
    assert own.value(n.EXECUTIONS, depth=1) == 1
    assert own.spans == ()
    assert process_wide.points(n.EXECUTIONS) == []
    assert len(process_wide.subagent_spans()) == 1


async def test_an_own_no_op_tracer_provider_makes_no_spans(process_wide: TelemetryCapture) -> None:
    subscriber = TelemetrySubscriber(tracer_provider=trace.NoOpTracerProvider())
    runtime = Runtime(TreeModel().provider(), telemetry=subscriber)
    await runtime.run(spec_json({"id": "a", "parallel": [{"id": "a1"}]}))
    assert process_wide.spans == ()
    assert process_wide.value(n.EXECUTIONS, depth=1) == 1
    assert subscriber.in_flight == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"meter_provider": "http://collector"}, "meter_provider must be an OpenTelemetry"),
        ({"tracer_provider": NoOpMeterProvider()}, "tracer_provider must be an OpenTelemetry"),
    ],
)
def test_a_provider_of_the_wrong_kind_is_a_config_error(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        TelemetrySubscriber(**options)


# -- statistics ----------------------------------------------------------------------------


async def test_statistics_count_every_outcome_by_depth() -> None:
    spec = {
        "id": "root",
        "spawn": [{"id": "bad", "fault": "error"}, {"id": "args", "fault": "bad_args"}],
        "parallel": [{"id": "p1", "spawn": [{"id": "deep"}]}, {"id": "p2"}],
    }
    capture = TelemetryCapture()
    runtime = Runtime(TreeModel().provider(), telemetry=capture.subscriber())
    before = runtime.statistics()
    assert before.by_depth == {}
    assert before.total == SubagentStatistics()
    assert before.at_rest
    result = await runtime.run(spec_json(spec))
    assert result.status == "complete"
    statistics = runtime.statistics()
    depth1, depth2 = statistics.by_depth[1], statistics.by_depth[2]
    # Depth 1: "bad" fails; "args" asks for a spawn with invalid arguments, is told so, and
    # answers. Depth 2: "deep", and the refused spawn of "args" (refusals are executions).
    assert depth1.executions == 4
    assert dict(depth1.completions) == {"complete": 3}
    assert dict(depth1.errors) == {"execution_failed": 1}
    assert depth2.executions == 2
    assert dict(depth2.completions) == {"complete": 1}
    assert dict(depth2.errors) == {"invalid_input": 1}
    assert statistics.total.executions == 6
    assert statistics.total.completed == 4
    assert statistics.total.failed == 2
    assert dict(statistics.total.errors) == {"execution_failed": 1, "invalid_input": 1}
    assert statistics.total.tokens == depth1.tokens + depth2.tokens > 0
    assert statistics.at_rest
    assert_matches_capture(statistics, capture)


async def test_refusals_are_counted_like_the_metrics_count_them() -> None:
    capture = TelemetryCapture()
    runtime = Runtime(
        TreeModel().provider(),
        telemetry=capture.subscriber(),
        quota=QuotaLimits(max_executions=3),
        subagents=SubagentConfig(max_depth=1),
    )
    # One execution, whose own spawn is one level too deep; then three more, one too many.
    await runtime.run(spec_json({"id": "r1", "parallel": [{"id": "a", "spawn": [{"id": "x"}]}]}))
    await runtime.run(spec_json({"id": "r2", "parallel": [{"id": i} for i in "bcd"]}))
    statistics = runtime.statistics()
    assert dict(statistics.by_depth[1].errors) == {"quota_exceeded": 1}
    assert dict(statistics.by_depth[2].errors) == {"max_depth_reached": 1}
    assert statistics.at_rest
    assert_matches_capture(statistics, capture)


async def test_a_snapshot_is_frozen_and_later_runs_do_not_change_it() -> None:
    runtime = Runtime(TreeModel().provider(), telemetry=False)
    await runtime.run(spec_json({"id": "a", "parallel": [{"id": "a1"}]}))
    first = runtime.statistics()
    await runtime.run(spec_json({"id": "b", "parallel": [{"id": "b1"}, {"id": "b2"}]}))
    assert first.total.executions == 1
    assert runtime.statistics().total.executions == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.total.executions = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        first.by_depth[1].completions["complete"] = 9  # type: ignore[index]
    with pytest.raises(TypeError):
        first.by_depth[5] = SubagentStatistics()  # type: ignore[index]
    with pytest.raises(TypeError, match="a snapshot"):
        first.by_depth[1].errors.update(timeout=1)  # type: ignore[attr-defined]


async def test_a_snapshot_travels_like_plain_data() -> None:
    """A service sends statistics to other processes, logs and JSON: they pickle, copy,
    hash and convert like plain values, and stay frozen on the way."""
    runtime = Runtime(TreeModel().provider(), telemetry=False)
    await runtime.run(
        spec_json({"id": "a", "parallel": [{"id": "a1"}, {"id": "a2", "fault": "error"}]})
    )
    statistics = runtime.statistics()
    for copied in (pickle.loads(pickle.dumps(statistics)), copy.deepcopy(statistics)):
        assert copied == statistics
        assert hash(copied) == hash(statistics)
        with pytest.raises(TypeError):
            copied.by_depth[1].completions["complete"] = 5  # type: ignore[index]
    plain = dataclasses.asdict(statistics)
    assert plain["by_depth"][1]["errors"] == {"execution_failed": 1}
    assert json.loads(json.dumps(statistics.to_dict()))["total"]["completions"] == {"complete": 1}


async def test_statistics_hold_with_telemetry_off_and_count_batches_from_python() -> None:
    runtime = Runtime(TreeModel().provider(), telemetry=False, session_id="user-42")
    batch = await runtime.run_batch(
        [task({"id": "t1"}), task({"id": "t2", "fault": "error"}), task({"id": "t3"})]
    )
    assert batch.successful == 2
    statistics = runtime.statistics()
    assert statistics.session_id == "user-42"
    figures = statistics.by_depth[1]
    assert (figures.executions, figures.completed, figures.failed) == (3, 2, 1)
    assert figures.tokens == sum(r.usage.total_tokens for r in batch.results)
    assert figures.turns == sum(r.turns for r in batch.results)
    assert figures.duration_count == 3
    assert figures.to_dict()["errors"] == {"execution_failed": 1}
    assert statistics.to_dict()["by_depth"]["1"]["executions"] == 3


async def test_active_counts_what_runs_now() -> None:
    seen: list[RuntimeStatistics] = []
    runtime: Runtime

    async def answer(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if first_user(messages) == "root":
            if len(messages) == 1:
                return tool_calls(call("subagent", label="c", task_prompt="child"))
            return reply("root done")
        seen.append(runtime.statistics())  # inside the child's own model call
        return reply("child done")

    runtime = Runtime(
        ScriptedProvider(answer), telemetry=False, subagents=SubagentConfig(summary_prompt=None)
    )
    await runtime.run("root")
    assert seen[0].by_depth[1].active == 1
    assert not seen[0].at_rest
    assert seen[0].by_depth[1].executions == 1
    assert runtime.statistics().by_depth[1].active == 0


# -- the session id ------------------------------------------------------------------------


def test_a_runtime_gets_a_new_session_id_unless_given_one() -> None:
    model = ScriptedProvider(lambda m, t: reply("x"))
    first, second = Runtime(model, telemetry=False), Runtime(model, telemetry=False)
    assert first.session_id != second.session_id
    assert str(uuid.UUID(first.session_id)) == first.session_id
    given = Runtime(model, telemetry=False, session_id="tenant-7/chat-3, ü=%;")
    assert given.session_id == given.statistics().session_id == "tenant-7/chat-3, ü=%;"
    with pytest.raises(AttributeError):
        given.session_id = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("session_id", "message"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("x" * 129, "has 129 characters; at most 128"),
        ("a\nb", "not printable"),
        ("a\x00b", "not printable"),
        (" lead", "starts or ends with a space"),
        ("trail ", "starts or ends with a space"),
        (42, "must be a string, got int"),
    ],
)
def test_an_unusable_session_id_is_a_config_error(session_id: object, message: str) -> None:
    model = ScriptedProvider(lambda m, t: reply("x"))
    with pytest.raises(ConfigError, match=message):
        Runtime(model, session_id=session_id)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        Agent(model, session_id=session_id)  # type: ignore[arg-type]


class Looked:
    """What a tool saw of the OTel context while it ran."""

    def __init__(self) -> None:
        self.baggage: list[object] = []
        self.headers: list[dict[str, str]] = []


def looking_tool(looked: Looked, tracer: trace.Tracer) -> Any:
    @tool
    async def lookup(ctx: ToolContext) -> str:
        """Look something up."""
        looked.baggage.append(baggage.get_baggage(SESSION))
        headers: dict[str, str] = {}
        propagate.inject(headers)  # what an instrumented HTTP client would send
        looked.headers.append(headers)
        with tracer.start_as_current_span("library call"):
            pass
        return f"seen by {ctx.run.session_id}"

    return lookup


def looking_model() -> ScriptedProvider:
    """The root calls ``lookup`` and spawns a child that calls it too."""

    def answer(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if any(m.role == "tool" for m in messages):
            return reply("done")
        if first_user(messages) == "root":
            return tool_calls(call("lookup"), call("subagent", label="c", task_prompt="child"))
        return tool_calls(call("lookup"))

    return ScriptedProvider(answer)


def first_user(messages: Sequence[Message]) -> str:
    return next(m.content or "" for m in messages if m.role == "user")


async def test_every_span_carries_the_session_and_a_tool_sees_it_as_baggage() -> None:
    capture = TelemetryCapture()
    looked = Looked()
    lookup = looking_tool(looked, capture.tracer_provider.get_tracer("library"))
    runtime = Runtime(
        looking_model(),
        telemetry=capture.subscriber(),
        tools=[lookup],
        session_id="s-1",
        subagents=SubagentConfig(summary_prompt=None),
    )
    result = await runtime.run("root")
    assert result.status == "complete"
    assert looked.baggage == ["s-1", "s-1"]  # the root's tool call, and the child's
    assert all(h.get("baggage") == f"{SESSION}=s-1" for h in looked.headers)
    assert all("traceparent" in h for h in looked.headers)
    spans = capture.spans
    assert {s.name for s in spans} >= {
        "invoke_agent agent",
        "invoke_agent c",
        "execute_tool lookup",
        "execute_tool subagent",
        "chat scripted",
        "library call",
    }
    assert all(s.attributes and s.attributes[SESSION] == "s-1" for s in spans)
    # Outside the run, the context carries no session any more.
    assert baggage.get_baggage(SESSION) is None


async def test_a_batch_from_python_carries_its_session_as_baggage() -> None:
    """A batch has no root span: its tasks' tools still see the session, and it is gone
    once the batch ends."""
    capture = TelemetryCapture()
    looked = Looked()
    lookup = looking_tool(looked, capture.tracer_provider.get_tracer("library"))
    subscriber = capture.subscriber()
    runtime = Runtime(
        looking_model(), tools=[lookup], session_id="batch-session", telemetry=subscriber
    )
    batch = await runtime.run_batch(
        [{"label": f"t{i}", "task_prompt": "child", "allowed_tools": ["lookup"]} for i in range(3)]
    )
    assert batch.successful == 3
    assert looked.baggage == ["batch-session"] * 3
    assert baggage.get_baggage(SESSION) is None
    assert subscriber.in_flight == 0
    spans = capture.spans_named("library call")
    assert [s.attributes for s in spans] == [{SESSION: "batch-session"}] * 3


async def test_an_untraced_tree_sets_no_baggage_and_tools_read_the_run() -> None:
    """Baggage is for spans: with no tracer, nothing is attached (no cost per run), and a
    tool reads the session from its run."""
    looked = Looked()
    lookup = looking_tool(looked, trace.NoOpTracer())
    untraced = TelemetrySubscriber(tracer_provider=trace.NoOpTracerProvider())
    runtime = Runtime(looking_model(), tools=[lookup], session_id="s-2", telemetry=untraced)
    result = await runtime.run("root")
    assert looked.baggage == [None, None]
    assert [r.output for r in result.children] == ["done"]
    assert untraced.in_flight == 0
    assert "seen by s-2" in [m.content for m in result.messages if m.role == "tool"]


async def test_other_baggage_entries_travel_with_the_session() -> None:
    capture = TelemetryCapture()
    looked = Looked()
    lookup = looking_tool(looked, trace.NoOpTracer())
    runtime = Runtime(
        looking_model(), tools=[lookup], session_id="mine", telemetry=capture.subscriber()
    )
    token = otel_context.attach(baggage.set_baggage("other", "kept"))
    try:
        await runtime.run("child")
    finally:
        otel_context.detach(token)
    assert looked.baggage == ["mine"]
    assert looked.headers[0]["baggage"].split(",") == ["other=kept", f"{SESSION}=mine"]


async def test_a_bare_agent_has_no_session_unless_given_one() -> None:
    capture = TelemetryCapture()
    model = ScriptedProvider(lambda m, t: reply("x"))
    await Agent(model, hooks=[capture.subscriber()]).run("hi")
    await Agent(model, hooks=[capture.subscriber()], session_id="given").run("hi")
    first, second = capture.spans_named("invoke_agent agent")
    assert first.attributes is not None
    assert SESSION not in first.attributes
    assert second.attributes is not None
    assert second.attributes[SESSION] == "given"


def test_the_span_processor_trusts_no_baggage_from_outside() -> None:
    """A client can send any ``baggage`` header; spans started under what a server's
    instrumentation extracts from it are named by no session (only a tree names them)."""
    capture = TelemetryCapture()
    tracer = capture.tracer_provider.get_tracer("library")
    inbound = propagate.extract({"baggage": f"{SESSION}=someone-elses,user.id=u"})
    assert baggage.get_baggage(SESSION, inbound) == "someone-elses"
    with tracer.start_as_current_span("request", context=inbound):
        pass
    (request,) = capture.spans
    assert request.attributes == {}


async def test_the_span_processor_keeps_what_xzatoma_set() -> None:
    """In a tree, a span of its own that names a session keeps it; the others get the
    tree's."""
    capture = TelemetryCapture()
    tracer = capture.tracer_provider.get_tracer("library")

    @tool
    async def lookup() -> str:
        """Look something up."""
        with tracer.start_as_current_span("named", attributes={SESSION: "set-by-hand"}):
            pass
        with tracer.start_as_current_span("unnamed"):
            pass
        return "ok"

    model = ScriptedProvider(
        lambda m, t: reply("done") if m[-1].role == "tool" else tool_calls(call("lookup"))
    )
    await Runtime(model, tools=[lookup], session_id="tree", telemetry=capture.subscriber()).run(
        "go"
    )
    (named,) = capture.spans_named("named")
    (unnamed,) = capture.spans_named("unnamed")
    assert named.attributes == {SESSION: "set-by-hand"}
    assert unnamed.attributes == {SESSION: "tree"}
    assert isinstance(SessionSpanProcessor(), SessionSpanProcessor)


@on_virtual_time
@pytest.mark.parametrize("ending", ["cancelled", "timed out", "raised"])
async def test_no_context_is_left_behind_however_a_traced_run_ends(ending: str) -> None:
    capture = TelemetryCapture()
    subscriber = capture.subscriber()
    model = TreeModel()
    runtime = Runtime(model.provider(), telemetry=subscriber, session_id="s")
    spec = {
        "id": "root",
        "parallel": [{"id": "h1", "fault": "hang"}, {"id": "h2", "fault": "hang"}],
    }
    model.expected_hangs = 2
    before = otel_context.get_current()

    async def run() -> None:
        await runtime.run(spec_json(spec))

    with anyio.fail_after(30):
        if ending == "cancelled":
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await model.all_hanging.wait()
                tg.cancel_scope.cancel()
        elif ending == "timed out":
            result = await runtime.run(spec_json(spec), timeout=5)  # virtual seconds
            assert result.status == "failed"
        else:

            class Stop(Exception):
                pass

            async def stop_when_hanging() -> None:
                await model.all_hanging.wait()
                raise Stop

            with pytest.RaisesGroup(Stop, flatten_subgroups=True):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run)
                    tg.start_soon(stop_when_hanging)
    assert otel_context.get_current() is before
    assert baggage.get_baggage(SESSION) is None
    assert subscriber.in_flight == 0
    statistics = runtime.statistics()
    assert statistics.at_rest
    assert statistics.total.executions == 2
    assert_matches_capture(statistics, capture)


async def test_an_mcp_server_restarted_in_one_session_holds_none_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server started again inside alice's tool call serves bob afterwards: its session's
    task must run in the context its block was opened in, not alice's (her span, her
    session), or bob's requests would be written under them."""
    import sys

    from _mcp_test_server import stdio_command

    from xzatoma import _mcp_stdio
    from xzatoma.mcp import StdioServer, open_servers

    writers: list[object] = []
    write = _mcp_stdio._write_stdin

    async def recorded(*args: Any) -> None:
        writers.append(otel_context.get_value(SESSION_KEY))  # the task each session writes in
        await write(*args)

    monkeypatch.setattr(_mcp_stdio, "_write_stdin", recorded)
    capture = TelemetryCapture()

    def model_calling(*names: str) -> ScriptedProvider:
        def answer(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
            done = sum(1 for m in messages if m.role == "tool")
            if done == len(names):
                return reply("ok")
            name = names[done]
            return tool_calls(call(name, text="hi") if name.endswith("echo") else call(name))

        return ScriptedProvider(answer)

    with anyio.fail_after(60):
        async with open_servers(StdioServer("t", sys.executable, stdio_command()[1:])) as tools:
            names = [t.name for t in tools]
            crash = next(n for n in names if n.endswith("crash"))
            echo = next(n for n in names if n.endswith("echo"))
            for session, calls in (("alice", (crash, echo)), ("bob", (echo,))):
                runtime = Runtime(
                    model_calling(*calls),
                    tools=tools,
                    telemetry=capture.subscriber(),
                    session_id=session,
                )
                assert (await runtime.run("go")).status == "complete"
    assert writers == [None, None], "the first start and the restart in alice's call"


# -- the session id on metrics: only when asked for ----------------------------------------


async def test_the_session_id_is_on_no_metric_by_default() -> None:
    capture = TelemetryCapture()
    runtime = Runtime(TreeModel().provider(), telemetry=capture.subscriber())
    await runtime.run(spec_json({"id": "a", "parallel": [{"id": "a1"}]}))
    names = metric_names(capture)
    assert n.EXECUTIONS in names
    assert n.OPERATION_DURATION in names
    for name in names:
        for attributes in capture.attribute_sets(name):
            assert SESSION not in attributes, name


async def test_metrics_include_session_id_puts_it_on_every_metric() -> None:
    capture = TelemetryCapture()
    subscriber = capture.subscriber(metrics_include_session_id=True)
    first = Runtime(TreeModel().provider(), telemetry=subscriber, session_id="one")
    second = Runtime(TreeModel().provider(), telemetry=subscriber, session_id="two")
    await first.run(spec_json({"id": "a", "parallel": [{"id": "a1"}, {"id": "a2"}]}))
    await second.run(spec_json({"id": "b", "parallel": [{"id": "b1"}]}))
    for name in metric_names(capture):
        for attributes in capture.attribute_sets(name):
            assert attributes.get(SESSION) in ("one", "two"), (name, attributes)
    assert capture.value(n.EXECUTIONS, depth=1, **{SESSION: "one"}) == 2
    assert capture.value(n.EXECUTIONS, depth=1, **{SESSION: "two"}) == 1
    assert capture.value(n.ACTIVE_COUNT, depth=1, **{SESSION: "one"}) == 0
    assert subscriber.in_flight == 0


def metric_names(capture: TelemetryCapture) -> set[str]:
    data = capture.metric_reader.get_metrics_data()
    assert data is not None
    return {
        metric.name
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
