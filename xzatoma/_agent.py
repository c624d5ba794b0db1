"""The agent loop: call the model, run the tools it asks for, repeat until it answers.

Every way a run can end is a ``RunResult`` (complete, incomplete, failed) except the
caller's own cancellation, which propagates. Start and end events are emitted in
``finally`` so subscribers see exactly one end for every start, whatever happened.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel

from ._cancellation import cancel_requests, is_stray_cancellation
from ._hooks import (
    Event,
    Hook,
    Hooks,
    ModelCallEnded,
    ModelCallStarted,
    RunEnded,
    RunStarted,
    ToolCallEnded,
    ToolCallStarted,
    new_id,
)
from ._limits import Clock, QuotaTracker
from ._result import ErrorType, RunResult, RunStatus
from ._tools import Tool, ToolContext, ToolResult, TreeContext, run_tool
from ._types import Completion, Message, ToolCall, Usage
from ._usage import UsageRefused, checked_usage
from .errors import ConfigError, ProviderError, QuotaExceeded
from .providers._base import Provider

__all__ = ("Agent",)

logger = logging.getLogger("xzatoma.agent")

_Outcome = tuple[RunStatus, ErrorType | None, str | None]


class RunState:
    """The mutable record of a run in progress; whoever cancels a run reads it afterwards."""

    __slots__ = ("children", "events", "final", "messages", "output", "turns", "usage")

    def __init__(self) -> None:
        self.events: frozenset[type[Event]] = frozenset()
        """The run's own event types some subscriber wants (asked once, at its start)."""
        self.messages: list[Message] = []
        self.usage = Usage()
        self.turns = 0
        self.children: list[RunResult] = []
        self.output = ""
        self.final: RunResult | None = None
        """Set by whoever ends the run on the caller's side (the spawner), cancelled or not."""

    def result(
        self,
        status: RunStatus,
        error_type: ErrorType | None,
        error: str | None,
        *,
        label: str,
        depth: int,
        duration: float,
    ) -> RunResult:
        """Freeze what the run has into a ``RunResult``."""
        return RunResult(
            output=self.output,
            status=status,
            turns=self.turns,
            usage=self.usage,
            children=tuple(self.children),
            messages=tuple(self.messages),
            error_type=error_type,
            error=error,
            label=label,
            depth=depth,
            duration=duration,
        )


def _order(entry: tuple[int, RunResult]) -> int:
    return entry[0]


class _ModelFailed(Exception):
    """The provider raised; the run ends ``failed`` with this message."""


class Agent:
    """An agent: a model, tools, and a loop that runs until the model answers.

    Args:
        provider: The model to call (any :class:`xzatoma.Provider`).
        tools: Tools the model may call. Names must be unique.
        system_prompt: Sent first in every run, when given.
        max_turns: Model calls per run; past it the run ends ``incomplete``.
        name: Shown in spans and as the root run's label.
        timeout: Seconds a run may take; past it the run ends ``failed`` / ``timeout``.
        hooks: Event subscribers (telemetry, progress, your own), shared by every subagent.
        quota: The tracker the tree's model calls are charged to (see ``Runtime``).
        clock: The clock durations are measured with (tests inject one).
    """

    def __init__(
        self,
        provider: Provider,
        *,
        tools: Sequence[Tool[Any]] = (),
        system_prompt: str | None = None,
        max_turns: int = 50,
        name: str = "agent",
        timeout: float | None = None,
        hooks: Sequence[Hook] | Hooks = (),
        quota: QuotaTracker | None = None,
        clock: Clock = time.monotonic,
        _hidden_tools: Sequence[Tool[Any]] = (),
    ) -> None:
        if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
            raise ConfigError(f"max_turns must be an integer of at least 1, got {max_turns!r}")
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.provider = provider
        self.tools: tuple[Tool[Any], ...] = tuple(tools)
        self._by_name: dict[str, Tool[Any]] = {}
        for t in self.tools:
            if t.name in self._by_name:
                raise ConfigError(f"two tools are named {t.name!r}; tool names must be unique")
            self._by_name[t.name] = t
        self._specs = tuple(t.spec for t in self.tools)
        # Callable but not offered: the subagent tools of an agent at max_depth, so that a
        # model calling them anyway gets the depth refusal rather than "unknown tool".
        for t in _hidden_tools:
            self._by_name.setdefault(t.name, t)
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.name = name
        self.timeout = timeout
        self.hooks = hooks if isinstance(hooks, Hooks) else Hooks(hooks)
        self.quota = quota
        self.clock = clock

    def __repr__(self) -> str:
        return (
            f"Agent(name={self.name!r}, model={self.provider.model!r}, tools={list(self._by_name)})"
        )

    async def run(self, prompt: str, *, state: RunState | None = None) -> RunResult:
        """Run the agent on ``prompt`` until it answers, runs out of turns, fails or times out.

        Returns a :class:`RunResult`; never raises for model, tool or quota trouble. The
        caller's own cancellation propagates, after every descendant has been cancelled;
        a caller that cancels the run and wants what it had (the command line on a signal)
        passes its own ``state`` and reads it afterwards.
        """
        tree = TreeContext(self.hooks, self.clock, self.quota)
        deadline = math.inf if self.timeout is None else anyio.current_time() + self.timeout
        return await self.run_in_tree(
            prompt,
            tree=tree,
            depth=0,
            label=self.name,
            parent_id=None,
            deadline=deadline,
            state=state,
        )

    async def run_in_tree(
        self,
        prompt: str,
        *,
        tree: TreeContext,
        depth: int,
        label: str,
        parent_id: int | None,
        deadline: float,
        deadline_error: ErrorType = "timeout",
        followups: Sequence[str] = (),
        state: RunState | None = None,
    ) -> RunResult:
        """Run as one node of a tree (what the subagent tools call).

        ``deadline`` is absolute on anyio's clock; when it passes the run ends ``failed``
        with ``deadline_error``. ``followups`` are user turns sent after each answer (the
        summary prompt), within the same ``max_turns``. ``state`` lets the caller read what
        the run had if it cancels it.
        """
        state = state if state is not None else RunState()
        hooks, clock = tree.hooks, tree.clock
        run_id = new_id()
        provider, model = self.provider.name, self.provider.model
        started = clock()
        events = state.events = hooks.wanted() if hooks else state.events
        if RunStarted in events:
            hooks.emit(RunStarted(run_id, parent_id, self.name, label, depth, provider, model))
        outcome: _Outcome = ("cancelled", "cancelled", "cancelled")
        try:
            try:
                if deadline == math.inf:
                    outcome = await self._loop(
                        prompt, state, tree, depth, label, run_id, deadline, followups
                    )
                else:
                    with anyio.CancelScope(deadline=deadline) as scope:
                        outcome = await self._loop(
                            prompt, state, tree, depth, label, run_id, deadline, followups
                        )
                    if scope.cancelled_caught:
                        elapsed = clock() - started
                        why = self._deadline_message(deadline_error, tree, elapsed)
                        outcome = ("failed", deadline_error, why)
            except Exception as exc:  # a bug in a provider adapter or tool plumbing: report it
                logger.exception("agent %r failed unexpectedly", self.name)
                outcome = ("failed", "execution_failed", f"{type(exc).__name__}: {exc}")
        finally:
            status, error_type, _ = outcome
            if RunEnded in events:
                hooks.emit(
                    RunEnded(
                        run_id, parent_id, self.name, label, depth, provider, model,
                        status, error_type, state.turns, state.usage, clock() - started,
                    )
                )  # fmt: skip
        return state.result(*outcome, label=label, depth=depth, duration=clock() - started)

    @staticmethod
    def _deadline_message(kind: ErrorType, tree: TreeContext, elapsed: float) -> str:
        """Why a deadline ended the run; the quota's own words when its time ran out."""
        if kind == "quota_exceeded" and tree.quota is not None:
            try:
                tree.quota.check_running()
            except QuotaExceeded as exc:
                return str(exc)
        return f"timeout reached after {elapsed:.3f}s"

    async def _loop(
        self,
        prompt: str,
        state: RunState,
        tree: TreeContext,
        depth: int,
        label: str,
        run_id: int,
        deadline: float,
        followups: Sequence[str],
    ) -> _Outcome:
        messages = state.messages
        if self.system_prompt is not None:
            messages.append(Message.system(self.system_prompt))
        messages.append(Message.user(prompt))
        pending = list(followups)
        quota = tree.quota
        while True:
            if state.turns >= self.max_turns:
                return "incomplete", None, f"ran out of turns (max_turns={self.max_turns})"
            # A cancelled run must make no further model call, even if nothing has yielded yet.
            await anyio.lowlevel.checkpoint_if_cancelled()
            if quota is not None and depth > 0:
                try:
                    quota.check_running()
                except QuotaExceeded as exc:
                    return "failed", "quota_exceeded", str(exc)
            try:
                completion = await self._call_model(messages, tree, depth, run_id, state)
            except _ModelFailed as exc:
                return "failed", "execution_failed", str(exc)
            state.turns += 1
            state.usage += completion.usage
            if quota is not None:
                quota.charge(completion.usage.total_tokens)
            messages.append(completion.message)
            calls = completion.tool_calls
            if completion.content or not calls:  # a final answer is the output, even if empty
                state.output = completion.content or ""
            if not calls:
                if not pending:
                    return "complete", None, None
                if state.turns >= self.max_turns:
                    return "incomplete", None, "no turn left for the summary"
                messages.append(Message.user(pending.pop(0)))
                continue
            if state.turns >= self.max_turns:
                return "incomplete", None, f"ran out of turns (max_turns={self.max_turns})"
            results = await self._run_tools(calls, state, tree, depth, label, run_id, deadline)
            for call, result in zip(calls, results, strict=True):
                messages.append(Message.tool(call, result.content))

    async def _call_model(
        self,
        messages: list[Message],
        tree: TreeContext,
        depth: int,
        run_id: int,
        state: RunState,
    ) -> Completion:
        hooks, clock, events = tree.hooks, tree.clock, state.events
        provider, model = self.provider.name, self.provider.model
        call_id = new_id()
        started = clock()
        if ModelCallStarted in events:
            hooks.emit(ModelCallStarted(call_id, run_id, depth, provider, model))
        completion: Completion | None = None
        error_type: str | None = "cancelled"
        before = cancel_requests()  # per call: a tool may have left one uncancelled
        try:
            reply = await self.provider.complete(messages, self._specs)
            # Checked before it is charged, summed or recorded: usage is the endpoint's word.
            quota = tree.quota
            limited = quota is not None and quota.limits.max_total_tokens is not None
            completion = checked_usage(reply, messages, estimate_missing=limited)
            error_type = None
        except UsageRefused as exc:
            error_type = "ProviderError"
            raise _ModelFailed(f"provider {provider!r} returned invalid usage: {exc}") from None
        except ProviderError as exc:
            error_type = "ProviderError"
            raise _ModelFailed(f"provider {provider!r} failed: {exc}") from exc
        except Exception as exc:
            error_type = type(exc).__name__
            logger.exception("provider %r raised an unexpected exception", provider)
            raise _ModelFailed(f"provider {provider!r} raised {error_type}: {exc}") from exc
        except asyncio.CancelledError as exc:
            if not await is_stray_cancellation(exc, before):
                raise
            error_type = "CancelledError"
            raise _ModelFailed(
                f"provider {provider!r} raised CancelledError although nothing cancelled this run"
            ) from None
        finally:
            if ModelCallEnded in events:
                hooks.emit(
                    ModelCallEnded(
                        call_id, run_id, depth, provider, model,
                        completion.usage if completion is not None else Usage(),
                        clock() - started, error_type,
                        completion.model if completion is not None else None,
                    )
                )  # fmt: skip
        return completion

    async def _run_tools(
        self,
        calls: tuple[ToolCall, ...],
        state: RunState,
        tree: TreeContext,
        depth: int,
        label: str,
        run_id: int,
        deadline: float,
    ) -> list[ToolResult]:
        """Run one reply's tool calls concurrently; results in the model's order.

        Subagent results land in one sink per call and join the tree in ``finally``, so
        children that ended are kept even when this turn is cancelled or times out.
        """
        sinks: list[list[tuple[int, RunResult]]] = [[] for _ in calls]
        try:
            if len(calls) == 1:
                only = await self._invoke(
                    calls[0], sinks[0], tree, depth, label, run_id, deadline, state.events,
                    cancel_requests(),  # the run's own task: a tool before may have left one
                )  # fmt: skip
                return [only]
            results: list[ToolResult] = [ToolResult("")] * len(calls)

            async def invoke_into(index: int, call: ToolCall) -> None:
                # Each call runs in a task of its own, whose cancellation count starts at 0.
                results[index] = await self._invoke(
                    call, sinks[index], tree, depth, label, run_id, deadline, state.events, 0
                )

            async with anyio.create_task_group() as tg:
                for index, call in enumerate(calls):
                    tg.start_soon(invoke_into, index, call)
                    if index % 100 == 99:
                        # Let calls that finish at once do so while the rest are spawned, so
                        # a reply of 10,000 calls does not hold 10,000 pending tasks at once.
                        await anyio.lowlevel.checkpoint()
            return results
        finally:
            for sink in sinks:
                if sink:
                    sink.sort(key=_order)
                    state.children.extend(result for _, result in sink)

    async def _invoke(
        self,
        call: ToolCall,
        sink: list[tuple[int, RunResult]],
        tree: TreeContext,
        depth: int,
        label: str,
        run_id: int,
        deadline: float,
        events: frozenset[type[Event]],
        cancels: int,
    ) -> ToolResult:
        hooks, clock = tree.hooks, tree.clock
        event_id = new_id()
        started = clock()
        if ToolCallStarted in events:
            hooks.emit(ToolCallStarted(event_id, run_id, depth, call.name, call.id))
        result: ToolResult | None = None
        try:
            found = self._by_name.get(call.name)
            if found is None:
                available = ", ".join(self._by_name) or "none"
                result = ToolResult.error(
                    f"Unknown tool '{call.name}'. Available tools: {available}."
                )
                return result
            ctx = ToolContext(self, call, depth, label, run_id, event_id, deadline, tree, sink)
            result = await run_tool(found, ctx, cancels)
            return result
        finally:
            if ToolCallEnded in events:
                hooks.emit(
                    ToolCallEnded(
                        event_id, run_id, depth, call.name, call.id,
                        result is None or result.is_error, clock() - started, result is None,
                    )
                )  # fmt: skip
