"""OpenTelemetry for xzatoma: subagent metrics, GenAI metrics and spans, Prometheus ``/metrics``,
OTLP push.

The core tells its subscribers what each run does; :class:`TelemetrySubscriber` (which
``Runtime`` subscribes by default) records it to the providers set with :func:`configure`, or
to OpenTelemetry's global ones, which are the no-op API until an SDK is installed, or to a
runtime's own (``TelemetrySubscriber(meter_provider=..., tracer_provider=...)``), apart
from every other runtime of the process.
:func:`start_metrics_server` serves the metrics to Prometheus; ``configure(otlp_endpoint=...)``
pushes metrics and spans to an OTLP/HTTP collector (:class:`OtlpExport`). This package is the
only part of xzatoma that imports ``opentelemetry``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._config import configure as configure
from ._otlp import OtlpExport as OtlpExport
from ._recorder import SubagentMetrics as SubagentMetrics
from ._server import MetricsServer as MetricsServer
from ._server import MetricsServerStatistics as MetricsServerStatistics
from ._server import start_metrics_server as start_metrics_server
from ._subscriber import TelemetrySubscriber as TelemetrySubscriber

if TYPE_CHECKING:
    from ._capture import HistogramSnapshot as HistogramSnapshot
    from ._capture import TelemetryCapture as TelemetryCapture
    from ._capture import capture_telemetry as capture_telemetry
    from ._session_spans import SessionSpanProcessor as SessionSpanProcessor

__all__ = (
    "configure",
    "OtlpExport",
    "start_metrics_server",
    "MetricsServer",
    "MetricsServerStatistics",
    "SubagentMetrics",
    "TelemetrySubscriber",
    "SessionSpanProcessor",
    # testing
    "capture_telemetry",
    "TelemetryCapture",
    "HistogramSnapshot",
)

# The public names say where to import them from, not which private module holds them.
for _value in (
    configure,
    OtlpExport,
    SubagentMetrics,
    MetricsServer,
    MetricsServerStatistics,
    start_metrics_server,
    TelemetrySubscriber,
):
    _value.__module__ = __name__
del _value


def __getattr__(name: str) -> object:
    # These pull in the OTel SDK; import them only when asked for.
    if name in ("HistogramSnapshot", "TelemetryCapture", "capture_telemetry"):
        from . import _capture

        return getattr(_capture, name)
    if name == "SessionSpanProcessor":
        from ._session_spans import SessionSpanProcessor

        SessionSpanProcessor.__module__ = __name__
        return SessionSpanProcessor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
