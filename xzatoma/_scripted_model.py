"""The built-in offline model, ``provider.type: scripted`` (``--provider scripted``): try
``xzatoma batch`` or ``run`` (journals, ``--json``, ``--metrics-port``) before there is a
model server.

It is a :class:`~xzatoma.testing.ScriptedProvider` with one rule: the first turn answers with
a short echo of the task, a later turn (the summary a batch task is asked for) with one line
that names the task again. It calls no tool, so it spawns nothing, and it counts tokens by
words, so every run of the same file prints the same outputs and token counts (durations
aside)."""

from __future__ import annotations

from collections.abc import Sequence

from ._types import Completion, Message, ToolSpec, Usage
from .providers._settings import ModelSettings
from .testing import ScriptedProvider

__all__ = ("SCRIPTED", "SCRIPTED_MODEL", "scripted_model")

SCRIPTED = "scripted"
"""The provider type that names this model."""
SCRIPTED_MODEL = "scripted"
"""The model name it reports when none is given (priced at 0: it costs nothing)."""
_ECHOED_WORDS = 12


def scripted_model(
    model: str | None = None, settings: ModelSettings | None = None
) -> ScriptedProvider:
    """The offline model, under ``model`` (default :data:`SCRIPTED_MODEL`); ``settings`` are
    recorded with each request and change nothing."""
    return ScriptedProvider(_reply, model=model or SCRIPTED_MODEL, name=SCRIPTED, settings=settings)


def _reply(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
    """The first user message is the task; an earlier answer means this is a later turn."""
    asked = [m.content or "" for m in messages if m.role == "user"]
    task = _first_words(asked[0] if asked else "", _ECHOED_WORDS)
    if any(m.role == "assistant" and m.content for m in messages):
        text = f'Summary: the task "{task}" was answered offline by the scripted model.'
    else:
        words = len(asked[0].split()) if asked else 0
        text = (
            f'Scripted answer to "{task}": no model was called, so this echoes the task '
            f"({words} words)."
        )
    prompt = sum(len((m.content or "").split()) for m in messages)
    completion = len(text.split())
    usage = Usage(
        requests=1,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
    )
    return Completion(content=text, usage=usage)


def _first_words(text: str, count: int) -> str:
    words = text.split()
    shown = " ".join(words[:count])
    return f"{shown} ..." if len(words) > count else shown
