"""The two checks of a reply to a request that offered tools, for the OpenAI provider.

Local servers get tools wrong in two ways the wire format cannot show: the model writes its
calls into the text (recovered here as real calls, by :mod:`._text_tool_calls`), or the
server drops ``tools`` from the prompt because the model's chat template cannot render them
(noticed here from the reported prompt tokens, and warned about once per model).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Final

from .._types import CUT_SHORT, Completion, ToolSpec
from ._openai_wire import with_unique_ids
from ._settings import NO_SETTINGS, ModelSettings
from ._text_tool_calls import recover_tool_calls

__all__ = ("ALWAYS_SHOWN", "SHOWN", "ToolReplies")

SHOWN: Final = "xzatoma_always_shown"
ALWAYS_SHOWN: Final = {SHOWN: True}
"""``extra`` of a warning the command line shows without ``--verbose``: the run will
likely go wrong because of it, and the user can fix it."""

_CHARS_PER_TOKEN_AT_MOST: Final = 12
"""No tokenizer packs more characters of JSON schema into one token (about 3 to 4 is usual;
the two subagent tools' 3,000-odd characters are about 1,000 tokens for Qwen2.5): a prompt
counted at fewer tokens than its schemas' length over this did not hold them."""


class ToolReplies:
    """Shared by a provider and its twins (``with_model``, ``with_settings``): they talk to
    one server, so one warning per model is enough however many subagents spawn.

    Args:
        logger: Where the recovery's debug line and the warning go (the provider's own).
        url: The endpoint as shown in messages (credentials redacted).
        recover: Whether to read tool calls written as text (``text_tool_calls``).
    """

    def __init__(self, logger: logging.Logger, url: str, *, recover: bool) -> None:
        self._logger, self._url, self.recover = logger, url, recover
        self._warned: set[str] = set()
        # An agent sends the same tuple of specs every turn: their length is worked out once.
        self._sized: tuple[Sequence[ToolSpec] | None, int] = (None, 0)

    def check(
        self,
        completion: Completion,
        tools: Sequence[ToolSpec],
        model: str,
        settings: ModelSettings = NO_SETTINGS,
    ) -> Completion:
        """The completion, with the tool calls its text consists of made real (``recover``),
        after warning if the endpoint cannot have shown ``model`` the tools. ``settings``
        hold for recovered calls too: none with ``tool_choice="none"``, one at most with
        ``parallel_tool_calls=False``."""
        if not completion.usage.estimated and model not in self._warned:
            self._check_tools_seen(completion.usage.prompt_tokens, tools, model)
        if (
            self.recover
            and completion.content
            and not completion.tool_calls
            and completion.finish_reason not in CUT_SHORT  # a cut call is never run
            and settings.tool_choice != "none"
        ):
            names = {spec.name for spec in tools}
            return self._recovered(completion, names, model, settings)
        return completion

    def _recovered(
        self, completion: Completion, names: set[str], model: str, settings: ModelSettings
    ) -> Completion:
        assert completion.content is not None
        calls = recover_tool_calls(completion.content, names)
        if not calls:
            return completion
        if settings.parallel_tool_calls is False and len(calls) > 1:
            self._logger.debug(
                "%s wrote %d tool calls as text; running the first (parallel_tool_calls=False)",
                model,
                len(calls),
            )
            calls = calls[:1]
        self._logger.debug(
            "read %d tool call(s) that %s wrote as text: %s",
            len(calls),
            model,
            ", ".join(call.name for call in calls),
        )
        return replace(
            completion,
            content=None,
            tool_calls=tuple(with_unique_ids(list(calls))),
            tool_calls_from_text=True,
        )

    def _schema_chars(self, tools: Sequence[ToolSpec]) -> int:
        """About what a chat template renders of ``tools`` (jinja's tojson spaces it so)."""
        sized, chars = self._sized
        if tools is not sized:
            chars = sum(len(json.dumps(spec.to_openai())) for spec in tools)
            self._sized = (tools, chars)
        return chars

    def _check_tools_seen(self, prompt_tokens: int, tools: Sequence[ToolSpec], model: str) -> None:
        """Warn (once per model) when the endpoint counted fewer prompt tokens than the tool
        schemas alone must take: the server most likely dropped ``tools`` from the prompt."""
        schema_chars = self._schema_chars(tools)
        if prompt_tokens * _CHARS_PER_TOKEN_AT_MOST >= schema_chars:
            return
        self._warned.add(model)
        self._logger.warning(
            "%s counted %d prompt tokens for a request whose tool schemas alone are about %d "
            "tokens: the server probably dropped the tools from the prompt, so the model cannot "
            "call them. The likely cause: the chat template of model %r has no tool support "
            "(llama.cpp: start llama-server with --jinja, or give it a template with tools; "
            "Ollama: use a model tagged 'tools')",
            self._url,
            prompt_tokens,
            schema_chars // 4,
            model,
            extra=ALWAYS_SHOWN,
        )
