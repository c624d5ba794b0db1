"""``Destination``: where one subscriber records, its own providers or the process-wide ones.

A :class:`~xzatoma.telemetry.TelemetrySubscriber` made with a meter or tracer provider
records that half there and nowhere else, so two runtimes of one process with providers of
their own never see each other's data. A half given no provider follows
:func:`~xzatoma.telemetry.configure` (else OpenTelemetry's global provider), looked up at
each use as before, so a subscriber made before ``configure()`` still follows it.
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry import metrics, trace

from ..errors import ConfigError
from ._config import meter_of, state, tracer_of, traces
from ._metrics import Instruments, current_instruments, instruments_of

__all__ = ("Destination",)


class Destination:
    """The instruments and the tracer of one subscriber, as the functions that give them
    (the process-wide configuration's own, for a half given no provider: the subscriber
    calls them on every event, so there is no lookup in between).

    Args:
        meter_provider: Where its metrics go; ``None``: the process-wide provider.
        tracer_provider: Where its spans go; ``None``: the process-wide provider.

    Raises:
        ConfigError: A provider is not an OpenTelemetry ``MeterProvider`` /
            ``TracerProvider``.
    """

    __slots__ = (
        "_instruments",
        "instruments",
        "meter_provider",
        "tracer",
        "tracer_provider",
        "tracing",
    )

    instruments: Callable[[], Instruments]
    """The instruments to record to (an own provider's are made on its first record)."""
    tracing: Callable[[], bool]
    """Whether spans go anywhere: an own provider that is not the no-op API, or what the
    process-wide configuration says."""
    tracer: Callable[[], trace.Tracer]
    """The tracer to start spans on."""

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        _check("meter_provider", meter_provider, metrics.MeterProvider)
        _check("tracer_provider", tracer_provider, trace.TracerProvider)
        self.meter_provider = meter_provider
        self.tracer_provider = tracer_provider
        self._instruments: Instruments | None = None
        self.instruments = current_instruments if meter_provider is None else self._own_instruments
        if tracer_provider is None:
            self.tracing, self.tracer = state.tracing, state.tracer
        else:
            tracer, tracing = tracer_of(tracer_provider), traces(tracer_provider)
            self.tracing, self.tracer = (lambda: tracing), (lambda: tracer)

    @property
    def own(self) -> bool:
        """Whether either half has a provider of its own."""
        return self.meter_provider is not None or self.tracer_provider is not None

    def _own_instruments(self) -> Instruments:
        found = self._instruments
        if found is None:
            assert self.meter_provider is not None
            found = self._instruments = instruments_of(meter_of(self.meter_provider))
        return found


def _check(name: str, provider: object, kind: type) -> None:
    if provider is not None and not isinstance(provider, kind):
        raise ConfigError(
            f"{name} must be an OpenTelemetry {kind.__name__} (from opentelemetry.sdk), "
            f"got {type(provider).__name__}"
        )
