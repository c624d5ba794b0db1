"""The events of a run as plain records, for a subscriber written as one function.

A function subscriber (``hooks=[fn]``) is called with one of these for each thing that
happens; an :class:`~xzatoma.Instrument` gets the live :class:`~xzatoma.Run` instead, and
no event objects are made for it. Every ``*Started`` is followed by exactly one matching
``*Ended``, whatever the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias, get_args

from ._result import ErrorType, RunResult, RunStatus
from ._types import Usage

__all__ = (
    "ALL_EVENTS",
    "RUN_EVENTS",
    "BatchEnded",
    "BatchStarted",
    "Event",
    "ModelCallEnded",
    "ModelCallStarted",
    "RunEnded",
    "RunStarted",
    "SubagentEnded",
    "SubagentStarted",
    "ToolCallEnded",
    "ToolCallStarted",
)


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


@dataclass(frozen=True, slots=True)
class ModelCallStarted:
    """A model call began inside run ``run_id``."""

    id: int
    run_id: int
    depth: int
    provider: str
    model: str


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
    error_type: ErrorType | None
    """``execution_failed`` (the provider failed), ``timeout``, ``quota_exceeded`` (the
    tree's time ran out) or ``cancelled``."""
    response_model: str | None


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    """A tool call began inside run ``run_id``."""

    id: int
    run_id: int
    depth: int
    tool: str
    call_id: str


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


@dataclass(frozen=True, slots=True)
class SubagentStarted:
    """A spawn was attempted (refused ones included); ``depth`` is the child's."""

    id: int
    parent_id: int | None
    label: str
    depth: int


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


@dataclass(frozen=True, slots=True)
class BatchStarted:
    """A parallel batch began; ``depth`` is its tasks' depth."""

    id: int
    parent_id: int | None
    depth: int
    size: int


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

ALL_EVENTS: Final[frozenset[type[Event]]] = frozenset(get_args(Event))
"""Every event type: what a subscriber without ``wanted_events`` is sent."""

RUN_EVENTS: Final[frozenset[type[Event]]] = frozenset(
    {RunStarted, RunEnded, ModelCallStarted, ModelCallEnded, ToolCallStarted, ToolCallEnded}
)
"""The events of one run (the rest are a spawn's or a batch's)."""
