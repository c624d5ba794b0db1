"""The provider-neutral chat types: messages, tool calls, completions and usage.

They follow the OpenAI chat shape (roles system/user/assistant/tool; a tool call carries the
raw JSON argument string) so any OpenAI-compatible endpoint maps onto them one to one.
They are frozen slotted dataclasses: cheap to build in the hot path, safe to share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = (
    "CUT_SHORT",
    "NO_USAGE",
    "Completion",
    "Message",
    "Role",
    "ToolCall",
    "ToolSpec",
    "Usage",
)

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Model usage, summed with ``+``."""

    requests: int = 0
    """Number of model calls."""
    prompt_tokens: int = 0
    """Input tokens, as the provider reported them."""
    completion_tokens: int = 0
    """Output tokens, as the provider reported them."""
    total_tokens: int = 0
    """Input plus output tokens (the provider's own total when it gives one)."""
    estimated: bool = False
    """True when some of these counts are xzatoma's estimate, not the provider's report
    (the endpoint sent no usage, or usage that could not be trusted)."""

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        # Adding nothing makes nothing new: a frozen Usage costs more to build than to check,
        # and a run's first call, or a leaf's total, adds to or is added to nothing.
        if type(self) is Usage and type(other) is Usage:
            if not (other.requests or other.total_tokens or other.prompt_tokens) and (
                not (other.completion_tokens or other.estimated)
            ):
                return self
            if not (self.requests or self.total_tokens or self.prompt_tokens) and (
                not (self.completion_tokens or self.estimated)
            ):
                return other
        return Usage(
            self.requests + other.requests,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
            self.estimated or other.estimated,
        )


NO_USAGE: Final = Usage()
"""Usage of nothing (shared: a ``Usage`` is frozen)."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call the model asked for."""

    id: str
    """The provider's id, echoed back on the tool message that answers it."""
    name: str
    """The tool's name."""
    arguments: str
    """The raw JSON argument string, exactly as the model wrote it."""


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message."""

    role: Role
    """``system``, ``user``, ``assistant`` or ``tool``."""
    content: str | None = None
    """The text; ``None`` for an assistant message that only calls tools."""
    tool_calls: tuple[ToolCall, ...] = ()
    """The tool calls of an assistant message."""
    tool_call_id: str | None = None
    """On a tool message: the id of the call it answers."""
    name: str | None = None
    """On a tool message: the tool's name."""

    @classmethod
    def system(cls, content: str) -> Message:
        return cls("system", content)

    @classmethod
    def user(cls, content: str) -> Message:
        return cls("user", content)

    @classmethod
    def assistant(cls, content: str | None, tool_calls: tuple[ToolCall, ...] = ()) -> Message:
        return cls("assistant", content, tool_calls)

    @classmethod
    def tool(cls, call: ToolCall, content: str) -> Message:
        return cls("tool", content, tool_call_id=call.id, name=call.name)


CUT_SHORT: Final = frozenset({"length", "content_filter"})
"""Finish reasons of a reply stopped before it was whole: the run ends there (``length``:
``incomplete``; ``content_filter``: ``failed``) and nothing in the reply is run."""


@dataclass(frozen=True, slots=True)
class Completion:
    """One reply of the model."""

    content: str | None = None
    """The assistant's text, if any."""
    tool_calls: tuple[ToolCall, ...] = ()
    """The tools the model wants called; empty means this is a final answer."""
    usage: Usage = field(default_factory=Usage)
    """What this call cost, from the provider's own numbers."""
    model: str | None = None
    """The model that answered, when the provider says."""
    finish_reason: str | None = None
    """The provider's finish reason, when it gives one (``stop``, ``tool_calls``, ``length``,
    ``content_filter``); ``length`` ends the run ``incomplete``, ``content_filter`` ``failed``."""
    tool_calls_from_text: bool = False
    """The model wrote ``tool_calls`` into its text and the provider recovered them
    (``OpenAIProvider(text_tool_calls=True)``, the default)."""
    response_id: str | None = None
    """The endpoint's id of this reply (``gen_ai.response.id``), when it gives one."""

    @property
    def message(self) -> Message:
        """This reply as an assistant message for the conversation."""
        return Message("assistant", self.content, self.tool_calls)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """What the model is told about one tool: name, description and JSON schema."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    """The JSON schema of the arguments object."""

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry (function format)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }
