"""``TelemetrySubscriber``: the instrument that turns what runs do into OTel metrics and spans.

Metrics: a :class:`SubagentMetrics` per subagent execution (``subagent_started`` to
``subagent_ended``), the batch instruments at ``batch_ended``, the GenAI client instruments
at every ``model_call_ended``. Spans: ``invoke_agent`` per run, ``execute_tool`` per tool
call, ``chat`` per model call, each made the *current* span while its work runs (attached to
the context of the task doing it, detached at its end), so a span a tool opens, an HTTP
client's instrumentation span under ``chat``, and a child's ``invoke_agent`` under
``execute_tool subagent`` all nest where they happened. A traced tree with a session id
carries it on every span and, from the top of the tree down, as OTel baggage. The two halves are
independent: if either raises (a broken provider, processor or exporter), it is logged once
and switched off for this subscriber, and the other half and the run go on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextvars import Token
from typing import TypeVar, cast

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import Span, SpanKind

from .._hooks import Instrument
from .._result import AnswerStatus
from .._run import Batch, ModelCall, Run
from .._tools import ToolContext, ToolResult
from . import _names as n
from ._annotate import annotate_chat, annotate_run, annotate_tool
from ._attributes import SHARED, AttributeSets, kept
from ._destination import Destination
from ._end_metrics import model_call_metrics, run_metrics, tool_metrics
from ._metrics import NO_EXEMPLARS
from ._recorder import SubagentMetrics
from ._session_context import session_attributes, session_context

__all__ = ("TelemetrySubscriber",)

logger = logging.getLogger("xzatoma.telemetry")

_Current = tuple[Span | None, Token[otel_context.Context]]
"""A span and the token that made it current (``None`` and the token that set a Python
batch's baggage)."""
_T = TypeVar("_T")
_Attributes = dict[str, str | int]


class TelemetrySubscriber(Instrument):
    """Records xzatoma's runs as OpenTelemetry metrics and spans.

    ``Runtime(telemetry=None)`` subscribes one; pass ``hooks=[TelemetrySubscriber()]`` to an
    :class:`xzatoma.Agent` to instrument a bare agent. Without providers of its own it
    records to those of :func:`xzatoma.telemetry.configure` as they are at each run, so it
    may be made before telemetry is configured. With only OTel's no-op API, a run makes no
    span objects at all.

    Args:
        metrics: Record the ``subagent.*`` and ``gen_ai.*`` instruments.
        traces: Record the ``invoke_agent``, ``execute_tool`` and ``chat`` spans.
        meter_provider: Record the metrics to this provider only (a runtime of its own in a
            service: ``Runtime(telemetry=TelemetrySubscriber(meter_provider=...))``);
            ``None``: the process-wide one.
        tracer_provider: Record the spans to this provider only; ``None``: the process-wide
            one.
        metrics_include_session_id: Put the run's session id (``xzatoma.session.id``) on
            every metric too. Off by default: each session then makes series of its own, so
            a service that runs many sessions multiplies its series by their number.

    Raises:
        ConfigError: A provider is not an OpenTelemetry meter or tracer provider.
    """

    __slots__ = (
        "_by_session",
        "_destination",
        "_executions",
        "_instruments",
        "_metrics_on",
        "_spans",
        "_spans_on",
        "_tracer",
        "_tracing",
    )

    def __init__(
        self,
        *,
        metrics: bool = True,
        traces: bool = True,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        metrics_include_session_id: bool = False,
    ) -> None:
        self._metrics_on = metrics
        self._spans_on = traces
        destination = self._destination = Destination(meter_provider, tracer_provider)
        self._instruments = destination.instruments
        self._tracing = destination.tracing
        self._tracer = destination.tracer
        self._by_session: dict[str, AttributeSets] | None = (
            {} if metrics_include_session_id else None
        )
        self._executions: dict[int, SubagentMetrics] = {}
        self._spans: dict[int, _Current] = {}

    def __repr__(self) -> str:
        own = ", own providers" if self._destination.own else ""
        return f"TelemetrySubscriber(metrics={self._metrics_on}, traces={self._spans_on}{own})"

    @property
    def meter_provider(self) -> metrics.MeterProvider | None:
        """Its own meter provider (``None``: it records to the process-wide one)."""
        return self._destination.meter_provider

    @property
    def tracer_provider(self) -> trace.TracerProvider | None:
        """Its own tracer provider (``None``: it records to the process-wide one)."""
        return self._destination.tracer_provider

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

    def _session_sets(self, run: Run) -> AttributeSets:
        """The attribute sets of ``run``'s metrics when the session id goes on them (the
        callers take :data:`SHARED` without a call when it does not)."""
        by_session = self._by_session
        session = run.session_id
        if by_session is None or session is None:
            return SHARED
        found = by_session.get(session)
        if found is None:
            found = kept(by_session, session, AttributeSets({n.XZ_SESSION_ID: session}))
        return found

    # -- metrics ---------------------------------------------------------------------------
    def subagent_started(self, run: Run) -> None:
        if self._metrics_on:
            try:
                sets = SHARED if self._by_session is None else self._session_sets(run)
                self._executions[run.id] = SubagentMetrics(
                    run.label, run.depth, instruments=self._instruments(), attributes=sets
                )
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
                sets = SHARED if self._by_session is None else self._session_sets(run)
                self._instruments().cost.add(float(result.cost), sets.depth(run.depth))
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

    def batch_started(self, run: Run, batch: Batch) -> None:
        # A batch from Python has no span at the top: its tasks' session is set here (a
        # batch inside a traced run finds it set already). The entry is keyed by the batch's
        # id, which no run has: the ids share one counter.
        if not self._spans_on:
            return
        try:
            if self._tracing():
                context = session_context(run)
                if context is not None:
                    self._spans[batch.id] = (None, otel_context.attach(context))
        except Exception:
            self._switch_off(False, "batch_started")

    def batch_ended(self, run: Run, batch: Batch) -> None:
        if self._metrics_on and batch.result is not None:
            try:
                inst = self._instruments()
                sets = SHARED if self._by_session is None else self._session_sets(run)
                inst.batches.add(1, sets.pair(batch.depth, n.STATUS, batch.result.status))
                inst.batch_size.record(batch.size, sets.depth(batch.depth), NO_EXEMPLARS)
            except Exception:
                self._switch_off(True, "batch_ended")
        self._end_span(batch.id, "batch_ended", _nothing, None)

    def model_call_ended(self, run: Run, call: ModelCall) -> None:
        if self._metrics_on:
            try:
                inst = self._instruments()
                sets = SHARED if self._by_session is None else self._session_sets(run)
                model_call_metrics(inst, sets, call)
                completion = call.completion
                if completion is not None and completion.tool_calls_from_text:
                    calls = len(completion.tool_calls)
                    inst.text_tool_calls.add(calls, sets.depth(run.depth))
            except Exception:
                self._switch_off(True, "model_call_ended")
        self._end_span(call.id, "model_call_ended", annotate_chat, call)

    # -- spans -----------------------------------------------------------------------------
    def _start(
        self,
        key: int,
        name: str,
        kind: SpanKind,
        attributes: _Attributes,
        context: otel_context.Context | None = None,
    ) -> None:
        """Start a span under the current one (in ``context``, when given) and make it
        current in this task's context."""
        span = self._tracer().start_span(name, context, kind=kind, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span, context))
        self._spans[key] = (span, token)

    def run_started(self, run: Run) -> None:
        if not self._spans_on:
            return
        try:
            # Decided once per run: with only the no-op API, no span objects are made at
            # all, and the run's model and tool calls (which nest under it) make none either.
            if not self._tracing():
                return
            # The top of a tree (or of its part in a Ray worker) puts its session in the
            # context; the runs below inherit it.
            context = session_context(run)
            attributes = session_attributes(run, _invoke_agent_attributes(run))
            self._start(
                run.id, n.invoke_agent_span(run.label), SpanKind.INTERNAL, attributes, context
            )
        except Exception:
            self._switch_off(False, "run_started")

    def run_ended(self, run: Run) -> None:
        if self._metrics_on:
            try:
                # Recorded while the run's span is still current: an exemplar links to it.
                sets = SHARED if self._by_session is None else self._session_sets(run)
                run_metrics(self._instruments(), sets, run)
            except Exception:
                self._switch_off(True, "run_ended")
        self._end_span(run.id, "run_ended", annotate_run, run)

    def model_call_started(self, run: Run, call: ModelCall) -> None:
        if not self._spans_on or run.id not in self._spans:  # no span to nest under
            return
        try:
            attributes: _Attributes = {
                n.GEN_AI_OPERATION_NAME: n.OP_CHAT,
                n.GEN_AI_PROVIDER_NAME: call.provider,
                n.GEN_AI_REQUEST_MODEL: call.model,
                n.XZ_DEPTH: run.depth,
            }
            server = getattr(run.provider, "server", None)  # OpenAIProvider's (host, port)
            if server is not None:
                attributes[n.SERVER_ADDRESS], attributes[n.SERVER_PORT] = server
            attributes = session_attributes(run, attributes)
            self._start(call.id, n.chat_span(call.model), SpanKind.CLIENT, attributes)
        except Exception:
            self._switch_off(False, "model_call_started")

    def tool_call_started(self, run: Run, ctx: ToolContext) -> None:
        if not self._spans_on or run.id not in self._spans:
            return
        try:
            attributes: _Attributes = {
                n.GEN_AI_OPERATION_NAME: n.OP_EXECUTE_TOOL,
                n.GEN_AI_TOOL_NAME: ctx.call.name,
                n.GEN_AI_TOOL_CALL_ID: ctx.call.id,
                n.XZ_DEPTH: run.depth,
            }
            # Only with spans on: an MCP tool names its server (xzatoma.mcp.MCPTool).
            server = getattr(ctx.agent.callable_tool(ctx.call.name), "mcp_server", None)
            if server is not None:
                attributes[n.XZ_MCP_SERVER] = server
            attributes = session_attributes(run, attributes)
            self._start(ctx.id, n.execute_tool_span(ctx.call.name), SpanKind.INTERNAL, attributes)
        except Exception:
            self._switch_off(False, "tool_call_started")

    def tool_call_ended(self, run: Run, ctx: ToolContext, result: ToolResult | None) -> None:
        if self._metrics_on:
            try:
                # While the tool's span is still current: an exemplar links to it.
                sets = SHARED if self._by_session is None else self._session_sets(run)
                tool_metrics(self._instruments(), sets, run, ctx, result)
            except Exception:
                self._switch_off(True, "tool_call_ended")
        self._end_span(ctx.id, "tool_call_ended", annotate_tool, result)

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
            if span is not None:
                if span.is_recording():
                    annotate(span, what)
                span.end()
        except Exception:
            self._span_end_failed(where)


def _nothing(span: Span, what: None) -> None:
    """A batch's entry holds baggage only: there is no span to annotate."""


def _invoke_agent_attributes(run: Run) -> _Attributes:
    return {
        n.GEN_AI_OPERATION_NAME: n.OP_INVOKE_AGENT,
        n.GEN_AI_AGENT_NAME: run.label,
        n.GEN_AI_PROVIDER_NAME: run.provider.name,
        n.GEN_AI_REQUEST_MODEL: run.provider.model,
        n.XZ_DEPTH: run.depth,
        n.XZ_LABEL: run.label,
    }
