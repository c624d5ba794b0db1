"""The metrics server: loopback by default, only GET /metrics, unharmed by malformed HTTP,
and metric attributes that never carry labels or prompts."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from xzatoma import Runtime, SubagentConfig, Usage
from xzatoma.telemetry import MetricsServer, TelemetrySubscriber, start_metrics_server
from xzatoma.telemetry import _names as n
from xzatoma.testing import ScriptedProvider, capture_telemetry

pytestmark = pytest.mark.anyio


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    with start_metrics_server(port=0, registry=CollectorRegistry()) as srv:
        yield srv


def test_binds_loopback_by_default(server: MetricsServer) -> None:
    assert server.host == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_only_get_is_answered(server: MetricsServer, method: str) -> None:
    response = httpx.request(method, server.url)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize("path", ["/", "/admin", "/metrics/../etc/passwd", "/metricsx"])
def test_other_paths_are_404(server: MetricsServer, path: str) -> None:
    response = httpx.get(f"http://127.0.0.1:{server.port}{path}")
    assert response.status_code == 404


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\xff\xfe garbage\r\n\r\n",
        b"GET /metrics HTTP/9.9\r\n\r\n",
        b"GET " + b"A" * 70_000 + b" HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
        b"\r\n\r\n",
        b"",
    ],
)
def test_survives_malformed_http(server: MetricsServer, garbage: bytes) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(garbage)
        raw.shutdown(socket.SHUT_WR)
        while raw.recv(65536):  # read whatever it answers, until it closes
            pass
    response = httpx.get(server.url)
    assert response.status_code == 200
    assert list(text_string_to_metric_families(response.text)) is not None


async def test_ten_thousand_labels_leave_the_series_count_unchanged() -> None:
    def model(messages: object, tools: object) -> str:
        return "secret prompt answered"

    def series() -> dict[str, int]:
        return {
            name: len(captured.attribute_sets(name))
            for name in (n.EXECUTIONS, n.COMPLETIONS, n.DURATION, n.TURNS_USED, n.TOKENS_CONSUMED)
        }

    with capture_telemetry() as captured:
        runtime = Runtime(
            ScriptedProvider(model, usage=Usage(1, 20, 5, 25)),
            subagents=SubagentConfig(summary_prompt=None, max_concurrent=50),
            telemetry=TelemetrySubscriber(traces=False),
        )
        tasks = [{"label": f"label-{i}", "task_prompt": f"prompt-{i}"} for i in range(10)]
        await runtime.run_batch(tasks)
        few = series()
        tasks = [{"label": f"label-{i}", "task_prompt": f"prompt-{i}"} for i in range(10_000)]
        batch = await runtime.run_batch(tasks)
        assert batch.successful == 10_000
        assert series() == few
        assert captured.value(n.EXECUTIONS, depth=1) == 10_010
        for name in (n.EXECUTIONS, n.COMPLETIONS, n.ERRORS, n.DURATION, n.TOKENS_CONSUMED):
            for attributes in captured.attribute_sets(name):
                assert set(attributes) <= {n.DEPTH, n.STATUS, n.ERROR_TYPE}
