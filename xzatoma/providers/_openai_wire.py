"""The OpenAI chat wire format at the boundary: the request body out, the reply in, both made safe.

What comes back is untrusted input. Every string taken from a reply has lone surrogates (a
JSON ``\\ud800`` escape, or the bytes of one) replaced by U+FFFD, here and only here, so no
later print or request can fail to encode it; that includes the escapes inside a tool call's
raw argument text. The tool calls of one reply get distinct ids. Token counts are taken only
when they are plain non-negative integers below a sanity bound and not a zero for text that
is there; they are estimated otherwise. The request body is serialised here too, so a lone
surrogate in a tool's output cannot crash the next call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from .._text import replace_lone_surrogates
from .._types import Completion, Message, ToolCall, ToolSpec, Usage
from .._usage import MAX_TOKENS_PER_CALL, estimate_tokens, reply_texts, request_texts

__all__ = (
    "MalformedReply",
    "clean_text",
    "encode_request",
    "parse_reply",
    "with_unique_ids",
)

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""The cheap test: could this JSON text hold an escaped surrogate at all?"""
_ESCAPES = re.compile(
    r"\\\\"  # an escaped backslash, consumed so the "u" after it is not read as an escape
    r"|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"  # a valid pair, kept
    r"|(\\u[dD][89a-fA-F][0-9a-fA-F]{2})"  # a lone high or low surrogate
)


class MalformedReply(Exception):
    """A reply that is not a usable chat completion; the text says what is wrong with it."""


clean_text = replace_lone_surrogates
"""Every string taken from a reply goes through this, once (see :mod:`xzatoma._text`)."""


def clean_json_escapes(text: str) -> str:
    """JSON text with every escaped lone surrogate (``\\ud800`` as six characters) made
    ``\\ufffd``, so it decodes to text that encodes; valid pairs are kept.

    :func:`clean_text` cannot see these: they are plain ASCII until the text is decoded, and
    then pydantic refuses them with a misleading "not valid JSON". Most texts hold no
    ``\\uD8``-like escape and cost one regex search.
    """
    if _SURROGATE_ESCAPE.search(text) is None:
        return text
    return _ESCAPES.sub(lambda m: "\\ufffd" if m.group(1) else m.group(0), text)


def encode_request(
    model: str,
    messages: Sequence[Message],
    tools: Sequence[ToolSpec],
    settings: Mapping[str, Any] | None = None,
) -> bytes:
    """The request body, byte for byte as httpx's ``json=`` would make it, but always encodable.

    ``settings``: the model settings' request fields, added at the top level.

    A lone surrogate (from a tool's output, a user's text) would make ``str.encode`` raise;
    it becomes U+FFFD instead. The common case encodes once, with no extra pass.
    """
    payload: dict[str, Any] = {"model": model, "messages": [_message(m) for m in messages]}
    if settings:
        payload.update(settings)
    text = _dumps(payload)
    if tools:  # the same specs every turn: serialised once, spliced in before the last brace
        text = f'{text[:-1]},"tools":{_tools_json(tools)}}}'
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return replace_lone_surrogates(text).encode("utf-8")


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
"""``json.dumps`` with these options, without making an encoder for every request."""


_TOOLS_CACHE_SIZE = 256
_tools_cache: dict[tuple[int, ...], tuple[Sequence[ToolSpec], str]] = {}
"""The ``tools`` JSON of each set of specs, keyed by their identities (each entry keeps its
specs alive, so an id is not reused while it is there); cleared when it fills up."""


def _tools_json(tools: Sequence[ToolSpec]) -> str:
    """The request's ``tools`` array for ``tools``, serialised once per set of spec objects.

    An agent sends the same specs with every model call, and every subagent of a runtime the
    same two subagent tools (3 KB of schema): building and serialising them per call was a
    good part of a request's own cost. Specs are frozen; a schema changed in place after
    its first request is not seen (make a new spec instead).
    """
    key = tuple(map(id, tools))
    found = _tools_cache.get(key)
    if found is not None:
        return found[1]
    text = _dumps([spec.to_openai() for spec in tools])
    if len(_tools_cache) >= _TOOLS_CACHE_SIZE:
        _tools_cache.clear()
    _tools_cache[key] = (tuple(tools), text)
    return text


def _message(message: Message) -> dict[str, Any]:
    """One message in the OpenAI shape; ``content`` may be null only beside tool calls."""
    content = message.content
    if content is None and not (message.role == "assistant" and message.tool_calls):
        content = ""
    out: dict[str, Any] = {"role": message.role, "content": content}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
    return out


def parse_reply(body: bytes | bytearray, messages: Sequence[Message]) -> Completion:
    """The completion in a reply body; ``messages`` (the request) only for a usage estimate.

    Raises:
        MalformedReply: The body is not JSON or not a chat completion.
    """
    try:
        data = json.loads(body)
    except ValueError:  # UnicodeDecodeError and the int digit limit included
        raise MalformedReply("not JSON") from None
    except RecursionError:  # "[[[[..." a million deep
        raise MalformedReply("not JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise MalformedReply("not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedReply("no choices")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise MalformedReply("no message in choices[0]")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise MalformedReply("content is not a string")
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise MalformedReply("bad tool_calls: not a list")
    calls = []
    for index, raw in enumerate(raw_calls):
        call = _tool_call(raw)
        if isinstance(call, str):
            raise MalformedReply(f"bad tool_calls[{index}]: {call}")
        calls.append(call)
    calls = with_unique_ids(calls)
    content = None if content is None else clean_text(content)
    finish = choice.get("finish_reason")
    model = data.get("model")
    response_id = data.get("id")
    return Completion(
        content=content,
        tool_calls=tuple(calls),
        usage=_usage(data.get("usage"), messages, content, calls),
        model=clean_text(model) if isinstance(model, str) else None,
        response_id=clean_text(response_id) if isinstance(response_id, str) else None,
        finish_reason=clean_text(finish) if isinstance(finish, str) else None,
    )


def _tool_call(raw: object) -> ToolCall | str:
    """Parse one tool call (its id left empty if the endpoint gave none), or say what is
    wrong with it."""
    if not isinstance(raw, dict):
        return "not an object"
    function = raw.get("function")
    if not isinstance(function, dict):
        return "no function object"
    name = function.get("name")
    if not isinstance(name, str) or not name:
        return "missing function name"
    arguments = function.get("arguments")
    if arguments is None:
        arguments = "{}"
    elif isinstance(arguments, dict | list):
        # Ollama and some others send the arguments as an object rather than a string; its
        # text is written unescaped, so a lone surrogate in it is cleaned like any other.
        try:
            arguments = json.dumps(arguments, ensure_ascii=False, allow_nan=False)
        except ValueError:  # NaN or Infinity, which Python's reader let in: the next
            # request, which echoes the call back, could not be read by the endpoint
            return "arguments hold NaN or Infinity, which are not JSON"
    elif isinstance(arguments, str):
        arguments = clean_json_escapes(arguments)
    else:
        return "arguments is neither a string nor an object"
    call_id = raw.get("id")
    if not isinstance(call_id, str):
        call_id = ""
    return ToolCall(clean_text(call_id), clean_text(name), clean_text(arguments))


def with_unique_ids(calls: list[ToolCall]) -> list[ToolCall]:
    """The calls with distinct ids, so each tool message answers exactly one call.

    An id the endpoint chose is kept where it is the first of its value; a missing one, and
    a repeat, become ``call_{index}`` (``call_{index}_{n}`` if the endpoint used that name
    too). The common case, every id present and distinct, is one set.
    """
    given = {call.id for call in calls}
    if "" not in given and len(given) == len(calls):
        return calls
    seen: set[str] = set()
    unique = []
    for index, call in enumerate(calls):
        if call.id and call.id not in seen:
            seen.add(call.id)
            unique.append(call)
            continue
        new_id, n = f"call_{index}", 1
        while new_id in given or new_id in seen:
            new_id, n = f"call_{index}_{n}", n + 1
        seen.add(new_id)
        unique.append(replace(call, id=new_id))
    return unique


def _count(raw: dict[str, Any], key: str) -> int | None:
    """A reported token count, if it is one: an ``int`` (not a bool) in 0..MAX_TOKENS_PER_CALL."""
    value = raw.get(key)
    return value if type(value) is int and 0 <= value <= MAX_TOKENS_PER_CALL else None


def _usage(
    raw: object, messages: Sequence[Message], content: str | None, calls: Sequence[ToolCall]
) -> Usage:
    """The endpoint's token counts where they can be trusted, xzatoma's estimate where not.

    A missing or invalid prompt (completion) count is estimated from the request (reply)
    text, and so is a zero for a request (reply) that holds text: a server that reports
    nothing as zeros must not switch ``max_total_tokens`` off. A ``total_tokens`` that is
    missing, invalid or below their sum becomes the sum. All but a total that was simply
    left out mark the usage ``estimated``.
    """
    counts = raw if isinstance(raw, dict) else {}
    prompt = _count(counts, "prompt_tokens")
    completion = _count(counts, "completion_tokens")
    total = _count(counts, "total_tokens")
    if prompt == 0 and any(request_texts(messages)):  # some text, yet "0 tokens"
        prompt = None
    if completion == 0 and (calls or content):
        completion = None
    if prompt is not None and completion is not None:
        if total is not None and total >= prompt + completion:
            return Usage(1, prompt, completion, total)
        # Left out, the total is simply the sum; sent but wrong, the usage is suspect.
        return Usage(1, prompt, completion, prompt + completion, "total_tokens" in counts)
    if prompt is None:
        prompt = estimate_tokens(request_texts(messages))
    if completion is None:
        completion = estimate_tokens(reply_texts(content, calls))
    return Usage(1, prompt, completion, prompt + completion, estimated=True)
