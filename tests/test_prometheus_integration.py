"""Prometheus: ``/metrics`` scraped over HTTP, linted by ``promtool``, read by a real Prometheus.

The exposition is fetched from a started ``start_metrics_server`` and parsed with
prometheus_client's own parser; ``promtool check metrics`` lints it; and a real Prometheus
server (Debian's ``prometheus`` package, installed by ``make test`` through
``.ci/ensure-prometheus``) scrapes a separate xzatoma process while the test reads the values
back through Prometheus's HTTP query API. Missing binaries skip with the reason printed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import httpx
import pytest
from _prometheus import INSTALL, by_depth, prometheus_server, query, stop
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from xzatoma import Completion, Message, Price, Runtime, SubagentConfig, ToolSpec, Usage
from xzatoma.errors import ConfigError
from xzatoma.telemetry import _names as n
from xzatoma.telemetry import configure, start_metrics_server
from xzatoma.telemetry._config import configuration
from xzatoma.testing import ScriptedProvider, call, tool_calls

ROOT = Path(__file__).resolve().parent.parent
# promtool's linter flags every non-histogram name ending in _count. docs/telemetry.md
# names the active gauge `subagent_active_count`, so this one problem is expected; the
# exposition must parse and raise no other problem.
KNOWN_LINT = (
    'subagent_active_count non-histogram and non-summary metrics should not have "_count" suffix'
)

CHILD = textwrap.dedent(
    """
    import sys

    import anyio

    from xzatoma import Price, Runtime, SubagentConfig, Usage
    from xzatoma.telemetry import start_metrics_server
    from xzatoma.testing import ScriptedProvider, call, tool_calls


    def model(messages, tools):
        if len(messages) > 1:
            return "done"
        first = messages[0].content
        if first == "root":
            leaves = [{"label": p, "task_prompt": "leaf"} for p in ("p1", "p2")]
            return tool_calls(
                call("subagent", {"label": "a", "task_prompt": "mid"}),
                call("parallel_subagent", {"tasks": leaves}),
                call("subagent", {"label": " ", "task_prompt": "leaf"}),
            )
        if first == "mid":
            return tool_calls(call("subagent", {"label": "b", "task_prompt": "leaf"}))
        return "leaf done"


    async def main():
        with start_metrics_server(port=0) as server:
            provider = ScriptedProvider(model, usage=Usage(1, 10, 5, 15))
            runtime = Runtime(
                provider,
                subagents=SubagentConfig(summary_prompt=None),
                pricing={"scripted": Price(1, 2)},  # $0.00002 a call
            )
            result = await runtime.run("root")
            print(server.port, result.status, flush=True)
            sys.stdin.read()  # serve until the test closes our stdin


    anyio.run(main)
    """
)
"""A tree with 4 spawns at depth 1 (a, p1, p2, one refused) and 1 at depth 2 (b)."""


def tree_model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion | str:
    if len(messages) > 1:
        return "done"
    if messages[0].content == "root":
        calls = tool_calls(
            call("subagent", {"label": "a", "task_prompt": "leaf"}),
            call("subagent", {"label": " ", "task_prompt": "leaf"}),
            call("parallel_subagent", {"tasks": [{"label": "p", "task_prompt": "leaf"}] * 2}),
        )
        # As if the model had written them as text and the provider had read them.
        return dataclasses.replace(calls, tool_calls_from_text=True)
    return "leaf done"


async def run_tree() -> None:
    provider = ScriptedProvider(tree_model, usage=Usage(1, 10, 5, 15))
    # $1 and $2 per million tokens: $0.00002 a call (10 in, 5 out).
    runtime = Runtime(
        provider,
        subagents=SubagentConfig(summary_prompt=None),
        pricing={"scripted": Price(1, 2)},
    )
    assert (await runtime.run("root")).status == "complete"


def sample(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@pytest.fixture
def exposition(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The text a started server serves after a tree ran (nothing configured beforehand)."""
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    configure()
    server = start_metrics_server(port=0)
    try:
        anyio.run(run_tree)
        response = httpx.get(server.url, timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        yield response.text
    finally:
        server.stop()


# -- /metrics over HTTP ----------------------------------------------------------------------
def test_metrics_endpoint_serves_exact_values(exposition: str) -> None:
    assert sample(exposition, "subagent_executions_total", depth="1") == 4
    assert sample(exposition, "subagent_completions_total", depth="1", status="complete") == 3
    assert sample(exposition, "subagent_errors_total", depth="1", error_type="invalid_input") == 1
    assert sample(exposition, "subagent_active_count", depth="1") == 0
    assert sample(exposition, "subagent_batches_total", depth="1", status="complete") == 1
    assert sample(exposition, "subagent_batch_size_sum", depth="1") == 2
    assert sample(exposition, "subagent_duration_seconds_count", depth="1") == 4
    assert sample(exposition, "subagent_duration_seconds_count", status="failed") == 1
    assert sample(exposition, "subagent_turns_used_sum", depth="1") == 3
    assert sample(exposition, "subagent_tokens_consumed_sum", depth="1") == 45
    assert sample(exposition, "gen_ai_client_token_usage_sum", gen_ai_token_type="input") == 50
    assert sample(exposition, "gen_ai_client_operation_duration_seconds_count") == 5
    assert sample(exposition, "xzatoma_text_tool_calls_total", depth="0") == 3
    # The root's two calls at depth 0; one call each of the three children that ran.
    assert sample(exposition, "subagent_cost_usd_total", depth="0") == pytest.approx(4e-5)
    assert sample(exposition, "subagent_cost_usd_total", depth="1") == pytest.approx(6e-5)
    assert 'otel_scope_name="xzatoma"' in exposition
    assert 'service_name="xzatoma"' in exposition


def test_exposition_uses_exactly_the_contract_names(exposition: str) -> None:
    types = {f.name: f.type for f in text_string_to_metric_families(exposition)}
    samples = {s.name for f in text_string_to_metric_families(exposition) for s in f.samples}
    for instrument, name in n.PROMETHEUS_NAMES.items():
        base = name.removesuffix("_total")
        assert base in types, (instrument, name, sorted(types))
        if name.endswith("_total"):
            assert types[base] == "counter"
            assert name in samples
        elif types[base] == "histogram":
            assert {f"{name}_bucket", f"{name}_count", f"{name}_sum"} <= samples
        else:
            assert (instrument, types[base]) == (n.ACTIVE_COUNT, "gauge")
            assert name in samples
    subagent_families = {v for k, v in n.PROMETHEUS_NAMES.items() if k.startswith("subagent.")}
    assert len(subagent_families) == 10  # docs/telemetry.md's ten, subagent.cost with them
    # le is a label of the histograms' buckets only; the advisory bounds come through as-is.
    assert 'subagent_duration_seconds_bucket{depth="1",le="409.6"' in exposition


def test_exposition_passes_promtool(exposition: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(f"promtool is not installed: {INSTALL}")
    proc = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = (proc.stdout + proc.stderr).strip().splitlines()
    assert problems in ([], [KNOWN_LINT]), problems
    assert proc.returncode == (0 if not problems else 3)  # 1 would be a parse error


def test_server_serves_a_users_own_provider_and_registry() -> None:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider

    registry = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)], shutdown_on_exit=False
    )
    configure(meter_provider=provider)
    try:
        with start_metrics_server(port=0, registry=registry) as server:
            assert server.meter_provider is None  # it serves, it configures nothing
            anyio.run(run_tree)
            text = httpx.get(server.url, timeout=10).text
        assert sample(text, "subagent_executions_total", depth="1") == 4
        assert configuration().meter_provider is provider
    finally:
        configure()
        provider.shutdown()


def test_server_binds_loopback_answers_metrics_only_and_stops() -> None:
    configure()
    before = configuration()
    server = start_metrics_server(port=0)
    try:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        assert configuration().meter_provider is server.meter_provider is not None
        assert httpx.get(server.url.removesuffix("metrics") + "other").status_code == 404
    finally:
        server.stop()
    server.stop()  # idempotent
    assert configuration() == before
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url, timeout=5)


def test_server_reports_an_address_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = configuration()
        with pytest.raises(ConfigError, match="cannot serve metrics"):
            start_metrics_server(port=port)
        assert configuration() == before


@pytest.mark.parametrize("module", ["prometheus_client", "opentelemetry.exporter.prometheus"])
def test_without_the_prometheus_extra_the_error_names_the_package(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ConfigError, match=r"pip install '\.\[prometheus\]' in a checkout"):
        start_metrics_server(port=0)


def test_example_scrape_config_is_valid() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(f"promtool is not installed: {INSTALL}")
    config = ROOT / "examples" / "prometheus.yml"
    proc = subprocess.run(
        [promtool, "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- a real Prometheus -----------------------------------------------------------------------


@pytest.fixture
def xzatoma_process(tmp_path: Path) -> Iterator[int]:
    """A separate python process that ran a tree and serves /metrics; yields its port."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    child = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until the tree ran and the server is up
        if not line:
            pytest.fail(f"the xzatoma process exited early: {child.communicate()[1]}")
        port, status = line.split()
        assert status == "complete"
        yield int(port)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stop(child)
        if child.stdout is not None:
            child.stdout.close()
        if child.stderr is not None:
            child.stderr.close()


@pytest.fixture
def prometheus(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A real Prometheus on loopback scraping the xzatoma process every second; its URL."""
    if shutil.which("prometheus") is None:
        pytest.skip(f"the prometheus server is not installed: {INSTALL}")
    xzatoma_process: int = request.getfixturevalue("xzatoma_process")
    scrape = f"""
        - job_name: xzatoma
          static_configs:
            - targets: ["127.0.0.1:{xzatoma_process}"]
        """
    with prometheus_server(tmp_path, scrape) as url:
        yield url


@pytest.mark.prometheus
def test_real_prometheus_scrapes_a_running_xzatoma(prometheus: str, tmp_path: Path) -> None:
    # Waiting on an external process to scrape, not ordering our own events: bounded polling.
    deadline = time.monotonic() + 60
    executions: dict[str, float] = {}
    while time.monotonic() < deadline:
        try:
            # Until it is ready, Prometheus answers 503 with a plain-text body.
            if httpx.get(f"{prometheus}/-/ready", timeout=5).status_code == 200:
                executions = by_depth(query(prometheus, "subagent_executions_total"))
        except httpx.TransportError:  # not listening yet
            executions = {}
        if set(executions) == {"1", "2"}:
            break
        time.sleep(0.25)
    else:
        log = (tmp_path / "prometheus.log").read_text()[-3000:]
        pytest.fail(f"Prometheus never scraped the xzatoma process; its log:\n{log}")

    assert executions == {"1": 4.0, "2": 1.0}
    assert by_depth(query(prometheus, "subagent_active_count")) == {"1": 0.0, "2": 0.0}
    completions = by_depth(query(prometheus, "sum by (depth) (subagent_completions_total)"))
    errors = by_depth(query(prometheus, "sum by (depth) (subagent_errors_total)"))
    assert completions == {"1": 3.0, "2": 1.0}
    assert errors == {"1": 1.0}
    cost = by_depth(query(prometheus, "sum by (depth) (subagent_cost_usd_total)"))
    # The root's two calls; at depth 1, a's two (it spawns b, then answers), p1's and p2's
    # one; b's one at depth 2.
    assert cost == pytest.approx({"0": 4e-5, "1": 8e-5, "2": 2e-5})
    (refused,) = query(prometheus, "subagent_errors_total")
    assert refused["metric"]["error_type"] == "invalid_input"
    assert refused["metric"]["job"] == "xzatoma"

    # Every query of the example Grafana dashboard is valid PromQL on a real server.
    dashboard = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    assert expressions
    for expr in expressions:
        query(prometheus, re.sub(r"\$__\w+", "1m", expr))  # Grafana's interval variables
