"""``start_metrics_server``: the Prometheus text format at ``/metrics``, on 127.0.0.1 by default.

It needs the ``prometheus`` extra (``opentelemetry-exporter-prometheus`` and
``prometheus-client``). When nothing is configured it also sets up what it serves: an SDK
``MeterProvider`` with a ``PrometheusMetricReader`` on a registry of its own, which it hands
to :func:`configure` and takes back when stopped.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ..errors import ConfigError
from ._config import Configuration, configuration, configure, meter_is_configured, restore, state

if TYPE_CHECKING:  # the SDK is imported when a server starts, not with the runtime
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from prometheus_client import CollectorRegistry

__all__ = ("INSTALL_HINT", "MetricsServer", "start_metrics_server")

INSTALL_HINT = "pip install 'xzatoma[prometheus]'"
"""What to run when the ``prometheus`` extra is missing."""

_StartResponse = Callable[..., Any]
_WSGIApp = Callable[[dict[str, Any], _StartResponse], Iterable[bytes]]


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
        httpd: WSGIServer,
        registry: CollectorRegistry,
        owned: tuple[MeterProvider, Configuration] | None,
    ) -> None:
        self._httpd = httpd
        self._owned = owned
        self.registry = registry
        address = httpd.server_address
        self.host = str(address[0])
        self.port = int(address[1])
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}/metrics"
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # so stop() returns promptly, not after 0.5 s
            name=f"xzatoma-metrics-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"MetricsServer(url={self.url!r}, stopped={self._stopped})"

    @property
    def meter_provider(self) -> MeterProvider | None:
        """The meter provider this server set up, when nothing was configured before it."""
        return self._owned[0] if self._owned is not None else None

    def stop(self) -> None:
        """Stop serving and close the socket; undo what the server configured. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
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


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr for every scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        return None


def start_metrics_server(
    host: str = "127.0.0.1", port: int = 9464, *, registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve xzatoma's metrics in the Prometheus text format at ``http://host:port/metrics``.

    What it serves:

    - ``registry`` when given (a ``prometheus_client.CollectorRegistry`` that your own
      ``PrometheusMetricReader(registry=...)`` writes to);
    - else, when a meter provider is configured (by :func:`configure` or as OTel's global SDK
      provider), ``prometheus_client``'s default registry, where ``PrometheusMetricReader()``
      writes unless told otherwise;
    - else it makes an SDK ``MeterProvider`` with a ``PrometheusMetricReader`` on a registry
      of its own and configures xzatoma to record to it until the server is stopped.

    Args:
        host: Address to bind; 127.0.0.1 by default (binding elsewhere is your choice).
        port: Port to listen on; 0 picks a free one (read it back from ``.port``).
        registry: The ``prometheus_client`` registry to serve (see above).

    Returns:
        A :class:`MetricsServer`; call ``stop()`` or use it in ``with`` to end it.

    Raises:
        ConfigError: The ``prometheus`` extra is not installed (the message says what to
            install), or the address cannot be bound.
    """
    try:
        import prometheus_client
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
    except ImportError as exc:
        raise ConfigError(
            "start_metrics_server needs the 'prometheus' extra (opentelemetry-exporter-"
            f"prometheus and prometheus-client), which is not installed: {INSTALL_HINT} "
            f"({exc})"
        ) from None
    owned: tuple[MeterProvider, Configuration] | None = None
    if registry is None:
        if meter_is_configured():
            registry = prometheus_client.REGISTRY
        else:
            from opentelemetry.sdk.metrics import MeterProvider

            registry = prometheus_client.CollectorRegistry()
            try:
                reader = PrometheusMetricReader(registry=registry)
            except TypeError:  # an exporter older than its ``registry`` argument
                registry = prometheus_client.REGISTRY
                reader = PrometheusMetricReader()
            provider = MeterProvider(
                metric_readers=[reader], resource=_resource(), shutdown_on_exit=False
            )
            previous = configuration()
            owned = (provider, previous)
            configure(provider, previous.tracer_provider)
    try:
        render = _SingleFlight(lambda: prometheus_client.generate_latest(registry))
        httpd = _bind(host, port, _metrics_only(render))
    except OSError as exc:
        if owned is not None:
            restore(owned[1])
            owned[0].shutdown()
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    return MetricsServer(httpd, registry, owned)


def _resource() -> Resource:
    """The SDK's resource, named ``xzatoma`` unless the environment names the service."""
    from opentelemetry.sdk.resources import Resource

    attributes = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in attributes:
        return Resource.create()
    return Resource.create({"service.name": "xzatoma"})


class _Flight:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result = b""
        self.error: BaseException | None = None


class _SingleFlight:
    """At most one collection at a time; scrapes that arrive meanwhile share its result.

    A collection costs milliseconds of CPU under the GIL, so fifty clients scraping at once
    would otherwise run fifty identical collections and slow the agents down. A shared
    result is at most one collection old.
    """

    def __init__(self, produce: Callable[[], bytes]) -> None:
        self._produce = produce
        self._lock = threading.Lock()
        self._flight: _Flight | None = None

    def __call__(self) -> bytes:
        with self._lock:
            flight, leader = self._flight, False
            if flight is None:
                flight = self._flight = _Flight()
                leader = True
        if leader:
            try:
                flight.result = self._produce()
            except BaseException as exc:
                flight.error = exc
            finally:
                with self._lock:
                    self._flight = None
                flight.done.set()
        else:
            flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.result


_EXPOSITION = "text/plain; version=0.0.4; charset=utf-8"


def _metrics_only(render: Callable[[], bytes]) -> _WSGIApp:
    def app(environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        text = [("Content-Type", "text/plain; charset=utf-8")]
        if environ.get("PATH_INFO", "/") not in ("/metrics", "/metrics/"):
            start_response("404 Not Found", text)
            return [b"Not found: the metrics are at /metrics\n"]
        method = environ.get("REQUEST_METHOD")
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [*text, ("Allow", "GET, HEAD")])
            return [b"Method not allowed: /metrics answers GET\n"]
        body = render()
        headers = [("Content-Type", _EXPOSITION), ("Content-Length", str(len(body)))]
        start_response("200 OK", headers)
        return [b""] if method == "HEAD" else [body]

    return app


def _bind(host: str, port: int, app: _WSGIApp) -> WSGIServer:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    class Server(ThreadingMixIn, WSGIServer):
        address_family = family
        daemon_threads = True
        # wsgiref listens with a backlog of 5: a burst of scrapers beyond it waits for TCP
        # to retry the connection (1 s, then 3 s). Prometheus fleets and dashboards burst.
        request_queue_size = 128

    return make_server(host, port, app, server_class=Server, handler_class=_QuietHandler)
