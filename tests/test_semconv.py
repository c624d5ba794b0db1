"""GenAI semantic conventions (issue 16, item 4): names, attributes and agent-level metrics.

Spans and metrics of real runs, through a real ``OpenAIProvider`` against a real HTTP server
where the endpoint's part matters (``server.*``, ``gen_ai.response.*``, ``error.type`` as the
HTTP status), and through the scripted model for the tree's shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, cast

import pytest
from _http_server import Reply, ScriptedHTTPServer
from test_telemetry import Step, make_runtime, scripted, spawn

from xzatoma import OpenAIProvider, Runtime
from xzatoma.telemetry import TelemetryCapture, TelemetrySubscriber
from xzatoma.telemetry import _names as n
from xzatoma.testing import call, capture_telemetry, tool_calls

pytestmark = pytest.mark.anyio


@pytest.fixture
def captured() -> Iterator[TelemetryCapture]:
    with capture_telemetry() as capture:
        yield capture


def _completion(**more: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-7Xq2",
        "object": "chat.completion",
        "model": "served-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        **more,
    }


def _attributes(span: Any) -> Mapping[str, Any]:
    assert span.attributes is not None
    return cast(Mapping[str, Any], span.attributes)


async def test_a_subagent_s_agent_name_is_its_label_and_the_root_s_is_the_agent_s_name(
    captured: TelemetryCapture,
) -> None:
    plan: dict[str, list[Step]] = {
        "root": [tool_calls(spawn("researcher", "x"), spawn("critic", "y")), "ok"],
        "x": ["a"],
        "y": ["b"],
    }
    runtime, _ = make_runtime(scripted(plan))
    await runtime.run("root")
    names = {_attributes(s)[n.GEN_AI_AGENT_NAME]: s.name for s in captured.subagent_spans()}
    assert names == {"researcher": "invoke_agent researcher", "critic": "invoke_agent critic"}
    (root,) = captured.spans_named("invoke_agent agent")
    assert _attributes(root)[n.GEN_AI_AGENT_NAME] == "agent"


async def test_chat_spans_carry_the_server_the_response_id_and_the_finish_reasons(
    captured: TelemetryCapture,
) -> None:
    with ScriptedHTTPServer() as server:
        server.add(Reply(200, _completion()))
        host, port = server.url.removeprefix("http://").split(":")
        async with OpenAIProvider(server.url, "asked", provider_name="vllm") as provider:
            result = await Runtime(provider, telemetry=TelemetrySubscriber()).run("hi")
    assert result.status == "complete"
    (chat,) = captured.spans_named("chat asked")
    attributes = _attributes(chat)
    assert attributes[n.SERVER_ADDRESS] == host
    assert attributes[n.SERVER_PORT] == int(port)
    assert attributes[n.GEN_AI_RESPONSE_ID] == "chatcmpl-7Xq2"
    assert tuple(attributes[n.GEN_AI_RESPONSE_FINISH_REASONS]) == ("stop",)
    assert attributes[n.GEN_AI_PROVIDER_NAME] == "vllm"
    (run,) = captured.spans_named("invoke_agent agent")
    assert _attributes(run)[n.GEN_AI_PROVIDER_NAME] == "vllm"
    # The configured type is on the metrics too (a value of the user's own configuration).
    sets = captured.attribute_sets(n.OPERATION_DURATION)
    assert {s[n.GEN_AI_PROVIDER_NAME] for s in sets} == {"vllm"}


async def test_the_provider_type_is_openai_unless_told_and_a_blank_one_is_refused() -> None:
    from xzatoma import ConfigError

    provider = OpenAIProvider("https://api.example.com/v1", "m")
    assert provider.name == "openai"
    assert provider.server == ("api.example.com", 443)
    assert OpenAIProvider("http://[::1]:8080/v1", "m").server == ("::1", 8080)
    with pytest.raises(ConfigError, match="provider_name must be a non-empty string"):
        OpenAIProvider("http://127.0.0.1:1/v1", "m", provider_name=" ")
    await provider.aclose()


async def test_error_type_of_a_refused_call_is_the_http_status_on_the_span_and_the_metric(
    captured: TelemetryCapture,
) -> None:
    with ScriptedHTTPServer() as server:
        server.add(Reply(503, {"error": {"message": "overloaded", "type": "ServerOverloaded"}}))
        async with OpenAIProvider(server.url, "asked", max_retries=0) as provider:
            result = await Runtime(provider, telemetry=TelemetrySubscriber()).run("hi")
    assert result.status == "failed"
    (chat,) = captured.spans_named("chat asked")
    assert _attributes(chat)[n.OTEL_ERROR_TYPE] == "503"
    (run,) = captured.spans_named("invoke_agent agent")
    assert _attributes(run)[n.OTEL_ERROR_TYPE] == "execution_failed"
    sets = captured.attribute_sets(n.OPERATION_DURATION)
    assert [s.get(n.OTEL_ERROR_TYPE) for s in sets] == ["503"]


async def test_error_type_of_a_call_that_never_got_an_answer_is_a_documented_name(
    captured: TelemetryCapture,
) -> None:
    # A port nothing listens on: no HTTP status, so the xzatoma error type.
    with ScriptedHTTPServer() as server:
        url = server.url
    async with OpenAIProvider(url, "asked", max_retries=0) as provider:
        result = await Runtime(provider, telemetry=TelemetrySubscriber()).run("hi")
    assert result.status == "failed"
    (chat,) = captured.spans_named("chat asked")
    assert _attributes(chat)[n.OTEL_ERROR_TYPE] == "execution_failed"


async def test_meter_and_tracer_scopes_carry_the_schema_url(captured: TelemetryCapture) -> None:
    runtime, _ = make_runtime(scripted({"root": ["ok"]}))
    await runtime.run("root")
    (span,) = captured.spans_named("invoke_agent agent")
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.schema_url == n.SCHEMA_URL
    data = captured.metric_reader.get_metrics_data()
    assert data is not None
    scopes = {
        sm.scope.name: sm.scope.schema_url
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
    }
    assert scopes[n.SCOPE] == n.SCHEMA_URL


async def test_agent_level_metrics_count_every_run_and_tool_call_by_depth(
    captured: TelemetryCapture,
) -> None:
    plan: dict[str, list[Step]] = {
        # root: two turns, one reply with a spawn and a made-up tool name
        "root": [tool_calls(spawn("a", "x"), call("no_such_tool", {})), "ok"],
        "x": [tool_calls(spawn("b", "y")), "mid"],
        "y": ["leaf"],
    }
    runtime, _ = make_runtime(scripted(plan))
    result = await runtime.run("root")
    assert result.status == "complete"
    runs = {d: captured.histogram(n.INVOKE_AGENT_DURATION, depth=d).count for d in (0, 1, 2)}
    assert runs == {0: 1, 1: 1, 2: 1}
    model_calls = captured.histogram(n.INVOKE_AGENT_MODEL_CALLS, depth=0)
    assert (model_calls.count, model_calls.sum) == (1, 2)
    assert captured.histogram(n.INVOKE_AGENT_MODEL_CALLS, depth=2).sum == 1
    tool_calls_ = captured.histogram(n.INVOKE_AGENT_TOOL_CALLS, depth=0)
    assert (tool_calls_.count, tool_calls_.sum) == (1, 2)
    assert captured.histogram(n.INVOKE_AGENT_TOOL_CALLS, depth=2).count == 0  # asked for none
    tools = {
        (s[n.DEPTH], s[n.GEN_AI_TOOL_NAME], s.get(n.OTEL_ERROR_TYPE))
        for s in captured.attribute_sets(n.EXECUTE_TOOL_DURATION)
    }
    # The model's invented name is not on the metric (the span keeps it).
    assert tools == {
        (0, "subagent", None),
        (0, n.UNKNOWN_TOOL, "tool_error"),
        (1, "subagent", None),
    }
    assert captured.spans_named("execute_tool no_such_tool")


async def test_a_failed_run_s_duration_carries_its_error_type(captured: TelemetryCapture) -> None:
    plan: dict[str, list[Step]] = {
        "root": [tool_calls(spawn("a", "x")), "ok"],
        "x": [RuntimeError("boom")],
    }
    runtime, _ = make_runtime(scripted(plan))
    await runtime.run("root")
    sets = captured.attribute_sets(n.INVOKE_AGENT_DURATION)
    assert {(s[n.DEPTH], s.get(n.OTEL_ERROR_TYPE)) for s in sets} == {
        (0, None),
        (1, "execution_failed"),
    }


async def test_run_and_tool_durations_keep_exemplars_of_their_own_spans(
    captured: TelemetryCapture,
) -> None:
    plan: dict[str, list[Step]] = {"root": [tool_calls(spawn("a", "x")), "ok"], "x": ["leaf"]}
    runtime, _ = make_runtime(scripted(plan))
    await runtime.run("root")
    spans = {(s.context.trace_id, s.context.span_id): s.name for s in captured.spans if s.context}
    # One collection: the SDK hands each exemplar to the first collection after it was kept.
    data = captured.metric_reader.get_metrics_data()
    assert data is not None
    linked: dict[str, set[str]] = {}
    for metric in (
        m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    ):
        for point in metric.data.data_points:
            for exemplar in getattr(point, "exemplars", ()):
                assert exemplar.trace_id is not None
                assert exemplar.span_id is not None
                span = spans[(exemplar.trace_id, exemplar.span_id)]
                linked.setdefault(metric.name, set()).add(span)
    assert linked[n.INVOKE_AGENT_DURATION] == {"invoke_agent agent", "invoke_agent a"}
    assert linked[n.EXECUTE_TOOL_DURATION] == {"execute_tool subagent"}
    # xzatoma's other histograms keep none: their values are the runs' own (above) again.
    assert set(linked) == {n.INVOKE_AGENT_DURATION, n.EXECUTE_TOOL_DURATION}


@pytest.mark.parametrize("kind", ["ollama", "vllm", "llamacpp", "lmstudio", "openai"])
async def test_the_config_file_s_provider_type_is_gen_ai_provider_name(kind: str) -> None:
    from xzatoma.config import XzatomaConfig

    config = XzatomaConfig.from_dict(
        {"provider": {"type": kind, "base_url": "http://127.0.0.1:1/v1", "model": "m"}}
    )
    provider = config.build_provider(env={})
    assert provider is not None
    assert provider.name == kind
    await provider.aclose()
