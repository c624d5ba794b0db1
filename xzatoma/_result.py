"""What a run returns: ``RunResult``, a node of the result tree."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Literal, get_args

from ._types import Message, Usage

__all__ = (
    "ANSWERED",
    "NO_COST",
    "AnswerStatus",
    "ErrorType",
    "RunResult",
    "RunStatus",
    "add_costs",
    "run_result",
)

RunStatus = Literal["complete", "incomplete", "failed", "cancelled"]
"""How a run ended: answered, ran out of turns, failed, or was cancelled."""

ErrorType = Literal[
    "quota_exceeded",
    "max_depth_reached",
    "invalid_input",
    "initialization_failed",
    "execution_failed",
    "timeout",
    "cancelled",
]
"""Why a run or a spawn did not complete; the bounded set used as a metric attribute."""

AnswerStatus = Literal["complete", "incomplete"]
"""The statuses of a run that returned an answer."""

ANSWERED: frozenset[RunStatus] = frozenset(get_args(AnswerStatus))
"""The ends that count as success: the run returned an answer (a metric's completion, a
batch task that succeeded); every other end is an error."""

NO_COST = Decimal(0)
"""The cost of no model call: a known zero, unlike ``None`` (a price that is not known)."""


def add_costs(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    """``a + b``, unknown (``None``) when either is: an unknown part makes the sum unknown."""
    if a is None or b is None:
        return None
    return a + b if b else a


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of one agent run, with the runs it delegated to as ``children``."""

    output: str
    """The final answer (for a subagent: what the parent received, possibly truncated)."""
    status: RunStatus
    """``complete``, ``incomplete``, ``failed`` or ``cancelled``."""
    turns: int = 0
    """Model calls this agent made."""
    usage: Usage = field(default_factory=Usage)
    """This agent's own model calls only."""
    children: tuple[RunResult, ...] = ()
    """The subagent runs this agent spawned, in the order their tool calls were given."""
    messages: tuple[Message, ...] = ()
    """The whole conversation of this agent."""
    error_type: ErrorType | None = None
    """Why the run did not complete, when it did not."""
    error: str | None = None
    """A readable account of what went wrong, when something did."""
    label: str = ""
    """The run's label (the agent's name at the root, the task label for a subagent)."""
    depth: int = 0
    """0 for the root, d+1 for a child of an agent at depth d."""
    truncated: bool = False
    """Whether ``output`` was cut to ``output_max_size``."""
    duration: float = 0.0
    """Seconds from start to end, by the runtime's clock."""
    cost: Decimal | None = NO_COST
    """US dollars of this agent's own model calls; ``None`` when a call's price is not known
    (see ``docs/cost.md``), never a guessed 0."""
    total_usage: Usage = field(init=False)
    """This agent's usage plus every descendant's, each model call counted once."""
    total_cost: Decimal | None = field(init=False)
    """This agent's cost plus every descendant's, each model call counted once; ``None`` when
    any of them is unknown."""

    def __post_init__(self) -> None:
        total, total_cost = self.usage, self.cost
        for child in self.children:
            total = total + child.total_usage
            total_cost = add_costs(total_cost, child.total_cost)
        object.__setattr__(self, "total_usage", total)
        object.__setattr__(self, "total_cost", total_cost)

    @property
    def succeeded(self) -> bool:
        """True when the run returned an answer: ``complete`` or ``incomplete``."""
        return self.status in ANSWERED

    @property
    def ok(self) -> bool:
        """True when the run answered (``complete``)."""
        return self.status == "complete"

    def to_dict(self, *, messages: bool = False) -> dict[str, object]:
        """A JSON-ready view of the tree (used by ``--json``); messages only when asked."""
        from ._views import run_dict

        return run_dict(self, messages=messages)


_new = object.__new__
(
    _set_output, _set_status, _set_turns, _set_usage, _set_children, _set_messages,
    _set_error_type, _set_error, _set_label, _set_depth, _set_truncated, _set_duration,
    _set_cost, _set_total_usage, _set_total_cost,
) = (getattr(RunResult, f.name).__set__ for f in fields(RunResult))  # fmt: skip


def run_result(
    output: str,
    status: RunStatus,
    turns: int,
    usage: Usage,
    children: tuple[RunResult, ...],
    messages: tuple[Message, ...],
    error_type: ErrorType | None,
    error: str | None,
    label: str,
    depth: int,
    truncated: bool,
    duration: float,
    cost: Decimal | None,
) -> RunResult:
    """``RunResult(...)`` with every field given, made as the constructor makes it.

    A frozen dataclass's ``__init__`` stores each field with ``object.__setattr__``, to get
    past its own frozen ``__setattr__``; storing through the slots' descriptors gives the same
    object for less than half the cost, and every execution makes one (``Run.result``).
    ``tests/test_run_path.py`` checks the two are equal.
    """
    result = _new(RunResult)
    _set_output(result, output)
    _set_status(result, status)
    _set_turns(result, turns)
    _set_usage(result, usage)
    _set_children(result, children)
    _set_messages(result, messages)
    _set_error_type(result, error_type)
    _set_error(result, error)
    _set_label(result, label)
    _set_depth(result, depth)
    _set_truncated(result, truncated)
    _set_duration(result, duration)
    _set_cost(result, cost)
    total, total_cost = usage, cost
    for child in children:
        total = total + child.total_usage
        child_cost = child.total_cost
        if total_cost is not None and child_cost:  # add_costs, inline: once per child
            total_cost = total_cost + child_cost
        elif child_cost is None:
            total_cost = None
    _set_total_usage(result, total)
    _set_total_cost(result, total_cost)
    return result
