"""The provider protocol: the one thing the agent loop needs from a model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .._types import Completion, Message, ToolSpec

__all__ = ("Provider",)


@runtime_checkable
class Provider(Protocol):
    """A chat model the agent loop can call.

    ``complete`` must raise :class:`xzatoma.ProviderError` for anything that is not a usable
    reply; the agent turns that into a ``failed`` run instead of crashing.
    """

    @property
    def name(self) -> str:
        """The provider's name, as in ``gen_ai.provider.name`` (``openai``, ``scripted``)."""
        ...

    @property
    def model(self) -> str:
        """The model asked for."""
        ...

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        """Send the conversation and the tool specs; return the model's reply."""
        ...
