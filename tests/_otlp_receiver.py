"""A real OTLP/HTTP receiver on 127.0.0.1, for tests that push metrics and spans to it.

It accepts ``POST /v1/metrics`` and ``POST /v1/traces`` with ``application/x-protobuf``
bodies, decodes them with opentelemetry-proto's ``ExportMetricsServiceRequest`` and
``ExportTraceServiceRequest``, keeps them with the request's headers, and answers 200 with
an empty response message, as a collector does. Tests wait for what they expect with
:meth:`OtlpReceiver.wait_for` (a condition variable notified at every request), never with
sleeps; ``close()`` drops kept-alive connections and joins every handler thread.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.proto.trace.v1.trace_pb2 import Span

__all__ = (
    "HistogramTotal",
    "OtlpReceiver",
    "Received",
    "ReceivedSpan",
    "attributes",
    "silent_port",
)

PROTOBUF = "application/x-protobuf"
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA

Attributes = dict[str, Any]


def value_of(any_value: AnyValue) -> Any:
    """A protobuf ``AnyValue`` as the Python value it holds."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(value_of(v) for v in any_value.array_value.values)
    if kind == "kvlist_value":
        return attributes(any_value.kvlist_value.values)
    return getattr(any_value, kind)


def attributes(pairs: Any) -> Attributes:
    """Repeated ``KeyValue`` as a dict."""
    found: Attributes = {}
    pair: KeyValue
    for pair in pairs:
        found[pair.key] = value_of(pair.value)
    return found


@dataclass(frozen=True)
class Received:
    """One export request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    """Header names lower-cased."""
    message: ExportMetricsServiceRequest | ExportTraceServiceRequest


@dataclass(frozen=True)
class ReceivedSpan:
    """A span with the resource and scope it came under."""

    span: Span
    resource: Attributes
    scope: str

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def attributes(self) -> Attributes:
        return attributes(self.span.attributes)

    @property
    def span_id(self) -> bytes:
        return self.span.span_id

    @property
    def parent_span_id(self) -> bytes:
        return self.span.parent_span_id

    @property
    def trace_id(self) -> bytes:
        return self.span.trace_id


@dataclass(frozen=True)
class HistogramTotal:
    """A histogram's data points that matched, merged (cumulative: the last of each)."""

    count: int
    sum: float
    bucket_counts: tuple[int, ...]
    explicit_bounds: tuple[float, ...]


class OtlpReceiver:
    """A ``ThreadingHTTPServer`` that takes OTLP/HTTP protobuf exports and keeps them."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.refused: list[tuple[str, int]] = []
        """Requests answered with an error: (path, status)."""
        self._changed = threading.Condition()
        self._connections: set[socket.socket] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = False
        self._server.block_on_close = True  # server_close() joins the handler threads
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes it."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def wait_for(self, done: Callable[[OtlpReceiver], bool], timeout: float = 60.0) -> bool:
        """Block until ``done(self)`` holds (checked at every request); ``False`` on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: done(self), timeout)

    # -- what arrived --------------------------------------------------------------------------

    def metric_requests(self) -> list[ExportMetricsServiceRequest]:
        with self._changed:
            return [
                r.message
                for r in self.received
                if isinstance(r.message, ExportMetricsServiceRequest)
            ]

    def trace_requests(self) -> list[ExportTraceServiceRequest]:
        with self._changed:
            return [
                r.message for r in self.received if isinstance(r.message, ExportTraceServiceRequest)
            ]

    def spans(self) -> list[ReceivedSpan]:
        """Every span received, in arrival order."""
        return [
            ReceivedSpan(span, attributes(rs.resource.attributes), ss.scope.name)
            for request in self.trace_requests()
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    def metric_names(self) -> set[str]:
        return {m.name for _, m in self._metrics()}

    def resources(self) -> list[Attributes]:
        """The resource of every resource-metrics and resource-spans block received."""
        found = [
            attributes(rm.resource.attributes)
            for r in self.metric_requests()
            for rm in r.resource_metrics
        ]
        found += [
            attributes(rs.resource.attributes)
            for r in self.trace_requests()
            for rs in r.resource_spans
        ]
        return found

    def value(self, name: str, **match: Any) -> float:
        """A counter's (or up-down counter's) total over the attribute sets that match."""
        total = 0.0
        for point in self._totals(name, match).values():
            total += point
        return total

    def histogram(self, name: str, **match: Any) -> HistogramTotal:
        """A histogram's points that match, merged."""
        latest: dict[tuple[Any, ...], Any] = {}
        deltas: list[Any] = []
        for metric_attrs, point, temporality in self._points(name, "histogram", match):
            if temporality == DELTA:
                deltas.append(point)
            else:
                latest[metric_attrs] = point
        points = [*latest.values(), *deltas]
        if not points:
            return HistogramTotal(0, 0.0, (), ())
        buckets = [0] * len(points[0].bucket_counts)
        for p in points:
            for i, c in enumerate(p.bucket_counts):
                buckets[i] += c
        return HistogramTotal(
            count=sum(p.count for p in points),
            sum=sum(p.sum for p in points),
            bucket_counts=tuple(buckets),
            explicit_bounds=tuple(points[0].explicit_bounds),
        )

    def attribute_sets(self, name: str) -> list[Attributes]:
        """The distinct attribute sets of metric ``name``."""
        seen: dict[tuple[Any, ...], Attributes] = {}
        for _, metric in self._metrics():
            if metric.name != name:
                continue
            kind = metric.WhichOneof("data")
            if kind is None:
                continue
            for point in getattr(metric, kind).data_points:
                found = attributes(point.attributes)
                seen[tuple(sorted(found.items()))] = found
        return list(seen.values())

    def _metrics(self) -> Iterator[tuple[Attributes, Any]]:
        for request in self.metric_requests():
            for rm in request.resource_metrics:
                resource = attributes(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        yield resource, metric

    def _points(
        self, name: str, kind: str, match: dict[str, Any]
    ) -> Iterator[tuple[tuple[Any, ...], Any, int]]:
        for _, metric in self._metrics():
            if metric.name != name or metric.WhichOneof("data") != kind:
                continue
            data = getattr(metric, kind)
            for point in data.data_points:
                found = attributes(point.attributes)
                if all(found.get(k) == v for k, v in match.items()):
                    yield tuple(sorted(found.items())), point, data.aggregation_temporality

    def _totals(self, name: str, match: dict[str, Any]) -> dict[tuple[Any, ...], float]:
        """Per attribute set: the last cumulative value, or the sum of the deltas."""
        totals: dict[tuple[Any, ...], float] = {}
        for key, point, temporality in self._points(name, "sum", match):
            number = point.as_double if point.WhichOneof("value") == "as_double" else point.as_int
            totals[key] = totals.get(key, 0.0) + number if temporality == DELTA else float(number)
        return totals

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        with self._changed:
            connections = list(self._connections)
        for conn in connections:  # wake handlers blocked reading an idle keep-alive socket
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self
        messages: dict[str, tuple[type[Any], bytes]] = {
            "/v1/metrics": (
                ExportMetricsServiceRequest,
                ExportMetricsServiceResponse().SerializeToString(),
            ),
            "/v1/traces": (
                ExportTraceServiceRequest,
                ExportTraceServiceResponse().SerializeToString(),
            ),
        }

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the exporters keep their connection alive

            def setup(self) -> None:
                super().setup()
                with outer._changed:
                    outer._connections.add(self.connection)

            def finish(self) -> None:
                with outer._changed:
                    outer._connections.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def _refuse(self, status: int, why: str) -> None:
                with outer._changed:
                    outer.refused.append((self.path, status))
                    outer._changed.notify_all()
                self._answer(status, why.encode(), "text/plain")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path not in messages:
                    return self._refuse(404, "not an OTLP path")
                content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                if content_type != PROTOBUF:
                    return self._refuse(415, f"expected {PROTOBUF}")
                if self.headers.get("Content-Encoding"):
                    return self._refuse(415, "compressed bodies are not taken here")
                kind, response = messages[self.path]
                message = kind()
                message.ParseFromString(body)
                received = Received(
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    message=message,
                )
                with outer._changed:  # kept before the answer: once the client has it, it is here
                    outer.received.append(received)
                    outer._changed.notify_all()
                with contextlib.suppress(OSError):  # the client gave up (timeout)
                    self._answer(200, response, PROTOBUF)

        return Handler


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 that takes connections (in the kernel's queue) and never answers:
    a collector that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port: int = listener.getsockname()[1]
        yield port


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening: a collector that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
