"""``Spawner``: one subagent execution from its start to its end, and parallel batches of them.

One path for every spawn (:meth:`Spawner.spawn`): the start hook, then quota, depth,
arguments, the child's tools, the atomic quota reservation and the run. Every refusal is one
exception (:class:`Refused`) caught in one place (:class:`_Execution`), which also ends a
child that was cancelled or broke (its output cut to ``output_max_size`` as it finishes),
attaches it to its parent and calls the end hook, whatever happened.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel

from ._agent import Agent
from ._child_provider import provider_for_children
from ._limits import Quota, QuotaLimits, as_tracker, check_depth
from ._result import ErrorType, RunResult, RunStatus
from ._run import Batch, Run
from ._subagent_models import (
    LABEL_MAX_LENGTH,
    BatchResult,
    ModelSentBatch,
    ModelSentTask,
    ParallelSubagentArgs,
    SubagentConfig,
    SubagentTask,
)
from ._text import replace_lone_surrogates
from ._tools import Tool, parse_arguments
from .errors import DepthLimitExceeded, QuotaExceeded, QuotaUnavailable
from .providers._base import Provider

__all__ = ("Refused", "Spawner")


_MAX_AGENTS = 64
"""Child agents one run keeps for its children (past it, each child gets its own)."""


class Refused(Exception):
    """A spawn that must not run (or a batch task that never started): why, in one place."""

    def __init__(self, error_type: ErrorType, message: str, status: RunStatus = "failed") -> None:
        super().__init__(message)
        self.error_type: ErrorType = error_type
        self.status: RunStatus = status


class Spawner:
    """Runs the subagent executions of the trees it serves (one spawner per ``Runtime``,
    shared by both subagent tools).

    Args:
        config: How subagents are spawned.
        quota: The tracker spawns reserve from when the tree has none of its own (the
            ``quota`` of the root ``Agent`` or ``Runtime`` is the tree's; ``None``: unlimited).
        provider: The provider the root runs with, when known: the children's provider
            (``config.provider`` / ``config.model``) is then resolved now, so a mistake in
            it is a :class:`ConfigError` before any run.
    """

    def __init__(
        self,
        config: SubagentConfig | None = None,
        quota: Quota | QuotaLimits | None = None,
        *,
        provider: Provider | None = None,
    ) -> None:
        self.config = config if config is not None else SubagentConfig()
        self.quota = as_tracker(quota)
        self._resolved: tuple[Provider, Provider] | None = None
        if provider is not None:
            self.child_provider(provider)

    def child_provider(self, parent: Provider) -> Provider:
        """The provider a child of a run on ``parent`` uses (worked out once per parent)."""
        resolved = self._resolved
        if resolved is not None and (parent is resolved[0] or parent is resolved[1]):
            return resolved[1]
        provider = provider_for_children(parent, self.config)
        self._resolved = (parent, provider)
        return provider

    # -- one execution -----------------------------------------------------------------------
    async def spawn(
        self,
        parent: Run,
        arguments: str | SubagentTask,
        *,
        call_id: int | None = None,
        index: int = 0,
    ) -> Run:
        """Run one child of ``parent`` for ``arguments`` (the model's JSON, or a parsed task).

        Returns the ended child (``child.result()`` is what the parent's caller sees); never
        raises but for a cancellation from outside, after the child has been ended as
        ``cancelled`` (or ``timeout``) and attached to its parent.
        """
        task: SubagentTask | Refused
        if isinstance(arguments, SubagentTask):
            task, label = arguments, arguments.label
        else:  # parsed first for the label the start hook is told; refused in its turn
            try:
                parsed: SubagentTask = _parse(SubagentTask, arguments)
                task, label = parsed, parsed.label
            except Refused as invalid:
                task, label = invalid, _label_of(arguments)
        child = self._child(parent, label, index, call_id)
        await self._execute(child, task)
        return child

    async def _execute(self, child: Run, task: SubagentTask | Refused) -> None:
        """Run ``child`` from its start hook to its end hook, whatever way it ends."""
        with _Execution(child):
            await self._run(child, task)

    def child_of(self, parent: Run, label: str, index: int) -> Run:
        """A batch task's child of ``parent`` (from Python: no tool call), not yet started."""
        return self._child(parent, label, index, None)

    async def run_announced_elsewhere(self, child: Run, task: SubagentTask) -> None:
        """Run ``child`` (from :meth:`child_of`) for a batch task whose start and end hooks
        another process calls: a Ray worker runs it, its driver announces it, so the task
        is counted once, where the batch is. Ends ``child`` however it ends."""
        with _Execution(child, announce=False):
            await self._run(child, task)

    def _child(self, parent: Run, label: str, index: int, call_id: int | None) -> Run:
        """A child of ``parent``, on the tree's quota, its output cut to ``output_max_size``."""
        child = parent.child(label, index, call_id=call_id)
        child.output_limit = self.config.output_max_size
        child.quota = self._quota_of(parent)
        return child

    def _quota_of(self, parent: Run) -> Quota | None:
        """The tree's quota; this spawner's own only for a tree with none (a ``Run`` made by
        hand: an ``Agent`` adopts its subagent tools' quota, a ``Runtime`` shares one)."""
        return parent.quota if parent.quota is not None else self.quota

    async def _run(self, child: Run, task: SubagentTask | Refused) -> None:
        """The checks in the contract's order (quota, depth, arguments, tools, reservation),
        then the run; a refusal raises :class:`Refused`."""
        parent = child.parent
        assert parent is not None
        quota = child.quota
        try:  # inline, not `await self.check(...)`: one coroutine less in every spawn
            if quota is not None:
                await quota.acheck()
            check_depth(parent.depth, self.config.max_depth)
            if isinstance(task, Refused):
                raise task
            agent = self._child_agent(child, task)
            if quota is not None:
                await quota.areserve()
        except (QuotaExceeded, QuotaUnavailable, DepthLimitExceeded) as exc:
            raise _refusal(exc) from None
        child.provider, child.tools = agent.provider, agent.tools
        self._set_deadline(child)
        summary = task.summary_prompt or self.config.summary_prompt
        await agent.drive(child, task.task_prompt, (summary,) if summary else ())

    async def check(self, quota: Quota | None, parent_depth: int) -> None:
        """Quota, then depth: the refusals that come before the arguments are read."""
        try:
            if quota is not None:
                await quota.acheck()
            check_depth(parent_depth, self.config.max_depth)
        except (QuotaExceeded, QuotaUnavailable, DepthLimitExceeded) as exc:
            raise _refusal(exc) from None

    def _child_agent(self, child: Run, task: SubagentTask) -> Agent:
        """The child's agent: its tools chosen from the parent's, its provider, its turns.

        An agent is settings only (a run's state lives in its ``Run``), so the children of
        one parent run that ask for the same thing share one, kept on the parent run (its
        tools, provider, hooks, quota and depth are the same for all of them) and gone with
        it.
        """
        parent = child.parent
        assert parent is not None
        allowed = None if task.allowed_tools is None else tuple(task.allowed_tools)
        max_turns = task.max_turns or self.config.default_max_turns
        key = (self, allowed, max_turns)
        kept = parent.child_agents
        if kept is None:
            kept = parent.child_agents = {}
        agent = kept.get(key)
        if agent is not None:
            return agent
        try:
            offered, hidden = self._child_tools(parent, task)
        except ValueError as exc:
            raise Refused("invalid_input", str(exc)) from None
        try:
            agent = Agent(
                self.child_provider(parent.provider),
                tools=offered,
                max_turns=max_turns,
                name="subagent",
                hooks=child.hooks,
                quota=child.quota,
                pricing=child.pricing,
                _hidden_tools=hidden,
            )
        except Exception as exc:
            raise Refused("initialization_failed", f"could not start the subagent: {exc}") from None
        if len(kept) < _MAX_AGENTS:
            kept[key] = agent
        return agent

    def _child_tools(
        self, parent: Run, task: SubagentTask
    ) -> tuple[list[Tool[Any]], list[Tool[Any]]]:
        """The child's offered tools and its hidden subagent tools (for depth refusals)."""
        subagent_tools = [t for t in parent.tools if t.is_subagent_tool]
        if task.allowed_tools is None:
            chosen = [t for t in parent.tools if not t.is_subagent_tool]
        else:
            by_name = {t.name: t for t in parent.tools}
            chosen = []
            for name in dict.fromkeys(task.allowed_tools):
                found = by_name.get(name)
                if found is None:
                    have = ", ".join(t.name for t in parent.tools if not t.is_subagent_tool)
                    raise ValueError(
                        f"allowed_tools names '{name}', which this agent does not have "
                        f"(it has: {have or 'no tools'})"
                    )
                if found.is_subagent_tool:
                    raise ValueError(
                        f"allowed_tools may not name '{name}': subagent tools are given to a "
                        "subagent automatically while its depth allows"
                    )
                chosen.append(found)
        if parent.depth + 1 < self.config.max_depth:
            return chosen + subagent_tools, []
        return chosen, subagent_tools

    def _set_deadline(self, child: Run) -> None:
        """The earliest of the parent's deadline, this child's timeout and the quota's time."""
        timeout = self.config.timeout
        left = child.quota.remaining_time() if child.quota is not None else None
        if timeout is None and left is None:
            return  # nothing of its own: the parent's deadline, no clock read
        now = child.now()
        if timeout is not None and now + timeout < child.deadline:
            child.deadline, child.deadline_error = now + timeout, "timeout"
        if left is not None and now + left < child.deadline:
            child.deadline, child.deadline_error = now + left, "quota_exceeded"

    @staticmethod
    def refuse(child: Run, refusal: Refused) -> Run:
        """Record ``child`` as refused before it ran (one start, one end) and return it."""
        with _Execution(child):
            raise refusal
        return child

    # -- a batch -----------------------------------------------------------------------------
    async def spawn_batch(
        self, parent: Run, arguments: str, *, call_id: int | None = None
    ) -> BatchResult | Run:
        """The ``parallel_subagent`` tool's call: the batch, or the one refused execution
        that stands for it when quota, depth or the arguments refuse it."""
        try:
            await self.check(self._quota_of(parent), parent.depth)
            args = _parse(ParallelSubagentArgs, arguments)
        except Refused as refusal:
            return self.refuse(self._child(parent, "parallel_subagent", 0, call_id), refusal)
        return await self.run_batch(
            parent,
            args.tasks,
            call_id=call_id,
            max_concurrent=args.max_concurrent,
            fail_fast=args.fail_fast,
        )

    async def run_batch(
        self,
        parent: Run,
        tasks: Sequence[SubagentTask],
        *,
        call_id: int | None = None,
        max_concurrent: int | None = None,
        fail_fast: bool = False,
        on_end: Callable[[int, RunResult], bool] | None = None,
    ) -> BatchResult:
        """Run ``tasks`` as children of ``parent``, at most ``max_concurrent`` at once.

        A pool of workers takes the next task in input order: at most that many in flight,
        with no task or limiter per item (a batch of 10,000 holds 5 tasks). A task that
        never started (``fail_fast``, the deadline, the batch cancelled) is recorded as
        ``cancelled``, like a refused spawn. ``on_end(index, result)`` is called as each
        task that started ends, however it ends (the batch journal commits it there); when
        it returns ``False`` the rest of the batch is cancelled.
        """
        count = len(tasks)
        children: list[Run | None] = [None] * count
        batch = Batch(parent, call_id, count)
        parent.hooks.batch_started(parent, batch)
        pending = iter(range(count))  # shared by the workers: each index is taken once
        try:
            async with anyio.create_task_group() as tg:

                async def worker() -> None:
                    for index in pending:
                        if parent.remaining_time() == 0:
                            return  # past the batch's deadline: the rest never start
                        # fail_fast may have cancelled the batch since this worker's last task.
                        await anyio.lowlevel.checkpoint_if_cancelled()
                        task = tasks[index]
                        child = children[index] = self._child(parent, task.label, index, call_id)
                        try:
                            await self._execute(child, task)
                        finally:
                            if on_end is not None and not on_end(index, child.result()):
                                tg.cancel_scope.cancel()
                        if fail_fast and not child.result().succeeded:
                            tg.cancel_scope.cancel()

                for _ in range(min(count, max_concurrent or self.config.max_concurrent)):
                    tg.start_soon(worker)
        finally:
            ended = [
                child if child is not None else self._never_started(parent, task, i, call_id)
                for i, (task, child) in enumerate(zip(tasks, children, strict=True))
            ]
            batch.result = BatchResult.of(
                [child.result() for child in ended], parent.now() - batch.started
            )
            parent.hooks.batch_ended(parent, batch)
        return batch.result

    def _never_started(
        self, parent: Run, task: SubagentTask, index: int, call_id: int | None
    ) -> Run:
        child = self._child(parent, task.label, index, call_id)
        return self.refuse(
            child, Refused("cancelled", "cancelled before it started", status="cancelled")
        )


class _Execution:
    """One execution's start and end hooks, and every way it can end, in one place."""

    __slots__ = ("announce", "child")

    def __init__(self, child: Run, *, announce: bool = True) -> None:
        self.child = child
        self.announce = announce

    def __enter__(self) -> Run:
        if self.announce:
            self.child.hooks.subagent_started(self.child)
        return self.child

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        child = self.child
        try:
            if isinstance(exc, Refused):
                child.finish(exc.status, exc.error_type, str(exc))
            elif child.status is None:
                child.interrupted(exc)
            child.attach()
        finally:
            if self.announce:
                child.hooks.subagent_ended(child)
        return isinstance(exc, Refused)


def _refusal(exc: QuotaExceeded | QuotaUnavailable | DepthLimitExceeded) -> Refused:
    """What a quota or depth refusal is on the child's result (a quota that cannot be
    reached fails the spawn: it never runs unlimited)."""
    if isinstance(exc, QuotaExceeded):
        return Refused("quota_exceeded", str(exc))
    if isinstance(exc, DepthLimitExceeded):
        return Refused("max_depth_reached", str(exc))
    return Refused("execution_failed", str(exc))


def _parse(model: type[Any], arguments: str) -> Any:
    """The arguments as ``model``; invalid ones are an ``invalid_input`` refusal (keys the
    model copies from the schema are dropped first: see :class:`ModelSentTask`)."""
    name, lenient = _AS_SENT[model]
    try:
        return parse_arguments(lenient, name, arguments)
    except ValueError as exc:
        raise Refused("invalid_input", str(exc)) from None


_AS_SENT: dict[type[Any], tuple[str, type[Any]]] = {
    SubagentTask: ("subagent", ModelSentTask),
    ParallelSubagentArgs: ("parallel_subagent", ModelSentBatch),
}


def _label_of(arguments: str) -> str:
    """The label of a call before its arguments are checked (for its result and hooks,
    never a metric attribute).

    The arguments may yet be refused, so the label is whatever the model sent: cut to the
    length a valid label may have, and made encodable (a lone surrogate from a JSON escape),
    so a 100,000-character or unprintable label cannot reach the result tree or a terminal
    whole.
    """
    try:
        data = json.loads(arguments)
    except (ValueError, RecursionError):
        return "subagent"
    label = data.get("label") if isinstance(data, dict) else None
    if not isinstance(label, str) or not label.strip():
        return "subagent"
    return replace_lone_surrogates(label[:LABEL_MAX_LENGTH])
