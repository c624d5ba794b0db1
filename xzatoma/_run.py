"""``Run``: one agent run or one spawn, from its start to its result.

The object the path of a run hands along. ``Agent.run`` makes a root ``Run``; a spawn makes a
child with :meth:`Run.child`; the agent loop fills in its messages, usage and turns; whoever
ends it says how (:meth:`Run.finish`); a child attaches its result to its parent when it
ends, so a finished child is never lost, whatever happens to the parent afterwards. Hooks
receive the live object. :class:`ModelCall` and :class:`Batch` are the live records of one
model call and one parallel batch.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from ._limits import truncate_utf8
from ._pricing import BUNDLED
from ._result import NO_COST, ErrorType, RunResult, RunStatus, run_result
from ._types import NO_USAGE, Completion, Message, Usage
from .errors import QuotaExceeded

if TYPE_CHECKING:
    from decimal import Decimal

    from ._agent import Agent
    from ._hooks import Hooks
    from ._limits import Quota
    from ._pricing import Pricing
    from ._subagent_models import BatchResult
    from ._tools import Tool
    from .providers._base import Provider

__all__ = ("Batch", "ModelCall", "Run", "loop_clock", "new_id")

new_id = itertools.count(1).__next__
"""Process-unique ids for runs, tool calls, model calls and batches."""


def loop_clock() -> Callable[[], float]:
    """anyio's clock (:func:`anyio.current_time`), found once for a tree.

    On asyncio it is the event loop's ``time``, read directly: the same value anyio gives and
    its cancel scopes' deadlines use, without looking up the backend at every reading. On
    trio (and its ``MockClock`` in tests) it is anyio's own function.
    """
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:
        return anyio.current_time


class Run:
    """One agent run (the root, or a subagent) or one spawn that was refused before it ran.

    The tree's shared parts (``hooks``, ``quota``, the clock ``now``, ``session_id``) are
    handed from parent to child. Everything else is this run's own. ``status`` is ``None``
    while it runs.
    Subscribers and tools read a run; the runtime (the agent loop and the spawner) is what
    calls :meth:`finish`, :meth:`interrupted`, :meth:`deadline_passed` and :meth:`attach`.
    """

    __slots__ = (
        "_children",
        "_result",
        "call_id",
        "child_agents",
        "cost",
        "deadline",
        "deadline_error",
        "depth",
        "ended",
        "error",
        "error_type",
        "hooks",
        "id",
        "index",
        "label",
        "messages",
        "name",
        "now",
        "output",
        "output_limit",
        "parent",
        "pricing",
        "provider",
        "quota",
        "session_id",
        "started",
        "status",
        "tool_calls",
        "tools",
        "truncated",
        "turns",
        "usage",
    )

    def __init__(
        self,
        *,
        label: str,
        hooks: Hooks,
        quota: Quota | None,
        provider: Provider,
        tools: Sequence[Tool[Any]] = (),
        name: str = "agent",
        deadline: float = math.inf,
        parent: Run | None = None,
        call_id: int | None = None,
        index: int = 0,
        now: Callable[[], float] | None = None,
        pricing: Pricing | None = None,
        session_id: str | None = None,
    ) -> None:
        self.id = new_id()
        """Process-unique id; a child names its parent's tool call in ``call_id``."""
        self.parent = parent
        """The run that spawned this one (``None`` at the root)."""
        self.depth: int = 0 if parent is None else parent.depth + 1
        """0 at the root, d+1 for a child of a run at depth d."""
        self.label = label
        """The task label (the agent's name at the root)."""
        self.name = name
        """The agent's name, shown in spans (``agent``, ``subagent``)."""
        self.call_id = call_id
        """Id of the tool call that spawned this run (``None`` at the root or from Python)."""
        self.index = index
        """Position among the children of one tool call (a batch's task index)."""
        self.hooks = hooks
        """The tree's subscribers."""
        self.quota = quota
        """The tree's quota (``None``: unlimited)."""
        if pricing is None:
            pricing = parent.pricing if parent is not None else BUNDLED
        self.pricing: Pricing = pricing
        """Where the tree's prices come from (:class:`~xzatoma.Pricing`)."""
        if now is None:
            now = parent.now if parent is not None else loop_clock()
        self.now: Callable[[], float] = now
        """The tree's clock: anyio's, as :func:`loop_clock` found it."""
        if session_id is None and parent is not None:
            session_id = parent.session_id
        self.session_id: str | None = session_id
        """The tree's session id (its :class:`~xzatoma.Runtime`'s), on every span of the
        tree; ``None`` for an agent run outside a runtime that was given none."""
        self.provider = provider
        """The model this run calls."""
        self.tools: tuple[Tool[Any], ...] = tuple(tools)
        """The tools this run offers its model (its children choose from these)."""
        self.deadline = deadline
        """Absolute deadline on anyio's clock (``math.inf`` when none)."""
        self.deadline_error: ErrorType = "timeout"
        """What passing the deadline means: ``timeout``, or ``quota_exceeded`` (quota time)."""
        self.messages: list[Message] = []
        """The conversation so far."""
        self.usage = NO_USAGE
        """This run's own model calls."""
        self.cost: Decimal | None = NO_COST
        """US dollars of this run's own model calls (``None`` once one had no known price)."""
        self.turns = 0
        """Model calls made."""
        self.tool_calls = 0
        """Tool calls the model asked for (each one run, or answered with an error)."""
        self.output = ""
        """The answer so far (the final one once ended, cut to ``output_limit``)."""
        self.output_limit: int | None = None
        """Bytes of UTF-8 the output is cut to when the run ends (a subagent's
        ``output_max_size``; ``None``: uncut)."""
        self.status: RunStatus | None = None
        """How it ended (``None`` while it runs)."""
        self.error_type: ErrorType | None = None
        """Why it did not complete, when it did not."""
        self.error: str | None = None
        """A readable account of what went wrong."""
        self.truncated = False
        """Whether the output was cut to ``output_limit``."""
        self.started = self.now()
        """When it started, on the tree's clock."""
        self.ended: float | None = None
        """When it ended (``None`` while it runs)."""
        self.child_agents: dict[tuple[object, ...], Agent] | None = None
        """The agents (settings only) this run's children share, made by the spawner."""
        self._children: list[tuple[tuple[int, int], RunResult]] = []
        self._result: RunResult | None = None

    def __repr__(self) -> str:
        return (
            f"Run(id={self.id}, label={self.label!r}, depth={self.depth}, "
            f"status={self.status!r}, turns={self.turns})"
        )

    def child(self, label: str, index: int = 0, *, call_id: int | None = None) -> Run:
        """A run one level deeper, spawned by tool call ``call_id`` (its ``index``-th child).

        It shares this run's hooks, quota, clock and session, inherits its deadline (and what
        passing it means), and starts with its provider and tools (the spawner narrows them before
        the child runs).
        """
        child = Run(
            label=label,
            hooks=self.hooks,
            quota=self.quota,
            provider=self.provider,
            tools=self.tools,
            name="subagent",
            deadline=self.deadline,
            parent=self,
            call_id=call_id,
            index=index,
            now=self.now,
            pricing=self.pricing,
        )
        child.deadline_error = self.deadline_error
        return child

    # -- how it ended ----------------------------------------------------------------------
    def finish(self, status: RunStatus, error_type: ErrorType | None, error: str | None) -> None:
        """Record how the run ended (the first word stands; later calls change nothing).

        The output is cut to ``output_limit`` here, so whoever reads the run from now on (a
        subscriber's ``run_ended``, the parent) sees what the parent receives.
        """
        if self.status is None:
            self.status, self.error_type, self.error = status, error_type, error
            self.ended = self.now()
            if self.output_limit is not None:
                self.output, self.truncated = truncate_utf8(self.output, self.output_limit)

    def interrupted(self, exc: BaseException | None) -> None:
        """End a run that was stopped from outside, or broke, before it could say how.

        Past its deadline, the run was cut by a deadline it inherited (an outer scope fires
        at the same instant as its own): that deadline's error. Otherwise a cancellation is
        ``cancelled`` and anything else ``execution_failed``.
        """
        if self.deadline != math.inf and self.now() >= self.deadline:
            self.deadline_passed()
        elif exc is None or isinstance(exc, anyio.get_cancelled_exc_class()):
            self.finish("cancelled", "cancelled", "cancelled before it finished")
        else:
            self.finish("failed", "execution_failed", f"{type(exc).__name__}: {exc}")

    def adopt(self, result: RunResult) -> None:
        """End this run as ``result``, which ran elsewhere (a Ray worker): its hooks and its
        parent see what the remote run was. Like :meth:`finish`, the first end stands."""
        if self.status is None:
            self.status, self.error_type, self.error = (
                result.status,
                result.error_type,
                result.error,
            )
            self.output, self.truncated, self.turns = result.output, result.truncated, result.turns
            self.usage, self.cost = result.usage, result.cost
            self.ended = self.now()
            self._result = result

    def deadline_passed(self) -> None:
        """End the run for its deadline, in the quota's own words when its time ran out."""
        limit = self.quota.limits.max_total_time if self.quota is not None else None
        if self.deadline_error == "quota_exceeded" and limit is not None:
            # The deadline was the quota's time: its own words, whatever a clock read says.
            why = QuotaExceeded(limit="time", used=limit, maximum=limit)
            self.finish("failed", "quota_exceeded", str(why))
            return
        self.finish("failed", self.deadline_error, f"timeout reached after {self.duration:.3f}s")

    @property
    def duration(self) -> float:
        """Seconds from start to end (to now, while it runs)."""
        return (self.ended if self.ended is not None else self.now()) - self.started

    def remaining_time(self) -> float:
        """Seconds until the deadline (``math.inf`` when none, never negative)."""
        if self.deadline == math.inf:
            return math.inf
        return max(0.0, self.deadline - self.now())

    # -- the result tree -------------------------------------------------------------------
    @property
    def children(self) -> tuple[RunResult, ...]:
        """The results of the children that ended, in the order they were asked for."""
        if not self._children:
            return ()
        self._children.sort(key=_order)
        return tuple(child for _, child in self._children)

    def attach(self) -> None:
        """Give this run's result to its parent (a child does it when it ends)."""
        if self.parent is not None:
            key = (self.call_id or 0, self.index)
            self.parent._children.append((key, self.result()))

    def result(self) -> RunResult:
        """This run as a frozen :class:`RunResult`, children in the order they were asked for.

        While the run goes on (a caller that cancelled it reads what it had), the snapshot
        says ``cancelled``; once it has ended the result is made once and kept.
        """
        if self._result is not None:
            return self._result
        status = self.status if self.status is not None else "cancelled"
        result = run_result(
            self.output,
            status,
            self.turns,
            self.usage,
            self.children,
            tuple(self.messages),
            self.error_type if self.status is not None else "cancelled",
            self.error,
            self.label,
            self.depth,
            self.truncated,
            self.duration,
            self.cost,
        )
        if self.status is not None:
            self._result = result
        return result


def _order(entry: tuple[tuple[int, int], RunResult]) -> tuple[int, int]:
    return entry[0]


class ModelCall:
    """One model call of a run, as hooks see it: live while it runs, complete at its end."""

    __slots__ = (
        "completion",
        "cost",
        "ended",
        "error_type",
        "id",
        "model",
        "provider",
        "started",
        "status_code",
    )

    def __init__(self, run: Run) -> None:
        self.id = new_id()
        """Process-unique id."""
        self.provider = run.provider.name
        """The provider's name."""
        self.model = run.provider.model
        """The model asked for."""
        self.started = run.now()
        """When the call began, on the tree's clock."""
        self.ended: float | None = None
        """When it ended (``None`` while it runs)."""
        self.completion: Completion | None = None
        """The reply, once it came (usage checked)."""
        self.error_type: ErrorType | None = None
        """``execution_failed`` (the provider failed), or how it was interrupted:
        ``cancelled``, ``timeout``, ``quota_exceeded`` (the tree's time ran out)."""
        self.cost: Decimal | None = None
        """US dollars of the reply's usage, once it came; ``None`` while it runs, for a call
        that failed, and when the model's price is not known."""
        self.status_code: int | None = None
        """The HTTP status of a call the endpoint refused (:class:`~xzatoma.ProviderError`'s)."""

    @property
    def error_code(self) -> str | None:
        """``error.type`` of a call that did not complete: the HTTP status the endpoint
        refused it with (``429``, ``503``), else :attr:`error_type`; ``None`` if it did."""
        status = self.status_code
        if status is not None and status >= 400:  # not a 200 whose body was unusable
            return str(status)
        return self.error_type

    @property
    def duration(self) -> float:
        """Seconds the call took (0 until it ended)."""
        return 0.0 if self.ended is None else self.ended - self.started

    @property
    def usage(self) -> Usage:
        """The reply's usage (none for a call that failed)."""
        return self.completion.usage if self.completion is not None else NO_USAGE


class Batch:
    """One parallel batch, as hooks see it; ``result`` is set when it ends."""

    __slots__ = ("call_id", "depth", "id", "result", "size", "started")

    def __init__(self, parent: Run, call_id: int | None, size: int) -> None:
        self.id = new_id()
        self.call_id = call_id
        """The ``parallel_subagent`` tool call that asked for it (``None`` from Python)."""
        self.depth = parent.depth + 1
        """Its tasks' depth."""
        self.size = size
        self.started = parent.now()
        self.result: BatchResult | None = None
