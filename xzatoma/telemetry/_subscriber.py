"""``TelemetrySubscriber``: the hook that turns the core's events into OTel metrics and spans.

Metrics: a :class:`SubagentMetrics` per subagent execution (``SubagentStarted`` to
``SubagentEnded``), the batch instruments at ``BatchEnded``, the GenAI client instruments at
every ``ModelCallEnded``. Spans: ``invoke_agent`` per run, ``execute_tool`` per tool call,
``chat`` per model call, linked through the events' ids (a child run's ``parent_id`` is the
tool call that spawned it, so its ``invoke_agent`` nests under ``execute_tool subagent`` or
``execute_tool parallel_subagent``). The two halves are independent: if either raises (a
broken provider, processor or exporter), it is logged once and switched off for this
subscriber, and the other half and the run go on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .._hooks import (
    BatchEnded,
    Event,
    ModelCallEnded,
    ModelCallStarted,
    RunEnded,
    RunStarted,
    SubagentEnded,
    SubagentStarted,
    ToolCallEnded,
    ToolCallStarted,
)
from . import _names as n
from ._config import state
from ._metrics import SubagentMetrics, current_instruments, depth_attributes, pair_attributes

__all__ = ("TelemetrySubscriber",)

logger = logging.getLogger("xzatoma.telemetry")


class TelemetrySubscriber:
    """Records xzatoma's events as OpenTelemetry metrics and spans.

    ``Runtime(telemetry=None)`` subscribes one; pass ``hooks=[TelemetrySubscriber()]`` to an
    :class:`xzatoma.Agent` to instrument a bare agent. It records to the providers of
    :func:`xzatoma.telemetry.configure` as they are at each event, so it may be made before
    telemetry is configured.

    Args:
        metrics: Record the ``subagent.*`` and ``gen_ai.client.*`` instruments.
        traces: Record the ``invoke_agent``, ``execute_tool`` and ``chat`` spans.
    """

    __slots__ = (
        "_dispatch",
        "_executions",
        "_metrics_on",
        "_spans",
        "_spans_on",
        "_wanted_tracing",
        "_wanted_untraced",
    )

    def __init__(self, *, metrics: bool = True, traces: bool = True) -> None:
        self._metrics_on = metrics
        self._spans_on = traces
        self._executions: dict[int, SubagentMetrics] = {}
        self._spans: dict[int, Span] = {}
        self._dispatch: dict[type, tuple[tuple[bool, _Handler], ...]] = {}
        self._wanted_tracing: frozenset[type[Event]] = frozenset()
        self._wanted_untraced: frozenset[type[Event]] = frozenset()
        self._build_dispatch()

    def _build_dispatch(self) -> None:
        """One table from event class to its handlers (``True`` marks the metrics half)."""
        table: dict[type, list[tuple[bool, _Handler]]] = {}
        if self._metrics_on:
            for kind, handler in _METRIC_HANDLERS.items():
                table.setdefault(kind, []).append((True, handler))
        if self._spans_on:
            for kind, handler in _SPAN_HANDLERS.items():
                table.setdefault(kind, []).append((False, handler))
        self._dispatch = {kind: tuple(handlers) for kind, handlers in table.items()}
        self._wanted_tracing = frozenset(table)
        self._wanted_untraced = frozenset(_METRIC_HANDLERS) if self._metrics_on else frozenset()

    def wanted_events(self) -> frozenset[type[Event]]:
        """The events to make for a run starting now (see :class:`xzatoma.Hooks`).

        Those of the metrics half, and those of the span half while spans can go anywhere:
        with only OTel's no-op API, a run makes no span events at all.
        """
        if self._spans_on:
            try:
                tracing = state.tracing()
            except Exception:  # e.g. OTEL_PYTHON_TRACER_PROVIDER naming no provider
                self._switch_off(False, "wanted_events")
                return self._wanted_untraced
            if tracing:
                return self._wanted_tracing
        return self._wanted_untraced

    def __repr__(self) -> str:
        return f"TelemetrySubscriber(metrics={self._metrics_on}, traces={self._spans_on})"

    @property
    def in_flight(self) -> int:
        """Executions and spans started and not yet ended (0 at rest: nothing leaks)."""
        return len(self._executions) + len(self._spans)

    def __call__(self, event: Event) -> None:
        handlers = self._dispatch.get(type(event))
        if handlers is None:
            return
        for is_metrics, handler in handlers:
            try:
                handler(self, event)
            except Exception:
                self._switch_off(is_metrics, type(event).__name__)

    def _switch_off(self, is_metrics: bool, event_name: str) -> None:
        """A half that raised is logged once and turned off; the other half and the run go on."""
        if is_metrics:
            self._metrics_on = False
            for recorder in self._executions.values():
                # Best effort: bring active_count back down for executions still in flight.
                with contextlib.suppress(Exception):
                    recorder.record_error("execution_failed")
            self._executions.clear()
        else:
            self._spans_on = False
            self._spans.clear()
        self._build_dispatch()
        logger.exception(
            "xzatoma telemetry: recording %s failed on %s; %s is off for this subscriber, "
            "the run goes on",
            "metrics" if is_metrics else "spans",
            event_name,
            "metrics" if is_metrics else "tracing",
        )

    # -- metrics ---------------------------------------------------------------------------
    def _subagent_started(self, event: SubagentStarted) -> None:
        self._executions[event.id] = SubagentMetrics(event.label, event.depth)

    def _subagent_ended(self, event: SubagentEnded) -> None:
        recorder = self._executions.pop(event.id, None)
        if recorder is None:  # started before this subscriber was listening
            return
        tokens = event.usage.total_tokens
        if event.status == "complete" or event.status == "incomplete":
            recorder.record_completion(event.turns, tokens, event.status, duration=event.duration)
            return
        error_type = event.error_type
        if error_type is None:
            error_type = "cancelled" if event.status == "cancelled" else "execution_failed"
        recorder.record_error(error_type, turns=event.turns, tokens=tokens, duration=event.duration)

    def _batch_ended(self, event: BatchEnded) -> None:
        inst = current_instruments()
        inst.batches.add(1, pair_attributes(event.depth, n.STATUS, event.status))
        inst.batch_size.record(event.size, depth_attributes(event.depth))

    def _model_call_metrics(self, event: ModelCallEnded) -> None:
        inst = current_instruments()
        call_attrs, input_attrs, output_attrs = _gen_ai_attributes(
            event.provider, event.model, event.error_type
        )
        inst.operation_duration.record(event.duration, call_attrs)
        usage = event.usage
        # A call that failed, or whose provider reported no usage, has no token counts to give.
        if event.error_type is None and (
            usage.requests or usage.prompt_tokens or usage.completion_tokens or usage.total_tokens
        ):
            inst.token_usage.record(usage.prompt_tokens, input_attrs)
            inst.token_usage.record(usage.completion_tokens, output_attrs)

    # -- spans -----------------------------------------------------------------------------
    def _start(
        self,
        event_id: int,
        parent_id: int | None,
        name: str,
        kind: SpanKind,
        attributes: dict[str, str | int],
    ) -> None:
        parent = self._spans.get(parent_id) if parent_id is not None else None
        context = trace.set_span_in_context(parent) if parent is not None else None
        self._spans[event_id] = state.tracer().start_span(
            name, context=context, kind=kind, attributes=attributes
        )

    def _run_started(self, event: RunStarted) -> None:
        # Decided once per run: with only the no-op API, no span objects are made at all,
        # and the run's model and tool calls (which nest under its span) make none either.
        if not state.tracing():
            return
        self._start(
            event.id,
            event.parent_id,
            n.invoke_agent_span(event.name),
            SpanKind.INTERNAL,
            {
                n.GEN_AI_OPERATION_NAME: n.OP_INVOKE_AGENT,
                n.GEN_AI_AGENT_NAME: event.name,
                n.GEN_AI_PROVIDER_NAME: event.provider,
                n.GEN_AI_REQUEST_MODEL: event.model,
                n.XZ_DEPTH: event.depth,
                n.XZ_LABEL: event.label,
            },
        )

    def _run_ended(self, event: RunEnded) -> None:
        span = self._spans.pop(event.id, None)
        if span is None:
            return
        if span.is_recording():
            span.set_attributes(
                {
                    n.GEN_AI_USAGE_INPUT_TOKENS: event.usage.prompt_tokens,
                    n.GEN_AI_USAGE_OUTPUT_TOKENS: event.usage.completion_tokens,
                    n.XZ_TOTAL_TOKENS: event.usage.total_tokens,
                    n.XZ_TURNS: event.turns,
                    n.XZ_STATUS: event.status,
                }
            )
            if event.status == "failed" or event.status == "cancelled":
                _fail(span, event.error_type or event.status)
        span.end()

    def _model_call_started(self, event: ModelCallStarted) -> None:
        if event.run_id not in self._spans:
            return
        self._start(
            event.id,
            event.run_id,
            n.chat_span(event.model),
            SpanKind.CLIENT,
            {
                n.GEN_AI_OPERATION_NAME: n.OP_CHAT,
                n.GEN_AI_PROVIDER_NAME: event.provider,
                n.GEN_AI_REQUEST_MODEL: event.model,
                n.XZ_DEPTH: event.depth,
            },
        )

    def _chat_ended(self, event: ModelCallEnded) -> None:
        span = self._spans.pop(event.id, None)
        if span is None:
            return
        if span.is_recording():
            if event.response_model is not None:
                span.set_attribute(n.GEN_AI_RESPONSE_MODEL, event.response_model)
            if event.error_type is None:
                span.set_attribute(n.GEN_AI_USAGE_INPUT_TOKENS, event.usage.prompt_tokens)
                span.set_attribute(n.GEN_AI_USAGE_OUTPUT_TOKENS, event.usage.completion_tokens)
            else:
                _fail(span, event.error_type)
        span.end()

    def _tool_started(self, event: ToolCallStarted) -> None:
        if event.run_id not in self._spans:
            return
        self._start(
            event.id,
            event.run_id,
            n.execute_tool_span(event.tool),
            SpanKind.INTERNAL,
            {
                n.GEN_AI_OPERATION_NAME: n.OP_EXECUTE_TOOL,
                n.GEN_AI_TOOL_NAME: event.tool,
                n.GEN_AI_TOOL_CALL_ID: event.call_id,
                n.XZ_DEPTH: event.depth,
            },
        )

    def _tool_ended(self, event: ToolCallEnded) -> None:
        span = self._spans.pop(event.id, None)
        if span is None:
            return
        if span.is_recording() and (event.cancelled or event.is_error):
            _fail(span, n.CANCELLED if event.cancelled else n.TOOL_ERROR)
        span.end()


_GenAIAttributes = tuple[dict[str, str], dict[str, str], dict[str, str]]
_gen_ai_cache: dict[tuple[str, str, str | None], _GenAIAttributes] = {}


def _gen_ai_attributes(provider: str, model: str, error_type: str | None) -> _GenAIAttributes:
    """The attribute sets of one model call (call, input tokens, output tokens), made once.

    Only values chosen by code or by the user's own configuration go on a metric: the
    provider's name, the model asked for, and the exception class of a failed call. The
    model name the endpoint answers with (``gen_ai.response.model``) is the endpoint's
    choice, so it goes on the ``chat`` span only: on a metric, a server answering with a new
    name each time would grow one series per name without limit. Shared dicts, never changed
    after they are made; the cache is cleared if it ever grows past 1024 entries.
    """
    key = (provider, model, error_type)
    found = _gen_ai_cache.get(key)
    if found is not None:
        return found
    call: dict[str, str] = {
        n.GEN_AI_OPERATION_NAME: n.OP_CHAT,
        n.GEN_AI_PROVIDER_NAME: provider,
        n.GEN_AI_REQUEST_MODEL: model,
    }
    if error_type is not None:
        call[n.OTEL_ERROR_TYPE] = error_type
    made = (
        call,
        {**call, n.GEN_AI_TOKEN_TYPE: n.TOKEN_TYPE_INPUT},
        {**call, n.GEN_AI_TOKEN_TYPE: n.TOKEN_TYPE_OUTPUT},
    )
    if len(_gen_ai_cache) >= 1024:
        _gen_ai_cache.clear()
    _gen_ai_cache[key] = made
    return made


def _fail(span: Span, error_type: str) -> None:
    span.set_attribute(n.OTEL_ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR, error_type))


_Handler = Callable[[TelemetrySubscriber, Any], None]

_METRIC_HANDLERS: Final[dict[type, _Handler]] = {
    SubagentStarted: TelemetrySubscriber._subagent_started,
    SubagentEnded: TelemetrySubscriber._subagent_ended,
    BatchEnded: TelemetrySubscriber._batch_ended,
    ModelCallEnded: TelemetrySubscriber._model_call_metrics,
}

_SPAN_HANDLERS: Final[dict[type, _Handler]] = {
    RunStarted: TelemetrySubscriber._run_started,
    RunEnded: TelemetrySubscriber._run_ended,
    ModelCallStarted: TelemetrySubscriber._model_call_started,
    ModelCallEnded: TelemetrySubscriber._chat_ended,
    ToolCallStarted: TelemetrySubscriber._tool_started,
    ToolCallEnded: TelemetrySubscriber._tool_ended,
}
