"""Model settings on the wire, their checks, and the warning about tools a server dropped.

Every request here goes to a real scripted HTTP server on 127.0.0.1, and every assertion is
on the body it received (whole key sets, JSON types) or on the exact message a caller sees.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import anyio
import pytest
from _http_server import MakeProvider, Reply, ScriptedHTTPServer

from xzatoma import ModelSettings, Runtime
from xzatoma._types import Message, ToolSpec
from xzatoma._usage import MAX_TOKENS_PER_CALL
from xzatoma.errors import ConfigError
from xzatoma.providers.openai import OpenAIProvider
from xzatoma.testing import ScriptedProvider

LOGGER = "xzatoma.providers.openai"
CLOCK = ToolSpec("get_time", "The current time.", {"type": "object", "properties": {}})
BASE_KEYS = {"model", "messages"}
ALL_SET = ModelSettings(
    temperature=0.5, top_p=0.9, seed=42, max_tokens=256, tool_choice="auto",
    parallel_tool_calls=False,
)  # fmt: skip


def chat_reply(usage: dict[str, int] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "local-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def usage(prompt_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 3,
        "total_tokens": prompt_tokens + 3,
    }


async def sent(server: ScriptedHTTPServer, provider: OpenAIProvider, *, tools: bool) -> Any:
    """The body of one request (with the clock tool, or none) as the server received it."""
    server.add(Reply(body=chat_reply()))
    await provider.complete([Message.user("hi")], [CLOCK] if tools else [])
    return server.requests[-1].json()


# -- settings on the wire ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_unset_settings_are_not_sent(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    provider = make_provider()
    assert provider.settings == ModelSettings()
    assert set(await sent(server, provider, tools=False)) == BASE_KEYS
    assert set(await sent(server, provider, tools=True)) == BASE_KEYS | {"tools"}


@pytest.mark.anyio
async def test_set_settings_are_sent_with_their_json_types(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    provider = make_provider(
        temperature=0.5, top_p=0.9, seed=42, max_tokens=256, tool_choice="auto",
        parallel_tool_calls=False,
    )  # fmt: skip
    assert provider.settings == ALL_SET
    body = await sent(server, provider, tools=True)
    assert body == {
        "model": "local-model",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [CLOCK.to_openai()],
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 42,
        "max_tokens": 256,
        "tool_choice": "auto",
        "parallel_tool_calls": False,
    }
    # JSON types, read from the bytes: numbers, an integer, a string and a real boolean.
    raw = server.requests[-1].body.decode()
    for text in (
        '"temperature":0.5', '"top_p":0.9', '"seed":42', '"max_tokens":256',
        '"tool_choice":"auto"', '"parallel_tool_calls":false',
    ):  # fmt: skip
        assert text in raw


@pytest.mark.anyio
async def test_tool_settings_are_left_out_of_a_request_without_tools(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    provider = make_provider(settings=ALL_SET)
    body = await sent(server, provider, tools=False)
    assert set(body) == BASE_KEYS | {"temperature", "top_p", "seed", "max_tokens"}
    body = await sent(server, provider, tools=True)
    assert set(body) == BASE_KEYS | {"tools", *ALL_SET.request_fields(with_tools=True)}
    assert (body["tool_choice"], body["parallel_tool_calls"]) == ("auto", False)


@pytest.mark.anyio
async def test_zero_and_false_are_sent_not_dropped(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    provider = make_provider(temperature=0, seed=0, top_p=0.0, tool_choice="none")
    body = await sent(server, provider, tools=True)
    assert {k: body[k] for k in ("temperature", "seed", "top_p", "tool_choice")} == {
        "temperature": 0,
        "seed": 0,
        "top_p": 0.0,
        "tool_choice": "none",
    }


@pytest.mark.anyio
async def test_keywords_win_over_settings_field_by_field(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    provider = make_provider(settings=ModelSettings(temperature=1.0, seed=3), temperature=0.0)
    assert provider.settings == ModelSettings(temperature=0.0, seed=3)
    body = await sent(server, provider, tools=False)
    assert (body["temperature"], body["seed"]) == (0.0, 3)
    assert set(body) == BASE_KEYS | {"temperature", "seed"}


# -- with_settings -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_with_settings_merges_field_by_field_and_shares_the_pool(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    parent = make_provider(temperature=0.2, seed=7, text_tool_calls=False)
    twin = parent.with_settings(ModelSettings(seed=9, max_tokens=50))
    assert twin.settings == ModelSettings(temperature=0.2, seed=9, max_tokens=50)
    assert parent.settings == ModelSettings(temperature=0.2, seed=7)  # unchanged
    assert (twin.model, twin.base_url, twin.text_tool_calls) == (
        parent.model,
        parent.base_url,
        False,
    )
    assert parent.with_settings(ModelSettings()) is parent
    assert parent.with_settings(ModelSettings(seed=7)) is parent  # nothing changes

    body = await sent(server, twin, tools=False)
    assert {k: body[k] for k in set(body) - BASE_KEYS} == {
        "temperature": 0.2,
        "seed": 9,
        "max_tokens": 50,
    }
    body = await sent(server, parent, tools=False)
    assert {k: body[k] for k in set(body) - BASE_KEYS} == {"temperature": 0.2, "seed": 7}
    await twin.aclose()  # the twin does not own the pool: the connection stays
    await sent(server, parent, tools=False)
    ports = {request.client_port for request in server.requests}
    assert len(ports) == 1  # one keep-alive connection served all three requests
    await parent.aclose()
    assert await anyio.to_thread.run_sync(server.wait_connection_closed, 10)


# -- the checks ------------------------------------------------------------------------------------

REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"temperature": -0.1}, "temperature must be between 0 and 2, got -0.1"),
    ({"temperature": 2.5}, "temperature must be between 0 and 2, got 2.5"),
    ({"temperature": "0.5"}, "temperature must be a number between 0 and 2, got '0.5'"),
    ({"temperature": True}, "temperature must be a number between 0 and 2, got True"),
    ({"temperature": math.nan}, "temperature must be a number between 0 and 2, got nan"),
    ({"temperature": math.inf}, "temperature must be a number between 0 and 2, got inf"),
    ({"top_p": 1.5}, "top_p must be between 0 and 1, got 1.5"),
    ({"top_p": -math.inf}, "top_p must be a number between 0 and 1, got -inf"),
    ({"top_p": False}, "top_p must be a number between 0 and 1, got False"),
    ({"seed": 1.5}, "seed must be a whole number, got 1.5"),
    ({"seed": True}, "seed must be a whole number, got True"),
    ({"seed": "42"}, "seed must be a whole number, got '42'"),
    ({"seed": 2**63}, f"seed must be at most {2**63 - 1}, got {2**63}"),
    ({"seed": -(2**63) - 1}, f"seed must be at least {-(2**63)}, got {-(2**63) - 1}"),
    ({"max_tokens": 0}, "max_tokens must be at least 1, got 0"),
    ({"max_tokens": -5}, "max_tokens must be at least 1, got -5"),
    (
        {"max_tokens": MAX_TOKENS_PER_CALL + 1},
        f"max_tokens must be at most {MAX_TOKENS_PER_CALL}, got {MAX_TOKENS_PER_CALL + 1}",
    ),
    ({"max_tokens": 100.0}, "max_tokens must be a whole number, got 100.0"),
    ({"max_tokens": math.nan}, "max_tokens must be a whole number, got nan"),
    ({"max_tokens": False}, "max_tokens must be a whole number, got False"),
    (
        {"tool_choice": "always"},
        "tool_choice must be 'auto', 'none' or 'required', got 'always'; one named tool "
        "cannot be forced on every turn (the agent could never answer)",
    ),
    (
        {"tool_choice": "get_time"},
        "tool_choice must be 'auto', 'none' or 'required', got 'get_time'; one named tool "
        "cannot be forced on every turn (the agent could never answer)",
    ),
    (
        {"tool_choice": "Auto"},
        "tool_choice must be 'auto', 'none' or 'required', got 'Auto'; one named tool "
        "cannot be forced on every turn (the agent could never answer)",
    ),
    (
        {"tool_choice": {"type": "function", "function": {"name": "get_time"}}},
        "tool_choice must be 'auto', 'none' or 'required', got {'type': 'function', "
        "'function': {'name': 'get_time'}}; one named tool cannot be forced on every turn "
        "(the agent could never answer)",
    ),
    ({"parallel_tool_calls": 1}, "parallel_tool_calls must be true or false, got 1"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls must be true or false, got 'yes'"),
]


@pytest.mark.parametrize(("fields", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_bad_settings_are_refused_with_their_name(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelSettings(**fields)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)  # a caller's mistake
    with pytest.raises(ConfigError) as info:  # the provider's keywords say the same
        OpenAIProvider("http://127.0.0.1:1/v1", "m", **fields)
    assert str(info.value) == message


ACCEPTED: list[dict[str, Any]] = [
    {"temperature": 0, "top_p": 0, "seed": -(2**63), "max_tokens": 1},
    {"temperature": 2, "top_p": 1, "seed": 2**63 - 1, "max_tokens": MAX_TOKENS_PER_CALL},
    {"temperature": 0.7, "tool_choice": "required", "parallel_tool_calls": True},
    {"tool_choice": "none", "parallel_tool_calls": False},
]


@pytest.mark.parametrize("fields", ACCEPTED)
def test_edge_values_are_accepted(fields: dict[str, Any]) -> None:
    settings = ModelSettings(**fields)
    assert settings.request_fields(with_tools=True) == fields
    assert bool(settings) is True
    assert bool(ModelSettings()) is False


def test_the_provider_refuses_other_mistakes_by_name() -> None:
    with pytest.raises(ConfigError) as info:
        OpenAIProvider("http://127.0.0.1:1/v1", "m", text_tool_calls="no")  # type: ignore[arg-type]
    assert str(info.value) == "text_tool_calls must be True or False, got 'no'"
    with pytest.raises(ConfigError) as info:
        OpenAIProvider("http://127.0.0.1:1/v1", "m", settings={"seed": 1})  # type: ignore[arg-type]
    assert str(info.value) == "settings must be a ModelSettings, got dict"


def test_merged_takes_each_set_field_from_the_override() -> None:
    base = ModelSettings(temperature=0.2, seed=1, tool_choice="auto")
    over = ModelSettings(seed=2, parallel_tool_calls=False)
    assert base.merged(over) == ModelSettings(
        temperature=0.2, seed=2, tool_choice="auto", parallel_tool_calls=False
    )
    assert base.merged(None) is base
    assert base.merged(ModelSettings()) is base
    assert ModelSettings().merged(over) is over


# -- tools a server dropped from the prompt ------------------------------------------------------


def subagent_tools() -> list[ToolSpec]:
    """The two subagent tools' schemas, as a real run offers them (some 3,000 characters)."""
    agent = Runtime(ScriptedProvider(["unused"])).agent()
    return [t.spec for t in agent.tools]


def schema_chars(tools: list[ToolSpec]) -> int:
    return sum(len(json.dumps(spec.to_openai())) for spec in tools)


def dropped_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and "dropped" in r.getMessage()
    ]


async def ask(
    server: ScriptedHTTPServer, provider: OpenAIProvider, tools: list[ToolSpec], reply: Any
) -> None:
    server.add(Reply(body=reply))
    await provider.complete([Message.system("Be brief."), Message.user("Go.")], tools)


@pytest.mark.anyio
async def test_a_prompt_too_small_for_its_tools_warns_once_naming_the_cause(
    server: ScriptedHTTPServer, make_provider: MakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    tools = subagent_tools()
    chars = schema_chars(tools)
    assert chars > 2000  # big enough that a prompt without them is far below the threshold
    provider = make_provider(model="qwen2.5-coder-0.5b")
    # What llama.cpp without tool support reports: the system and user text, and no tools.
    await ask(server, provider, tools, chat_reply(usage(24)))
    await ask(server, provider, tools, chat_reply(usage(31)))  # a second call: still once
    twin = provider.with_settings(ModelSettings(seed=1))  # a subagent's twin: same server
    await ask(server, twin, tools, chat_reply(usage(24)))
    url = server.url + "/v1/chat/completions"
    assert dropped_warnings(caplog) == [
        f"{url} counted 24 prompt tokens for a request whose tool schemas alone are about "
        f"{chars // 4} tokens: the server probably dropped the tools from the prompt, so the "
        "model cannot call them. The likely cause: the chat template of model "
        "'qwen2.5-coder-0.5b' has no tool support (llama.cpp: start llama-server with "
        "--jinja, or give it a template with tools; Ollama: use a model tagged 'tools')"
    ]
    # Another provider, or another model on the same one, is told once more.
    await ask(server, provider.with_model("other-model"), tools, chat_reply(usage(24)))
    await ask(server, make_provider(model="qwen2.5-coder-0.5b"), tools, chat_reply(usage(24)))
    assert len(dropped_warnings(caplog)) == 3
    assert "'other-model'" in dropped_warnings(caplog)[1]


@pytest.mark.parametrize(
    "chars_per_token",
    [
        3.0,  # about what Qwen2.5 on llama.cpp counts: some 1,000 tokens for the two tools
        4.0,  # OpenAI's tokenizers on English-heavy JSON
        11.0,  # a tokenizer far better at JSON than any real one: still no proof of a drop
    ],
)
@pytest.mark.anyio
async def test_plausible_prompt_counts_do_not_warn(
    server: ScriptedHTTPServer,
    make_provider: MakeProvider,
    caplog: pytest.LogCaptureFixture,
    chars_per_token: float,
) -> None:
    tools = subagent_tools()
    prompt_tokens = math.ceil(schema_chars(tools) / chars_per_token) + 20  # + system and user
    await ask(server, make_provider(), tools, chat_reply(usage(prompt_tokens)))
    assert dropped_warnings(caplog) == []


@pytest.mark.anyio
async def test_the_threshold_is_twelve_characters_a_token(
    server: ScriptedHTTPServer, make_provider: MakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    tools = subagent_tools()
    lowest_plausible = math.ceil(schema_chars(tools) / 12)
    await ask(server, make_provider(), tools, chat_reply(usage(lowest_plausible)))
    assert dropped_warnings(caplog) == []
    await ask(server, make_provider(), tools, chat_reply(usage(lowest_plausible - 1)))
    assert len(dropped_warnings(caplog)) == 1


@pytest.mark.parametrize(
    "reported",
    [
        None,  # no usage at all: xzatoma's estimate, which knows nothing of the server
        {"prompt_tokens": 5},  # no completion count: estimated too
        {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},  # zeros: estimated
    ],
    ids=["no usage", "half a usage", "zeros"],
)
@pytest.mark.anyio
async def test_estimated_usage_never_warns(
    server: ScriptedHTTPServer,
    make_provider: MakeProvider,
    caplog: pytest.LogCaptureFixture,
    reported: dict[str, int] | None,
) -> None:
    body = chat_reply()
    if reported is not None:
        body["usage"] = reported
    await ask(server, make_provider(), subagent_tools(), body)
    assert dropped_warnings(caplog) == []


@pytest.mark.anyio
async def test_a_request_without_tools_never_warns(
    server: ScriptedHTTPServer, make_provider: MakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    await ask(server, make_provider(), [], chat_reply(usage(2)))
    assert dropped_warnings(caplog) == []
