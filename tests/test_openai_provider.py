"""OpenAIProvider against a real HTTP server on loopback: wire format, retries, errors, secrets."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeAlias

import anyio
import httpx
import pytest
from _http_server import Reply, ScriptedHTTPServer

from xzatoma._types import Message, ToolCall, ToolSpec
from xzatoma.errors import ConfigError, ProviderError
from xzatoma.providers.openai import OpenAIProvider

KEY = "sk-canary-XYZ"

WEATHER = ToolSpec(
    "get_weather",
    "Current weather for a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = ToolSpec("get_time", "The current time.", {"type": "object", "properties": {}})


def chat_reply(
    content: str | None = "Hello!",
    *,
    tool_calls: Any = None,
    usage: dict[str, int] | None = None,
    model: str = "gpt-test-0001",
    finish_reason: str = "stop",
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


MakeProvider: TypeAlias = Callable[..., OpenAIProvider]
"""What the ``make_provider`` fixture gives: ``make_provider(**options)``."""


@pytest.fixture
def server() -> Iterator[ScriptedHTTPServer]:
    with ScriptedHTTPServer() as srv:
        yield srv


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
async def make_provider(
    server: ScriptedHTTPServer, sleeps: list[float]
) -> AsyncIterator[MakeProvider]:
    """Build providers aimed at the test server whose retry delays are recorded, not slept."""
    made: list[OpenAIProvider] = []

    async def record_sleep(delay: float) -> None:
        sleeps.append(delay)

    def make(**kwargs: Any) -> OpenAIProvider:
        kwargs.setdefault("base_url", server.url + "/v1/")
        kwargs.setdefault("model", "gpt-test")
        kwargs.setdefault("api_key", KEY)
        provider = OpenAIProvider(**kwargs)
        provider._sleep = record_sleep
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


def assert_no_key(
    exc: BaseException, provider: OpenAIProvider, caplog: pytest.LogCaptureFixture
) -> None:
    assert KEY not in str(exc)
    assert KEY not in repr(exc)
    assert KEY not in repr(provider)
    for record in caplog.records:
        assert KEY not in record.getMessage()
        assert KEY not in str(record.args)
        assert KEY not in (record.exc_text or "")


# -- the happy path ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_plain_text_reply(server: ScriptedHTTPServer, make_provider: MakeProvider) -> None:
    server.add(
        Reply(
            body=chat_reply(
                "Hi there", usage={"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
            )
        )
    )
    provider = make_provider()

    completion = await provider.complete([Message.system("Be brief."), Message.user("Hi")], [])

    assert completion.content == "Hi there"
    assert completion.tool_calls == ()
    assert (completion.usage.requests, completion.usage.prompt_tokens) == (1, 12)
    assert (completion.usage.completion_tokens, completion.usage.total_tokens) == (3, 15)
    assert completion.model == "gpt-test-0001"
    assert completion.finish_reason == "stop"
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
    }


@pytest.mark.anyio
async def test_no_api_key_sends_no_authorization(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    server.add(Reply(body=chat_reply()))
    await make_provider(api_key=None).complete([Message.user("Hi")], [])
    assert "authorization" not in server.requests[0].headers


@pytest.mark.anyio
async def test_tools_sent_and_tool_calls_parsed(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    exact = '{"city":  "Paris",\n "unit": "C"}'  # odd spacing must survive byte for byte
    server.add(
        Reply(
            body=chat_reply(
                None,
                finish_reason="tool_calls",
                tool_calls=[
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": exact},
                    },
                    {
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Oslo"}},
                    },
                ],
            )
        )
    )

    completion = await make_provider().complete([Message.user("Weather?")], [WEATHER, CLOCK])

    assert completion.content is None
    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == (
        ToolCall("call_a", "get_weather", exact),
        ToolCall("call_b", "get_weather", '{"city": "Oslo"}'),
    )
    assert json.loads(completion.tool_calls[1].arguments) == {"city": "Oslo"}
    sent = server.requests[0].json()
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "parameters": dict(WEATHER.parameters),
            },
        },
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "description": "The current time.",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    ]


@pytest.mark.anyio
async def test_tool_call_without_id_gets_one(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    server.add(
        Reply(
            body=chat_reply(
                None,
                tool_calls=[
                    {"id": "given", "function": {"name": "get_time", "arguments": "{}"}},
                    {"function": {"name": "get_time", "arguments": "{}"}},
                ],
            )
        )
    )
    completion = await make_provider().complete([Message.user("Time?")], [CLOCK])
    assert [c.id for c in completion.tool_calls] == ["given", "call_1"]


@pytest.mark.anyio
async def test_no_tools_key_without_tools(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    server.add(Reply(body=chat_reply()))
    await make_provider().complete([Message.user("Hi")], [])
    assert "tools" not in server.requests[0].json()


@pytest.mark.anyio
async def test_tool_round_trip_serialised(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    server.add(Reply(body=chat_reply("It is sunny.")))
    paris = ToolCall("call_1", "get_weather", '{"city":"Paris"}')
    clock = ToolCall("call_2", "get_time", "{}")
    conversation = [
        Message.user("Weather and time?"),
        Message.assistant(None, (paris, clock)),
        Message.tool(paris, "sunny"),
        Message.tool(clock, "12:00"),
    ]

    await make_provider().complete(conversation, [WEATHER, CLOCK])

    assert server.requests[0].json()["messages"] == [
        {"role": "user", "content": "Weather and time?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "tool", "content": "12:00", "tool_call_id": "call_2"},
    ]


@pytest.mark.anyio
async def test_missing_usage_is_estimated(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    server.add(
        Reply(body=chat_reply()),
        Reply(body=chat_reply(usage={"prompt_tokens": 7, "completion_tokens": 2})),
    )
    provider = make_provider()

    bare = await provider.complete([Message.user("Hi")], [])
    partial = await provider.complete([Message.user("Hi")], [])

    # No usage: ceil(UTF-8 bytes / 4) of the request ("Hi") and of the reply ("Hello!").
    assert (bare.usage.requests, bare.usage.prompt_tokens) == (1, 1)
    assert (bare.usage.completion_tokens, bare.usage.total_tokens) == (2, 3)
    assert bare.usage.estimated
    assert partial.usage.total_tokens == 9  # prompt + completion when no total is given
    assert not partial.usage.estimated


@pytest.mark.anyio
async def test_one_connection_is_reused(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    server.add(Reply(body=chat_reply()), Reply(body=chat_reply()))
    provider = make_provider()
    await provider.complete([Message.user("a")], [])
    await provider.complete([Message.user("b")], [])
    first, second = server.requests
    assert first.client_port == second.client_port


# -- retries -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_429_honours_retry_after(
    server: ScriptedHTTPServer, make_provider: MakeProvider, sleeps: list[float]
) -> None:
    server.add(
        Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "3"}),
        Reply(body=chat_reply("done")),
    )
    completion = await make_provider().complete([Message.user("Hi")], [])
    assert completion.content == "done"
    assert sleeps == [3.0]
    assert len(server.requests) == 2
    assert server.requests[0].body == server.requests[1].body


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("3600", 60.0),  # capped
        ("Thu, 01 Jan 2099 00:00:00 GMT", 60.0),  # HTTP-date, far ahead: capped
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),  # HTTP-date in the past: no wait
    ],
)
async def test_retry_after_forms(
    server: ScriptedHTTPServer,
    make_provider: MakeProvider,
    sleeps: list[float],
    retry_after: str,
    expected: float,
) -> None:
    server.add(Reply(503, "busy", {"Retry-After": retry_after}), Reply(body=chat_reply()))
    await make_provider().complete([Message.user("Hi")], [])
    assert sleeps == [expected]


@pytest.mark.anyio
async def test_500_until_retries_run_out(
    server: ScriptedHTTPServer,
    make_provider: MakeProvider,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server.add(*(Reply(500, f"internal failure #{i}") for i in range(3)))
    provider = make_provider(max_retries=2)

    with pytest.raises(ProviderError) as info:
        await provider.complete([Message.user("Hi")], [])

    assert len(server.requests) == 3
    assert info.value.status_code == 500
    assert "HTTP 500" in str(info.value)
    assert "/v1/chat/completions" in str(info.value)
    assert "internal failure #2" in str(info.value)
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.5
    assert 0 <= sleeps[1] <= 1.0
    assert_no_key(info.value, provider, caplog)


@pytest.mark.anyio
async def test_backoff_doubles_up_to_cap(
    server: ScriptedHTTPServer, make_provider: MakeProvider, sleeps: list[float]
) -> None:
    server.add(*(Reply(502, "bad gateway") for _ in range(6)), Reply(body=chat_reply()))
    provider = make_provider(max_retries=6)
    provider._random = lambda: 1.0  # the top of the jitter range

    await provider.complete([Message.user("Hi")], [])

    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert len(server.requests) == 7


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_client_errors_not_retried(
    server: ScriptedHTTPServer, make_provider: MakeProvider, sleeps: list[float], status: int
) -> None:
    server.add(Reply(status, {"error": {"message": "nope"}}), Reply(body=chat_reply()))
    with pytest.raises(ProviderError) as info:
        await make_provider().complete([Message.user("Hi")], [])
    assert info.value.status_code == status
    assert f"HTTP {status}" in str(info.value)
    assert "nope" in str(info.value)
    assert len(server.requests) == 1
    assert sleeps == []


@pytest.mark.anyio
async def test_echoed_key_is_redacted(
    server: ScriptedHTTPServer, make_provider: MakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.add(Reply(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}))
    provider = make_provider()
    with pytest.raises(ProviderError) as info:
        await provider.complete([Message.user("Hi")], [])
    assert "Incorrect API key provided: [redacted]" in str(info.value)
    assert_no_key(info.value, provider, caplog)


@pytest.mark.anyio
async def test_long_error_body_is_cut(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    server.add(Reply(400, "x" * 5000))
    with pytest.raises(ProviderError) as info:
        await make_provider().complete([Message.user("Hi")], [])
    assert "x" * 197 + "..." in str(info.value)
    assert "x" * 201 not in str(info.value)


# -- malformed replies ---------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param("<html>Bad Gateway</html>", "not JSON", id="html"),
        pytest.param(b"\xff\xfe\x00garbage", "not JSON", id="binary"),
        pytest.param([1, 2], "not a JSON object", id="list"),
        pytest.param({}, "no choices", id="empty-object"),
        pytest.param({"choices": []}, "no choices", id="empty-choices"),
        pytest.param({"choices": [{"index": 0}]}, "no message", id="no-message"),
        pytest.param(chat_reply(tool_calls={"id": "x"}), "bad tool_calls", id="calls-not-list"),
        pytest.param(
            chat_reply(tool_calls=[{"id": "x", "function": {"arguments": "{}"}}]),
            "bad tool_calls[0]: missing function name",
            id="no-name",
        ),
        pytest.param(chat_reply(tool_calls=["oops"]), "bad tool_calls[0]", id="call-not-object"),
        pytest.param(
            chat_reply(tool_calls=[{"id": "x", "function": {"name": "f", "arguments": 5}}]),
            "bad tool_calls[0]: arguments",
            id="numeric-arguments",
        ),
    ],
)
async def test_malformed_reply(
    server: ScriptedHTTPServer,
    make_provider: MakeProvider,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
    body: Any,
    expected: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    server.add(Reply(200, body))
    provider = make_provider()
    with pytest.raises(ProviderError) as info:
        await provider.complete([Message.user("Hi")], [])
    assert expected in str(info.value)
    assert "body: " in str(info.value)
    assert info.value.status_code == 200
    assert len(server.requests) == 1  # a bad body is not retried
    assert sleeps == []
    assert_no_key(info.value, provider, caplog)


# -- transport failures --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_timeout(
    server: ScriptedHTTPServer,
    make_provider: MakeProvider,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server.add(Reply(body=chat_reply(), hold=threading.Event()))  # released at teardown
    provider = make_provider(timeout=0.2, max_retries=0)
    with pytest.raises(ProviderError) as info:
        await provider.complete([Message.user("Hi")], [])
    assert "timed out after 0.2 s" in str(info.value)
    assert info.value.status_code is None
    assert len(server.requests) == 1
    assert sleeps == []
    assert_no_key(info.value, provider, caplog)


@pytest.mark.anyio
async def test_timeout_is_retried(
    server: ScriptedHTTPServer, make_provider: MakeProvider, sleeps: list[float]
) -> None:
    server.add(Reply(body=chat_reply(), hold=threading.Event()), Reply(body=chat_reply("ok")))
    completion = await make_provider(timeout=0.2, max_retries=1).complete([Message.user("Hi")], [])
    assert completion.content == "ok"
    assert len(server.requests) == 2
    assert len(sleeps) == 1


@pytest.fixture
def dead_url() -> str:
    """A loopback URL nobody listens on: bind a port, then let it go."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.mark.anyio
async def test_connection_refused(
    make_provider: MakeProvider,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
    dead_url: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = make_provider(base_url=dead_url, max_retries=1)
    with pytest.raises(ProviderError) as info:
        await provider.complete([Message.user("Hi")], [])
    message = str(info.value)
    assert f"could not connect to {dead_url}/chat/completions" in message
    assert "check base_url" in message
    assert "server is running" in message
    assert len(sleeps) == 1  # retried once, then gave up
    assert_no_key(info.value, provider, caplog)


# -- secrets and lifecycle -----------------------------------------------------------------------


def test_repr_hides_key() -> None:
    provider = OpenAIProvider("http://127.0.0.1:1/v1", "m", api_key=KEY)
    assert repr(provider) == "OpenAIProvider(base_url='http://127.0.0.1:1/v1', model='m')"
    assert (provider.name, provider.model, provider.base_url) == (
        "openai",
        "m",
        "http://127.0.0.1:1/v1",
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"base_url": "127.0.0.1:8080/v1"}, "base_url must start with http"),
        ({"timeout": 0}, "timeout must be greater than 0"),
        ({"max_retries": -1}, "max_retries must be at least 0"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, Any], expected: str) -> None:
    args: dict[str, Any] = {"base_url": "http://127.0.0.1:1", "model": "m", **kwargs}
    with pytest.raises(ConfigError, match=expected):
        OpenAIProvider(**args)


@pytest.mark.anyio
async def test_context_manager_closes_owned_client(server: ScriptedHTTPServer) -> None:
    server.add(Reply(body=chat_reply()))
    async with OpenAIProvider(server.url, "m") as provider:
        await provider.complete([Message.user("Hi")], [])
    # The server sees the keep-alive connection end once the pool is closed.
    assert await anyio.to_thread.run_sync(server.wait_connection_closed, 10)


@pytest.mark.anyio
async def test_given_client_is_used_and_left_open(server: ScriptedHTTPServer) -> None:
    server.add(Reply(body=chat_reply()))
    async with httpx.AsyncClient(headers={"X-Marker": "mine"}) as client:
        async with OpenAIProvider(server.url, "m", client=client) as provider:
            await provider.complete([Message.user("Hi")], [])
        assert not client.is_closed
    assert server.requests[0].headers["x-marker"] == "mine"
