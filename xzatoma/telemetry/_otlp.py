"""OTLP/HTTP push of xzatoma's metrics and spans, for runs too short to wait for a scrape.

:func:`start_export` builds what ``configure(otlp_endpoint=...)`` and the command line
(``xzatoma/_cli_otlp.py``) push with: an SDK ``MeterProvider`` whose
``PeriodicExportingMetricReader`` hands the metrics to an ``OTLPMetricExporter``, and a
``TracerProvider`` whose ``BatchSpanProcessor`` hands the spans to an ``OTLPSpanExporter``.
It points xzatoma at them and returns the :class:`OtlpExport` that flushes and shuts them
down; nothing is pushed before the first export interval or batch delay, so a process that
exits without that loses what it recorded. It needs the ``otlp`` extra
(``opentelemetry-exporter-otlp-proto-http``), imported only here and only when called.

Temporality is the exporter's: cumulative unless
``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` asks for delta (the histogram fast
path of ``_fast.py`` then falls back to the SDK's ``record``, which is slower, not wrong).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Final

from .._extras import install_hint
from ..errors import ConfigError
from ._config import Configuration, configuration, configure, restore, sdk_resource, state
from ._seconds import positive_seconds

if TYPE_CHECKING:  # the SDK is imported when an export starts, not with the runtime
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace import TracerProvider

__all__ = (
    "INSTALL_HINT",
    "MARGIN",
    "OtlpExport",
    "prometheus_readers",
    "require_extra",
    "signal_url",
    "start_export",
)

logger = logging.getLogger("xzatoma.telemetry")

INSTALL_HINT: Final = install_hint("otlp")
"""What to run when the ``otlp`` extra is missing."""

DEFAULT_TIMEOUT: Final = 10.0
"""Seconds one push may take when neither the caller nor ``OTEL_EXPORTER_OTLP_TIMEOUT``
says (the exporters' own default)."""

MARGIN: Final = 5.0
"""Seconds :meth:`OtlpExport.flush` and :meth:`~OtlpExport.shutdown` wait beyond one push's
timeout by default: the metrics and the spans are pushed side by side, each within it."""


class OtlpExport:
    """xzatoma's metrics and spans pushed over OTLP/HTTP; :meth:`shutdown` sends what is left.

    Made by ``configure(otlp_endpoint=...)``. Use it in ``with``, or call :meth:`shutdown`
    before the process exits; an ``atexit`` hook calls it for a process that forgets.

    Attributes:
        meter_provider: The SDK meter provider whose reader pushes the metrics; ``None``
            when only spans are pushed.
        tracer_provider: The SDK tracer provider whose processor pushes the spans; ``None``
            when only metrics are pushed.
        metrics_url: Where the metrics go (``.../v1/metrics``), or ``None``.
        traces_url: Where the spans go (``.../v1/traces``), or ``None``.
        timeout: Seconds one push may take, retries included.
    """

    def __init__(
        self,
        meter_provider: MeterProvider | None,
        tracer_provider: TracerProvider | None,
        *,
        metrics_url: str | None,
        traces_url: str | None,
        timeout: float,
        previous: Configuration,
        configured: Configuration,
    ) -> None:
        self.meter_provider = meter_provider
        self.tracer_provider = tracer_provider
        self.metrics_url = metrics_url
        self.traces_url = traces_url
        self.timeout = timeout
        self._previous = previous
        self._configured = configured
        self._lock = threading.Lock()
        self._stopped = False
        atexit.register(self._at_exit)

    def __repr__(self) -> str:  # never the headers: they may hold a token
        return (
            f"OtlpExport(metrics_url={self.metrics_url!r}, traces_url={self.traces_url!r}, "
            f"stopped={self._stopped})"
        )

    def flush(self, timeout: float | None = None) -> bool:
        """Push the spans ended and the metrics recorded so far, now, and wait for it.

        Args:
            timeout: Seconds to wait at most; ``None`` waits one push's :attr:`timeout` plus
                5 s (the metrics and the spans go side by side).

        Returns:
            ``True`` when every push finished in time. A push the collector refused or that
            could not connect also finishes: the exporter logs it (on the
            ``opentelemetry.exporter.otlp`` loggers) and the data is dropped, not kept.
            ``False`` after :meth:`shutdown`.
        """
        if self._stopped:
            return False
        calls: list[Callable[[int], bool]] = []
        if self.tracer_provider is not None:
            calls.append(self.tracer_provider.force_flush)
        if self.meter_provider is not None:
            calls.append(self.meter_provider.force_flush)
        return _side_by_side(calls, self._seconds(timeout), "flush")

    def shutdown(self, timeout: float | None = None) -> bool:
        """Push what is left, stop the exporters and their threads, and put back the
        configuration from before (when xzatoma still records to these providers).

        Idempotent: a second call returns ``True`` at once. Whatever the collector does, it
        returns within ``timeout``; a push still running then is abandoned (its thread is a
        daemon and does not keep the process alive).

        Args:
            timeout: Seconds to wait at most; ``None`` as for :meth:`flush`.

        Returns:
            ``True`` when everything was pushed (or given up on by the exporter) in time.
        """
        with self._lock:
            if self._stopped:
                return True
            self._stopped = True
        atexit.unregister(self._at_exit)
        if state.config is self._configured:
            restore(self._previous)
        seconds = self._seconds(timeout)
        calls: list[Callable[[int], bool]] = []
        tracer_provider, meter_provider = self.tracer_provider, self.meter_provider
        if tracer_provider is not None:

            def stop_tracing(timeout_millis: int) -> bool:
                # No timeout to give: its processor waits up to 30 s for its thread, which
                # _side_by_side bounds from outside. The push itself is bounded by .timeout.
                tracer_provider.shutdown()
                return True

            calls.append(stop_tracing)
        if meter_provider is not None:

            def stop_metrics(timeout_millis: int) -> bool:
                meter_provider.shutdown(timeout_millis=timeout_millis)
                return True

            calls.append(stop_metrics)
        return _side_by_side(calls, seconds, "shutdown")

    def __enter__(self) -> OtlpExport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def _seconds(self, timeout: float | None) -> float:
        if timeout is None:
            return self.timeout + MARGIN
        return positive_seconds("timeout", timeout)

    def _at_exit(self) -> None:
        self.shutdown()


def _side_by_side(calls: Sequence[Callable[[int], bool]], seconds: float, what: str) -> bool:
    """Run ``calls`` (each given ``seconds`` in milliseconds) at once, one thread each, and
    wait ``seconds`` at most for all of them; whether all finished in time and said so."""
    millis = max(int(seconds * 1000), 1)
    done: list[bool] = []

    def run(call: Callable[[int], bool]) -> None:
        try:
            done.append(bool(call(millis)))
        except Exception:  # an SDK reader that raised: logged, counted as not pushed
            logger.warning("OTLP %s failed", what, exc_info=True)
            done.append(False)

    deadline = time.monotonic() + seconds
    started: list[threading.Thread] = []
    for call in calls:
        thread = threading.Thread(
            target=run, args=(call,), name=f"xzatoma-otlp-{what}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no new threads at interpreter exit (atexit, Python 3.12+)
            run(call)
        else:
            started.append(thread)
    for thread in started:
        thread.join(max(deadline - time.monotonic(), 0.0))
    return len(done) == len(calls) and all(done)


def require_extra(needed_by: str) -> None:
    """Raise the error that says what to install when the ``otlp`` extra is missing."""
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # noqa: F401
            OTLPMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: F401
            OTLPSpanExporter,
        )
    except ImportError as exc:
        raise ConfigError(
            f"{needed_by} needs the 'otlp' extra (opentelemetry-exporter-otlp-proto-http), "
            f"which is not installed: {INSTALL_HINT} ({exc})"
        ) from None


def prometheus_readers() -> list[MetricReader]:
    """A ``PrometheusMetricReader()`` on prometheus_client's default registry when the
    ``prometheus`` extra is installed, else nothing: with it on the push's meter provider,
    :func:`~xzatoma.telemetry.start_metrics_server` (which serves that registry when a
    provider is configured) shows the same metrics as the push."""
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
    except ImportError:
        return []
    reader: MetricReader = PrometheusMetricReader()
    return [reader]


def start_export(
    *,
    endpoint: str | None,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
    export_interval: float | None = None,
    metrics: bool = True,
    traces: bool = True,
    metric_readers: Sequence[MetricReader] = (),
) -> OtlpExport:
    """Push xzatoma's metrics and spans over OTLP/HTTP from now on.

    Args:
        endpoint: The base URL (``/v1/metrics`` and ``/v1/traces`` are added), or ``None``
            to let the SDK's exporters read ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the
            per-signal ``OTEL_EXPORTER_OTLP_{METRICS,TRACES}_ENDPOINT`` themselves.
        headers: Sent with every push; ``None``: ``OTEL_EXPORTER_OTLP_HEADERS``.
        timeout: Seconds per push; ``None``: ``OTEL_EXPORTER_OTLP_TIMEOUT``, else 10.
        export_interval: Seconds between metric pushes; ``None``: the SDK's (60 s, or
            ``OTEL_METRIC_EXPORT_INTERVAL`` in milliseconds).
        metrics: Whether to push metrics (a meter provider is built).
        traces: Whether to push spans (a tracer provider is built).
        metric_readers: More readers for the meter provider (``PrometheusMetricReader()``).

    Raises:
        ConfigError: A bad endpoint or number, or the ``otlp`` extra is missing.
    """
    if timeout is not None:
        timeout = positive_seconds("otlp_timeout", timeout)
    if export_interval is not None:
        export_interval = positive_seconds("export_interval", export_interval)
    base = None
    if endpoint is not None:
        from ..providers._urls import validate_base_url

        validate_base_url(endpoint, "otlp_endpoint")
        base = endpoint.rstrip("/")
    require_extra("OTLP push")
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from ._session_spans import SessionSpanProcessor

    resource = sdk_resource()
    meter_provider = tracer_provider = None
    metrics_url = traces_url = None
    if metrics:
        metrics_url = f"{base}/v1/metrics" if base else signal_url("metrics")
        exporter = OTLPMetricExporter(
            endpoint=metrics_url if base else None, headers=headers, timeout=timeout
        )
        interval = None if export_interval is None else export_interval * 1000
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval)
        meter_provider = MeterProvider(
            metric_readers=[reader, *metric_readers], resource=resource, shutdown_on_exit=False
        )
    if traces:
        traces_url = f"{base}/v1/traces" if base else signal_url("traces")
        tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        tracer_provider.add_span_processor(SessionSpanProcessor())
        tracer_provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(
                    endpoint=traces_url if base else None, headers=headers, timeout=timeout
                )
            )
        )
    previous = configuration()
    configure(
        meter_provider or previous.meter_provider, tracer_provider or previous.tracer_provider
    )
    return OtlpExport(
        meter_provider,
        tracer_provider,
        metrics_url=metrics_url,
        traces_url=traces_url,
        timeout=timeout if timeout is not None else _env_timeout(metrics, traces),
        previous=previous,
        configured=configuration(),
    )


def signal_url(signal: str) -> str:
    """Where the SDK's exporter sends ``signal`` (``metrics``, ``traces``) when given no
    endpoint: its per-signal variable, else ``OTEL_EXPORTER_OTLP_ENDPOINT`` plus
    ``/v1/{signal}``, else ``http://localhost:4318/v1/{signal}`` (the exporters' rule)."""
    own = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if own:
        return own
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
    return f"{base.removesuffix('/')}/v1/{signal}"


def _env_timeout(metrics: bool, traces: bool) -> float:
    """The longest push the exporters will allow themselves, read as they read it."""
    longest = 0.0
    for signal, wanted in (("METRICS", metrics), ("TRACES", traces)):
        if not wanted:
            continue
        raw = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_TIMEOUT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_TIMEOUT"
        )
        try:
            seconds = float(raw) if raw else DEFAULT_TIMEOUT
        except ValueError:  # the exporter warns and takes its default
            seconds = DEFAULT_TIMEOUT
        longest = max(longest, seconds if math.isfinite(seconds) else DEFAULT_TIMEOUT)
    return longest or DEFAULT_TIMEOUT
