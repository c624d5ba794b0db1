"""``capture_telemetry``: xzatoma's metrics and spans kept in memory, for tests.

The SDK's ``InMemoryMetricReader`` and ``InMemorySpanExporter`` behind providers that
:func:`configure` points xzatoma at for the duration of a ``with`` block (or that one
runtime's subscriber records to, :meth:`TelemetryCapture.subscriber`), plus lookups by
instrument name and attributes, so a test (yours or ours) can assert exact values.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.types import AttributeValue

from . import _names
from ._config import configuration, configure, restore
from ._session_spans import SessionSpanProcessor
from ._subscriber import TelemetrySubscriber

__all__ = ("HistogramSnapshot", "TelemetryCapture", "capture_telemetry")

_DataPoint = NumberDataPoint | HistogramDataPoint


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A histogram's data points that matched a lookup, merged."""

    count: int
    """Recorded values."""
    sum: float
    """Their sum."""
    bucket_counts: tuple[int, ...]
    """Values per bucket (not cumulative), one more than ``explicit_bounds``."""
    explicit_bounds: tuple[float, ...]
    """The buckets' upper bounds."""


class TelemetryCapture:
    """In-memory metrics and spans; read them with :meth:`value`, :meth:`histogram`, ...

    Attributes:
        metric_reader: The SDK reader every instrument is collected by.
        span_exporter: The SDK exporter every finished span lands in.
        meter_provider: The SDK meter provider the reader belongs to.
        tracer_provider: The SDK tracer provider that exports to ``span_exporter``.
    """

    def __init__(self) -> None:
        self.metric_reader = InMemoryMetricReader()
        self.span_exporter = InMemorySpanExporter()
        self.meter_provider = MeterProvider(
            metric_readers=[self.metric_reader], shutdown_on_exit=False
        )
        self.tracer_provider = TracerProvider(shutdown_on_exit=False)
        self.tracer_provider.add_span_processor(SessionSpanProcessor())
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.span_exporter))

    def subscriber(self, **options: bool) -> TelemetrySubscriber:
        """A subscriber that records to this capture alone, whatever :func:`configure` says:
        ``Runtime(provider, telemetry=capture.subscriber())`` (``options``: its
        ``metrics``, ``traces``, ``metrics_include_session_id``)."""
        return TelemetrySubscriber(
            meter_provider=self.meter_provider, tracer_provider=self.tracer_provider, **options
        )

    def points(self, name: str) -> list[tuple[Mapping[str, AttributeValue], _DataPoint]]:
        """Every data point of instrument ``name`` with its attributes (collected now)."""
        data = self.metric_reader.get_metrics_data()
        found: list[tuple[Mapping[str, AttributeValue], _DataPoint]] = []
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        found.extend(
                            (p.attributes or {}, p)
                            for p in metric.data.data_points
                            if isinstance(p, (NumberDataPoint, HistogramDataPoint))
                        )
        return found

    def attribute_sets(self, name: str) -> list[dict[str, AttributeValue]]:
        """The attribute sets instrument ``name`` was recorded with."""
        return [dict(attributes) for attributes, _ in self.points(name)]

    def value(self, name: str, **attributes: AttributeValue) -> float:
        """Sum of a counter's (or up-down counter's) points whose attributes include these."""
        total: float = 0
        for attrs, point in self.points(name):
            if isinstance(point, NumberDataPoint) and _matches(attrs, attributes):
                total += point.value
        return total

    def histogram(self, name: str, **attributes: AttributeValue) -> HistogramSnapshot:
        """A histogram's points whose attributes include these, merged."""
        count, total = 0, 0.0
        buckets: list[int] = []
        bounds: tuple[float, ...] = ()
        for attrs, point in self.points(name):
            if not isinstance(point, HistogramDataPoint) or not _matches(attrs, attributes):
                continue
            count += point.count
            total += point.sum
            bounds = tuple(point.explicit_bounds)
            if not buckets:
                buckets = [0] * len(point.bucket_counts)
            for i, c in enumerate(point.bucket_counts):
                buckets[i] += c
        return HistogramSnapshot(count, total, tuple(buckets), bounds)

    @property
    def spans(self) -> tuple[ReadableSpan, ...]:
        """Every finished span, in the order they ended."""
        return tuple(self.span_exporter.get_finished_spans())

    def spans_named(self, name: str) -> list[ReadableSpan]:
        """The finished spans called ``name``."""
        return [s for s in self.spans if s.name == name]

    def subagent_spans(self) -> list[ReadableSpan]:
        """The finished ``invoke_agent`` spans of subagents (depth 1 and deeper), whatever
        their labels (each is named ``invoke_agent {label}``)."""
        return [
            s
            for s in self.spans
            if s.attributes is not None
            and s.attributes.get(_names.GEN_AI_OPERATION_NAME) == _names.OP_INVOKE_AGENT
            and cast(int, s.attributes.get(_names.XZ_DEPTH, 0)) > 0
        ]

    def clear(self) -> None:
        """Forget the finished spans (metrics are cumulative and cannot be cleared)."""
        self.span_exporter.clear()


def _matches(attrs: Mapping[str, AttributeValue], wanted: Mapping[str, AttributeValue]) -> bool:
    return all(attrs.get(k) == v for k, v in wanted.items())


@contextmanager
def capture_telemetry() -> Iterator[TelemetryCapture]:
    """Record xzatoma's metrics and spans in memory for the ``with`` block.

    ::

        with capture_telemetry() as captured:
            await Runtime(provider).run("...")
        assert captured.value("subagent.executions", depth=1) == 2

    The previous :func:`configure` settings come back at the end; what was captured stays
    readable afterwards.
    """
    captured = TelemetryCapture()
    previous = configuration()
    configure(captured.meter_provider, captured.tracer_provider)
    try:
        yield captured
    finally:
        restore(previous)


for _public in (HistogramSnapshot, TelemetryCapture, capture_telemetry):
    _public.__module__ = "xzatoma.telemetry"  # imported from there (lazily)
del _public
