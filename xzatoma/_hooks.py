"""The events the core emits, and the dispatcher that hands them to subscribers.

The runtime never asks "is telemetry on?": it emits plain events to :class:`Hooks`, and
subscribers (telemetry, progress display, a user's own) turn them into whatever they need.
Every ``*Started`` event is followed by exactly one matching ``*Ended`` event, whatever the
end (answer, failure, timeout, cancellation). A subscriber that raises is logged once and
dropped, never fatal (the habit of trio's instrumentation).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, TypeAlias, TypeVar, get_args

from ._result import ErrorType, RunResult, RunStatus
from ._types import Usage

__all__ = (
    "ALL_EVENTS",
    "BatchEnded",
    "BatchStarted",
    "Event",
    "Hook",
    "Hooks",
    "RUN_EVENTS",
    "ModelCallEnded",
    "ModelCallStarted",
    "RunEnded",
    "RunStarted",
    "SubagentEnded",
    "SubagentStarted",
    "ToolCallEnded",
    "ToolCallStarted",
)

logger = logging.getLogger("xzatoma.hooks")

_E = TypeVar("_E")


def _event(cls: type[_E]) -> type[_E]:
    """Give a frozen slotted dataclass an ``__init__`` that stores through its slots.

    The dataclass's own ``__init__`` stores each field with ``object.__setattr__`` (the way
    round its frozen ``__setattr__``), about 1.9 µs for nine fields; storing through the
    slot descriptors takes 0.7 µs. A subagent execution makes up to eight events, so this
    is a large part of what an attached subscriber costs. Everything else (fields, repr,
    eq, hash, ``FrozenInstanceError`` on assignment) stays the dataclass's.
    """
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    plain = all(
        f.init
        and not f.kw_only
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        for f in fields
    )
    if not plain or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: @_event takes required positional fields only")
    names = [field.name for field in fields]
    setters = {f"_set_{name}": getattr(cls, name).__set__ for name in names}
    body = "".join(f"    _set_{name}(self, {name})\n" for name in names)
    namespace: dict[str, Callable[..., None]] = {}
    exec(f"def __init__(self, {', '.join(names)}):\n{body}", setters, namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = cls.__init__.__annotations__
    type.__setattr__(cls, "__init__", init)
    return cls


new_id = itertools.count(1).__next__
"""Process-unique event ids; ``parent_id`` links an event to the scope it happened in."""


@_event
@dataclass(frozen=True, slots=True)
class RunStarted:
    """An agent run began. ``parent_id`` is the tool call that spawned it (None at the root)."""

    id: int
    parent_id: int | None
    name: str
    label: str
    depth: int
    provider: str
    model: str


@_event
@dataclass(frozen=True, slots=True)
class RunEnded:
    """An agent run ended; ``usage`` is its own model calls only."""

    id: int
    parent_id: int | None
    name: str
    label: str
    depth: int
    provider: str
    model: str
    status: RunStatus
    error_type: ErrorType | None
    turns: int
    usage: Usage
    duration: float


@_event
@dataclass(frozen=True, slots=True)
class ModelCallStarted:
    """A model call began inside run ``run_id``."""

    id: int
    run_id: int
    depth: int
    provider: str
    model: str


@_event
@dataclass(frozen=True, slots=True)
class ModelCallEnded:
    """A model call ended; ``error_type`` is set when it raised or was cancelled."""

    id: int
    run_id: int
    depth: int
    provider: str
    model: str
    usage: Usage
    duration: float
    error_type: str | None
    response_model: str | None


@_event
@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    """A tool call began inside run ``run_id``."""

    id: int
    run_id: int
    depth: int
    tool: str
    call_id: str


@_event
@dataclass(frozen=True, slots=True)
class ToolCallEnded:
    """A tool call ended; ``is_error`` when the model got an ``Error:`` message."""

    id: int
    run_id: int
    depth: int
    tool: str
    call_id: str
    is_error: bool
    duration: float
    cancelled: bool


@_event
@dataclass(frozen=True, slots=True)
class SubagentStarted:
    """A spawn was attempted (refused ones included); ``depth`` is the child's."""

    id: int
    parent_id: int | None
    label: str
    depth: int


@_event
@dataclass(frozen=True, slots=True)
class SubagentEnded:
    """A spawn ended; ``usage`` is the child's own calls, ``turns`` its model calls."""

    id: int
    parent_id: int | None
    label: str
    depth: int
    status: RunStatus
    error_type: ErrorType | None
    turns: int
    usage: Usage
    duration: float
    truncated: bool
    result: RunResult
    """The child's whole result (output included), as its parent's caller will see it."""


@_event
@dataclass(frozen=True, slots=True)
class BatchStarted:
    """A parallel batch began; ``depth`` is its tasks' depth."""

    id: int
    parent_id: int | None
    depth: int
    size: int


@_event
@dataclass(frozen=True, slots=True)
class BatchEnded:
    """A parallel batch ended; ``status`` is complete, partial or failed."""

    id: int
    parent_id: int | None
    depth: int
    size: int
    status: str
    successful: int
    failed: int
    cancelled: int
    usage: Usage
    duration: float


Event: TypeAlias = (
    RunStarted
    | RunEnded
    | ModelCallStarted
    | ModelCallEnded
    | ToolCallStarted
    | ToolCallEnded
    | SubagentStarted
    | SubagentEnded
    | BatchStarted
    | BatchEnded
)

Hook: TypeAlias = Callable[[Event], None]
"""A subscriber: called synchronously with each event; must be quick and must not block."""


ALL_EVENTS: Final[frozenset[type[Event]]] = frozenset(get_args(Event))
"""Every event type: what a subscriber without ``wanted_events`` is sent."""

RUN_EVENTS: Final[frozenset[type[Event]]] = frozenset(
    {RunStarted, RunEnded, ModelCallStarted, ModelCallEnded, ToolCallStarted, ToolCallEnded}
)
"""The events of one run, made only when some subscriber wants them for that run."""

_PAIRS: Final[tuple[tuple[type[Event], type[Event]], ...]] = (
    (RunStarted, RunEnded),
    (ModelCallStarted, ModelCallEnded),
    (ToolCallStarted, ToolCallEnded),
    (SubagentStarted, SubagentEnded),
    (BatchStarted, BatchEnded),
)
_END_OF: Final[dict[type[Event], type[Event]]] = dict(_PAIRS)


class Hooks:
    """Dispatches events to subscribers; a subscriber that raises is logged and dropped.

    A subscriber may have a ``wanted_events()`` method returning the event types it wants.
    The core asks it at every run start and makes that run's own events (``RunStarted``,
    ``RunEnded``, ``ModelCall*``, ``ToolCall*``) only if some subscriber wants them, the
    way trio calls only the instrument hooks that exist. A subscriber can still be handed
    events it did not ask for (another one wanted them); one without the method gets all.
    """

    __slots__ = ("_hooks", "_wanted")

    def __init__(self, hooks: Iterable[Hook] = ()) -> None:
        self._hooks: list[Hook] = list(hooks)
        self._wanted: tuple[list[Iterable[type[Event]]], frozenset[type[Event]]] | None = None

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def add(self, hook: Hook) -> None:
        """Subscribe ``hook`` to every later event."""
        self._hooks = [*self._hooks, hook]

    def wanted(self) -> frozenset[type[Event]]:
        """The event types some subscriber wants now (the core asks once per run).

        A wanted start brings its end, so every start any subscriber is handed is followed
        by its end; an end can come alone (to one that asked for ends only, or subscribed
        mid-run). A ``wanted_events`` that raises or answers something other than event
        types is logged and its subscriber dropped, as in :meth:`emit`.
        """
        hooks: list[Hook] = []
        answers: list[Iterable[type[Event]]] = []
        for hook in self._hooks:
            ask = getattr(hook, "wanted_events", None)
            if ask is None:
                return ALL_EVENTS
            try:
                answers.append(ask())
            except Exception:
                self._drop_for_wanted_events(hook)
            else:
                hooks.append(hook)
        # Subscribers answer with the same few frozensets run after run: a combination is
        # checked and closed once.
        cached = self._wanted
        if cached is not None and _same(cached[0], answers):
            return cached[1]
        wanted: set[type[Event]] = set()
        dropped = False
        for hook, answer in zip(hooks, answers, strict=True):
            try:
                kinds = frozenset(answer)
                if not kinds <= ALL_EVENTS:
                    raise TypeError(f"not event types: {sorted(map(repr, kinds - ALL_EVENTS))}")
            except Exception:
                self._drop_for_wanted_events(hook)
                dropped = True
                continue
            wanted |= kinds
        closed = frozenset(wanted | {_END_OF[kind] for kind in wanted if kind in _END_OF})
        # Kept only for answers that cannot change and all passed the check above.
        if not dropped and all(type(answer) is frozenset for answer in answers):
            self._wanted = (answers, closed)
        return closed

    def _drop_for_wanted_events(self, hook: Hook) -> None:
        """Log the failure (inside the ``except`` that caught it) and drop ``hook``."""
        logger.exception("xzatoma hook %r: wanted_events() failed; disabled", hook)
        self._hooks = [h for h in self._hooks if h is not hook]

    def emit(self, event: Event) -> None:
        """Hand ``event`` to every subscriber, in subscription order."""
        # The list is replaced, never changed in place, so iterating it needs no copy.
        for hook in self._hooks:
            try:
                hook(event)
            except Exception:
                logger.exception(
                    "xzatoma hook %r raised on %s and has been disabled",
                    hook,
                    type(event).__name__,
                )
                self._hooks = [h for h in self._hooks if h is not hook]


def _same(kept: list[Iterable[type[Event]]], answers: list[Iterable[type[Event]]]) -> bool:
    """Whether ``answers`` equal the answers kept (frozensets); anything odd is a miss."""
    try:
        return bool(kept == answers)
    except Exception:
        return False
