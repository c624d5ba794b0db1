"""A planted API key never shows up: not in logs, exception text, spans, metrics or --json.

The canary travels the whole way: a real HTTP server on 127.0.0.1 receives it (so we know it
was sent), echoes it back in error bodies (as some endpoints do), and every output a user or
an operator can see is searched for it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _http_server import Reply, ScriptedHTTPServer

from xzatoma import OpenAIProvider, Runtime, SubagentConfig
from xzatoma.cli import main
from xzatoma.telemetry import start_metrics_server
from xzatoma.testing import capture_telemetry

pytestmark = pytest.mark.anyio

CANARY = "sk-canary-7f3a9c2e51d04b8e"


def completion(content: str | None = None, calls: list[dict[str, Any]] | None = None) -> Reply:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
            }
            for i, c in enumerate(calls)
        ]
    body = {
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
    }
    return Reply(200, body)


def echoing_error(status: int) -> Reply:
    return Reply(status, {"error": {"message": f"Incorrect API key provided: {CANARY}"}})


def spawn_then_answer() -> list[Reply]:
    spawn = {"name": "subagent", "arguments": {"label": "child", "task_prompt": "look"}}
    return [
        completion(calls=[spawn]),  # root, turn 1
        echoing_error(500),  # child: a retried failure whose body echoes the key
        completion("child found it"),  # child, after the retry
        completion("root done"),  # root, turn 2
    ]


@pytest.fixture
def server() -> Iterator[ScriptedHTTPServer]:
    with ScriptedHTTPServer() as srv:
        yield srv


def assert_clean(where: str, text: str) -> None:
    assert CANARY not in text, f"the API key leaked into {where}"
    assert CANARY[3:] not in text, f"part of the API key leaked into {where}"


async def no_sleep(seconds: float) -> None:
    return None


async def test_no_key_in_logs_exceptions_spans_metrics_or_results(
    server: ScriptedHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.add(*spawn_then_answer(), echoing_error(401))
    caplog.set_level(logging.DEBUG)
    with capture_telemetry() as captured:
        provider = OpenAIProvider(server.url, "m", api_key=CANARY, max_retries=1)
        provider._sleep = no_sleep
        runtime = Runtime(provider, subagents=SubagentConfig(summary_prompt=None))
        async with provider:
            result = await runtime.agent().run("find it")
            failed = await runtime.agent().run("this one gets a 401")
        spans = captured.spans
        metrics = captured.metric_reader.get_metrics_data()
    assert result.output == "root done"
    assert result.children[0].output == "child found it"
    assert (failed.status, failed.error_type) == ("failed", "execution_failed")
    assert "HTTP 401" in (failed.error or "")
    assert all(r.headers.get("authorization") == f"Bearer {CANARY}" for r in server.requests)

    formatter = logging.Formatter()
    assert_clean("log records", "\n".join(formatter.format(r) for r in caplog.records))
    assert_clean("the failed run's error", failed.error or "")
    for run in (result, failed):
        assert_clean("--json-style result", json.dumps(run.to_dict(messages=True)))
        assert_clean("the result's repr", repr(run))
    assert_clean("the provider's repr", repr(provider))
    assert spans, "no span was recorded"
    for span in spans:
        assert_clean(f"span {span.name}", json.loads(span.to_json()).__repr__())
    assert_clean("metrics", metrics.to_json() if metrics is not None else "")


async def test_no_key_in_the_prometheus_exposition(server: ScriptedHTTPServer) -> None:
    server.add(*spawn_then_answer())
    with start_metrics_server(port=0) as metrics_server:
        provider = OpenAIProvider(server.url, "m", api_key=CANARY, max_retries=1)
        provider._sleep = no_sleep
        async with provider:
            await Runtime(provider).run("find it")
        async with httpx.AsyncClient() as client:
            text = (await client.get(metrics_server.url)).text
    assert "subagent_executions_total" in text
    assert_clean("/metrics", text)


@pytest.mark.parametrize("replies", ["success", "401"])
def test_no_key_in_cli_output(
    server: ScriptedHTTPServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    replies: str,
) -> None:
    if replies == "success":
        server.add(completion("root done"))
    else:
        server.add(echoing_error(401))
    monkeypatch.setenv("XZ_CANARY_KEY", CANARY)
    argv = ["run", "--json", "--api-key-env", "XZ_CANARY_KEY", "--base-url", server.url]
    code = main([*argv, "--model", "m", "--verbose", "find it"])
    out, err = capsys.readouterr()
    assert code == (0 if replies == "success" else 2)
    assert server.requests[0].headers["authorization"] == f"Bearer {CANARY}"
    assert_clean("stdout", out)
    assert_clean("stderr", err)


# -- a provider sent to another process (a Ray worker) never carries its key ---------------


def test_a_pickled_provider_carries_the_key_s_variable_not_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import copy
    import pickle

    from xzatoma import ModelSettings
    from xzatoma.errors import ConfigError

    monkeypatch.setenv("XZ_SENT_KEY", "sk-sent-0123456789")
    provider = OpenAIProvider(
        "http://127.0.0.1:9/v1", "m", api_key_env="XZ_SENT_KEY", temperature=0.25,
        max_retries=1, timeout=7.0, text_tool_calls=False,
    )  # fmt: skip
    data = pickle.dumps(provider)
    assert b"sk-sent-0123456789" not in data
    monkeypatch.setenv("XZ_SENT_KEY", "sk-the-worker-s-own")
    copy_ = pickle.loads(data)
    assert (copy_.base_url, copy_.model, copy_.text_tool_calls) == (provider.base_url, "m", False)
    assert copy_.settings == ModelSettings(temperature=0.25)
    assert copy_._headers["Authorization"] == "Bearer sk-the-worker-s-own"  # read over there
    monkeypatch.delenv("XZ_SENT_KEY")
    with pytest.raises(ConfigError, match=r"XZ_SENT_KEY .* is not set in this process"):
        pickle.loads(data)
    # A twin (with_model) is a copy sharing the pool, not a new provider.
    assert copy.copy(provider)._transports is provider._transports
    with pytest.raises(ConfigError, match="api_key_env='NAME'"):
        pickle.dumps(OpenAIProvider("http://127.0.0.1:9/v1", "m", api_key="sk-a-literal-key"))
    with pytest.raises(ConfigError, match="client="):
        pickle.dumps(OpenAIProvider("http://127.0.0.1:9/v1", "m", client=httpx.AsyncClient()))
