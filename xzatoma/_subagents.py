"""The subagent tools: ``subagent`` (one child) and ``parallel_subagent`` (a batch).

Both are thin model-facing shells over :class:`Spawner`, which owns one execution from
start to end: checks in the contract's order (quota, depth, arguments), the atomic quota
reservation, the child's tools and deadline, the run, truncation, and exactly one start and
one end event whatever happens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import anyio
import anyio.lowlevel

from ._agent import Agent, RunState
from ._hooks import BatchEnded, BatchStarted, SubagentEnded, SubagentStarted, new_id
from ._limits import QuotaTracker, check_depth, truncate_utf8
from ._result import ErrorType, RunResult
from ._subagent_models import (
    LABEL_MAX_LENGTH,
    BatchResult,
    ParallelSubagentArgs,
    SubagentConfig,
    SubagentTask,
    succeeded,
)
from ._text import replace_lone_surrogates
from ._tool_messages import describe_batch, describe_child
from ._tools import ArgsT, Tool, ToolContext, ToolResult
from ._types import Usage
from .errors import ConfigError, DepthLimitExceeded, QuotaExceeded
from .providers._base import Provider

__all__ = ("ParallelSubagentTool", "Spawner", "SubagentTool")


class Spawner:
    """Runs subagent executions for one tree: the logic both subagent tools share."""

    def __init__(self, config: SubagentConfig, quota: QuotaTracker | None) -> None:
        self.config = config
        self.quota = quota

    # -- checks ------------------------------------------------------------------------------
    def precheck(self, ctx: ToolContext) -> tuple[ErrorType, str] | None:
        """Quota, then depth: the refusals that come before the arguments are read."""
        try:
            if self.quota is not None:
                self.quota.check()
            check_depth(ctx.depth, self.config.max_depth)
        except QuotaExceeded as exc:
            return "quota_exceeded", str(exc)
        except DepthLimitExceeded as exc:
            return "max_depth_reached", str(exc)
        return None

    def refuse(
        self, ctx: ToolContext, label: str, error_type: ErrorType, message: str
    ) -> RunResult:
        """Record a spawn refused before it started (one start, one end) and describe it."""
        result = _refused(label, ctx.depth + 1, error_type, message)
        self._record_unstarted(ctx, result)
        return result

    @staticmethod
    def _record_unstarted(ctx: ToolContext, result: RunResult, order: int = 0) -> None:
        """Record an execution that never ran (a refused spawn, a batch task that never
        started): one start and one end, so the metrics count it like any other and
        executions = completions + errors holds; it joins the result tree at ``order``."""
        hooks, depth = ctx.tree.hooks, result.depth
        if hooks:
            exec_id = new_id()
            hooks.emit(SubagentStarted(exec_id, ctx.event_id, result.label, depth))
            hooks.emit(
                SubagentEnded(
                    exec_id, ctx.event_id, result.label, depth, result.status,
                    result.error_type, 0, Usage(), 0.0, False, result,
                )
            )  # fmt: skip
        ctx.add_child(result, order)

    def _child_tools(
        self, ctx: ToolContext, task: SubagentTask
    ) -> tuple[list[Tool[Any]], list[Tool[Any]]]:
        """The child's offered tools and its hidden subagent tools (for depth refusals)."""
        parent_tools = ctx.agent.tools
        subagent_tools = [t for t in parent_tools if t.is_subagent_tool]
        if task.allowed_tools is None:
            chosen = [t for t in parent_tools if not t.is_subagent_tool]
        else:
            by_name = {t.name: t for t in parent_tools}
            chosen = []
            for name in dict.fromkeys(task.allowed_tools):
                found = by_name.get(name)
                if found is None:
                    have = ", ".join(t.name for t in parent_tools if not t.is_subagent_tool)
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
        if ctx.depth + 1 < self.config.max_depth:
            return chosen + subagent_tools, []
        return chosen, subagent_tools

    def _child_provider(self, parent: Provider) -> Provider:
        provider = self.config.provider or parent
        model = self.config.model
        if model is None or model == provider.model:
            return provider
        with_model = getattr(provider, "with_model", None)
        if with_model is None:
            raise ConfigError(
                f"cannot switch provider {provider.name!r} to model {model!r}: it has no "
                "with_model(); set SubagentConfig.provider instead"
            )
        result: Provider = with_model(model)
        return result

    def _deadline(self, ctx: ToolContext) -> tuple[float, ErrorType]:
        """The earliest of the parent's deadline, this child's timeout and the quota's time."""
        deadline: float = ctx.deadline
        kind: ErrorType = "timeout"
        timeout = self.config.timeout
        left = self.quota.remaining_time() if self.quota is not None else None
        if timeout is None and left is None:
            return deadline, kind  # nothing of its own: no clock read on the hot path
        now = anyio.current_time()
        if timeout is not None:
            deadline = min(deadline, now + timeout)
        if left is not None and now + left < deadline:
            deadline, kind = now + left, "quota_exceeded"
        return deadline, kind

    # -- one execution -----------------------------------------------------------------------
    async def execute(
        self, ctx: ToolContext, task: SubagentTask, state: RunState | None = None, order: int = 0
    ) -> RunResult:
        """Run one child at ``ctx.depth + 1`` and record it on ``ctx``.

        Returns the child's result; never raises but for the caller's cancellation, which is
        recorded (event and result tree) as ``cancelled`` and re-raised.
        """
        hooks, clock = ctx.tree.hooks, ctx.tree.clock
        depth, label = ctx.depth + 1, task.label
        state = state if state is not None else RunState()
        exec_id = new_id()
        started = clock()
        if hooks:
            hooks.emit(SubagentStarted(exec_id, ctx.event_id, label, depth))
        result: RunResult | None = None
        try:
            result = self._cut(await self._execute(ctx, task, state, depth))
            return result
        finally:
            duration = clock() - started
            end = result or self._cut(self._interrupted(ctx, state, label, depth, duration))
            state.final = end
            ctx.add_child(end, order)
            if hooks:
                hooks.emit(
                    SubagentEnded(
                        exec_id, ctx.event_id, label, depth, end.status, end.error_type,
                        end.turns, end.usage, duration, end.truncated, end,
                    )
                )  # fmt: skip

    def _cut(self, result: RunResult) -> RunResult:
        """The result with its output cut to ``output_max_size`` (whatever way it ended)."""
        output, truncated = truncate_utf8(result.output, self.config.output_max_size)
        if truncated or output is not result.output:
            result = replace(result, output=output, truncated=truncated)
        return result

    @staticmethod
    def _interrupted(
        ctx: ToolContext, state: RunState, label: str, depth: int, duration: float
    ) -> RunResult:
        """What a child had when it was cancelled from outside.

        When the parent's deadline has passed, the child was cut by the deadline it inherited
        (the parent's cancel scope fires at the same instant as its own): a ``timeout``.
        """
        if ctx.remaining_time() == 0:
            return state.result(
                "failed", "timeout", "timeout reached (the parent's deadline)",
                label=label, depth=depth, duration=duration,
            )  # fmt: skip
        return state.result(
            "cancelled", "cancelled", "cancelled before it finished",
            label=label, depth=depth, duration=duration,
        )  # fmt: skip

    async def _execute(
        self, ctx: ToolContext, task: SubagentTask, state: RunState, depth: int
    ) -> RunResult:
        label = task.label
        try:
            if self.quota is not None:  # the contract's order: quota, depth, arguments
                self.quota.check()
        except QuotaExceeded as exc:
            return _refused(label, depth, "quota_exceeded", str(exc))
        try:
            check_depth(ctx.depth, self.config.max_depth)
            offered, hidden = self._child_tools(ctx, task)
        except DepthLimitExceeded as exc:
            return _refused(label, depth, "max_depth_reached", str(exc))
        except ValueError as exc:
            return _refused(label, depth, "invalid_input", str(exc))
        try:
            child = Agent(
                self._child_provider(ctx.agent.provider),
                tools=offered,
                max_turns=task.max_turns or self.config.default_max_turns,
                name="subagent",
                hooks=ctx.tree.hooks,
                quota=ctx.tree.quota,
                clock=ctx.tree.clock,
                _hidden_tools=hidden,
            )
        except Exception as exc:
            return _refused(
                label, depth, "initialization_failed", f"could not start the subagent: {exc}"
            )
        if self.quota is not None:
            try:
                self.quota.reserve()
            except QuotaExceeded as exc:
                return _refused(label, depth, "quota_exceeded", str(exc))
        summary = task.summary_prompt or self.config.summary_prompt
        deadline, deadline_error = self._deadline(ctx)
        result = await child.run_in_tree(
            task.task_prompt,
            tree=ctx.tree,
            depth=depth,
            label=label,
            parent_id=ctx.event_id,
            deadline=deadline,
            deadline_error=deadline_error,
            followups=(summary,) if summary else (),
            state=state,
        )
        return result

    # -- a batch -----------------------------------------------------------------------------
    def _settled(
        self,
        ctx: ToolContext,
        task: SubagentTask,
        result: RunResult | None,
        state: RunState | None,
        index: int,
    ) -> RunResult:
        """A task's final result: what it returned, what it had when cancelled, or, for a
        task that never started (fail_fast, the deadline, the batch cancelled), a
        ``cancelled`` placeholder recorded here like a refused spawn."""
        if result is not None:
            return result
        if state is not None and state.final is not None:
            return state.final
        placeholder = RunResult(
            "",
            "cancelled",
            error_type="cancelled",
            error="cancelled before it started",
            label=task.label,
            depth=ctx.depth + 1,
        )
        self._record_unstarted(ctx, placeholder, index)
        return placeholder

    async def run_batch(
        self,
        ctx: ToolContext,
        tasks: Sequence[SubagentTask],
        *,
        max_concurrent: int | None,
        fail_fast: bool,
    ) -> BatchResult:
        """Run ``tasks`` as children of ``ctx``'s agent, at most ``max_concurrent`` at once."""
        hooks, clock = ctx.tree.hooks, ctx.tree.clock
        count = len(tasks)
        results: list[RunResult | None] = [None] * count
        states: list[RunState | None] = [None] * count
        batch_id, depth = new_id(), ctx.depth + 1
        started = clock()
        if hooks:
            hooks.emit(BatchStarted(batch_id, ctx.event_id, depth, count))
        # A pool of max_concurrent workers taking the next task in input order: at most that
        # many in flight, with no task or limiter per item (a batch of 10,000 holds 5 tasks).
        pending = iter(range(count))  # shared by the workers: each index is taken once
        try:
            async with anyio.create_task_group() as tg:

                async def worker() -> None:
                    for index in pending:
                        if ctx.remaining_time() == 0:
                            return  # past the batch's deadline: the rest never start
                        # fail_fast may have cancelled the batch since this worker's last task.
                        await anyio.lowlevel.checkpoint_if_cancelled()
                        state = states[index] = RunState()
                        result = await self.execute(ctx, tasks[index], state, index)
                        results[index] = result
                        if fail_fast and not succeeded(result):
                            tg.cancel_scope.cancel()

                for _ in range(min(count, max_concurrent or self.config.max_concurrent)):
                    tg.start_soon(worker)
        finally:
            final = [
                self._settled(ctx, task, results[i], states[i], i) for i, task in enumerate(tasks)
            ]
            ok = sum(1 for r in final if succeeded(r))
            cancelled = sum(1 for r in final if r.status == "cancelled")
            failed = count - ok - cancelled
            status: Literal["complete", "partial", "failed"] = (
                "complete" if ok == count else "failed" if ok == 0 else "partial"
            )
            duration = clock() - started
            if hooks:
                usage = Usage()
                for r in final:
                    usage = usage + r.total_usage
                hooks.emit(
                    BatchEnded(
                        batch_id, ctx.event_id, depth, count, status, ok, failed, cancelled,
                        usage, duration,
                    )
                )  # fmt: skip
        return BatchResult(tuple(final), status, ok, failed, cancelled, duration)


class _SpawningTool(Tool[ArgsT]):
    """What both subagent tools share: a spawner, and the checks in the contract's order."""

    is_subagent_tool = True

    def __init__(
        self, config: SubagentConfig | None = None, quota: QuotaTracker | None = None
    ) -> None:
        self.spawner = Spawner(config or SubagentConfig(), quota)

    def checked_arguments(self, ctx: ToolContext, label: str) -> ArgsT | RunResult:
        """Quota, then depth, then the arguments; a refusal is recorded and returned."""
        refusal = self.spawner.precheck(ctx)
        if refusal is None:
            try:
                return self.validate_arguments(ctx.call.arguments)
            except ValueError as exc:
                return self.spawner.refuse(ctx, label, "invalid_input", str(exc))
        return self.spawner.refuse(ctx, label, *refusal)


class SubagentTool(_SpawningTool[SubagentTask]):
    """The ``subagent`` tool: delegate one task to a fresh agent one level deeper."""

    name = "subagent"
    description = (
        "Delegate a self-contained task to a subagent with a fresh context. It can use your "
        "tools (or the subset in allowed_tools) and returns its summarized findings."
    )
    parameters = SubagentTask

    async def invoke(self, ctx: ToolContext) -> ToolResult:
        limit = self.spawner.config.output_max_size
        task = self.checked_arguments(ctx, _label_of(ctx.call.arguments))
        if isinstance(task, RunResult):
            return describe_child(task, limit)
        return describe_child(await self.spawner.execute(ctx, task), limit)


class ParallelSubagentTool(_SpawningTool[ParallelSubagentArgs]):
    """The ``parallel_subagent`` tool: run a batch of independent tasks at once."""

    name = "parallel_subagent"
    description = (
        "Run several independent tasks at once, each in its own subagent. Returns JSON with "
        "each task's output and status, in the order given."
    )
    parameters = ParallelSubagentArgs

    async def invoke(self, ctx: ToolContext) -> ToolResult:
        limit = self.spawner.config.output_max_size
        args = self.checked_arguments(ctx, "parallel_subagent")
        if isinstance(args, RunResult):
            return describe_child(args, limit)
        batch = await self.spawner.run_batch(
            ctx, args.tasks, max_concurrent=args.max_concurrent, fail_fast=args.fail_fast
        )
        return describe_batch(batch, limit)


def _refused(label: str, depth: int, error_type: ErrorType, message: str) -> RunResult:
    """A spawn that was refused before its child started."""
    return RunResult("", "failed", error_type=error_type, error=message, label=label, depth=depth)


def _label_of(arguments: str) -> str:
    """The label of a refused call, for its result and events (never a metric attribute).

    The arguments were refused, so the label is whatever the model sent: cut to the length
    a valid label may have, and made encodable (a lone surrogate from a JSON escape), so a
    100,000-character or unprintable label cannot reach the result tree or a terminal whole.
    """
    try:
        data = json.loads(arguments)
    except (ValueError, RecursionError):
        return "subagent"
    label = data.get("label") if isinstance(data, dict) else None
    if not isinstance(label, str) or not label.strip():
        return "subagent"
    return replace_lone_surrogates(label[:LABEL_MAX_LENGTH])
