"""``TelemetrySubscriber``: the instrument that turns what runs do into OTel metrics and spans.

Metrics: a :class:`SubagentMetrics` per subagent execution (``subagent_started`` to
``subagent_ended``), the batch instruments at ``batch_ended``, the GenAI client instruments
at every ``model_call_ended``. Spans: ``invoke_agent`` per run, ``execute_tool`` per tool
call, ``chat`` per model call, each made the *current* span while its work runs (attached to
the context of the task doing it, detached at its end), so a span a tool opens, an HTTP
client's instrumentation span under ``chat``, and a child's ``invoke_agent`` under
``execute_tool subagent`` all nest where they happened. The two halves are independent: if
either raises (a broken provider, processor or exporter), it is logged once and switched off
for this subscriber, and the other half and the run go on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextvars import Token
from typing import TypeVar, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .._hooks import Instrument
from .._result import ANSWERED, AnswerStatus
from .._run import Batch, ModelCall, Run
from .._tools import ToolContext, ToolResult
from . import _names as n
from ._config import state
from ._metrics import (
    NO_EXEMPLARS,
    current_instruments,
    depth_attributes,
    gen_ai_attributes,
    pair_attributes,
    tool_attributes,
)
from ._recorder import SubagentMetrics

__all__ = ("TelemetrySubscriber",)

logger = logging.getLogger("xzatoma.telemetry")

_Current = tuple[Span, Token[otel_context.Context]]
_T = TypeVar("_T")
"""A span and the token that made it current (to detach at its end)."""


class TelemetrySubscriber(Instrument):
    """Records xzatoma's runs as OpenTelemetry metrics and spans.

    ``Runtime(telemetry=None)`` subscribes one; pass ``hooks=[TelemetrySubscriber()]`` to an
    :class:`xzatoma.Agent` to instrument a bare agent. It records to the providers of
    :func:`xzatoma.telemetry.configure` as they are at each run, so it may be made before
    telemetry is configured. With only OTel's no-op API, a run makes no span objects at all.

    Args:
        metrics: Record the ``subagent.*`` and ``gen_ai.client.*`` instruments.
        traces: Record the ``invoke_agent``, ``execute_tool`` and ``chat`` spans.
    """

    __slots__ = ("_executions", "_metrics_on", "_spans", "_spans_on")

    def __init__(self, *, metrics: bool = True, traces: bool = True) -> None:
        self._metrics_on = metrics
        self._spans_on = traces
        self._executions: dict[int, SubagentMetrics] = {}
        self._spans: dict[int, _Current] = {}

    def __repr__(self) -> str:
        return f"TelemetrySubscriber(metrics={self._metrics_on}, traces={self._spans_on})"

    @property
    def in_flight(self) -> int:
        """Executions and spans started and not yet ended (0 at rest: nothing leaks)."""
        return len(self._executions) + len(self._spans)

    def _switch_off(self, is_metrics: bool, where: str) -> None:
        """A half that raised is logged once and turned off; the other half and the run go on."""
        if is_metrics:
            self._metrics_on = False
            for recorder in self._executions.values():
                # Best effort: bring active_count back down for executions still in flight.
                with contextlib.suppress(Exception):
                    recorder.record_error("execution_failed")
            self._executions.clear()
        else:
            # New spans stop; those in flight are still detached and ended at their ends, so
            # the context a run made current is given back and no span is left open.
            self._spans_on = False
        half = "metrics" if is_metrics else "spans"
        logger.exception(
            "xzatoma telemetry: recording %s failed on %s; %s is off for this subscriber, "
            "the run goes on",
            half,
            where,
            "metrics" if is_metrics else "tracing",
        )

    def _span_end_failed(self, where: str) -> None:
        """A span's end raised: switch spans off (once), and let the other ends go on."""
        if self._spans_on:
            self._switch_off(False, where)

    # -- metrics ---------------------------------------------------------------------------
    def subagent_started(self, run: Run) -> None:
        if self._metrics_on:
            try:
                self._executions[run.id] = SubagentMetrics(run.label, run.depth)
            except Exception:
                self._switch_off(True, "subagent_started")

    def subagent_ended(self, run: Run) -> None:
        recorder = self._executions.pop(run.id, None)
        if recorder is None:  # started before this subscriber was listening, or switched off
            return
        try:
            result = run.result()
            tokens = result.usage.total_tokens
            if result.cost:  # known, and not zero
                current_instruments().cost.add(float(result.cost), depth_attributes(run.depth))
            if result.succeeded:
                status = cast(AnswerStatus, result.status)
                recorder.record_completion(result.turns, tokens, status, duration=result.duration)
            else:
                recorder.record_error(
                    result.error_type or "execution_failed",
                    turns=result.turns,
                    tokens=tokens,
                    duration=result.duration,
                )
        except Exception:
            self._switch_off(True, "subagent_ended")

    def batch_ended(self, run: Run, batch: Batch) -> None:
        if not self._metrics_on or batch.result is None:
            return
        try:
            inst = current_instruments()
            inst.batches.add(1, pair_attributes(batch.depth, n.STATUS, batch.result.status))
            inst.batch_size.record(batch.size, depth_attributes(batch.depth), NO_EXEMPLARS)
        except Exception:
            self._switch_off(True, "batch_ended")

    def model_call_ended(self, run: Run, call: ModelCall) -> None:
        if self._metrics_on:
            try:
                self._model_call_metrics(call)
                completion = call.completion
                if completion is not None and completion.tool_calls_from_text:
                    calls = len(completion.tool_calls)
                    current_instruments().text_tool_calls.add(calls, depth_attributes(run.depth))
            except Exception:
                self._switch_off(True, "model_call_ended")
        self._end_span(call.id, "model_call_ended", _annotate_chat, call)

    @staticmethod
    def _model_call_metrics(call: ModelCall) -> None:
        inst = current_instruments()
        call_attrs, input_attrs, output_attrs = gen_ai_attributes(
            call.provider, call.model, call.error_code
        )
        inst.operation_duration.record(call.duration, call_attrs, NO_EXEMPLARS)
        usage = call.usage
        # A call that failed, or whose provider reported no usage, has no token counts to give.
        if call.error_type is None and (
            usage.prompt_tokens or usage.completion_tokens or usage.total_tokens
        ):
            inst.token_usage.record(usage.prompt_tokens, input_attrs, NO_EXEMPLARS)
            inst.token_usage.record(usage.completion_tokens, output_attrs, NO_EXEMPLARS)

    # -- spans -----------------------------------------------------------------------------
    def _start(self, key: int, name: str, kind: SpanKind, attributes: dict[str, str | int]) -> None:
        """Start a span under the current one and make it current in this task's context."""
        span = state.tracer().start_span(name, kind=kind, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        self._spans[key] = (span, token)

    def run_started(self, run: Run) -> None:
        if not self._spans_on:
            return
        try:
            # Decided once per run: with only the no-op API, no span objects are made at
            # all, and the run's model and tool calls (which nest under it) make none either.
            if not state.tracing():
                return
            self._start(
                run.id,
                n.invoke_agent_span(run.label),
                SpanKind.INTERNAL,
                {
                    n.GEN_AI_OPERATION_NAME: n.OP_INVOKE_AGENT,
                    n.GEN_AI_AGENT_NAME: run.label,
                    n.GEN_AI_PROVIDER_NAME: run.provider.name,
                    n.GEN_AI_REQUEST_MODEL: run.provider.model,
                    n.XZ_DEPTH: run.depth,
                    n.XZ_LABEL: run.label,
                },
            )
        except Exception:
            self._switch_off(False, "run_started")

    def run_ended(self, run: Run) -> None:
        if self._metrics_on:
            try:
                # Recorded while the run's span is still current: an exemplar links to it.
                _run_metrics(run)
            except Exception:
                self._switch_off(True, "run_ended")
        self._end_span(run.id, "run_ended", _annotate_run, run)

    def model_call_started(self, run: Run, call: ModelCall) -> None:
        if not self._spans_on or run.id not in self._spans:
            return
        try:
            attributes: dict[str, str | int] = {
                n.GEN_AI_OPERATION_NAME: n.OP_CHAT,
                n.GEN_AI_PROVIDER_NAME: call.provider,
                n.GEN_AI_REQUEST_MODEL: call.model,
                n.XZ_DEPTH: run.depth,
            }
            server = getattr(run.provider, "server", None)  # OpenAIProvider's (host, port)
            if server is not None:
                attributes[n.SERVER_ADDRESS], attributes[n.SERVER_PORT] = server
            self._start(call.id, n.chat_span(call.model), SpanKind.CLIENT, attributes)
        except Exception:
            self._switch_off(False, "model_call_started")

    def tool_call_started(self, run: Run, ctx: ToolContext) -> None:
        if not self._spans_on or run.id not in self._spans:
            return
        try:
            attributes: dict[str, str | int] = {
                n.GEN_AI_OPERATION_NAME: n.OP_EXECUTE_TOOL,
                n.GEN_AI_TOOL_NAME: ctx.call.name,
                n.GEN_AI_TOOL_CALL_ID: ctx.call.id,
                n.XZ_DEPTH: run.depth,
            }
            # Only with spans on: an MCP tool names its server (xzatoma.mcp.MCPTool).
            server = getattr(ctx.agent.callable_tool(ctx.call.name), "mcp_server", None)
            if server is not None:
                attributes[n.XZ_MCP_SERVER] = server
            self._start(ctx.id, n.execute_tool_span(ctx.call.name), SpanKind.INTERNAL, attributes)
        except Exception:
            self._switch_off(False, "tool_call_started")

    def tool_call_ended(self, run: Run, ctx: ToolContext, result: ToolResult | None) -> None:
        if self._metrics_on:
            try:
                # While the tool's span is still current: an exemplar links to it.
                _tool_metrics(run, ctx, result)
            except Exception:
                self._switch_off(True, "tool_call_ended")
        self._end_span(ctx.id, "tool_call_ended", _annotate_tool, result)

    def _end_span(
        self, key: int, where: str, annotate: Callable[[Span, _T], None], what: _T
    ) -> None:
        """End the span of ``key``, if it has one: give back the context it made current,
        let ``annotate`` add the end's attributes (to a recording span), end it."""
        current = self._spans.pop(key, None)
        if current is None:
            return
        span, token = current
        try:
            otel_context.detach(token)
            if span.is_recording():
                annotate(span, what)
            span.end()
        except Exception:
            self._span_end_failed(where)


def _run_metrics(run: Run) -> None:
    """The agent-level instruments of one run's end (the root's dollars, too)."""
    inst = current_instruments()
    depth = run.depth
    by_depth = depth_attributes(depth)
    if run.parent is None and run.cost:
        # The root is no subagent execution: its own dollars are counted here, at depth 0.
        inst.cost.add(float(run.cost), by_depth)
    attributes = (
        by_depth
        if run.status in ANSWERED  # the one rule of a success (an answer, complete or not)
        else pair_attributes(depth, n.OTEL_ERROR_TYPE, run.error_type or n.CANCELLED)
    )
    inst.invoke_agent_duration.record(run.duration, attributes)
    if run.turns:
        inst.model_calls.record(run.turns, by_depth, NO_EXEMPLARS)
    if run.tool_calls:
        inst.tool_calls.record(run.tool_calls, by_depth, NO_EXEMPLARS)


def _tool_metrics(run: Run, ctx: ToolContext, result: ToolResult | None) -> None:
    """``gen_ai.execute_tool.duration`` of one tool call."""
    name = ctx.call.name
    if ctx.agent.callable_tool(name) is None:  # the model's invention: not on a metric
        name = n.UNKNOWN_TOOL
    error = n.CANCELLED if result is None else n.TOOL_ERROR if result.is_error else None
    current_instruments().execute_tool_duration.record(
        run.now() - ctx.started, tool_attributes(run.depth, name, error)
    )


def _annotate_run(span: Span, run: Run) -> None:
    span.set_attributes(
        {
            n.GEN_AI_USAGE_INPUT_TOKENS: run.usage.prompt_tokens,
            n.GEN_AI_USAGE_OUTPUT_TOKENS: run.usage.completion_tokens,
            n.XZ_TOTAL_TOKENS: run.usage.total_tokens,
            n.XZ_TURNS: run.turns,
            n.XZ_STATUS: run.status or "cancelled",
        }
    )
    if run.cost is not None:
        span.set_attribute(n.XZ_COST, float(run.cost))
        total = run.result().total_cost
        if total is not None:
            span.set_attribute(n.XZ_TOTAL_COST, float(total))
    if run.status == "failed" or run.status == "cancelled":
        _fail(span, run.error_type or run.status)


def _annotate_chat(span: Span, call: ModelCall) -> None:
    completion = call.completion
    if completion is None:
        _fail(span, call.error_code or n.CANCELLED)
        return
    usage = completion.usage
    span.set_attributes(
        {
            n.GEN_AI_USAGE_INPUT_TOKENS: usage.prompt_tokens,
            n.GEN_AI_USAGE_OUTPUT_TOKENS: usage.completion_tokens,
        }
    )
    if completion.model is not None:
        span.set_attribute(n.GEN_AI_RESPONSE_MODEL, completion.model)
    if completion.response_id is not None:
        span.set_attribute(n.GEN_AI_RESPONSE_ID, completion.response_id)
    if completion.finish_reason is not None:
        span.set_attribute(n.GEN_AI_RESPONSE_FINISH_REASONS, (completion.finish_reason,))
    if call.cost is not None:
        span.set_attribute(n.XZ_COST, float(call.cost))
    if completion.tool_calls_from_text:
        span.set_attribute(n.XZ_TOOL_CALLS_FROM_TEXT, len(completion.tool_calls))


def _annotate_tool(span: Span, result: ToolResult | None) -> None:
    if result is None or result.is_error:
        _fail(span, n.CANCELLED if result is None else n.TOOL_ERROR)


def _fail(span: Span, error_type: str) -> None:
    span.set_attribute(n.OTEL_ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR, error_type))
