"""The attribute sets xzatoma's metrics are recorded with, each made once and shared.

A value is recorded with the same dict object every time its attributes are the same, so
the SDK (and the fast path in ``_fast``, which binds by identity) finds its series without
hashing the attributes again. :data:`SHARED` holds the sets every subscriber uses; a
subscriber that puts the session id on its metrics (``metrics_include_session_id``) keeps
one :class:`AttributeSets` per session, whose every set carries ``xzatoma.session.id`` too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypeVar

from . import _names as n

__all__ = ("SHARED", "AttributeSets", "GenAIAttributes", "kept")

BOUND: Final = 1024
"""Entries a bounded cache holds before it starts over (the values are bounded, but a
provider or tool list that keeps changing, or a stream of sessions, must not grow it)."""

_K = TypeVar("_K")
_V = TypeVar("_V")


def kept(cache: dict[_K, _V], key: _K, made: _V) -> _V:
    """Keep ``made`` under ``key`` in a cache that starts over past :data:`BOUND` entries."""
    if len(cache) >= BOUND:
        cache.clear()
    cache[key] = made
    return made


GenAIAttributes = tuple[dict[str, str], dict[str, str], dict[str, str]]
"""A model call's attribute sets: the call's, its input tokens', its output tokens'."""


class AttributeSets:
    """Every attribute set of xzatoma's metrics, made on first use and shared after.

    Args:
        extra: Attributes every set carries besides its own (a session's id); none by
            default.
    """

    __slots__ = ("_depth", "_extra", "_gen_ai", "_pair", "_tool")

    def __init__(self, extra: Mapping[str, str] | None = None) -> None:
        self._extra: dict[str, str] = dict(extra or {})
        self._depth: dict[int, dict[str, int | str]] = {}
        self._pair: dict[tuple[int, str, str], dict[str, int | str]] = {}
        self._gen_ai: dict[tuple[str, str, str | None], GenAIAttributes] = {}
        self._tool: dict[tuple[int, str, str | None], dict[str, str | int]] = {}

    def __repr__(self) -> str:
        return f"AttributeSets(extra={self._extra!r})"

    def depth(self, depth: int) -> dict[str, int | str]:
        """``{"depth": depth}`` (never changed once made; the depths are bounded)."""
        found = self._depth.get(depth)
        if found is None:
            found = self._depth[depth] = {n.DEPTH: depth, **self._extra}
        return found

    def pair(self, depth: int, key: str, value: str) -> dict[str, int | str]:
        """``{"depth": depth, key: value}``; keys are bounded (depth 0..11, fixed sets)."""
        cache_key = (depth, key, value)
        found = self._pair.get(cache_key)
        if found is None:
            found = self._pair[cache_key] = {n.DEPTH: depth, key: value, **self._extra}
        return found

    def gen_ai(self, provider: str, model: str, error_type: str | None) -> GenAIAttributes:
        """The attribute sets of one model call (call, input tokens, output tokens).

        Only values chosen by code or by the user's own configuration go on a metric: the
        provider's name, the model asked for, and the ``error.type`` of a failed call (an
        HTTP status or an xzatoma error type). The model name the endpoint answers with
        (``gen_ai.response.model``) is the endpoint's choice, so it goes on the ``chat`` span
        only: on a metric, a server answering with a new name each time would grow one
        series per name without limit.
        """
        key = (provider, model, error_type)
        found = self._gen_ai.get(key)
        if found is not None:
            return found
        call: dict[str, str] = {
            n.GEN_AI_OPERATION_NAME: n.OP_CHAT,
            n.GEN_AI_PROVIDER_NAME: provider,
            n.GEN_AI_REQUEST_MODEL: model,
            **self._extra,
        }
        if error_type is not None:
            call[n.OTEL_ERROR_TYPE] = error_type
        made = (
            call,
            {**call, n.GEN_AI_TOKEN_TYPE: n.TOKEN_TYPE_INPUT},
            {**call, n.GEN_AI_TOKEN_TYPE: n.TOKEN_TYPE_OUTPUT},
        )
        return kept(self._gen_ai, key, made)

    def tool(self, depth: int, tool: str, error: str | None) -> dict[str, str | int]:
        """The attributes of one tool call's duration (``error``: its ``error.type``);
        ``tool`` is an offered tool's name, never one the model made up."""
        key = (depth, tool, error)
        found = self._tool.get(key)
        if found is not None:
            return found
        made: dict[str, str | int] = {n.DEPTH: depth, n.GEN_AI_TOOL_NAME: tool, **self._extra}
        if error is not None:
            made[n.OTEL_ERROR_TYPE] = error
        return kept(self._tool, key, made)


SHARED: Final = AttributeSets()
"""The sets of every subscriber that keeps the session id off its metrics (the default)."""
