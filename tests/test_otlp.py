"""OTLP/HTTP push: ``configure(otlp_endpoint=...)`` and the CLI's ``OTEL_EXPORTER_OTLP_*``.

Everything is pushed to a real OTLP/HTTP receiver on 127.0.0.1 (``_otlp_receiver``) that
decodes the protobuf requests as a collector would. The Python API runs a scripted agent tree
(``_trees``) and checks exact metric values, buckets, the span tree and the resource; the
command line runs in a subprocess (``demo``, ``batch`` with Ctrl-C) and everything must have
arrived by the time the process has exited, since that is what a flush on exit means. The
error paths: a bad endpoint or protocol, the extra missing, a collector that is down or hangs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from _http_server import Reply, ScriptedHTTPServer
from _otlp_receiver import OtlpReceiver, ReceivedSpan, closed_port, silent_port
from _trees import TreeModel, spec_json
from test_cli import endpoint, interrupt_after_the_first_task

from xzatoma import Runtime, SubagentConfig
from xzatoma._cli_otlp import pushed_signals
from xzatoma._demo import SERVICES
from xzatoma.cli import main
from xzatoma.errors import ConfigError
from xzatoma.telemetry import OtlpExport, configure
from xzatoma.telemetry import _names as n
from xzatoma.telemetry._config import configuration
from xzatoma.telemetry._fast import _BoundHistogram
from xzatoma.telemetry._metrics import current_instruments

ROOT = Path(__file__).resolve().parent.parent
DOCS_TELEMETRY = ROOT / "docs" / "telemetry.md"

# The root delegates to ``a`` and, in one parallel batch, to ``b`` and ``c``; each child
# answers at once (no summary turn), the root answers after the tool results. USAGE (20 in,
# 5 out, 25 in all) comes with each of the 5 model calls.
TREE = {"id": "root", "spawn": [{"id": "a"}], "parallel": [{"id": "b"}, {"id": "c"}]}
NO_SUMMARY = SubagentConfig(summary_prompt=None)
EXIT_TIMEOUT = 60  # seconds a CLI subprocess may take: generous, the machine may be busy


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the machine's OTEL_* variables reach these tests (or their subprocesses)."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as started:
        yield started


def run_tree() -> None:
    runtime = Runtime(TreeModel().provider(), subagents=NO_SUMMARY)
    result = anyio.run(runtime.run, spec_json(TREE))
    assert result.status == "complete", result.error


def op(span: ReceivedSpan) -> str:
    return str(span.attributes.get(n.GEN_AI_OPERATION_NAME))


# -- the Python API --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("temporality", "service"), [("cumulative", None), ("delta", "otlp-test-service")]
)
def test_configure_pushes_the_tree_s_metrics_and_spans(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, temporality: str, service: str | None
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", temporality)
    if service is not None:
        monkeypatch.setenv("OTEL_SERVICE_NAME", service)
    before = configuration()
    export = configure(otlp_endpoint=receiver.url, otlp_headers={"x-test": "one"})
    assert isinstance(export, OtlpExport)
    assert export.metrics_url == f"{receiver.url}/v1/metrics"
    assert export.traces_url == f"{receiver.url}/v1/traces"
    assert configuration().meter_provider is export.meter_provider
    assert configuration().tracer_provider is export.tracer_provider
    try:
        run_tree()
        # The fast path binds on SDK providers with cumulative readers only (_fast.py).
        tokens = current_instruments().tokens
        assert isinstance(tokens, _BoundHistogram)
        assert tokens.bound is (temporality == "cumulative")
        assert export.flush() is True
        # flush() waited for the answers, and the receiver keeps a request before answering.
        assert_tree_metrics(receiver, runs=1)
        assert_tree_spans(receiver.spans(), runs=1)

        run_tree()
    finally:
        assert export.shutdown() is True
    assert configuration() is before  # what was configured before is back
    assert export.shutdown() is True  # idempotent
    assert export.flush() is False  # nothing to flush once shut down
    assert_tree_metrics(receiver, runs=2)  # shutdown pushed the second run
    assert_tree_spans(receiver.spans(), runs=2)
    assert {r.headers.get("x-test") for r in receiver.received} == {"one"}
    assert {r.path for r in receiver.received} == {"/v1/metrics", "/v1/traces"}
    expected = service or "xzatoma"
    assert {r.get("service.name") for r in receiver.resources()} == {expected}


def assert_tree_metrics(receiver: OtlpReceiver, runs: int) -> None:
    one = {n.DEPTH: 1}
    assert receiver.value(n.EXECUTIONS, **one) == 3 * runs
    assert receiver.value(n.COMPLETIONS, **one, status="complete") == 3 * runs
    assert receiver.value(n.ERRORS) == 0
    assert receiver.value(n.ACTIVE_COUNT, **one) == 0
    assert receiver.value(n.BATCHES, **one, status="complete") == runs
    duration = receiver.histogram(n.DURATION, **one, status="complete")
    assert duration.count == 3 * runs
    assert sum(duration.bucket_counts) == 3 * runs
    turns = receiver.histogram(n.TURNS_USED, **one)
    assert (turns.count, turns.sum, turns.bucket_counts[0]) == (3 * runs, 3 * runs, 3 * runs)
    tokens = receiver.histogram(n.TOKENS_CONSUMED, **one)
    assert (tokens.count, tokens.sum) == (3 * runs, 75 * runs)
    # 25 tokens: the bucket (16, 64] of 1, 4, 16, 64 ... (the fast path fills buckets itself).
    assert tokens.explicit_bounds[2:4] == (16, 64)
    assert tokens.bucket_counts[3] == 3 * runs
    assert sum(tokens.bucket_counts) == 3 * runs
    size = receiver.histogram(n.BATCH_SIZE, **one)
    assert (size.count, size.sum) == (runs, 2 * runs)
    usage_in = receiver.histogram(n.TOKEN_USAGE, **{n.GEN_AI_TOKEN_TYPE: n.TOKEN_TYPE_INPUT})
    usage_out = receiver.histogram(n.TOKEN_USAGE, **{n.GEN_AI_TOKEN_TYPE: n.TOKEN_TYPE_OUTPUT})
    assert (usage_in.count, usage_in.sum) == (5 * runs, 100 * runs)
    assert (usage_out.count, usage_out.sum) == (5 * runs, 25 * runs)
    assert receiver.histogram(n.OPERATION_DURATION).count == 5 * runs


def assert_tree_spans(spans: list[ReceivedSpan], runs: int) -> None:
    assert Counter(op(s) for s in spans) == {
        n.OP_INVOKE_AGENT: 4 * runs,
        n.OP_EXECUTE_TOOL: 2 * runs,
        n.OP_CHAT: 5 * runs,
    }
    assert {s.scope for s in spans} == {n.SCOPE}
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if not s.parent_span_id]
    assert len(roots) == runs
    for root in roots:
        assert op(root) == n.OP_INVOKE_AGENT
        assert root.attributes[n.XZ_DEPTH] == 0
        tree = [s for s in spans if s.trace_id == root.trace_id]
        assert len(tree) == 11  # one trace per run, holding the whole tree
        tools = {}
        for span in tree:
            if op(span) == n.OP_EXECUTE_TOOL:
                assert by_id[span.parent_span_id] is root
                tools[span.attributes[n.GEN_AI_TOOL_NAME]] = span
        assert set(tools) == {"subagent", "parallel_subagent"}
        children = {
            s.attributes[n.XZ_LABEL]: s
            for s in tree
            if op(s) == n.OP_INVOKE_AGENT and s.attributes[n.XZ_DEPTH] == 1
        }
        assert set(children) == {"a", "b", "c"}
        assert by_id[children["a"].parent_span_id] is tools["subagent"]
        assert by_id[children["b"].parent_span_id] is tools["parallel_subagent"]
        assert by_id[children["c"].parent_span_id] is tools["parallel_subagent"]
        chats = Counter(by_id[s.parent_span_id].span_id for s in tree if op(s) == n.OP_CHAT)
        assert chats == {
            root.span_id: 2,
            children["a"].span_id: 1,
            children["b"].span_id: 1,
            children["c"].span_id: 1,
        }


def test_a_with_block_shuts_the_export_down_and_restores_the_configuration(
    receiver: OtlpReceiver,
) -> None:
    before = configuration()
    with configure(otlp_endpoint=receiver.url + "/", export_interval=3600) as export:
        assert export.metrics_url == f"{receiver.url}/v1/metrics"  # one slash, not two
        run_tree()
        assert receiver.received == []  # nothing before the interval or the batch delay
    assert configuration() is before
    assert receiver.value(n.EXECUTIONS) == 3
    assert len(receiver.spans()) == 11
    assert "x-test" not in repr(export)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"otlp_endpoint": "localhost:4318"}, "otlp_endpoint must start with http:// or https://"),
        ({"otlp_endpoint": "grpc://127.0.0.1:4317"}, "otlp_endpoint must start with http://"),
        ({"otlp_endpoint": "http://127.0.0.1:99999"}, "otlp_endpoint has port 99999"),
        ({"otlp_endpoint": "http:// 127.0.0.1"}, "otlp_endpoint has a space"),
        ({"otlp_endpoint": "http://x", "otlp_timeout": 0}, "otlp_timeout must be a finite"),
        ({"otlp_endpoint": "http://x", "otlp_timeout": float("inf")}, "otlp_timeout must be"),
        ({"otlp_endpoint": "http://x", "export_interval": -1}, "export_interval must be"),
    ],
)
def test_a_bad_endpoint_or_number_is_a_config_error(kwargs: Any, message: str) -> None:
    before = configuration()
    with pytest.raises(ConfigError, match=re.escape(message)):
        configure(**kwargs)
    assert configuration() is before


def test_providers_and_an_endpoint_together_are_refused() -> None:
    from opentelemetry.sdk.metrics import MeterProvider

    before = configuration()
    with pytest.raises(ConfigError, match="providers or an otlp_endpoint, not both"):
        configure(MeterProvider(), otlp_endpoint="http://127.0.0.1:4318")  # type: ignore[call-overload]
    assert configuration() is before


def test_without_the_extra_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    before = configuration()
    with pytest.raises(ConfigError) as raised:
        configure(otlp_endpoint="http://127.0.0.1:4318")
    said = str(raised.value)
    assert "needs the 'otlp' extra (opentelemetry-exporter-otlp-proto-http)" in said
    assert "pip install '.[otlp]' in a checkout of xzatoma" in said
    assert configuration() is before


@pytest.mark.parametrize("collector", ["down", "hanging"])
def test_a_collector_down_or_hanging_costs_one_bounded_push(collector: str) -> None:
    with silent_port() as hanging:
        port = closed_port() if collector == "down" else hanging
        export = configure(otlp_endpoint=f"http://127.0.0.1:{port}", otlp_timeout=0.5)
        run_tree()
        started = time.monotonic()
        finished = export.shutdown()
        took = time.monotonic() - started
    assert finished is True  # the exporters gave up by themselves, within their timeout
    # 10 s would be the exporters' default timeout: 0.5 s was honoured (plus slack for load).
    assert took < 8, took


def test_shutdown_returns_within_its_timeout_whatever_the_exporters_wait() -> None:
    with silent_port() as port:
        export = configure(otlp_endpoint=f"http://127.0.0.1:{port}", otlp_timeout=60)
        run_tree()
        started = time.monotonic()
        finished = export.shutdown(timeout=0.5)
        took = time.monotonic() - started
    assert finished is False  # the pushes were still waiting on the silent collector
    assert took < 10, took
    assert configuration().meter_provider is not export.meter_provider


# -- the command line ------------------------------------------------------------------------


def child_env(**otel: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "XZATOMA_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **otel}


def xzatoma(*argv: str, **otel: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xzatoma.cli", *argv],
        env=child_env(**otel), capture_output=True, text=True, timeout=EXIT_TIMEOUT, check=False,
    )  # fmt: skip


_SAMPLE = re.compile(r"^\s+(?P<name>subagent_\w+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")
_INSTRUMENT = {family: name for name, family in n.PROMETHEUS_NAMES.items()}


def scraped(stdout: str) -> list[tuple[str, str, dict[str, str], float]]:
    """The demo's printed /metrics samples: (instrument, suffix, labels, value)."""
    found = []
    for line in stdout.splitlines():
        sample = _SAMPLE.match(line)
        if sample is None:
            continue
        family, suffix = sample["name"], ""
        if family not in _INSTRUMENT:
            family, _, suffix = family.rpartition("_")
        labels = dict(re.findall(r'(\w+)="([^"]*)"', sample["labels"]))
        found.append((_INSTRUMENT[family], suffix, labels, float(sample["value"])))
    return found


def test_the_demo_pushes_every_metric_and_span_before_it_exits(receiver: OtlpReceiver) -> None:
    done = xzatoma(
        "demo", "--latency", "0",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_SERVICE_NAME="release-review",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test",
        OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20t0k3n,x-tenant=acme",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    # The process has exited: whatever was not pushed by now never will be.
    assert {r.path for r in receiver.received} == {"/v1/metrics", "/v1/traces"}
    for request in receiver.received:
        assert request.headers["authorization"] == "Bearer t0k3n"
        assert request.headers["x-tenant"] == "acme"
        assert request.headers["content-type"] == "application/x-protobuf"
    for resource in receiver.resources():
        assert resource["service.name"] == "release-review"
        assert resource["deployment.environment"] == "test"
    assert receiver.refused == []

    # Every sample the demo scraped from its own /metrics (the Prometheus reader on the same
    # meter provider) was pushed with the same value.
    samples = scraped(done.stdout)
    assert len(samples) > 20, done.stdout
    for instrument, suffix, labels, value in samples:
        match: dict[str, Any] = {k: int(v) if k == n.DEPTH else v for k, v in labels.items()}
        if suffix == "count":
            assert receiver.histogram(instrument, **match).count == value, (instrument, labels)
        elif suffix == "sum":
            pushed = receiver.histogram(instrument, **match).sum
            assert pushed == pytest.approx(value, rel=0.05, abs=1e-6), (instrument, labels)
        else:
            pushed = receiver.value(instrument, **match)
            assert pushed == pytest.approx(value, rel=0.05, abs=1e-6), (instrument, labels)
    assert {n.EXECUTIONS, n.DURATION, n.TURNS_USED, n.TOKENS_CONSUMED, n.COMPLETIONS, n.ERRORS,
            n.ACTIVE_COUNT, n.BATCHES, n.BATCH_SIZE, n.TOKEN_USAGE, n.OPERATION_DURATION,
            } <= receiver.metric_names()  # fmt: skip
    for attrs in receiver.attribute_sets(n.EXECUTIONS):
        depth = attrs[n.DEPTH]
        assert receiver.value(n.EXECUTIONS, depth=depth) == receiver.value(
            n.COMPLETIONS, depth=depth
        ) + receiver.value(n.ERRORS, depth=depth)
        assert receiver.value(n.ACTIVE_COUNT, depth=depth) == 0

    # Every span: one trace, every parent among the spans received, every agent there.
    spans = receiver.spans()
    by_id = {s.span_id: s for s in spans}
    assert len({s.trace_id for s in spans}) == 1
    assert [s for s in spans if not s.parent_span_id] == [
        s for s in spans if op(s) == n.OP_INVOKE_AGENT and s.attributes[n.XZ_DEPTH] == 0
    ]
    assert all(s.parent_span_id in by_id for s in spans if s.parent_span_id)
    agents = {s.attributes.get(n.XZ_LABEL) for s in spans if op(s) == n.OP_INVOKE_AGENT}
    assert {"researcher", "fact-checker", *(f"check-{s}" for s in SERVICES)} <= agents
    calls = Counter(op(s) for s in spans)[n.OP_CHAT]
    assert calls == receiver.histogram(n.OPERATION_DURATION).count


def test_a_traces_endpoint_alone_pushes_only_spans(receiver: OtlpReceiver) -> None:
    done = xzatoma(
        "demo", "--latency", "0",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{receiver.url}/v1/traces",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert receiver.received, "nothing was pushed"
    assert {r.path for r in receiver.received} == {"/v1/traces"}
    assert {r.get("service.name") for r in receiver.resources()} == {"xzatoma"}
    assert "subagent_executions_total" in done.stdout  # /metrics still served the demo


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child is POSIX")
def test_ctrl_c_still_pushes_what_the_batch_recorded(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    with ScriptedHTTPServer() as server:
        env = child_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url)
        proc, _, err = interrupt_after_the_first_task(server, tmp_path, env, EXIT_TIMEOUT)
    assert proc.returncode == 130, err
    assert err.strip() == "xzatoma: interrupted; the batch was cancelled"
    agents = {
        s.attributes[n.XZ_LABEL]: s.attributes.get(n.XZ_STATUS)
        for s in receiver.spans()
        if op(s) == n.OP_INVOKE_AGENT and n.XZ_LABEL in s.attributes
    }
    assert agents["a"] == "complete"
    assert agents["b"] == "cancelled"
    one = {n.DEPTH: 1}
    assert receiver.value(n.COMPLETIONS, **one, status="complete") == 1
    assert receiver.value(n.ERRORS, **one, error_type="cancelled") >= 1
    executions = receiver.value(n.EXECUTIONS, **one)
    assert executions == receiver.value(n.COMPLETIONS, **one) + receiver.value(n.ERRORS, **one)
    assert receiver.value(n.ACTIVE_COUNT, **one) == 0


def test_an_error_exit_still_pushes_the_failed_run(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    with ScriptedHTTPServer() as server:
        server.add(Reply(404, {"error": {"message": "model 'm' not found"}}))
        code = main(["run", "hi", *endpoint(server)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "the model endpoint is not usable" in err
    (root,) = [s for s in receiver.spans() if op(s) == n.OP_INVOKE_AGENT]
    assert root.attributes[n.XZ_STATUS] == "failed"
    (model_call,) = [s for s in receiver.spans() if op(s) == n.OP_CHAT]
    assert model_call.parent_span_id == root.span_id
    assert n.OTEL_ERROR_TYPE in model_call.attributes
    assert receiver.histogram(n.OPERATION_DURATION).count == 1
    assert configuration().tracer_provider is None  # the CLI put back what it found


def test_the_session_id_of_the_command_line_names_every_pushed_span(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    code = main(["run", "hi", "--provider", "scripted", "--session-id", "nightly-42", "-q"])
    assert code == 0, capsys.readouterr().err
    spans = receiver.spans()
    assert spans
    assert {s.attributes[n.XZ_SESSION_ID] for s in spans} == {"nightly-42"}
    names = receiver.metric_names()
    assert n.OPERATION_DURATION in names
    for name in names:  # on no metric: the session is not a label unless asked for
        assert all(n.XZ_SESSION_ID not in a for a in receiver.attribute_sets(name)), name


def test_a_run_that_raises_still_pushes_and_restores(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    import xzatoma.cli

    def run_then_raise(args: object, config: object) -> int:
        run_tree()
        raise RuntimeError("a bug after the run")

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setattr(xzatoma.cli, "_run", run_then_raise)
    before = configuration()
    with pytest.raises(RuntimeError, match="a bug after the run"):
        main(["run", "hi", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"])
    assert configuration() is before
    assert receiver.value(n.EXECUTIONS) == 3
    assert_tree_spans(receiver.spans(), runs=1)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4318"},
            "OTEL_EXPORTER_OTLP_ENDPOINT must start with http:// or https://",
        ),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:70000/v1/traces"},
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT has port 70000, outside 1..65535",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
             "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL is 'grpc', but xzatoma pushes OTLP over HTTP only",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
             "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL is 'http/json'",
        ),
    ],
)  # fmt: skip
def test_the_cli_refuses_an_endpoint_no_push_could_use(
    variables: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    code = main(["demo", "--latency", "0"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""  # refused before anything ran
    assert err.startswith(f"xzatoma: error: {message}"), err
    assert len(err.splitlines()) == 1


def test_the_cli_says_what_to_install_when_the_extra_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.metric_exporter", None)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    code = main(["demo", "--latency", "0"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith(
        "xzatoma: error: OTEL_EXPORTER_OTLP_ENDPOINT is set, but pushing telemetry to it needs "
        "the 'otlp' extra (opentelemetry-exporter-otlp-proto-http), which is not installed: "
        "pip install '.[otlp]' in a checkout of xzatoma"
    ), err


def test_commands_without_agents_ignore_the_variables(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")
    config = tmp_path / "c.yaml"
    config.write_text("agent:\n  max_turns: 3\n")
    assert main(["config", "validate", str(config)]) == 0
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize("collector", ["down", "hanging"])
def test_a_collector_down_or_hanging_does_not_fail_or_hang_the_run(collector: str) -> None:
    with silent_port() as hanging:
        port = closed_port() if collector == "down" else hanging
        started = time.monotonic()
        done = xzatoma(
            "demo", "--latency", "0",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_EXPORTER_OTLP_TIMEOUT="1",
        )  # fmt: skip
        took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "Final answer:" in done.stdout
    assert "Traceback" not in done.stderr
    warnings = done.stderr.splitlines()
    assert warnings, "a push that failed says so"
    for line in warnings:
        assert line.startswith(f"xzatoma: warning: OTLP push to http://127.0.0.1:{port}/v1/")
    assert took < EXIT_TIMEOUT / 2, took


@pytest.mark.parametrize(
    ("variables", "pushed"),
    [
        ({}, {}),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, {}),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
         {"metrics": "OTEL_EXPORTER_OTLP_ENDPOINT", "traces": "OTEL_EXPORTER_OTLP_ENDPOINT"}),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
          "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://m:4318/v1/metrics"},
         {"metrics": "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
          "traces": "OTEL_EXPORTER_OTLP_ENDPOINT"}),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://m:4318/v1/metrics"},
         {"metrics": "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"}),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"},
         {"metrics": "OTEL_EXPORTER_OTLP_ENDPOINT"}),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, {}),
    ],
)  # fmt: skip
def test_which_signals_the_cli_pushes(variables: dict[str, str], pushed: dict[str, str]) -> None:
    assert pushed_signals(variables) == pushed


# -- packaging and docs ----------------------------------------------------------------------


def test_the_otlp_extra_follows_the_sdk_pin() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    sdk = next(r for r in project["dependencies"] if r.startswith("opentelemetry-sdk"))
    (exporter,) = project["optional-dependencies"]["otlp"]
    # Released with the SDK under the same number: the same range.
    assert exporter == sdk.replace("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http")


def docs_section() -> str:
    text = DOCS_TELEMETRY.read_text(encoding="utf-8")
    assert "\n## OTLP push\n" in text
    return text.split("\n## OTLP push\n", 1)[1].split("\n## ", 1)[0]


def test_the_python_example_in_the_docs_runs(receiver: OtlpReceiver, tmp_path: Path) -> None:
    # Marked a fragment for tests/test_docs.py (no collector there): run here, against one.
    snippet = re.split(r"```python(?: fragment)?\n", docs_section(), maxsplit=1)[1]
    snippet = snippet.split("```", 1)[0]
    assert "http://127.0.0.1:4318" in snippet
    script = tmp_path / "example.py"
    script.write_text(snippet.replace("http://127.0.0.1:4318", receiver.url))
    done = subprocess.run(
        [sys.executable, str(script)],
        env=child_env(), capture_output=True, text=True, timeout=EXIT_TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "complete"
    assert receiver.value(n.EXECUTIONS, depth=1) == 1
    assert {op(s) for s in receiver.spans()} == {n.OP_INVOKE_AGENT, n.OP_EXECUTE_TOOL, n.OP_CHAT}


def test_the_shell_example_in_the_docs_runs(receiver: OtlpReceiver) -> None:
    block = re.split(r"```sh(?: fragment)?\n", docs_section(), maxsplit=1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in commands
        if line.startswith("export ")
    )
    (command,) = [line for line in commands if line.startswith("xzatoma ")]
    assert exports["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    exports["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
    exports = {k: v.strip("'\"") for k, v in exports.items()}
    done = xzatoma(*command.split()[1:], **exports)
    assert done.returncode == 0, done.stderr
    assert receiver.value(n.EXECUTIONS) > 0
    assert {r.get("service.name") for r in receiver.resources()} == {
        exports.get("OTEL_SERVICE_NAME", "xzatoma")
    }
