"""The instruments docs/telemetry.md lists, created once per meter (``SubagentMetrics``, in
``_recorder``, records one execution; ``_attributes`` holds the sets they are recorded with)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Final

from opentelemetry import metrics, trace
from opentelemetry.context import Context

from . import _names as n
from ._config import state
from ._fast import HistogramRecorder, fast_histogram
from ._tally import Tally

__all__ = (
    "BATCH_SIZE_BUCKETS",
    "DURATION_BUCKETS",
    "OPERATION_DURATION_BUCKETS",
    "TOKEN_BUCKETS",
    "TURN_BUCKETS",
    "NO_EXEMPLARS",
    "Instruments",
    "current_instruments",
    "instruments_of",
)

DURATION_BUCKETS: Final = tuple(round(0.1 * 2**k, 1) for k in range(13))
"""Seconds, as ``gen_ai.invoke_agent.duration``: 0.1, 0.2, 0.4 ... 409.6 (doubling)."""
TOKEN_BUCKETS: Final = tuple(float(4**k) for k in range(14))
"""Tokens, as ``gen_ai.client.token.usage``: 1, 4, 16 ... 67108864 (times four)."""
TURN_BUCKETS: Final = (1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0, 100.0)
"""Model calls per execution."""
BATCH_SIZE_BUCKETS: Final = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
"""Tasks per parallel batch."""
OPERATION_DURATION_BUCKETS: Final = tuple(round(0.01 * 2**k, 2) for k in range(14))
"""Seconds, as ``gen_ai.client.operation.duration``: 0.01, 0.02, 0.04 ... 81.92 (doubling)."""

NO_EXEMPLARS: Final = trace.set_span_in_context(trace.INVALID_SPAN, Context())
"""The context xzatoma's own histograms are recorded in: one whose span is no span, so no
exemplar is sampled (not an empty ``Context()``, which ``record`` takes for the current).

While a run works its spans are current, and the SDK's default (trace-based) exemplar filter
would keep an exemplar of nearly every value, at a cost per subagent larger than the rest of
its metrics together. Two histograms are recorded in the current context instead, so their
exemplars (served in OpenMetrics at ``/metrics``) link a slow bucket to its trace:
``gen_ai.invoke_agent.duration`` (the run's span) and ``gen_ai.execute_tool.duration`` (the
tool call's). Every other value is one of theirs again, or a model call's."""


class Instruments:
    """Every instrument xzatoma records, created once per meter.

    Sums (``executions``, ``completions``, ``errors``, ``active``, ``batches``) are
    :class:`Tally` objects behind observable counters; histograms are synchronous.
    """

    __slots__ = (
        "active",
        "batch_size",
        "batches",
        "completions",
        "cost",
        "duration",
        "errors",
        "execute_tool_duration",
        "executions",
        "invoke_agent_duration",
        "lock",
        "model_calls",
        "operation_duration",
        "text_tool_calls",
        "token_usage",
        "tokens",
        "tool_calls",
        "turns",
    )

    lock: threading.Lock
    """Shared by every tally, so one execution's two updates take it once."""
    executions: Tally
    completions: Tally
    errors: Tally
    active: Tally
    batches: Tally
    cost: Tally
    text_tool_calls: Tally
    duration: HistogramRecorder
    turns: HistogramRecorder
    tokens: HistogramRecorder
    batch_size: HistogramRecorder
    token_usage: HistogramRecorder
    operation_duration: HistogramRecorder
    invoke_agent_duration: HistogramRecorder
    execute_tool_duration: HistogramRecorder
    model_calls: HistogramRecorder
    tool_calls: HistogramRecorder

    def __init__(self, meter: metrics.Meter) -> None:
        self.lock = threading.Lock()
        self._make_sums(meter)
        self._make_histograms(meter)

    def _make_sums(self, meter: metrics.Meter) -> None:
        """The tallies, each behind its observable instrument."""
        self.executions = self._counter(
            meter, n.EXECUTIONS, n.UNIT_EXECUTION, "Subagent spawn attempts, refused ones included."
        )
        self.completions = self._counter(
            meter, n.COMPLETIONS, n.UNIT_EXECUTION, "Subagent executions that returned an answer."
        )
        self.errors = self._counter(
            meter, n.ERRORS, n.UNIT_ERROR, "Refused, failed, timed-out or cancelled executions."
        )
        self.active = Tally(self.lock)
        meter.create_observable_up_down_counter(
            n.ACTIVE_COUNT,
            [self.active.observe],
            n.UNIT_EXECUTION,
            "Subagent executions in progress.",
        )
        self.batches = self._counter(
            meter, n.BATCHES, n.UNIT_BATCH, "Parallel subagent batches, by outcome."
        )
        self.cost = self._counter(
            meter,
            n.COST,
            n.UNIT_USD,
            "US dollars of model calls whose price is known, by the calling agent's depth.",
        )
        self.text_tool_calls = self._counter(
            meter,
            n.TEXT_TOOL_CALLS,
            n.UNIT_CALL,
            "Tool calls a model wrote as text, read as real ones, by the calling agent's depth.",
        )

    def _make_histograms(self, meter: metrics.Meter) -> None:
        """The synchronous histograms, with their advisory buckets (docs/telemetry.md)."""
        self.duration = _histogram(
            meter,
            n.DURATION,
            n.UNIT_SECONDS,
            "Seconds from spawn to end of every finished subagent execution.",
            DURATION_BUCKETS,
        )
        self.turns = _histogram(
            meter,
            n.TURNS_USED,
            n.UNIT_TURN,
            "Model calls of each subagent execution that made at least one.",
            TURN_BUCKETS,
        )
        self.tokens = _histogram(
            meter,
            n.TOKENS_CONSUMED,
            n.UNIT_TOKEN,
            "Tokens of each subagent execution that consumed any, failed ones included.",
            TOKEN_BUCKETS,
        )
        self.batch_size = _histogram(
            meter,
            n.BATCH_SIZE,
            n.UNIT_TASK,
            "Tasks per parallel subagent batch.",
            BATCH_SIZE_BUCKETS,
        )
        self.token_usage = _histogram(
            meter,
            n.TOKEN_USAGE,
            n.UNIT_TOKEN,
            "Input and output tokens of each model call.",
            TOKEN_BUCKETS,
        )
        self.operation_duration = _histogram(
            meter,
            n.OPERATION_DURATION,
            n.UNIT_SECONDS,
            "Seconds of each model call.",
            OPERATION_DURATION_BUCKETS,
        )
        self.invoke_agent_duration = _histogram(
            meter,
            n.INVOKE_AGENT_DURATION,
            n.UNIT_SECONDS,
            "Seconds of each agent run, the root's and every subagent's.",
            DURATION_BUCKETS,
        )
        self.execute_tool_duration = _histogram(
            meter,
            n.EXECUTE_TOOL_DURATION,
            n.UNIT_SECONDS,
            "Seconds of each tool call, subagent spawns included.",
            OPERATION_DURATION_BUCKETS,
        )
        self.model_calls = _histogram(
            meter,
            n.INVOKE_AGENT_MODEL_CALLS,
            n.UNIT_CALL,
            "Model calls of each agent run that made any.",
            TURN_BUCKETS,
        )
        self.tool_calls = _histogram(
            meter,
            n.INVOKE_AGENT_TOOL_CALLS,
            n.UNIT_CALL,
            "Tool calls of each agent run whose model asked for any.",
            TURN_BUCKETS,
        )

    def _counter(self, meter: metrics.Meter, name: str, unit: str, description: str) -> Tally:
        tally = Tally(self.lock)
        meter.create_observable_counter(name, [tally.observe], unit, description)
        return tally


def _histogram(
    meter: metrics.Meter, name: str, unit: str, description: str, buckets: Sequence[float]
) -> HistogramRecorder:
    histogram = meter.create_histogram(
        name, unit, description, explicit_bucket_boundaries_advisory=buckets
    )
    return fast_histogram(histogram)


class _Cache:
    __slots__ = ("by_meter", "generation", "instruments", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        """Held while a meter's instruments are made: two threads asking at once get one set."""
        self.generation = -1
        self.instruments: Instruments | None = None
        # One set of instruments per meter, ever: an observable instrument registered twice
        # on one meter would keep only its first callback (and so its first tallies).
        self.by_meter: weakref.WeakKeyDictionary[metrics.Meter, Instruments] = (
            weakref.WeakKeyDictionary()
        )


_cache = _Cache()


def instruments_of(meter: metrics.Meter) -> Instruments:
    """The instruments of ``meter``, made the first time it is asked for."""
    instruments = _cache.by_meter.get(meter)
    if instruments is None:
        with _cache.lock:
            instruments = _cache.by_meter.get(meter)
            if instruments is None:
                instruments = _cache.by_meter[meter] = Instruments(meter)
    return instruments


def current_instruments() -> Instruments:
    """The instruments of the process-wide configuration (:func:`~xzatoma.telemetry.configure`)."""
    cache = _cache
    if cache.instruments is None or cache.generation != state.generation:
        generation = state.generation
        cache.instruments = instruments_of(state.meter())
        cache.generation = generation
    return cache.instruments
