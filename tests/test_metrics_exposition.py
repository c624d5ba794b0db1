"""What ``/metrics`` answers (issue 16): the format the scraper asks for, gzip, exemplars.

The negotiation is prometheus_client's (``choose_encoder``), bounded to a fixed set of
answers; gzip is compressed once per render, however many scrapers share it; exemplars the
SDK kept (values recorded in a sampled span) reach the OpenMetrics body, and a real
Prometheus with exemplar storage keeps them. ``promtool check metrics`` is run on a real
scrape of each format and its exact report checked.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from _prometheus import INSTALL, prometheus_server
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families as parse_text
from test_boundary_telemetry import Gate
from test_prometheus_integration import KNOWN_LINT, run_tree

from xzatoma.telemetry import MetricsServer, configure, start_metrics_server
from xzatoma.telemetry import _names as n
from xzatoma.telemetry._exposition import CLASSIC_TYPE, Exposition, accepts_gzip

PROMETHEUS_ACCEPT = (  # what Prometheus 2.42 sends (scrape.go, acceptHeader)
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=underscores"
BOUNDS = (0.1, 0.2, 0.4, 0.8, 1.6)
PROBE = "exemplar_probe_seconds"
"""The histogram these tests record in a span (``exemplar.probe``, unit ``s``)."""

# -- negotiation, pure -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("", CLASSIC_TYPE),
        ("*/*", CLASSIC_TYPE),
        ("text/plain", CLASSIC_TYPE),
        (PROMETHEUS_ACCEPT, OPENMETRICS),
        (
            "application/openmetrics-text",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        (
            "text/plain;version=1.0.0;escaping=dots",
            "text/plain; version=1.0.0; charset=utf-8; escaping=dots",
        ),
        ("application/openmetrics-text; version=1.5.0", OPENMETRICS),  # the same body
        ("application/openmetrics-text; version=2.0.0", OPENMETRICS.replace("1.0.0", "2.0.0")),
        ("application/openmetrics-text; version=1.x", CLASSIC_TYPE),  # prometheus_client raises
        ("application/openmetrics-text; version=0.0.1", CLASSIC_TYPE),
        ("application/openmetrics-text; version=1.0.0\rX-Injected: 1", CLASSIC_TYPE),
    ],
)
def test_negotiation_answers_what_prometheus_client_would_within_a_fixed_set(
    accept: str, content_type: str
) -> None:
    variant = Exposition(CollectorRegistry()).negotiate(accept, "")
    assert (variant.content_type, variant.gzip) == (content_type, False)


@settings(max_examples=300, deadline=None)
@given(
    accept=st.text(st.characters(max_codepoint=0xFF, exclude_characters="\n"), max_size=80)
    | st.lists(
        st.sampled_from(
            ["application/openmetrics-text", "text/plain", "version=", "1.0.0", "x", ";", ",", "="]
        )
    ).map("".join),
    accept_encoding=st.text(st.characters(max_codepoint=0xFF, exclude_characters="\n")),
)
def test_no_accept_header_raises_or_reaches_the_response_head(
    accept: str, accept_encoding: str
) -> None:
    exposition = Exposition(CollectorRegistry())
    variant = exposition.negotiate(accept, accept_encoding)  # never raises
    assert variant in exposition._variants.values()  # one of the fixed set, not an echo
    assert variant.content_type.isascii()
    assert variant.content_type.isprintable()


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [
        ("gzip", True),
        ("GZIP", True),
        ("gzip, deflate, br", True),
        ("deflate, gzip;q=0.5", True),
        ("gzip ; q=1", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("*", False),
        ("identity", False),
        ("", False),
        ("gzipx", False),
    ],
)
def test_gzip_is_taken_when_named_and_not_refused(accept_encoding: str, expected: bool) -> None:
    assert accepts_gzip(accept_encoding) is expected


# -- over HTTP -------------------------------------------------------------------------------


def _get(
    server: MetricsServer, headers: dict[str, str], method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One request on a connection of its own; the body as sent (not decompressed)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request(method, "/metrics", headers=headers)
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


class _Static:
    """A collector with one gauge that never changes: every render's body is the same."""

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("static_value", "A value that never changes", labels=["k"])
        family.add_metric(["v"], 42.0)
        yield family


@pytest.fixture
def static_server() -> Iterator[MetricsServer]:
    registry = CollectorRegistry()
    registry.register(_Static())
    with start_metrics_server(port=0, registry=registry) as server:
        yield server


def test_a_scrape_that_asks_for_nothing_gets_the_classic_text_uncompressed(
    static_server: MetricsServer,
) -> None:
    status, headers, body = _get(static_server, {"Accept-Encoding": "identity"})
    assert status == 200
    assert headers["content-type"] == CLASSIC_TYPE
    assert "content-encoding" not in headers
    assert headers["vary"] == "Accept, Accept-Encoding"
    assert int(headers["content-length"]) == len(body)
    assert b'static_value{k="v"} 42.0\n' in body
    assert b"# EOF" not in body


def test_gzip_answers_decompress_to_the_uncompressed_body(static_server: MetricsServer) -> None:
    plain = _get(static_server, {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "identity"})
    zipped = _get(static_server, {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"})
    assert zipped[1]["content-encoding"] == "gzip"
    assert zipped[1]["content-type"] == plain[1]["content-type"] == OPENMETRICS
    assert zipped[1]["vary"] == "Accept, Accept-Encoding"
    assert int(zipped[1]["content-length"]) == len(zipped[2])
    assert gzip.decompress(zipped[2]) == plain[2]
    assert plain[2].endswith(b"# EOF\n")


def test_head_has_the_get_s_headers_and_no_body_and_keeps_the_connection(
    static_server: MetricsServer,
) -> None:
    conn = http.client.HTTPConnection(static_server.host, static_server.port, timeout=30)
    try:
        for method in ("HEAD", "GET", "HEAD"):
            conn.request(method, "/metrics", headers={"Accept-Encoding": "gzip"})
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200
            assert response.getheader("content-encoding") == "gzip"
            length = int(response.getheader("content-length") or -1)
            if method == "GET":
                assert gzip.decompress(body).startswith(b"# HELP static_value")
                assert length == len(body)
            else:
                assert body == b""
                assert length > 0
    finally:
        conn.close()
    assert static_server.statistics().accepted == 1  # one connection answered all three


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [  # what prometheus_client cannot read is the classic text; what it can, its answer
        ("application/openmetrics-text; version=1.x", CLASSIC_TYPE),
        ("application/openmetrics-text; version=" + "9" * 5000, CLASSIC_TYPE),
        ("application/openmetrics-text; version=1.0.0\rX-Injected: 1", CLASSIC_TYPE),
        ("\x00\x01\x7f\xff\xe9", CLASSIC_TYPE),
        (
            "application/openmetrics-text;;;===,,;version",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        (
            "text/plain; version=1.0.0.0.x",
            "text/plain; version=1.0.0; charset=utf-8; escaping=underscores",
        ),
    ],
)
def test_a_malformed_accept_is_answered_and_logs_nothing(
    static_server: MetricsServer,
    accept: str,
    content_type: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="xzatoma.telemetry")
    with contextlib.closing(socket_to(static_server)) as sock:
        sock.sendall(f"GET /metrics HTTP/1.1\r\nAccept: {accept}\r\n\r\n".encode("latin-1"))
        head = _read_head(sock)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"\r\nContent-Type: {content_type}\r\n".encode() in head
    assert b"X-Injected" not in head
    assert [r.getMessage() for r in caplog.records if r.name.startswith("xzatoma")] == []


def socket_to(server: MetricsServer) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=30)


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data.partition(b"\r\n\r\n")[0] + b"\r\n"


# -- one render, one compression per variant -------------------------------------------------


def _eventually(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait for a state the server reaches on its own thread (a bound, not an order)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the server did not get there in time"
        threading.Event().wait(0.01)


@pytest.mark.timeout(60)
def test_scrapers_waiting_together_cost_one_collection_and_one_compression_per_variant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compressions: list[int] = []
    real_compress = gzip.compress

    def counting(data: bytes, compresslevel: int = 9, *, mtime: float | None = None) -> bytes:
        compressions.append(len(data))
        return real_compress(data, compresslevel=compresslevel, mtime=mtime)

    monkeypatch.setattr(gzip, "compress", counting)  # the module the server calls it in
    registry = CollectorRegistry()
    gate = Gate(_Static().collect)
    registry.register(gate)
    kinds = {  # (Accept, Accept-Encoding): how many scrapers ask for it
        ("", "gzip"): 5,
        ("", "identity"): 2,
        (PROMETHEUS_ACCEPT, "identity"): 2,
        (PROMETHEUS_ACCEPT, "gzip"): 3,
    }
    with start_metrics_server(port=0, registry=registry) as server:
        awaiting = server._transport._awaiting
        conns: list[tuple[tuple[str, str], http.client.HTTPConnection]] = []
        try:
            for kind, count in kinds.items():
                for _ in range(count):
                    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
                    conn.request(
                        "GET",
                        "/metrics",
                        headers=dict(zip(("Accept", "Accept-Encoding"), kind, strict=True)),
                    )
                    conns.append((kind, conn))
                    if len(conns) == 1:  # the first starts the render; the rest queue behind
                        assert gate.entered.wait(30)
            _eventually(lambda: sum(len(c) for c in dict(awaiting).values()) == len(conns))
            assert len(dict(awaiting)) == 4  # the four variants
            gate.release.set()
            bodies: dict[tuple[str, str], set[bytes]] = {}
            for kind, conn in conns:
                response = conn.getresponse()
                assert response.status == 200
                bodies.setdefault(kind, set()).add(response.read())
        finally:
            for _, conn in conns:
                conn.close()
    # The first scraper's variant was rendered alone (it started the render); the other
    # three together, in one collection; each gzip variant compressed once.
    assert gate.collections == 2
    assert len(compressions) == 2
    assert all(len(same) == 1 for same in bodies.values())  # each shared one body


# -- exemplars -------------------------------------------------------------------------------


def _record_in_span(provider: MeterProvider, value: float) -> tuple[str, str]:
    """Record ``value`` on the probe histogram and a counter in a sampled span; its ids."""
    meter = provider.get_meter("exemplar-test")
    histogram = meter.create_histogram(
        "exemplar.probe", unit="s", explicit_bucket_boundaries_advisory=list(BOUNDS)
    )
    counter = meter.create_counter("exemplar.hits", unit="{hit}")
    tracer = TracerProvider().get_tracer("exemplar-test")
    with tracer.start_as_current_span("work") as span:
        histogram.record(value, {"depth": "1"})
        counter.add(1, {"depth": "1"})
        context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


@contextlib.contextmanager
def _own_reader() -> Iterator[tuple[MetricsServer, MeterProvider]]:
    """A user's own ``PrometheusMetricReader(registry=...)``, served by a started server."""
    registry = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)], shutdown_on_exit=False
    )
    try:
        with start_metrics_server(port=0, registry=registry) as server:
            yield server, provider
    finally:
        provider.shutdown()


def parse_openmetrics(text: str) -> list[Metric]:
    """prometheus_client's OpenMetrics parser (strict: a malformed body raises)."""
    return list(openmetrics_parser.text_string_to_metric_families(text))  # type: ignore[no-untyped-call]


def _exemplars(text: str, name: str) -> dict[str, tuple[dict[str, str], float, float]]:
    """The exemplars of ``name``'s samples by ``le`` (``total`` for a counter)."""
    found = {}
    for family in parse_openmetrics(text):
        for s in family.samples:
            if s.name.startswith(name) and s.exemplar is not None:
                stamp = s.exemplar.timestamp
                assert stamp is not None, s  # the server always gives the time
                found[s.labels.get("le", "total")] = (
                    s.exemplar.labels,
                    s.exemplar.value,
                    float(stamp),
                )
    return found


def test_openmetrics_buckets_and_counters_carry_the_span_s_exemplar() -> None:
    with _own_reader() as (server, provider):
        before = time.time_ns()  # only bounds the exemplar's timestamp below
        trace_id, span_id = _record_in_span(provider, 0.3)
        status, headers, body = _get(server, {"Accept": PROMETHEUS_ACCEPT})
    assert status == 200
    assert headers["content-type"] == OPENMETRICS
    text = body.decode()
    labels = {"trace_id": trace_id, "span_id": span_id}
    buckets = _exemplars(text, f"{PROBE}_bucket")
    assert set(buckets) == {"0.4"}  # 0.3 is in (0.2, 0.4]
    assert buckets["0.4"][:2] == (labels, 0.3)
    assert buckets["0.4"][2] >= before / 1e9
    hits = _exemplars(text, "exemplar_hits_total")
    assert set(hits) == {"total"}
    assert hits["total"][:2] == (labels, 1.0)
    assert hits["total"][2] >= before / 1e9
    bucket_line = next(
        line for line in text.splitlines() if f'{PROBE}_bucket{{depth="1",le="0.4"' in line
    )
    assert f' # {{span_id="{span_id}",trace_id="{trace_id}"}} 0.3 ' in bucket_line


def test_the_classic_text_has_no_exemplars_and_does_not_take_them_from_openmetrics() -> None:
    with _own_reader() as (server, provider):
        trace_id, _ = _record_in_span(provider, 0.3)
        classic = _get(server, {"Accept-Encoding": "identity"})[2].decode()
        # The SDK hands an exemplar to one collection only; the server keeps it.
        first = _get(server, {"Accept": PROMETHEUS_ACCEPT})[2].decode()
        second = _get(server, {"Accept": PROMETHEUS_ACCEPT})[2].decode()
        newer_trace, _ = _record_in_span(provider, 0.35)  # the same bucket: replaces it
        third = _get(server, {"Accept": PROMETHEUS_ACCEPT})[2].decode()
    assert " # {" not in classic
    assert (
        sum(s.value for f in parse_text(classic) for s in f.samples if s.name == f"{PROBE}_count")
        == 1
    )
    assert _exemplars(first, PROBE)["0.4"][0]["trace_id"] == trace_id
    assert _exemplars(second, PROBE) == _exemplars(first, PROBE)
    assert _exemplars(third, PROBE)["0.4"][:2] == (
        {"trace_id": newer_trace, "span_id": _exemplars(third, PROBE)["0.4"][0]["span_id"]},
        0.35,
    )
    assert newer_trace != trace_id


def test_the_server_s_own_provider_serves_exemplars_and_the_contract_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    configure()
    with start_metrics_server(port=0) as server:
        assert server.meter_provider is not None
        anyio.run(run_tree)
        trace_id, _ = _record_in_span(server.meter_provider, 0.15)
        response = httpx.get(server.url, headers={"Accept": PROMETHEUS_ACCEPT}, timeout=30)
    assert response.headers["content-type"] == OPENMETRICS
    assert response.headers["content-encoding"] == "gzip"  # httpx asks for it, and decodes
    families = {f.name: f for f in parse_openmetrics(response.text)}
    for instrument, name in n.PROMETHEUS_NAMES.items():
        family = families.get(name.removesuffix("_total"))
        assert family is not None, (instrument, name, sorted(families))
        assert family.type == ("gauge" if instrument == n.ACTIVE_COUNT else family.type)
    assert families["subagent_active_count"].type == "gauge"
    assert _exemplars(response.text, PROBE)["0.2"][0]["trace_id"] == trace_id


def test_an_exporter_shaped_otherwise_is_served_without_exemplars_and_warned_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import opentelemetry.exporter.prometheus as exporter

    real = exporter._convert_buckets
    monkeypatch.setattr(  # as if a release stopped writing the +Inf bucket
        exporter, "_convert_buckets", lambda counts, bounds: list(real(counts, bounds))[:-1]
    )
    caplog.set_level(logging.WARNING, logger="xzatoma.telemetry")
    with _own_reader() as (server, provider):
        _record_in_span(provider, 0.3)
        bodies = [_get(server, {"Accept": PROMETHEUS_ACCEPT}) for _ in range(2)]
        _record_in_span(provider, 0.3)
        bodies.append(_get(server, {"Accept": PROMETHEUS_ACCEPT}))
    for status, _, body in bodies:
        assert status == 200
        assert f"{PROBE}_bucket" in body.decode()
        assert " # {" not in body.decode()
    warnings = [r.getMessage() for r in caplog.records if r.name == "xzatoma.telemetry"]
    assert len(warnings) == 1
    assert "served without exemplars" in warnings[0]


# -- promtool --------------------------------------------------------------------------------

PROMTOOL_OPENMETRICS = (
    'error while linting: text format parsing error in line 2: unknown metric type "info"'
)
"""promtool 2.42 reads only the classic text format: OpenMetrics' ``info`` type stops it."""


def test_promtool_reports_exactly_these_remarks_on_a_real_scrape_of_each_format(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(f"promtool is not installed: {INSTALL}")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    configure()
    with start_metrics_server(port=0) as server:
        anyio.run(run_tree)
        scrapes = {
            accept: _get(server, {"Accept": accept, "Accept-Encoding": "identity"})
            for accept in ("", PROMETHEUS_ACCEPT)
        }
    reports = {}
    for status, headers, body in scrapes.values():
        assert status == 200
        proc = subprocess.run(
            [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False
        )
        reports[headers["content-type"]] = (proc.returncode, proc.stdout, proc.stderr.decode())
    assert reports == {
        # Exit 3: lint remarks only. The one remark is the contract's gauge name.
        CLASSIC_TYPE: (3, b"", KNOWN_LINT + "\n"),
        # Exit 1: it cannot parse OpenMetrics at all.
        OPENMETRICS: (1, b"", PROMTOOL_OPENMETRICS + "\n"),
    }


# -- a real Prometheus with exemplar storage -------------------------------------------------


def _stored_exemplars(base: str, query: str) -> list[dict[str, Any]]:
    now = time.time()
    response = httpx.get(
        f"{base}/api/v1/query_exemplars",
        params={"query": query, "start": now - 3600, "end": now + 3600},
        timeout=5,
    )
    body = response.json()
    assert body["status"] == "success", body
    found: list[dict[str, Any]] = []
    for series in body["data"]:
        found.extend({**e, "series": series["seriesLabels"]} for e in series["exemplars"])
    return found


@pytest.mark.prometheus
@pytest.mark.timeout(120)
def test_a_real_prometheus_stores_the_exemplar_of_a_run_with_its_span(tmp_path: Path) -> None:
    name = n.PROMETHEUS_NAMES[n.INVOKE_AGENT_DURATION]  # recorded in the run's span
    spans = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(spans))
    configure()
    try:
        with start_metrics_server(port=0) as server:
            configure(server.meter_provider, tracing)  # the server's meter, a real tracer
            anyio.run(run_tree)
            (run,) = [s for s in spans.get_finished_spans() if s.parent is None]
            assert run.name.startswith("invoke_agent ")
            target = f"127.0.0.1:{server.port}"
            scrape = f'- job_name: xzatoma\n  static_configs:\n    - targets: ["{target}"]'
            with prometheus_server(tmp_path, scrape, ["exemplar-storage"]) as prometheus:
                stored = _wait_for_exemplars(prometheus, f"{name}_bucket", tmp_path)
                targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()
    finally:
        configure()
        tracing.shutdown()
    (target,) = targets["data"]["activeTargets"]
    assert target["health"] == "up", target
    by_span = {e["labels"]["span_id"]: e for e in stored}
    assert {e["labels"]["trace_id"] for e in stored} == {f"{run.context.trace_id:032x}"}
    ran = {f"{s.context.span_id:016x}": s for s in spans.get_finished_spans()}
    root = by_span[f"{run.context.span_id:016x}"]  # the root's run, at depth 0
    assert root["series"]["depth"] == "0"
    for span_id, exemplar in by_span.items():  # each the span of a run, in its bucket
        assert ran[span_id].name.startswith("invoke_agent ")
        assert exemplar["series"]["__name__"] == f"{name}_bucket"
        assert float(exemplar["value"]) <= float(exemplar["series"]["le"])


def _wait_for_exemplars(prometheus: str, query: str, folder: Path) -> list[dict[str, Any]]:
    """Poll until Prometheus has scraped and stored exemplars for ``query``."""
    # Waiting on another process to scrape: bounded polling, not ordering our own events.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):  # not listening yet
            if httpx.get(f"{prometheus}/-/ready", timeout=5).status_code == 200:
                stored = _stored_exemplars(prometheus, query)
                if stored:
                    return stored
        threading.Event().wait(0.25)
    log = (folder / "prometheus.log").read_text()[-3000:]
    pytest.fail(f"Prometheus stored no exemplar of {query}; its log:\n{log}")
