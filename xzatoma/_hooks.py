"""Subscribers to what a run does: the :class:`Instrument` base, and :class:`Hooks`.

The runtime never asks "is telemetry on?": it calls :class:`Hooks`, and subscribers
(telemetry, progress display, a user's own) turn what they are told into what they need.
As with trio's instruments, a subscriber is an object with some of the methods of
:class:`Instrument`, called with the live :class:`~xzatoma.Run` (and the model call, tool
call or batch); which of them it has is worked out once, when it is added, so a method
nobody implements costs an empty loop. A plain function is a subscriber too: it is called
with an event record (:mod:`xzatoma.events`). Every ``*_started`` is followed by exactly one
matching ``*_ended``, whatever the end. A subscriber that raises is logged once and dropped,
never fatal (trio's ``_instrumentation.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, TypeAlias

from ._events import (
    ALL_EVENTS,
    BatchEnded,
    BatchStarted,
    Event,
    ModelCallEnded,
    ModelCallStarted,
    RunEnded,
    RunStarted,
    SubagentEnded,
    SubagentStarted,
    ToolCallEnded,
    ToolCallStarted,
)

if TYPE_CHECKING:
    from ._run import Batch, ModelCall, Run
    from ._tools import ToolContext, ToolResult

__all__ = ("HOOK_METHODS", "Hook", "Hooks", "Instrument")

logger = logging.getLogger("xzatoma.hooks")


class Instrument:
    """Base class for a subscriber: override the methods you need; the rest cost nothing.

    Every method is called synchronously, in the task doing the work, so it must be quick
    and must not block. ``run`` is live: read it, do not change it. Ends are called in the
    reverse order of subscription (like nested ``with`` blocks). A subscriber added while a
    run is in flight can be told of ends whose starts it never saw.
    """

    __slots__ = ()

    def run_started(self, run: Run) -> None:
        """An agent run began (the root, or a subagent that passed its checks)."""

    def run_ended(self, run: Run) -> None:
        """An agent run ended; ``run.status``, ``turns``, ``usage`` and ``duration`` are final."""

    def model_call_started(self, run: Run, call: ModelCall) -> None:
        """``run`` is about to call its model."""

    def model_call_ended(self, run: Run, call: ModelCall) -> None:
        """The model call ended: ``call.completion`` on success, ``call.error_type`` if not."""

    def tool_call_started(self, run: Run, ctx: ToolContext) -> None:
        """``run`` is about to run the tool call ``ctx.call``."""

    def tool_call_ended(self, run: Run, ctx: ToolContext, result: ToolResult | None) -> None:
        """The tool call ended; ``result`` is ``None`` when it was cancelled."""

    def subagent_started(self, run: Run) -> None:
        """A spawn was attempted (refused ones included); ``run`` is the child."""

    def subagent_ended(self, run: Run) -> None:
        """A spawn ended; ``run.result()`` is what its parent's caller sees."""

    def batch_started(self, run: Run, batch: Batch) -> None:
        """``run`` began a parallel batch (its tasks run at ``batch.depth``)."""

    def batch_ended(self, run: Run, batch: Batch) -> None:
        """The batch ended; ``batch.result`` holds every task's result."""


HOOK_METHODS: Final = tuple(name for name in vars(Instrument) if not name.startswith("_"))
"""The names of the subscriber methods, in the order above."""

Hook: TypeAlias = Callable[[Event], None]
"""A function subscriber: called with each event record."""


class Hooks:
    """The subscribers of one tree, and one method per thing that happens to call them."""

    __slots__ = (
        "_batch_ended",
        "_batch_started",
        "_model_call_ended",
        "_model_call_started",
        "_owners",
        "_run_ended",
        "_run_started",
        "_subagent_ended",
        "_subagent_started",
        "_subscribers",
        "_tool_call_ended",
        "_tool_call_started",
    )
    _owners: dict[int, object]
    _run_started: tuple[Callable[[Run], None], ...]
    _run_ended: tuple[Callable[[Run], None], ...]
    _model_call_started: tuple[Callable[[Run, ModelCall], None], ...]
    _model_call_ended: tuple[Callable[[Run, ModelCall], None], ...]
    _tool_call_started: tuple[Callable[[Run, ToolContext], None], ...]
    _tool_call_ended: tuple[Callable[[Run, ToolContext, ToolResult | None], None], ...]
    _subagent_started: tuple[Callable[[Run], None], ...]
    _subagent_ended: tuple[Callable[[Run], None], ...]
    _batch_started: tuple[Callable[[Run, Batch], None], ...]
    _batch_ended: tuple[Callable[[Run, Batch], None], ...]

    def __init__(self, hooks: Iterable[Instrument | Hook | object] = ()) -> None:
        self._subscribers: list[object] = []
        self._rebuild()
        for hook in hooks:
            self.add(hook)

    def __bool__(self) -> bool:
        return bool(self._subscribers)

    def add(self, hook: Instrument | Hook | object) -> None:
        """Subscribe ``hook``: an object with some :class:`Instrument` methods, or a function
        of one event record.

        Raises:
            TypeError: ``hook`` is neither.
        """
        if isinstance(hook, type):
            raise TypeError(f"a hook is an instance, not a class: {hook!r}; add {hook.__name__}()")
        if isinstance(hook, Instrument) or _methods_of(hook):
            subscriber: object = hook
        elif callable(hook):
            subscriber = _EventHook(hook)
            if not _methods_of(subscriber):
                return  # its wanted_events() failed or wants nothing: dropped
        else:
            raise TypeError(
                f"a hook is an object with Instrument methods or a function of one event, "
                f"got {hook!r}"
            )
        self._subscribers = [*self._subscribers, subscriber]
        self._rebuild()

    def _rebuild(self) -> None:
        """One tuple of bound methods per hook method, worked out now and not per call.

        Ends are called in the reverse order of starts, like nested ``with`` blocks: a
        subscriber that makes something current at a start (a span, baggage) and restores
        it at the end then restores in the order the contexts were entered.
        """
        tables: dict[str, list[Callable[..., None]]] = {name: [] for name in HOOK_METHODS}
        owners: dict[int, object] = {}
        for subscriber in self._subscribers:
            for name, method in _methods_of(subscriber).items():
                tables[name].append(method)
                owners[id(method)] = subscriber
        for name, methods in tables.items():
            setattr(
                self, f"_{name}", tuple(reversed(methods) if name.endswith("_ended") else methods)
            )
        self._owners = owners

    def _failed(self, method: Callable[..., None], name: str) -> None:
        """Log the failure (inside the ``except`` that caught it) and drop its subscriber.

        The tables are filtered, not rebuilt, so the method objects a dispatch still loops
        over stay the ones ``_owners`` knows: a second subscriber raising in the same
        dispatch is found and dropped too.
        """
        subscriber = self._owners.get(id(method), method)
        logger.exception("xzatoma hook %r raised in %s and has been disabled", subscriber, name)
        self._subscribers = [s for s in self._subscribers if s is not subscriber]
        owners = self._owners
        for table in HOOK_METHODS:
            methods = getattr(self, f"_{table}")
            setattr(self, f"_{table}", tuple(m for m in methods if owners[id(m)] is not subscriber))

    def run_started(self, run: Run) -> None:
        for method in self._run_started:
            try:
                method(run)
            except Exception:
                self._failed(method, "run_started")

    def run_ended(self, run: Run) -> None:
        for method in self._run_ended:
            try:
                method(run)
            except Exception:
                self._failed(method, "run_ended")

    def model_call_started(self, run: Run, call: ModelCall) -> None:
        for method in self._model_call_started:
            try:
                method(run, call)
            except Exception:
                self._failed(method, "model_call_started")

    def model_call_ended(self, run: Run, call: ModelCall) -> None:
        for method in self._model_call_ended:
            try:
                method(run, call)
            except Exception:
                self._failed(method, "model_call_ended")

    def tool_call_started(self, run: Run, ctx: ToolContext) -> None:
        for method in self._tool_call_started:
            try:
                method(run, ctx)
            except Exception:
                self._failed(method, "tool_call_started")

    def tool_call_ended(self, run: Run, ctx: ToolContext, result: ToolResult | None) -> None:
        for method in self._tool_call_ended:
            try:
                method(run, ctx, result)
            except Exception:
                self._failed(method, "tool_call_ended")

    def subagent_started(self, run: Run) -> None:
        for method in self._subagent_started:
            try:
                method(run)
            except Exception:
                self._failed(method, "subagent_started")

    def subagent_ended(self, run: Run) -> None:
        for method in self._subagent_ended:
            try:
                method(run)
            except Exception:
                self._failed(method, "subagent_ended")

    def batch_started(self, run: Run, batch: Batch) -> None:
        for method in self._batch_started:
            try:
                method(run, batch)
            except Exception:
                self._failed(method, "batch_started")

    def batch_ended(self, run: Run, batch: Batch) -> None:
        for method in self._batch_ended:
            try:
                method(run, batch)
            except Exception:
                self._failed(method, "batch_ended")


def _methods_of(subscriber: object) -> dict[str, Callable[..., None]]:
    """The hook methods ``subscriber`` implements (the base class's no-ops are not)."""
    if isinstance(subscriber, _EventHook):
        return subscriber.methods
    found: dict[str, Callable[..., None]] = {}
    kind = type(subscriber)
    for name in HOOK_METHODS:
        if getattr(kind, name, None) is getattr(Instrument, name):
            continue
        method = getattr(subscriber, name, None)
        if callable(method):
            found[name] = method
    return found


class _EventHook:
    """A function subscriber, handed event records built from the live objects.

    It may have a ``wanted_events()`` method returning the event types it wants; asked once,
    here. A wanted start brings its end, so every start it is handed is followed by its end;
    an end may be wanted alone.
    """

    __slots__ = ("hook", "methods")

    def __init__(self, hook: Hook) -> None:
        self.hook = hook
        self.methods: dict[str, Callable[..., None]] = {}
        wanted = self._wanted(hook)
        for name, (start, end) in _EVENT_PAIRS.items():
            if start in wanted:
                self.methods[f"{name}_started"] = getattr(self, f"_{name}_started")
            if start in wanted or end in wanted:
                self.methods[f"{name}_ended"] = getattr(self, f"_{name}_ended")

    @staticmethod
    def _wanted(hook: Hook) -> frozenset[type[Event]]:
        ask = getattr(hook, "wanted_events", None)
        if ask is None:
            return ALL_EVENTS
        try:
            kinds = frozenset(ask())
            if not kinds <= ALL_EVENTS:
                raise TypeError(f"not event types: {sorted(map(repr, kinds - ALL_EVENTS))}")
        except Exception:
            logger.exception("xzatoma hook %r: wanted_events() failed; disabled", hook)
            return frozenset()
        return kinds

    def __repr__(self) -> str:
        return repr(self.hook)

    def _run_started(self, run: Run) -> None:
        provider = run.provider
        self.hook(
            RunStarted(
                run.id, run.call_id, run.name, run.label, run.depth, provider.name, provider.model
            )
        )

    def _run_ended(self, run: Run) -> None:
        provider = run.provider
        status = run.status or "cancelled"
        self.hook(
            RunEnded(
                run.id, run.call_id, run.name, run.label, run.depth, provider.name,
                provider.model, status, run.error_type, run.turns, run.usage, run.duration,
            )
        )  # fmt: skip

    def _model_call_started(self, run: Run, call: ModelCall) -> None:
        self.hook(ModelCallStarted(call.id, run.id, run.depth, call.provider, call.model))

    def _model_call_ended(self, run: Run, call: ModelCall) -> None:
        completion = call.completion
        self.hook(
            ModelCallEnded(
                call.id, run.id, run.depth, call.provider, call.model, call.usage,
                call.duration, call.error_type, completion.model if completion else None,
            )
        )  # fmt: skip

    def _tool_call_started(self, run: Run, ctx: ToolContext) -> None:
        self.hook(ToolCallStarted(ctx.id, run.id, run.depth, ctx.call.name, ctx.call.id))

    def _tool_call_ended(self, run: Run, ctx: ToolContext, result: ToolResult | None) -> None:
        self.hook(
            ToolCallEnded(
                ctx.id, run.id, run.depth, ctx.call.name, ctx.call.id,
                result is None or result.is_error, run.now() - ctx.started, result is None,
            )
        )  # fmt: skip

    def _subagent_started(self, run: Run) -> None:
        self.hook(SubagentStarted(run.id, run.call_id, run.label, run.depth))

    def _subagent_ended(self, run: Run) -> None:
        result = run.result()
        self.hook(
            SubagentEnded(
                run.id, run.call_id, run.label, run.depth, result.status, result.error_type,
                run.turns, run.usage, result.duration, result.truncated, result,
            )
        )  # fmt: skip

    def _batch_started(self, run: Run, batch: Batch) -> None:
        self.hook(BatchStarted(batch.id, batch.call_id, batch.depth, batch.size))

    def _batch_ended(self, run: Run, batch: Batch) -> None:
        done = batch.result
        if done is None:  # pragma: no cover - the spawner sets it before the end
            return
        self.hook(
            BatchEnded(
                batch.id, batch.call_id, batch.depth, batch.size, done.status, done.successful,
                done.failed, done.cancelled, done.total_usage, done.duration,
            )
        )  # fmt: skip


_EVENT_PAIRS: Final[dict[str, tuple[type[Event], type[Event]]]] = {
    "run": (RunStarted, RunEnded),
    "model_call": (ModelCallStarted, ModelCallEnded),
    "tool_call": (ToolCallStarted, ToolCallEnded),
    "subagent": (SubagentStarted, SubagentEnded),
    "batch": (BatchStarted, BatchEnded),
}
