"""Telemetry: exact metric values and span trees from real agent trees, on every path.

Every test drives a real ``Runtime`` with a scripted model and reads what the OTel SDK
recorded through ``capture_telemetry()`` (an in-memory metric reader and span exporter).
Whatever the path (complete, incomplete, each error type, timeout, cancellation, a tool that
raises), the invariant at rest is checked: per depth, executions = completions + errors, and
active = 0.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import anyio
import pytest
from _clock import on_virtual_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.metrics import Meter, NoOpMeterProvider
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind, StatusCode

from xzatoma import (
    Agent,
    Completion,
    Hook,
    Message,
    Provider,
    ProviderError,
    QuotaLimits,
    Runtime,
    SubagentConfig,
    SubagentTool,
    Tool,
    ToolCall,
    ToolSpec,
    Usage,
    tool,
)
from xzatoma.telemetry import (
    SubagentMetrics,
    TelemetryCapture,
    TelemetrySubscriber,
    capture_telemetry,
    configure,
)
from xzatoma.telemetry import _names as n
from xzatoma.telemetry._config import configuration, state
from xzatoma.testing import ScriptedProvider, call, reply, tool_calls

USAGE = Usage(requests=1, prompt_tokens=10, completion_tokens=5, total_tokens=15)
NO_SUMMARY = SubagentConfig(summary_prompt=None)


pytestmark = pytest.mark.anyio


@pytest.fixture
def captured() -> Iterator[TelemetryCapture]:
    with capture_telemetry() as capture:
        yield capture


# -- helpers ---------------------------------------------------------------------------------
Step: TypeAlias = Completion | str | Exception
"""One scripted reply: an answer, or an exception the model call raises."""


def scripted(plan: Mapping[str, Sequence[Step]], *, usage: Usage = USAGE) -> ScriptedProvider:
    """A model keyed on each conversation's first message: its n-th reply is ``plan[...][n]``.

    A step is a reply (``Completion`` or text) or an exception to raise. Past the end of its
    plan an agent answers ``done``, so a summary turn gets an answer.
    """

    def answer(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion | str:
        turn = sum(1 for m in messages if m.role == "assistant")
        steps = plan[messages[0].content or ""]
        step = steps[turn] if turn < len(steps) else "done"
        if isinstance(step, Exception):
            raise step
        assert isinstance(step, Completion | str)
        return step

    return ScriptedProvider(answer, usage=usage)


def task(label: str, prompt: str, **more: object) -> dict[str, object]:
    return {"label": label, "task_prompt": prompt, **more}


def spawn(label: str, prompt: str, **more: object) -> ToolCall:
    return call("subagent", task(label, prompt, **more))


def make_runtime(
    provider: Provider,
    *,
    subagents: SubagentConfig = NO_SUMMARY,
    quota: QuotaLimits | None = None,
    hooks: Sequence[Hook] = (),
) -> tuple[Runtime, TelemetrySubscriber]:
    subscriber = TelemetrySubscriber()
    runtime = Runtime(provider, subagents=subagents, quota=quota, telemetry=subscriber, hooks=hooks)
    return runtime, subscriber


def assert_at_rest(captured: TelemetryCapture, subscriber: TelemetrySubscriber | None) -> None:
    """executions = completions + errors and active = 0 at every depth; nothing in flight."""
    depths = {a[n.DEPTH] for a in captured.attribute_sets(n.EXECUTIONS)}
    assert depths, "no subagent execution was recorded"
    for depth in depths:
        executions = captured.value(n.EXECUTIONS, depth=depth)
        completions = captured.value(n.COMPLETIONS, depth=depth)
        errors = captured.value(n.ERRORS, depth=depth)
        assert executions == completions + errors, f"depth {depth}"
        assert captured.value(n.ACTIVE_COUNT, depth=depth) == 0, f"depth {depth}"
        assert captured.histogram(n.DURATION, depth=depth).count == executions
    if subscriber is not None:
        assert subscriber.in_flight == 0


def hanging_tool(expected: int) -> tuple[Tool[Any], anyio.Event]:
    """A ``hang`` tool that waits forever; the event is set once ``expected`` calls wait."""
    all_in = anyio.Event()
    entered: list[None] = []

    @tool
    async def hang() -> str:
        """Wait for something that never happens."""
        entered.append(None)
        if len(entered) == expected:
            all_in.set()
        await anyio.Event().wait()
        return "unreachable"

    return hang, all_in


class NoWithModelProvider:
    """A provider that cannot switch models (no ``with_model``)."""

    def __init__(self, inner: ScriptedProvider) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = inner.model

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        return await self.inner.complete(messages, tools)


# -- the complete and incomplete paths -------------------------------------------------------
async def test_complete_tree_exact_values_per_depth(captured: TelemetryCapture) -> None:
    plan: dict[str, list[Step]] = {
        "root": [
            tool_calls(
                spawn("a", "a"),
                call("parallel_subagent", tasks=[task(f"p{i}", "leaf") for i in range(3)]),
            ),
            "root done",
        ],
        "a": [tool_calls(spawn("b", "leaf")), "a done"],
        "leaf": ["leaf done"],
    }
    runtime, subscriber = make_runtime(scripted(plan))
    result = await runtime.run("root")
    assert result.status == "complete"

    assert captured.value(n.EXECUTIONS, depth=1) == 4
    assert captured.value(n.EXECUTIONS, depth=2) == 1
    assert captured.value(n.COMPLETIONS, depth=1, status="complete") == 4
    assert captured.value(n.COMPLETIONS, depth=2, status="complete") == 1
    assert captured.attribute_sets(n.ERRORS) == []
    turns = captured.histogram(n.TURNS_USED, depth=1)
    assert (turns.count, turns.sum) == (4, 5)  # a: tool call + answer; three leaves: 1 each
    tokens = captured.histogram(n.TOKENS_CONSUMED, depth=1)
    assert (tokens.count, tokens.sum) == (4, 75)
    assert captured.histogram(n.TOKENS_CONSUMED, depth=2).sum == 15
    assert captured.histogram(n.DURATION, depth=1, status="complete").count == 4
    assert captured.value(n.BATCHES, depth=1, status="complete") == 1
    size = captured.histogram(n.BATCH_SIZE, depth=1)
    assert (size.count, size.sum) == (1, 3)
    assert_at_rest(captured, subscriber)


async def test_incomplete_when_no_turn_is_left_for_the_summary(
    captured: TelemetryCapture,
) -> None:
    plan: dict[str, list[Step]] = {
        "root": [tool_calls(spawn("x", "short", max_turns=1)), "ok"],
        "short": ["answer"],
    }
    runtime, subscriber = make_runtime(scripted(plan), subagents=SubagentConfig())
    result = await runtime.run("root")
    assert result.children[0].status == "incomplete"

    assert captured.value(n.COMPLETIONS, depth=1, status="incomplete") == 1
    assert captured.value(n.COMPLETIONS, depth=1, status="complete") == 0
    assert captured.histogram(n.DURATION, depth=1, status="incomplete").count == 1
    assert captured.histogram(n.TURNS_USED, depth=1).sum == 1
    assert_at_rest(captured, subscriber)


async def test_python_batch_counts_batch_and_its_tasks(captured: TelemetryCapture) -> None:
    plan: dict[str, list[Step]] = {"ok": ["fine"], "bad": [ProviderError("down")]}
    runtime, subscriber = make_runtime(scripted(plan))
    batch = await runtime.run_batch([task("a", "ok"), task("b", "bad"), task("c", "ok")])
    assert batch.status == "partial"

    assert captured.value(n.EXECUTIONS, depth=1) == 3
    assert captured.value(n.ERRORS, depth=1, error_type="execution_failed") == 1
    assert captured.attribute_sets(n.BATCHES) == [{n.DEPTH: 1, n.STATUS: "partial"}]
    assert captured.histogram(n.BATCH_SIZE, depth=1).sum == 3
    assert_at_rest(captured, subscriber)


# -- every error type ------------------------------------------------------------------------
async def test_quota_exceeded_refusal_and_running_stop(captured: TelemetryCapture) -> None:
    plan: dict[str, list[Step]] = {
        "root": [tool_calls(spawn("a", "leaf")), tool_calls(spawn("b", "leaf")), "ok"]
    }
    plan["leaf"] = ["leaf done"]
    runtime, subscriber = make_runtime(scripted(plan), quota=QuotaLimits(max_executions=1))
    await runtime.run("root")
    assert captured.value(n.EXECUTIONS, depth=1) == 2
    assert captured.value(n.COMPLETIONS, depth=1) == 1
    assert captured.value(n.ERRORS, depth=1, error_type="quota_exceeded") == 1
    assert captured.histogram(n.TURNS_USED, depth=1).count == 1  # the refusal made no call
    assert_at_rest(captured, subscriber)


async def test_quota_exceeded_while_running_keeps_its_tokens(captured: TelemetryCapture) -> None:
    @tool
    async def noop() -> str:
        """Do nothing."""
        return "nothing"

    plan: dict[str, list[Step]] = {
        "root": [tool_calls(spawn("a", "busy")), "ok"],
        "busy": [tool_calls(call("noop"))],
    }
    runtime, subscriber = make_runtime(scripted(plan), quota=QuotaLimits(max_total_tokens=20))
    result = await runtime.run("root", tools=[noop])
    assert result.children[0].error_type == "quota_exceeded"

    assert captured.value(n.ERRORS, depth=1, error_type="quota_exceeded") == 1
    assert captured.histogram(n.DURATION, depth=1, status="failed").count == 1
    tokens = captured.histogram(n.TOKENS_CONSUMED, depth=1)
    assert (tokens.count, tokens.sum) == (1, 15)  # failed executions' tokens count too
    assert_at_rest(captured, subscriber)


async def test_max_depth_reached_is_recorded_at_the_refused_depth(
    captured: TelemetryCapture,
) -> None:
    plan: dict[str, list[Step]] = {
        "root": [tool_calls(spawn("a", "a")), "ok"],
        "a": [tool_calls(spawn("d", "leaf"))],
    }
    config = SubagentConfig(max_depth=1, summary_prompt=None)
    runtime, subscriber = make_runtime(scripted(plan), subagents=config)
    await runtime.run("root")
    assert captured.value(n.COMPLETIONS, depth=1) == 1
    assert captured.value(n.EXECUTIONS, depth=2) == 1
    assert captured.value(n.ERRORS, depth=2, error_type="max_depth_reached") == 1
    assert captured.histogram(n.TURNS_USED, depth=2).count == 0
    assert_at_rest(captured, subscriber)


async def test_invalid_input_from_each_kind_of_bad_call(captured: TelemetryCapture) -> None:
    plan: dict[str, list[Step]] = {
        "root": [
            tool_calls(
                spawn(" ", "leaf"),  # blank label
                spawn("t", "leaf", allowed_tools=["nope"]),  # a tool the parent lacks
                call("parallel_subagent", tasks=[]),  # an empty batch
            ),
            "ok",
        ]
    }
    runtime, subscriber = make_runtime(scripted(plan))
    await runtime.run("root")
    assert captured.value(n.EXECUTIONS, depth=1) == 3
    assert captured.value(n.ERRORS, depth=1, error_type="invalid_input") == 3
    assert captured.histogram(n.DURATION, depth=1, status="failed").count == 3
    assert_at_rest(captured, subscriber)


async def test_initialization_failed_when_the_model_cannot_be_switched(
    captured: TelemetryCapture,
) -> None:
    plan: dict[str, list[Step]] = {"root": [tool_calls(spawn("a", "leaf")), "ok"], "leaf": ["x"]}
    provider = NoWithModelProvider(scripted(plan))
    config = SubagentConfig(model="another-model", summary_prompt=None)
    subscriber = TelemetrySubscriber()
    # A Runtime refuses this config when it is built; a bare agent's tool finds it at spawn.
    await Agent(provider, tools=[SubagentTool(config)], hooks=[subscriber]).run("root")
    assert captured.value(n.ERRORS, depth=1, error_type="initialization_failed") == 1
    assert_at_rest(captured, subscriber)


async def test_execution_failed_when_the_provider_raises(captured: TelemetryCapture) -> None:
    plan: dict[str, list[Step]] = {
        "root": [tool_calls(spawn("a", "bad")), "ok"],
        "bad": [ProviderError("down")],
    }
    runtime, subscriber = make_runtime(scripted(plan))
    await runtime.run("root")
    assert captured.value(n.ERRORS, depth=1, error_type="execution_failed") == 1
    assert captured.histogram(n.TURNS_USED, depth=1).count == 0
    assert captured.histogram(n.TOKENS_CONSUMED, depth=1).count == 0
    assert_at_rest(captured, subscriber)


@on_virtual_time
async def test_timeout(captured: TelemetryCapture) -> None:
    hang, entered = hanging_tool(expected=1)
    plan: dict[str, list[Step]] = {
        "root": [tool_calls(spawn("a", "slow")), "ok"],
        "slow": [tool_calls(call("hang"))],
    }
    config = SubagentConfig(timeout=5, summary_prompt=None)
    runtime, subscriber = make_runtime(scripted(plan), subagents=config)
    result = await runtime.run("root", tools=[hang])
    assert entered.is_set()  # the deadline came while the child was in its tool
    assert (result.children[0].error_type, result.children[0].duration) == ("timeout", 5.0)

    assert captured.value(n.ERRORS, depth=1, error_type="timeout") == 1
    duration = captured.histogram(n.DURATION, depth=1, status="failed")
    assert (duration.count, duration.sum) == (1, 5.0)
    assert captured.histogram(n.TOKENS_CONSUMED, depth=1).sum == 15
    (hang_span,) = captured.spans_named("execute_tool hang")
    assert hang_span.attributes is not None
    assert hang_span.attributes[n.OTEL_ERROR_TYPE] == "cancelled"
    assert_at_rest(captured, subscriber)


async def test_cancelling_the_root_records_cancelled_children(captured: TelemetryCapture) -> None:
    hang, all_in = hanging_tool(expected=2)
    plan: dict[str, list[Step]] = {
        "root": [tool_calls(call("parallel_subagent", tasks=[task("c1", "s"), task("c2", "s")]))],
        "s": [tool_calls(call("hang"))],
    }
    runtime, subscriber = make_runtime(scripted(plan))
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(runtime.run, "root", tools=[hang]))
        await all_in.wait()
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()

    assert captured.value(n.EXECUTIONS, depth=1) == 2
    assert captured.value(n.ERRORS, depth=1, error_type="cancelled") == 2
    assert captured.histogram(n.DURATION, depth=1, status="cancelled").count == 2
    assert captured.histogram(n.TOKENS_CONSUMED, depth=1).sum == 30
    assert captured.value(n.BATCHES, depth=1) == 1
    (root,) = captured.spans_named("invoke_agent agent")
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes is not None
    assert root.attributes[n.OTEL_ERROR_TYPE] == "cancelled"
    assert_at_rest(captured, subscriber)


async def test_a_tool_that_raises_leaves_the_run_complete(captured: TelemetryCapture) -> None:
    @tool
    async def boom() -> str:
        """Always fails."""
        raise RuntimeError("kaput")

    plan: dict[str, list[Step]] = {
        "root": [tool_calls(spawn("a", "t")), "ok"],
        "t": [tool_calls(call("boom")), "fine"],
    }
    runtime, subscriber = make_runtime(scripted(plan))
    await runtime.run("root", tools=[boom])
    assert captured.value(n.COMPLETIONS, depth=1, status="complete") == 1
    (span,) = captured.spans_named("execute_tool boom")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes[n.OTEL_ERROR_TYPE] == "tool_error"
    assert_at_rest(captured, subscriber)


@st.composite
def trees(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    """A random spec: children by ``subagent`` or ``parallel_subagent``, and a fault or not."""
    fault = draw(st.sampled_from([None, None, "error", "bad_args", "deep"]))
    spec: dict[str, Any] = {"fault": fault, "spawn": [], "parallel": []}
    if depth < 2 and fault is None:
        spec["spawn"] = draw(st.lists(trees(depth + 1), max_size=2))
        spec["parallel"] = draw(st.lists(trees(depth + 1), max_size=3))
    return spec


def tree_model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion | str:
    import json

    spec = json.loads(messages[0].content or "{}")
    if len(messages) > 1:  # the tool results are in: answer
        return "done"
    if spec["fault"] == "error":
        raise ProviderError("injected")
    if spec["fault"] == "bad_args":
        return tool_calls(call("subagent", "{not json"))
    if spec["fault"] == "deep":  # a chain down to the depth limit and one past it
        return tool_calls(spawn("deep", json.dumps({**spec, "fault": "deep"})))
    calls = [spawn("s", json.dumps(c)) for c in spec["spawn"]]
    if spec["parallel"]:
        batch = [task("p", json.dumps(c)) for c in spec["parallel"]]
        calls.append(call("parallel_subagent", tasks=batch))
    return tool_calls(*calls) if calls else "leaf"


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(spec=trees())
def test_invariant_holds_on_random_trees(spec: dict[str, Any]) -> None:
    import json

    async def run() -> None:
        with capture_telemetry() as captured:
            runtime, subscriber = make_runtime(
                ScriptedProvider(tree_model, usage=USAGE),
                subagents=SubagentConfig(max_depth=3, summary_prompt=None),
            )
            await runtime.run(json.dumps(spec))
        if captured.attribute_sets(n.EXECUTIONS):
            assert_at_rest(captured, subscriber)

    anyio.run(run)


# -- spans -----------------------------------------------------------------------------------
def _by_id(spans: Sequence[ReadableSpan]) -> dict[int, ReadableSpan]:
    return {s.context.span_id: s for s in spans if s.context is not None}


def _parent(span: ReadableSpan, spans: Mapping[int, ReadableSpan]) -> ReadableSpan | None:
    return spans.get(span.parent.span_id) if span.parent is not None else None


async def test_spans_nest_across_subagent_and_parallel_subagent(
    captured: TelemetryCapture,
) -> None:
    plan: dict[str, list[Step]] = {
        "root": [tool_calls(spawn("a", "a")), "root done"],
        "a": [tool_calls(call("parallel_subagent", tasks=[task("p1", "x"), task("p2", "x")]))],
        "x": ["leaf"],
    }
    runtime, subscriber = make_runtime(scripted(plan))
    outer_tracer = captured.tracer_provider.get_tracer("the-caller")
    with outer_tracer.start_as_current_span("caller"):
        await runtime.run("root")
    spans = _by_id(captured.spans)
    assert len({s.context.trace_id for s in captured.spans if s.context is not None}) == 1

    (root,) = captured.spans_named("invoke_agent agent")
    assert _parent(root, spans) is captured.spans_named("caller")[0]
    (spawn_span,) = captured.spans_named("execute_tool subagent")
    assert _parent(spawn_span, spans) is root
    runs = captured.subagent_spans()
    by_label = {s.attributes[n.XZ_LABEL]: s for s in runs if s.attributes is not None}
    assert set(by_label) == {"a", "p1", "p2"}
    assert _parent(by_label["a"], spans) is spawn_span
    (batch_span,) = captured.spans_named("execute_tool parallel_subagent")
    assert _parent(batch_span, spans) is by_label["a"]
    for label, depth in (("a", 1), ("p1", 2), ("p2", 2)):
        attributes = by_label[label].attributes
        assert attributes is not None
        assert attributes[n.XZ_DEPTH] == depth
        assert attributes[n.GEN_AI_OPERATION_NAME] == "invoke_agent"
        for key in (n.GEN_AI_USAGE_INPUT_TOKENS, n.GEN_AI_USAGE_OUTPUT_TOKENS):
            tokens = attributes[key]
            assert isinstance(tokens, int)
            assert tokens > 0
        if label != "a":
            assert _parent(by_label[label], spans) is batch_span
    chats = captured.spans_named("chat scripted")
    assert len(chats) == 2 + 2 + 2  # root 2, a 2 (its batch, then its answer), leaves 1 each
    for chat in chats:
        parent = _parent(chat, spans)
        assert parent is not None
        assert parent.name.startswith("invoke_agent")
        assert chat.kind is SpanKind.CLIENT
    assert by_label["p1"].attributes is not None
    assert by_label["p1"].attributes[n.XZ_TURNS] == 1
    assert subscriber.in_flight == 0


# -- GenAI metrics and bucket boundaries -----------------------------------------------------
async def test_gen_ai_metrics_at_every_model_call(captured: TelemetryCapture) -> None:
    plan: dict[str, list[Step]] = {
        "root": [tool_calls(spawn("a", "bad")), "ok"],
        "bad": [ProviderError("down")],
    }
    runtime, _ = make_runtime(scripted(plan))
    await runtime.run("root")

    base = {
        n.GEN_AI_OPERATION_NAME: "chat",
        n.GEN_AI_PROVIDER_NAME: "scripted",
        n.GEN_AI_REQUEST_MODEL: "scripted",
    }
    ok = base  # gen_ai.response.model is the endpoint's choice: on the chat span only
    usage_sets = captured.attribute_sets(n.TOKEN_USAGE)
    assert sorted(usage_sets, key=str) == sorted(
        [{**ok, n.GEN_AI_TOKEN_TYPE: "input"}, {**ok, n.GEN_AI_TOKEN_TYPE: "output"}], key=str
    )
    inputs = captured.histogram(n.TOKEN_USAGE, **{n.GEN_AI_TOKEN_TYPE: "input"})
    outputs = captured.histogram(n.TOKEN_USAGE, **{n.GEN_AI_TOKEN_TYPE: "output"})
    assert (inputs.count, inputs.sum, outputs.count, outputs.sum) == (2, 20, 2, 10)
    assert ok in captured.attribute_sets(n.OPERATION_DURATION)
    assert captured.histogram(n.OPERATION_DURATION, **ok).count == 3  # 2 answers + 1 failure
    failed = captured.histogram(n.OPERATION_DURATION, **{n.OTEL_ERROR_TYPE: "execution_failed"})
    assert failed.count == 1
    assert {**base, n.OTEL_ERROR_TYPE: "execution_failed"} in captured.attribute_sets(
        n.OPERATION_DURATION
    )


async def test_histograms_use_the_advisory_bucket_boundaries(captured: TelemetryCapture) -> None:
    plan: dict[str, list[Step]] = {
        "root": [tool_calls(call("parallel_subagent", tasks=[task("a", "x")])), "ok"],
        "x": ["y"],
    }
    runtime, _ = make_runtime(scripted(plan))
    await runtime.run("root")
    doubling = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 102.4, 204.8, 409.6]
    times_four = [4.0**k for k in range(14)]
    expected = {
        n.DURATION: doubling,
        n.TOKENS_CONSUMED: times_four,
        n.TURNS_USED: [1, 2, 3, 5, 8, 13, 21, 34, 55, 100],
        n.BATCH_SIZE: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
        n.TOKEN_USAGE: times_four,
        n.OPERATION_DURATION: [0.01 * 2**k for k in range(14)],
    }
    for name, bounds in expected.items():
        recorded = captured.histogram(name).explicit_bounds
        assert recorded == pytest.approx(bounds), name
    assert times_four[-1] == 67108864


# -- SubagentMetrics, the recorder -----------------------------------------------------------
def test_recorder_counts_on_creation_and_records_once(captured: TelemetryCapture) -> None:
    recorder = SubagentMetrics("label", 2)
    assert captured.value(n.EXECUTIONS, depth=2) == 1
    assert captured.value(n.ACTIVE_COUNT, depth=2) == 1
    assert recorder.record_completion(3, 120, "complete", duration=1.5) is True
    assert recorder.record_completion(3, 120, "complete") is False
    assert recorder.record_error("timeout") is False
    assert captured.value(n.COMPLETIONS, depth=2, status="complete") == 1
    assert captured.value(n.ERRORS, depth=2) == 0
    assert captured.value(n.ACTIVE_COUNT, depth=2) == 0
    duration = captured.histogram(n.DURATION, depth=2, status="complete")
    assert (duration.count, duration.sum) == (1, 1.5)
    assert captured.histogram(n.TURNS_USED, depth=2).sum == 3
    assert captured.histogram(n.TOKENS_CONSUMED, depth=2).sum == 120
    assert "label" not in str(captured.attribute_sets(n.EXECUTIONS))


def test_recorder_error_then_completion_is_ignored(captured: TelemetryCapture) -> None:
    recorder = SubagentMetrics("x", 1)
    assert recorder.record_error("quota_exceeded") is True
    assert recorder.record_completion(1, 1) is False
    assert captured.value(n.ERRORS, depth=1, error_type="quota_exceeded") == 1
    assert captured.histogram(n.TURNS_USED).count == 0  # no model call was made
    assert captured.histogram(n.DURATION, depth=1, status="failed").count == 1
    assert_at_rest(captured, None)


def test_recorder_rejects_unbounded_values(captured: TelemetryCapture) -> None:
    recorder = SubagentMetrics("x", 1)
    with pytest.raises(ValueError, match="error_type"):
        recorder.record_error("some label")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status"):
        recorder.record_completion(1, 1, "failed")  # type: ignore[arg-type]
    assert not recorder.recorded
    recorder.record_error("invalid_input")
    assert_at_rest(captured, None)


def test_recorder_as_context_manager_records_execution_failed_on_exception(
    captured: TelemetryCapture,
) -> None:
    with pytest.raises(KeyError), SubagentMetrics("x", 1):
        raise KeyError("boom")
    with SubagentMetrics("y", 1):
        pass  # nothing recorded: counted as a failure so the invariant holds
    with SubagentMetrics("z", 1) as recorded:
        recorded.record_completion(1, 10, "incomplete")
    assert captured.value(n.ERRORS, depth=1, error_type="execution_failed") == 2
    assert captured.value(n.COMPLETIONS, depth=1, status="incomplete") == 1
    assert_at_rest(captured, None)


async def test_recorder_as_context_manager_records_cancelled_on_cancellation(
    captured: TelemetryCapture,
) -> None:
    with anyio.CancelScope() as scope, SubagentMetrics("x", 3):
        scope.cancel()
        await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert captured.value(n.ERRORS, depth=3, error_type="cancelled") == 1
    assert captured.histogram(n.DURATION, depth=3, status="cancelled").count == 1
    assert_at_rest(captured, None)


# -- configuration and never-fatal ----------------------------------------------------------
async def test_a_subscriber_made_before_configure_follows_it() -> None:
    plan: dict[str, list[Step]] = {"root": [tool_calls(spawn("a", "x")), "ok"], "x": ["y"]}
    runtime, subscriber = make_runtime(scripted(plan))  # made while nothing is configured
    await runtime.run("root")  # to the no-op API: nothing recorded, nothing raised
    with capture_telemetry() as captured:
        await runtime.run("root")
    assert captured.value(n.EXECUTIONS, depth=1) == 1
    assert_at_rest(captured, subscriber)


async def test_with_nothing_configured_the_runtime_records_to_the_no_op_api() -> None:
    configure()
    plan: dict[str, list[Step]] = {"root": [tool_calls(spawn("a", "x")), "ok"], "x": ["y"]}
    result = await Runtime(scripted(plan)).run("root")
    assert result.status == "complete"


async def test_a_raising_hook_is_logged_once_and_telemetry_goes_on(
    captured: TelemetryCapture, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("hook bug")

    plan: dict[str, list[Step]] = {
        "root": [tool_calls(spawn("a", "x"), spawn("b", "x")), "ok"],
        "x": ["y"],
    }
    runtime, subscriber = make_runtime(scripted(plan), hooks=[broken])
    with caplog.at_level(logging.ERROR):
        result = await runtime.run("root")
    assert result.status == "complete"
    assert len([r for r in caplog.records if "disabled" in r.getMessage()]) == 1
    assert captured.value(n.COMPLETIONS, depth=1) == 2
    assert_at_rest(captured, subscriber)


class _RaisingProcessor(SpanProcessor):
    def on_end(self, span: ReadableSpan) -> None:
        raise RuntimeError("span exporter down")


async def test_a_broken_span_pipeline_turns_tracing_off_and_metrics_go_on(
    captured: TelemetryCapture, caplog: pytest.LogCaptureFixture
) -> None:
    broken = TracerProvider(shutdown_on_exit=False)
    broken.add_span_processor(_RaisingProcessor())
    configure(captured.meter_provider, broken)
    plan: dict[str, list[Step]] = {
        "root": [tool_calls(spawn("a", "x"), spawn("b", "x")), "ok"],
        "x": ["y"],
    }
    runtime, subscriber = make_runtime(scripted(plan))
    with caplog.at_level(logging.ERROR, logger="xzatoma.telemetry"):
        result = await runtime.run("root")
    assert result.status == "complete"
    assert [r.name for r in caplog.records] == ["xzatoma.telemetry"]
    assert "tracing is off" in caplog.records[0].getMessage()
    assert captured.value(n.COMPLETIONS, depth=1) == 2
    assert_at_rest(captured, subscriber)


class _BrokenMeterProvider(NoOpMeterProvider):
    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> Meter:
        raise RuntimeError("meter provider down")


async def test_a_broken_meter_provider_turns_metrics_off_and_spans_go_on(
    captured: TelemetryCapture, caplog: pytest.LogCaptureFixture
) -> None:
    configure(_BrokenMeterProvider(), captured.tracer_provider)
    plan: dict[str, list[Step]] = {"root": [tool_calls(spawn("a", "x")), "ok"], "x": ["y"]}
    runtime, subscriber = make_runtime(scripted(plan))
    with caplog.at_level(logging.ERROR, logger="xzatoma.telemetry"):
        result = await runtime.run("root")
    assert result.status == "complete"
    assert len(caplog.records) == 1
    assert "metrics is off" in caplog.records[0].getMessage()
    assert len(captured.subagent_spans()) == 1
    assert len(captured.spans_named("chat scripted")) == 3
    assert subscriber.in_flight == 0


async def test_metrics_switching_off_mid_run_still_brings_active_back_to_zero(
    captured: TelemetryCapture, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xzatoma.telemetry._tally import Tally

    def broken(*args: object) -> None:
        raise RuntimeError("meter down")

    # Tally.add counts batches and dollars; the scripted model costs nothing, so here it is
    # used only at the batch's end.
    monkeypatch.setattr(Tally, "add", broken)
    plan: dict[str, list[Step]] = {
        "root": [tool_calls(spawn("p", "parent")), "ok"],
        "parent": [tool_calls(call("parallel_subagent", tasks=[task("t", "x")])), "done"],
        "x": ["y"],
    }
    runtime, subscriber = make_runtime(scripted(plan))
    with caplog.at_level(logging.ERROR, logger="xzatoma.telemetry"):
        result = await runtime.run("root")
    assert result.status == "complete"
    assert len(caplog.records) == 1
    # "p" was still running when metrics went off: closed as execution_failed, not left active
    assert captured.value(n.ERRORS, depth=1, error_type="execution_failed") == 1
    assert_at_rest(captured, subscriber)


async def test_a_tracer_provider_that_cannot_load_turns_spans_off_and_metrics_go_on(
    monkeypatch: pytest.MonkeyPatch,
    captured: TelemetryCapture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from opentelemetry import trace

    if trace._TRACER_PROVIDER is not None:
        pytest.skip("a global tracer provider is set in this process")
    configure(meter_provider=configuration().meter_provider)  # metrics only, global tracing
    monkeypatch.setenv("OTEL_PYTHON_TRACER_PROVIDER", "no_such_provider")
    monkeypatch.setattr(state, "_global_marker", object())  # ask the API again
    subscriber = TelemetrySubscriber()
    provider = ScriptedProvider(
        [tool_calls(call("subagent", label="a", task_prompt="go")), reply("child"), reply("done")]
    )
    runtime = Runtime(provider, subagents=NO_SUMMARY, telemetry=subscriber)
    with caplog.at_level(logging.ERROR, logger="xzatoma.telemetry"):
        result = await runtime.agent().run("x")

    assert result.status == "complete"
    assert captured.value(n.EXECUTIONS, depth=1) == 1
    assert not subscriber._spans_on
    assert sum("spans failed on run_started" in r.getMessage() for r in caplog.records) == 1


async def test_tool_calls_read_from_text_are_counted_and_on_the_chat_span(
    captured: TelemetryCapture,
) -> None:
    from dataclasses import replace

    written = replace(tool_calls(spawn("a", "t"), spawn("b", "t")), tool_calls_from_text=True)
    plan: dict[str, list[Step]] = {"root": [written, "ok"], "t": ["leaf"]}
    runtime, subscriber = make_runtime(scripted(plan))
    await runtime.run("root")
    assert captured.value(n.TEXT_TOOL_CALLS, depth=0) == 2
    chats = captured.spans_named("chat scripted")
    marked = [s.attributes.get(n.XZ_TOOL_CALLS_FROM_TEXT) for s in chats if s.attributes]
    assert [m for m in marked if m is not None] == [2]  # the one reply written as text
    assert_at_rest(captured, subscriber)
