"""Which OpenTelemetry providers xzatoma records to: ``configure()`` and the state it sets.

One module-level state object, read on every event, so subscribers made before ``configure()``
follow it. Each ``configure()`` bumps a generation number and drops the cached meter and
tracer; the instruments are cached against that number, so the hot path looks nothing up.
``configure(otlp_endpoint=...)`` hands the building of OTLP push providers to ``_otlp``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

from opentelemetry import metrics, trace

from . import _names

if TYPE_CHECKING:  # the SDK is imported when something builds its providers
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.resources import Resource

    from ._otlp import OtlpExport

__all__ = (
    "Configuration",
    "configuration",
    "configure",
    "meter_is_configured",
    "meter_of",
    "restore",
    "sdk_resource",
    "state",
    "tracer_of",
    "traces",
)


def _version() -> str:
    from .. import __version__

    return __version__


@dataclass(frozen=True, slots=True)
class Configuration:
    """The providers set by ``configure()``; ``None`` means OpenTelemetry's global one."""

    meter_provider: metrics.MeterProvider | None = None
    tracer_provider: trace.TracerProvider | None = None


class _State:
    """The current configuration, with the meter and tracer looked up from it (cached)."""

    __slots__ = ("_global_marker", "_global_tracing", "_meter", "_tracer", "config", "generation")

    def __init__(self) -> None:
        self.config = Configuration()
        self.generation = 0
        self._meter: metrics.Meter | None = None
        self._tracer: trace.Tracer | None = None
        self._global_marker: object = _NOT_YET
        self._global_tracing = False

    def set(self, config: Configuration) -> None:
        self.config = config
        self.generation += 1
        self._meter = None
        self._tracer = None

    def meter(self) -> metrics.Meter:
        meter = self._meter
        if meter is None:
            provider = self.config.meter_provider or metrics.get_meter_provider()
            meter = self._meter = meter_of(provider)
        return meter

    def tracing(self) -> bool:
        """Whether spans can go anywhere: a provider was configured, or a global SDK is set.

        Read at every run start, so a global provider installed later is picked up; until
        then no span objects are made at all. ``trace.get_tracer_provider()`` looks in
        ``os.environ`` each time, a noticeable share of a subagent's cost (bench/README.md,
        "The telemetry fast path"), so it is asked again only when the API's global (set at
        most once, a private name of the API pinned in pyproject.toml) has changed. So an
        ``OTEL_PYTHON_TRACER_PROVIDER`` put in the environment after the first run is seen
        once something calls ``get_tracer_provider()`` (the SDK's auto-instrumentation does).
        """
        if self.config.tracer_provider is not None:
            return True
        marker = getattr(trace, "_TRACER_PROVIDER", _ASK_EVERY_TIME)
        if marker is not self._global_marker or marker is _ASK_EVERY_TIME:
            self._global_tracing = traces(trace.get_tracer_provider())
            self._global_marker = marker
        return self._global_tracing

    def tracer(self) -> trace.Tracer:
        tracer = self._tracer
        if tracer is None:
            provider = self.config.tracer_provider or trace.get_tracer_provider()
            tracer = self._tracer = tracer_of(provider)
        return tracer


def meter_of(provider: metrics.MeterProvider) -> metrics.Meter:
    """xzatoma's meter on ``provider`` (its scope, version and schema URL)."""
    return provider.get_meter(_names.SCOPE, _version(), schema_url=_names.SCHEMA_URL)


def tracer_of(provider: trace.TracerProvider) -> trace.Tracer:
    """xzatoma's tracer on ``provider`` (its scope, version and schema URL)."""
    return provider.get_tracer(_names.SCOPE, _version(), schema_url=_names.SCHEMA_URL)


def traces(provider: trace.TracerProvider) -> bool:
    """Whether spans made on ``provider`` go anywhere (not the API's no-op or proxy)."""
    return not isinstance(provider, _NO_TRACING)


_NO_TRACING = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_NOT_YET: object = object()
_ASK_EVERY_TIME: object = object()  # an API without the private global: no shortcut

state = _State()
"""The process-wide telemetry configuration of xzatoma."""


@overload
def configure(
    meter_provider: metrics.MeterProvider | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> None: ...


@overload
def configure(
    *,
    otlp_endpoint: str,
    otlp_headers: Mapping[str, str] | None = None,
    otlp_timeout: float | None = None,
    export_interval: float | None = None,
    metric_readers: Sequence[MetricReader] = (),
) -> OtlpExport: ...


def configure(
    meter_provider: metrics.MeterProvider | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    *,
    otlp_endpoint: str | None = None,
    otlp_headers: Mapping[str, str] | None = None,
    otlp_timeout: float | None = None,
    export_interval: float | None = None,
    metric_readers: Sequence[MetricReader] = (),
) -> OtlpExport | None:
    """Record xzatoma's metrics and spans to these providers, or push them over OTLP/HTTP.

    Either provider left out (``None``) means OpenTelemetry's global provider, which is the
    no-op API until an SDK is installed with ``opentelemetry.metrics.set_meter_provider`` /
    ``opentelemetry.trace.set_tracer_provider``. Calling ``configure()`` with no arguments
    goes back to the global providers. Subscribers that already exist follow the change at
    their next event; a subagent execution already counted finishes on the provider it
    started on, so ``active_count`` always returns to zero where it went up.

    With ``otlp_endpoint`` (and no providers) xzatoma builds its own: an SDK
    ``MeterProvider`` whose ``PeriodicExportingMetricReader`` pushes to
    ``{otlp_endpoint}/v1/metrics`` and a ``TracerProvider`` whose ``BatchSpanProcessor``
    pushes to ``{otlp_endpoint}/v1/traces``, both with the resource of
    :func:`sdk_resource`, and returns the :class:`~xzatoma.telemetry.OtlpExport` that
    flushes and shuts them down. A short-lived process must let it do that before it exits
    (``with``, ``shutdown()``, or the ``atexit`` hook it registers), or the spans still
    batched and the metrics since the last push are lost. Cumulative temporality, unless
    ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` says otherwise.

    Args:
        meter_provider: Where the ``subagent.*`` and ``gen_ai.*`` instruments go.
        tracer_provider: Where the ``invoke_agent``, ``execute_tool`` and ``chat`` spans go.
        otlp_endpoint: The collector's OTLP/HTTP base URL (``http://127.0.0.1:4318``), as
            ``OTEL_EXPORTER_OTLP_ENDPOINT`` would give it; needs the ``otlp`` extra.
        otlp_headers: Headers sent with every push (an ``authorization`` key, say); ``None``
            takes ``OTEL_EXPORTER_OTLP_HEADERS``.
        otlp_timeout: Seconds one push may take, retries included; ``None`` takes
            ``OTEL_EXPORTER_OTLP_TIMEOUT`` (the SDK reads it in seconds), else 10.
        export_interval: Seconds between metric pushes while the process runs; ``None``
            takes ``OTEL_METRIC_EXPORT_INTERVAL`` (milliseconds), else 60 s.
        metric_readers: More readers on the same ``MeterProvider``, such as
            ``PrometheusMetricReader()`` for :func:`~xzatoma.telemetry.start_metrics_server`.

    Returns:
        ``None``, or with ``otlp_endpoint`` the :class:`~xzatoma.telemetry.OtlpExport`.

    Raises:
        ConfigError: ``otlp_endpoint`` is not an http(s) URL, a number is out of range,
            providers were given too, or the ``otlp`` extra is not installed (the message
            says what to install).
    """
    if otlp_endpoint is None:
        state.set(Configuration(meter_provider, tracer_provider))
        return None
    from ._otlp import start_export

    if meter_provider is not None or tracer_provider is not None:
        from ..errors import ConfigError

        raise ConfigError("give configure() providers or an otlp_endpoint, not both")
    return start_export(
        endpoint=otlp_endpoint,
        headers=otlp_headers,
        timeout=otlp_timeout,
        export_interval=export_interval,
        metric_readers=metric_readers,
    )


def configuration() -> Configuration:
    """The current configuration, to restore later with :func:`restore`."""
    return state.config


def restore(config: Configuration) -> None:
    """Put back a configuration returned by :func:`configuration`."""
    state.set(config)


def meter_is_configured() -> bool:
    """Whether metrics go anywhere: a provider was configured, or a global SDK is installed."""
    if state.config.meter_provider is not None:
        return True
    return not _is_noop(metrics.get_meter_provider())


def _is_noop(provider: metrics.MeterProvider) -> bool:
    if isinstance(provider, metrics.NoOpMeterProvider):
        return True
    # Until the global provider is set, the API hands out a proxy that forwards to nothing.
    try:
        from opentelemetry.metrics._internal import _ProxyMeterProvider
    except ImportError:  # pragma: no cover - a future API that renamed its private proxy
        return False
    return isinstance(provider, _ProxyMeterProvider)


def sdk_resource() -> Resource:
    """The SDK resource of the providers xzatoma builds (``/metrics``, OTLP push): the
    environment's (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), named ``xzatoma``
    unless the environment names the service."""
    from opentelemetry.sdk.resources import Resource

    attributes = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in attributes:
        return Resource.create()
    return Resource.create({"service.name": "xzatoma"})
