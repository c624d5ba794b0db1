"""Tool calls a model wrote as text, recovered as real ones.

Many local models (small Qwen, Llama and Mistral builds behind llama.cpp, Ollama or LM Studio
templates) answer a tool-calling request with the call written into ``content`` instead of
``tool_calls``. A reply is read as tool calls only when its whole text is nothing but calls,
in these forms, and every call names a tool the request offered:

- a JSON object ``{"name": ..., "arguments": {...}}`` (``parameters`` for ``arguments``, and
  the OpenAI shape ``{"type": "function", "function": {...}}`` too), several of them one
  after another, or a JSON list of them;
- the same inside Markdown fences (`````json``, a bare `````, or tagged ``tool_call``,
  ``tool_code`` or ``javascript``), one fence or several;
- Hermes/Qwen ``<tool_call>{...}</tool_call>`` blocks, one or several (the last one may be
  left unclosed: such models stop generating right there).

Anything else stays a text answer: prose around the JSON, a fence of invalid JSON or of
another language, an object with keys a call does not have (a data answer such as
``{"name": "Alice", "age": 3}``), arguments that are not an object, a name that was not
offered. Arguments may be an object, its JSON text, or left empty (``null``, ``""``).
The JSON is read with a real decoder, not a regular expression, so a fence or a
``</tool_call>`` written inside an argument's string does not end the call early.
``docs/providers.md`` shows every form.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any, Final

from .._text import replace_lone_surrogates
from .._types import ToolCall

__all__ = ("recover_tool_calls",)

_OPENINGS: Final = ("{", "[", "```", "<tool_call>")
"""How a reply that is nothing but calls must start; prose is turned away at once."""
_FENCE: Final = "```"
_FENCE_OPENING: Final = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)")
_FENCE_LANGUAGES: Final = frozenset({"", "json", "tool_call", "tool_code", "javascript"})
_TAG, _END_TAG = "<tool_call>", "</tool_call>"
_GAP: Final = re.compile(r"[\s,;]*")
"""What may stand between two calls: whitespace, and the comma or semicolon some write."""
_WRAPPER_KEYS: Final = frozenset({"function", "id", "type"})
_CALL_KEYS: Final = frozenset({"name", "arguments", "parameters", "id", "type"})
MAX_CALLS: Final = 1000
"""The most calls one reply may be read as: text holding more stays text, so a reply of
millions of tiny values cannot hold the event loop for seconds."""


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: the next request could not carry it


_decoder: Final = json.JSONDecoder(parse_constant=_refuse_constant)


def recover_tool_calls(content: str, offered: Collection[str]) -> tuple[ToolCall, ...]:
    """The tool calls ``content`` consists of, or ``()`` when it is a text answer.

    ``offered`` holds the names of the tools the request offered; a call naming any other
    makes the whole reply text. The calls have empty ids (the wire layer numbers them).
    """
    text = content.strip()
    if not offered or not text.startswith(_OPENINGS):
        return ()
    values = _values(text)
    if values is None:
        return ()
    calls: list[ToolCall] = []
    if sum(len(v) if isinstance(v, list) else 1 for v in values) > MAX_CALLS:
        return ()
    for value in values:
        for raw in value if isinstance(value, list) else (value,):
            call = _call(raw, offered)
            if call is None:
                return ()
            calls.append(call)
    return tuple(calls)


def _values(text: str) -> list[Any] | None:
    """The JSON values ``text`` consists of, bare, fenced or in ``<tool_call>`` blocks; None
    when anything else is in it (prose, a fence of another language, an unclosed fence)."""
    values: list[Any] = []
    index = 0
    while index < len(text):
        if text.startswith(_FENCE, index):
            opening = _FENCE_OPENING.match(text, index)
            assert opening is not None  # it matches any "```"
            if opening.group(1).lower() not in _FENCE_LANGUAGES:
                return None  # ```python: code, not a call
            index = _read(text, opening.end(), values)
            if index < 0 or not text.startswith(_FENCE, index):
                return None
            index += len(_FENCE)
        elif text.startswith(_TAG, index):
            index = _read(text, index + len(_TAG), values)
            if index < 0:
                return None
            if text.startswith(_END_TAG, index):
                index += len(_END_TAG)
            elif index < len(text):  # only the last block may be left unclosed
                return None
        else:
            index = _read(text, index, values)
            if index < 0:
                return None
        index = _gap(text, index)
    return values


def _read(text: str, index: int, values: list[Any]) -> int:
    """Decode the JSON values at ``text[index:]`` into ``values``, up to the first thing that
    is not one; where that is (past any gap), or -1 if there was not even one value."""
    found = False
    index = _gap(text, index)
    while index < len(text):
        try:
            value, index = _decoder.raw_decode(text, index)
        except (ValueError, RecursionError):  # not JSON here, or nested absurdly deep
            break
        if not _could_be_calls(value) or len(values) >= MAX_CALLS:
            return -1  # known to be text now: read no further
        values.append(value)
        found = True
        index = _gap(text, index)
    return index if found else -1


def _could_be_calls(value: object) -> bool:
    """A call is an object; several are a non-empty list of objects."""
    if isinstance(value, dict):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _gap(text: str, index: int) -> int:
    match = _GAP.match(text, index)
    return index if match is None else match.end()


def _call(raw: object, offered: Collection[str]) -> ToolCall | None:
    """One call written as a JSON object, or None if it is not a call of an offered tool."""
    if not isinstance(raw, dict):
        return None
    if (
        "function" in raw
        and set(raw) <= _WRAPPER_KEYS
        and raw.get("type", "function") == "function"
    ):
        raw = raw["function"]  # the OpenAI shape, written out as text
        if not isinstance(raw, dict):
            return None
    if "name" not in raw or not set(raw) <= _CALL_KEYS:
        return None
    if raw.get("type", "function") != "function":
        return None
    name = raw["name"]
    if not isinstance(name, str) or name not in offered:
        return None
    given = [raw[key] for key in ("arguments", "parameters") if key in raw]
    arguments = _arguments(given[0]) if len(given) == 1 else None
    return None if arguments is None else ToolCall("", name, arguments)


def _arguments(value: object) -> str | None:
    """The arguments as JSON object text, from an object, its JSON text, or nothing (``null``,
    ``""``); None for anything else (a number, a list, a string that is not an object)."""
    if isinstance(value, str):
        if not value.strip():
            return "{}"
        try:
            value = _decoder.decode(value)
        except (ValueError, RecursionError):
            return None
    if value is None:
        return "{}"
    if not isinstance(value, dict):
        return None
    try:  # 1e999 reads as infinity, which the next request could not carry back
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return None
    # Written unescaped, so a lone surrogate from a "\ud800" escape is cleaned like any other.
    return replace_lone_surrogates(text)
