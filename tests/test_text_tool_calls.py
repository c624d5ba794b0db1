"""Tool calls written as text: the recovery rules, then the same through a real HTTP server.

The rules are pure code (``recover_tool_calls``), tested form by form and against the text
answers they must leave alone; then ``OpenAIProvider.complete`` against a scripted server on
127.0.0.1, and one whole agent run whose "model" writes a custom tool's call in a fence.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from _http_server import MakeProvider, Reply, ScriptedHTTPServer

from xzatoma import Agent, tool
from xzatoma._types import Message, ToolCall, ToolSpec
from xzatoma.providers._text_tool_calls import recover_tool_calls

OFFERED = frozenset({"get_weather", "get_time"})
WEATHER = ToolSpec(
    "get_weather",
    "Current weather for a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = ToolSpec("get_time", "The current time.", {"type": "object", "properties": {}})
PARIS = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
NOW = '{"name": "get_time", "arguments": {}}'


def call(name: str, arguments: dict[str, Any]) -> ToolCall:
    """What a recovered call is: no id yet, the arguments as JSON object text."""
    return ToolCall("", name, json.dumps(arguments, ensure_ascii=False))


def weather(city: str) -> ToolCall:
    return call("get_weather", {"city": city})


TIME = call("get_time", {})


# -- the accepted forms ------------------------------------------------------------------------

ACCEPTED: dict[str, tuple[str, tuple[ToolCall, ...]]] = {
    "bare object": (PARIS, (weather("Paris"),)),
    "bare object, surrounding whitespace": (f"\n\n  {PARIS}  \n", (weather("Paris"),)),
    "bare objects one after another": (f"{PARIS}\n{NOW}", (weather("Paris"), TIME)),
    "bare objects with a comma between": (f"{PARIS},\n{NOW}", (weather("Paris"), TIME)),
    "a JSON list": (f"[{PARIS}, {NOW}]", (weather("Paris"), TIME)),
    "a json fence": (f"```json\n{PARIS}\n```", (weather("Paris"),)),
    "a JSON fence, upper case": (f"```JSON\n{PARIS}\n```", (weather("Paris"),)),
    "a bare fence": (f"```\n{NOW}\n```", (TIME,)),
    "a fence on one line": (f"```{NOW}```", (TIME,)),
    "a fence holding a list": (f"```json\n[{PARIS}, {NOW}]\n```", (weather("Paris"), TIME)),
    "several fences": (
        f"```json\n{PARIS}\n```\n\n```json\n{NOW}\n```",
        (weather("Paris"), TIME),
    ),
    "one tool_call block": (f"<tool_call>\n{PARIS}\n</tool_call>", (weather("Paris"),)),
    "several tool_call blocks": (
        f"<tool_call>\n{PARIS}\n</tool_call>\n<tool_call>\n{NOW}\n</tool_call>",
        (weather("Paris"), TIME),
    ),
    "the last tool_call block unclosed": (
        f"<tool_call>\n{PARIS}\n</tool_call>\n<tool_call>\n{NOW}\n",
        (weather("Paris"), TIME),
    ),
    "parameters instead of arguments": (
        '{"name": "get_weather", "parameters": {"city": "Oslo"}}',
        (weather("Oslo"),),
    ),
    "arguments as a JSON string": (
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}',
        (weather("Rome"),),
    ),
    "arguments as an empty string": ('{"name": "get_time", "arguments": ""}', (TIME,)),
    "arguments null": ('{"name": "get_time", "arguments": null}', (TIME,)),
    "the OpenAI shape": (
        '{"type": "function", "function": {"name": "get_weather", '
        '"arguments": "{\\"city\\": \\"Lima\\"}"}}',
        (weather("Lima"),),
    ),
    "the OpenAI shape with an id, arguments as an object": (
        '{"id": "call_9", "type": "function", '
        '"function": {"name": "get_weather", "arguments": {"city": "Kyiv"}}}',
        (weather("Kyiv"),),
    ),
    "a list in the OpenAI shape": (
        '[{"type": "function", "function": {"name": "get_time", "arguments": "{}"}}]',
        (TIME,),
    ),
    "a fence inside an argument does not end the fence": (
        '```json\n{"name": "get_weather", "arguments": {"city": "```python\\nx```"}}\n```',
        (weather("```python\nx```"),),
    ),
    "a closing tag inside an argument does not end the block": (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "</tool_call>"}}</tool_call>',
        (weather("</tool_call>"),),
    ),
    "non-ASCII arguments stay as written": (
        '{"name": "get_weather", "arguments": {"city": "Zürich"}}',
        (weather("Zürich"),),
    ),
}


@pytest.mark.parametrize(("content", "expected"), ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted_forms_become_tool_calls(content: str, expected: tuple[ToolCall, ...]) -> None:
    assert recover_tool_calls(content, OFFERED) == expected


def test_a_lone_surrogate_escape_in_arguments_is_made_encodable() -> None:
    (recovered,) = recover_tool_calls(
        '{"name": "get_weather", "arguments": {"city": "a\\ud800b"}}', OFFERED
    )
    assert recovered.arguments == '{"city": "a\ufffdb"}'
    recovered.arguments.encode("utf-8")  # raises on a lone surrogate


# -- text answers that must stay text ----------------------------------------------------------

REFUSED: dict[str, str] = {
    "prose that mentions a tool": "I would call get_weather for Paris, but it is sunny anyway.",
    "prose before the JSON": f"Sure! Here is the call:\n{PARIS}",
    "prose after the JSON": f"{PARIS}\nLet me know if you need anything else.",
    "prose between two calls": f"{PARIS}\nand then\n{NOW}",
    "prose after a fence": f"```json\n{PARIS}\n```\nThat should do it.",
    "prose before a fence": f"Calling now:\n```json\n{PARIS}\n```",
    "prose between tool_call blocks": (
        f"<tool_call>{PARIS}</tool_call> then <tool_call>{NOW}</tool_call>"
    ),
    "prose after a closed tool_call block": f"<tool_call>{PARIS}</tool_call> done",
    "prose after an unclosed tool_call block": f"<tool_call>{PARIS} done",
    "an unclosed tool_call block before another": (
        f"<tool_call>{PARIS}\n<tool_call>{NOW}</tool_call>"
    ),
    "a tool that was not offered": '{"name": "delete_everything", "arguments": {}}',
    "one of two calls names a tool that was not offered": (
        f'{PARIS}\n{{"name": "delete_everything", "arguments": {{}}}}'
    ),
    "one of a list names a tool that was not offered": (
        f'[{PARIS}, {{"name": "rm", "arguments": {{}}}}]'
    ),
    "invalid JSON inside a fence": '```json\n{"name": "get_time", "arguments": {}\n```',
    "unquoted keys inside a fence": "```json\n{name: get_time, arguments: {}}\n```",
    "an empty fence": "```json\n```",
    "an unclosed fence": f"```json\n{PARIS}\n",
    "a fence of another language": f"```python\n{NOW}\n```",
    "a fence of a language that starts like json": f"```json5\n{NOW}\n```",
    "an empty tool_call block": "<tool_call></tool_call>",
    "invalid JSON in a tool_call block": "<tool_call>{not json}</tool_call>",
    "a data answer with extra keys": '{"name": "Alice", "age": 3}',
    "a call with an extra key": '{"name": "get_time", "arguments": {}, "reason": "asked"}',
    "an offered name with extra keys": '{"name": "get_time", "age": 3}',
    "no arguments at all": '{"name": "get_time"}',
    "both arguments and parameters": '{"name": "get_time", "arguments": {}, "parameters": {}}',
    "arguments that are a number": '{"name": "get_time", "arguments": 3}',
    "arguments that are a list": '{"name": "get_time", "arguments": [1, 2]}',
    "arguments that are true": '{"name": "get_time", "arguments": true}',
    "arguments as a string that is not JSON": '{"name": "get_time", "arguments": "now"}',
    "arguments as JSON text of a list": '{"name": "get_time", "arguments": "[1]"}',
    "a name that is not a string": '{"name": 7, "arguments": {}}',
    "the OpenAI shape of another type": (
        '{"type": "tool", "function": {"name": "get_time", "arguments": {}}}'
    ),
    "the OpenAI shape with a string function": '{"type": "function", "function": "get_time"}',
    "an empty list": "[]",
    "a list of numbers": "[1, 2, 3]",
    "a list of lists": f"[[{NOW}]]",
    "a JSON string": '"get_time"',
    "an empty reply": "",
    "a reply of whitespace": " \n\t ",
    "nested absurdly deep": "[" * 100_000 + "]" * 100_000,
    "a number too big for a float": '{"name": "get_time", "arguments": {"x": 1e999}}',
    "NaN in the arguments": '{"name": "get_time", "arguments": {"x": NaN}}',
    "Infinity in argument text": '{"name": "get_time", "arguments": "{\\"x\\": -Infinity}"}',
    "a flat call of another type": '{"type": "tool", "name": "get_time", "arguments": {}}',
    "a call, then four million empty lists": NOW + "[]" * 4_000_000,
    "a call, then millions of numbers": NOW + " 1" * 3_000_000,
    "more calls than one reply may be read as": NOW * 1001,
}


@pytest.mark.parametrize("content", REFUSED.values(), ids=REFUSED.keys())
def test_text_answers_stay_text(content: str) -> None:
    assert recover_tool_calls(content, OFFERED) == ()


def test_a_thousand_calls_are_still_read() -> None:
    assert len(recover_tool_calls(NOW * 1000, OFFERED)) == 1000


def test_nothing_is_recovered_when_no_tool_was_offered() -> None:
    assert recover_tool_calls(PARIS, frozenset()) == ()


# -- through OpenAIProvider.complete, against a real server on loopback ---------------------------

LOGGER = "xzatoma.providers.openai"


def chat_reply(content: str | None, *, finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "local-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 400, "completion_tokens": 30, "total_tokens": 430},
    }


@pytest.mark.anyio
async def test_a_reply_of_text_calls_comes_back_as_real_ones(
    server: ScriptedHTTPServer, make_provider: MakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    server.add(Reply(body=chat_reply(f"```json\n[{PARIS}, {NOW}]\n```")))
    completion = await make_provider().complete([Message.user("weather?")], [WEATHER, CLOCK])
    assert completion.content is None
    assert completion.tool_calls == (
        ToolCall("call_0", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_1", "get_time", "{}"),
    )
    assert completion.tool_calls_from_text is True
    assert completion.message == Message(
        "assistant", None, tool_calls=completion.tool_calls
    )  # what the next request sends back
    lines = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert lines == [
        (LOGGER, logging.DEBUG, "read 2 tool call(s) that local-model wrote as text: "
         "get_weather, get_time"),
    ]  # fmt: skip


@pytest.mark.anyio
async def test_text_tool_calls_false_leaves_a_text_answer(
    server: ScriptedHTTPServer, make_provider: MakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    server.add(Reply(body=chat_reply(PARIS)))
    provider = make_provider(text_tool_calls=False)
    assert provider.text_tool_calls is False
    completion = await provider.complete([Message.user("weather?")], [WEATHER])
    assert (completion.content, completion.tool_calls) == (PARIS, ())
    assert completion.tool_calls_from_text is False
    assert [r for r in caplog.records if r.name == LOGGER] == []


@pytest.mark.anyio
async def test_a_request_without_tools_never_recovers(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    server.add(Reply(body=chat_reply(PARIS)))
    provider = make_provider()
    assert provider.text_tool_calls is True  # the default
    completion = await provider.complete([Message.user("weather?")], [])
    assert (completion.content, completion.tool_calls) == (PARIS, ())
    assert completion.tool_calls_from_text is False
    assert "tools" not in server.requests[0].json()


@pytest.mark.anyio
async def test_prose_and_unoffered_names_stay_text_over_the_wire(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    prose = f"Here you go: {PARIS}"
    server.add(Reply(body=chat_reply(prose)), Reply(body=chat_reply(PARIS)))
    provider = make_provider()
    first = await provider.complete([Message.user("weather?")], [WEATHER])
    second = await provider.complete([Message.user("time?")], [CLOCK])  # weather not offered
    assert (first.content, first.tool_calls, first.tool_calls_from_text) == (prose, (), False)
    assert (second.content, second.tool_calls, second.tool_calls_from_text) == (PARIS, (), False)


@pytest.mark.anyio
async def test_a_reply_cut_at_the_length_limit_is_not_recovered(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    # Whole JSON, but the model was stopped: the text stays, so the run shows what it wrote.
    server.add(Reply(body=chat_reply(PARIS, finish_reason="length")))
    completion = await make_provider().complete([Message.user("weather?")], [WEATHER])
    assert (completion.content, completion.tool_calls) == (PARIS, ())
    assert completion.finish_reason == "length"


@pytest.mark.anyio
async def test_real_tool_calls_are_left_as_they_are(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    body = chat_reply(NOW)  # a reply with real tool calls and some text beside them
    body["choices"][0]["message"]["tool_calls"] = [
        {"id": "abc", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    ]
    server.add(Reply(body=body))
    completion = await make_provider().complete([Message.user("time?")], [CLOCK])
    assert completion.content == NOW
    assert completion.tool_calls == (ToolCall("abc", "get_time", "{}"),)
    assert completion.tool_calls_from_text is False


# -- one whole run: the tool is really called -----------------------------------------------------


@pytest.mark.anyio
async def test_an_agent_runs_a_tool_its_model_wrote_in_a_fence(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    called: list[str] = []

    @tool
    async def lookup_population(city: str) -> str:
        """The population of a city."""
        called.append(city)
        return f"{city}: 2,102,650"

    fenced = '```json\n{"name": "lookup_population", "arguments": {"city": "Paris"}}\n```'
    server.add(
        Reply(body=chat_reply(fenced)),
        Reply(body=chat_reply("Paris has about 2.1 million people.")),
    )
    result = await Agent(make_provider(), tools=[lookup_population]).run("How many in Paris?")
    assert called == ["Paris"]
    assert (result.status, result.output, result.turns) == (
        "complete",
        "Paris has about 2.1 million people.",
        2,
    )
    # The second request carries the call as a real one and the tool's answer to it by id.
    sent = server.requests[1].json()["messages"]
    assert sent[-2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "lookup_population", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "Paris: 2,102,650", "tool_call_id": "call_0"},
    ]
