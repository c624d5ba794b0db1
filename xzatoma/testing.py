"""Fakes for testing agents without a model server: a scripted model and an event capture.

``ScriptedProvider`` plays a list of replies, or asks a function for each reply, and records
every request it received, so a test can assert what the model was shown. ``capture_events``
is a hook that keeps every event the runtime emits.
"""

from __future__ import annotations

import inspect
import itertools
import json
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeAlias, TypeVar

import anyio

from ._events import Event
from ._types import Completion, Message, ToolCall, ToolSpec, Usage
from .errors import ProviderError
from .providers._base import Provider
from .providers._settings import NO_SETTINGS, ModelSettings

if TYPE_CHECKING:
    from .telemetry import TelemetryCapture as TelemetryCapture
    from .telemetry import capture_telemetry as capture_telemetry

__all__ = (
    "FAULTS",
    "EventCapture",
    "FaultyProvider",
    "TelemetryCapture",
    "capture_telemetry",
    "Request",
    "ScriptedProvider",
    "call",
    "reply",
    "tool_calls",
)

_call_ids = itertools.count(1)


def __getattr__(name: str) -> object:
    # The in-memory telemetry capture loads the OTel SDK, so it is imported on first use.
    if name in ("TelemetryCapture", "capture_telemetry"):
        from . import telemetry

        return getattr(telemetry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def call(name: str, arguments: object = None, /, **kwargs: object) -> ToolCall:
    """A tool call: ``call("add", a=1, b=2)``; a ``str`` as ``arguments`` is sent raw."""
    if isinstance(arguments, str):
        raw = arguments
    else:
        raw = json.dumps(arguments if arguments is not None else kwargs)
    return ToolCall(f"call_{next(_call_ids)}", name, raw)


def reply(text: str, *, usage: Usage | None = None) -> Completion:
    """A final text answer."""
    return Completion(content=text, usage=usage or Usage())


def tool_calls(*calls: ToolCall, text: str | None = None, usage: Usage | None = None) -> Completion:
    """A reply that asks for ``calls``."""
    return Completion(content=text, tool_calls=calls, usage=usage or Usage())


@dataclass(frozen=True, slots=True)
class Request:
    """One request the scripted model received."""

    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...]
    settings: ModelSettings = NO_SETTINGS
    """The model settings of the provider (or twin) that was asked."""

    @property
    def tool_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tools)

    @property
    def last(self) -> Message:
        return self.messages[-1]


Reply: TypeAlias = Completion | str | Exception
ReplyFunction: TypeAlias = Callable[
    [Sequence[Message], Sequence[ToolSpec]], Completion | str | Awaitable[Completion | str]
]


class ScriptedProvider:
    """A fake model for tests and the offline demo.

    Args:
        replies: Either a list played in order (a ``str`` is a text answer, an exception is
            raised as that call's failure), or a function ``(messages, tools) -> Completion``
            (sync or async) asked for every reply.
        usage: Usage reported by every reply that does not carry its own.
        model: The model name it reports.
        name: The provider name it reports.
        settings: Model settings, recorded on every request (they change nothing else),
            so a test can check what a subagent inherits.
    """

    def __init__(
        self,
        replies: Iterable[Reply] | ReplyFunction = (),
        *,
        usage: Usage | None = None,
        model: str = "scripted",
        name: str = "scripted",
        settings: ModelSettings | None = None,
    ) -> None:
        self._function: ReplyFunction | None = None
        self._replies: list[Reply] = []
        if callable(replies):
            self._function = replies
        else:
            self._replies = list(replies)
        self._cursor = [0]  # shared with with_model() twins: one script, one position
        self.usage = usage
        self._model = model
        self._name = name
        self._settings = settings or NO_SETTINGS
        self.requests: list[Request] = []
        """Every request received, in order."""

    @property
    def name(self) -> str:
        return self._name

    @property
    def model(self) -> str:
        return self._model

    @property
    def settings(self) -> ModelSettings:
        """The model settings requests are recorded with."""
        return self._settings

    def with_model(self, model: str) -> ScriptedProvider:
        """The same script under another model name, sharing the request record."""
        return self._twin(model, self._settings)

    def with_settings(self, settings: ModelSettings) -> ScriptedProvider:
        """The same script with ``settings`` over these, sharing the request record."""
        return self._twin(self._model, self._settings.merged(settings))

    def _twin(self, model: str, settings: ModelSettings) -> ScriptedProvider:
        twin = ScriptedProvider(usage=self.usage, model=model, name=self._name, settings=settings)
        twin._function, twin._replies = self._function, self._replies
        twin._cursor, twin.requests = self._cursor, self.requests
        return twin

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        self.requests.append(Request(tuple(messages), tuple(tools), self._settings))
        if self._function is not None:
            value = self._function(messages, tools)
            answer = await value if inspect.isawaitable(value) else value
        else:
            position = self._cursor[0]
            if position >= len(self._replies):
                raise ProviderError(
                    f"ScriptedProvider ran out of replies after {len(self._replies)} calls"
                )
            scripted = self._replies[position]
            self._cursor[0] = position + 1
            if isinstance(scripted, Exception):
                raise scripted
            answer = scripted
        completion = Completion(content=answer) if isinstance(answer, str) else answer
        if self.usage is not None and completion.usage == Usage():
            completion = replace(completion, usage=self.usage)
        if completion.model is None:
            completion = replace(completion, model=self._model)
        return completion


_E = TypeVar("_E", bound=Event)


class EventCapture:
    """A hook that keeps every event: ``Agent(..., hooks=[capture])``."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[_E]) -> list[_E]:
        """The captured events of one class, in order."""
        return [e for e in self.events if isinstance(e, kind)]


Fault: TypeAlias = str
FAULTS: tuple[Fault, ...] = ("error", "rate_limit", "timeout", "malformed", "hang")
"""What :class:`FaultyProvider` can inject:

- ``error``: the endpoint failed (``ProviderError``, HTTP 500);
- ``rate_limit``: retries ran out on 429s (``ProviderError``, HTTP 429);
- ``timeout``: the request timed out (``ProviderError``);
- ``malformed``: a reply whose tool call carries arguments that are not JSON;
- ``hang``: the call never returns (until cancelled or timed out).
"""


class FaultyProvider:
    """Wraps a provider and injects faults at chosen calls or at random with a seed.

    Args:
        inner: The provider that answers when no fault is injected.
        at: Faults by call number (1-based, counted across the whole tree).
        rate: Probability of a fault on every other call.
        seed: Seed for the random faults, so a failing run can be replayed.
        kinds: The faults to draw from at random.
    """

    def __init__(
        self,
        inner: Provider,
        *,
        at: dict[int, Fault] | None = None,
        rate: float = 0.0,
        seed: int | None = None,
        kinds: Sequence[Fault] = FAULTS,
    ) -> None:
        unknown = [k for k in [*(at or {}).values(), *kinds] if k not in FAULTS]
        if unknown:
            raise ValueError(f"unknown fault {unknown[0]!r}; choose from {', '.join(FAULTS)}")
        self.inner = inner
        self.at = dict(at or {})
        self.rate = rate
        self.kinds = tuple(kinds)
        self._random = random.Random(seed)
        self.calls = 0
        self.injected: list[tuple[int, Fault]] = []
        """Every fault injected, as (call number, fault)."""

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def model(self) -> str:
        return self.inner.model

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        self.calls += 1
        number = self.calls
        fault = self.at.get(number)
        if fault is None and self.rate and self._random.random() < self.rate:
            fault = self._random.choice(self.kinds)
        if fault is None:
            return await self.inner.complete(messages, tools)
        self.injected.append((number, fault))
        if fault == "error":
            raise ProviderError("injected fault: HTTP 500 from the model endpoint", status_code=500)
        if fault == "rate_limit":
            raise ProviderError("injected fault: HTTP 429 after 3 attempts", status_code=429)
        if fault == "timeout":
            raise ProviderError("injected fault: request timed out after 60 s")
        if fault == "malformed":
            name = tools[0].name if tools else "missing_tool"
            return Completion(tool_calls=(ToolCall(f"bad_{number}", name, "{not json"),))
        await anyio.sleep_forever()
        raise AssertionError("unreachable")
