"""``start_metrics_server``: Prometheus's formats at ``/metrics``, on 127.0.0.1 by default.

It needs the ``prometheus`` extra (``opentelemetry-exporter-prometheus`` and
``prometheus-client``). When nothing is configured it also sets up what it serves: an SDK
``MeterProvider`` with a ``PrometheusMetricReader`` on a registry of its own, which it hands
to :func:`configure` and takes back when stopped.
"""

from __future__ import annotations

import os
import socket
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Final, TypeAlias

from .._extras import install_hint
from ..errors import ConfigError
from ._config import Configuration, configuration, configure, meter_is_configured, restore, state
from ._config import sdk_resource as _resource
from ._connection import Limits, MetricsServerStatistics
from ._exposition import Exposition
from ._seconds import positive_seconds
from ._transport import Transport

if TYPE_CHECKING:  # the SDK is imported when a server starts, not with the runtime
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry

    _Owned: TypeAlias = tuple[MeterProvider, Configuration]
    """The provider a server set up, and the configuration to restore when it stops."""

__all__ = ("INSTALL_HINT", "MetricsServer", "MetricsServerStatistics", "start_metrics_server")

INSTALL_HINT = install_hint("prometheus")
"""What to run when the ``prometheus`` extra is missing."""

_BACKLOG: Final = 512
"""Connections the kernel queues before they are accepted: a burst of scrapers beyond it
would wait for TCP to retry (1 s, then 3 s). The I/O thread accepts them at once anyway."""


class MetricsServer:
    """A running ``/metrics`` endpoint; :meth:`stop` (or leaving ``with``) ends it.

    Attributes:
        host: The address it is bound to.
        port: The port it listens on (the real one when 0 was asked for).
        url: ``http://host:port/metrics``.
        registry: The ``prometheus_client`` registry it serves.
    """

    def __init__(
        self,
        transport: Transport,
        address: tuple[str, int],
        registry: CollectorRegistry,
        owned: _Owned | None,
    ) -> None:
        self._transport = transport
        self._owned = owned
        self.registry = registry
        self.host = str(address[0])
        self.port = int(address[1])
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}/metrics"
        self._lock = threading.Lock()
        self._stopped = False

    def __repr__(self) -> str:
        return f"MetricsServer(url={self.url!r}, stopped={self._stopped})"

    @property
    def meter_provider(self) -> MeterProvider | None:
        """The meter provider this server set up, when nothing was configured before it."""
        return self._owned[0] if self._owned is not None else None

    def statistics(self) -> MetricsServerStatistics:
        """A snapshot of its connections: open now, accepted, answered, evicted, timed out."""
        return self._transport.statistics()

    def stop(self) -> None:
        """Stop serving and close every socket; undo what the server configured. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._transport.stop()
        if self._owned is not None:
            provider, previous = self._owned
            if state.config.meter_provider is provider:
                restore(previous)
            provider.shutdown()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_metrics_server(
    host: str = "127.0.0.1",
    port: int = 9464,
    *,
    registry: CollectorRegistry | None = None,
    max_connections: int = 256,
    idle_timeout: float = 30.0,
    header_timeout: float = 10.0,
    write_timeout: float = 10.0,
    max_header_bytes: int = 16_384,
) -> MetricsServer:
    """Serve xzatoma's metrics to Prometheus at ``http://host:port/metrics``.

    The format is the one the scraper asks for, as prometheus_client's ``choose_encoder``
    picks it from ``Accept``: OpenMetrics for ``application/openmetrics-text`` (Prometheus's
    default), with the exemplars the SDK kept (a value recorded while a sampled span was
    current carries ``trace_id`` and ``span_id``), else the classic text format (for
    ``curl``, and for an ``Accept`` that prometheus_client cannot read). The body is gzipped
    when ``Accept-Encoding`` takes gzip. Exemplars lean on the OTel exporter's internals: for
    a reader of your own they are a best effort, and when the exporter is not the release
    they were checked on the metrics are served without them (a warning says so once).

    What it serves:

    - ``registry`` when given (a ``prometheus_client.CollectorRegistry`` that your own
      ``PrometheusMetricReader(registry=...)`` writes to);
    - else, when a meter provider is configured (by :func:`configure` or as OTel's global SDK
      provider), ``prometheus_client``'s default registry, where ``PrometheusMetricReader()``
      writes unless told otherwise;
    - else it makes an SDK ``MeterProvider`` with a ``PrometheusMetricReader`` on a registry
      of its own and configures xzatoma to record to it until the server is stopped.

    The server runs two threads (one for every connection's I/O, one that renders), however
    many clients connect, and bounds what a client can hold with the limits below, so a
    flood of connections that never finish a request costs the agents nothing. Scrapes
    waiting at once share one collection, and each format and encoding is made once.

    Args:
        host: Address to bind; 127.0.0.1 by default (binding elsewhere is your choice).
        port: Port to listen on; 0 picks a free one (read it back from ``.port``).
        registry: The ``prometheus_client`` registry to serve (see above).
        max_connections: Connections open at once; one more evicts first a connection
            already answered and closing, else the oldest that has not completed a request,
            else the one idle the longest, else the one whose answer has stalled the longest.
        idle_timeout: Seconds a kept-alive connection may wait between requests before it
            is closed.
        header_timeout: Seconds a client has to send a complete request head, from the
            connection (or its next request's first byte); a slow drip does not extend it.
        write_timeout: Seconds an answer may go without the client taking any of it before
            the connection is closed.
        max_header_bytes: Size of the request line and headers together; more is a 431.

    Returns:
        A :class:`MetricsServer`; call ``stop()`` or use it in ``with`` to end it.

    Raises:
        ConfigError: The ``prometheus`` extra is not installed (the message says what to
            install), a limit is out of range, or the address cannot be bound.
    """
    limits = _limits(max_connections, idle_timeout, header_timeout, write_timeout, max_header_bytes)
    _require_extra()
    owned: _Owned | None = None
    if registry is None:
        registry, owned = _default_registry()
    listener = _bind(host, port, owned)
    try:
        transport = Transport(listener, Exposition(registry), limits)
    except BaseException:
        listener.close()
        _undo(owned)
        raise
    address = listener.getsockname()
    return MetricsServer(transport, (address[0], address[1]), registry, owned)


def _require_extra() -> None:
    """Raise the error that says what to install when the ``prometheus`` extra is missing."""
    try:
        import prometheus_client  # noqa: F401
        from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "start_metrics_server needs the 'prometheus' extra (opentelemetry-exporter-"
            f"prometheus and prometheus-client), which is not installed: {INSTALL_HINT} "
            f"({exc})"
        ) from None


def _default_registry() -> tuple[CollectorRegistry, _Owned | None]:
    """The registry to serve when none is given, and the provider set up for it, if any.

    A configured meter provider records to ``prometheus_client``'s default registry (where
    ``PrometheusMetricReader()`` writes unless told otherwise); with none, the server sets up
    its own provider, which :meth:`MetricsServer.stop` takes back.
    """
    import prometheus_client

    if meter_is_configured():
        return prometheus_client.REGISTRY, None
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider

    registry = prometheus_client.CollectorRegistry()
    try:
        reader = PrometheusMetricReader(registry=registry)
    except TypeError:  # an exporter older than its ``registry`` argument
        registry = prometheus_client.REGISTRY
        reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=_resource(), shutdown_on_exit=False)
    previous = configuration()
    configure(provider, previous.tracer_provider)
    return registry, (provider, previous)


def _limits(
    max_connections: int,
    idle_timeout: float,
    header_timeout: float,
    write_timeout: float,
    max_header_bytes: int,
) -> Limits:
    """The limits, checked: each message names the argument and the range it must be in."""
    for name, count, least in (
        ("max_connections", max_connections, 1),
        ("max_header_bytes", max_header_bytes, 1024),
    ):
        if isinstance(count, bool) or not isinstance(count, int):
            raise ConfigError(f"{name} must be a whole number, got {type(count).__name__}")
        if count < least:
            raise ConfigError(f"{name} must be at least {least}")
    return Limits(
        max_connections=max_connections,
        idle_timeout=positive_seconds("idle_timeout", idle_timeout),
        header_timeout=positive_seconds("header_timeout", header_timeout),
        write_timeout=positive_seconds("write_timeout", write_timeout),
        max_header_bytes=max_header_bytes,
    )


def _bind(host: str, port: int, owned: _Owned | None) -> socket.socket:
    """The listening socket; when the address cannot be bound, what was set up is undone."""
    try:
        return _listen(host, port)
    except OSError as exc:
        _undo(owned)
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}") from exc


def _undo(owned: _Owned | None) -> None:
    """Take back the provider a server set up for itself, and the configuration before it."""
    if owned is not None:
        restore(owned[1])
        owned[0].shutdown()


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (IPv4 or IPv6, as the host resolves)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name != "nt":  # a restart may bind while old connections sit in TIME_WAIT
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(_BACKLOG)
    except BaseException:
        listener.close()
        raise
    return listener
