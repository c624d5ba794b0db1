"""``Runtime``: the front door that wires a tree of agents to one quota and one set of hooks."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ._agent import Agent, tools_by_name
from ._hooks import Hook, Hooks, Instrument
from ._limits import QuotaLimits, QuotaTracker, as_tracker, check_count, check_timeout
from ._result import RunResult
from ._run import Run, loop_clock
from ._spawn import Spawner
from ._subagent_models import BatchResult, SubagentConfig, SubagentTask
from ._subagents import ParallelSubagentTool, SubagentTool
from ._tools import Tool
from .errors import ConfigError
from .providers._base import Provider

__all__ = ("Runtime",)


class Runtime:
    """One agent tree's shared setup: provider, subagent config, quota and subscribers.

    ``runtime.agent()`` makes a depth-0 agent with both subagent tools wired to one
    :class:`QuotaTracker`; ``runtime.run_batch()`` runs a parallel batch from Python with no
    parent model. Every agent and batch of one runtime shares the tracker, so quotas hold for
    the whole tree.

    Args:
        provider: The model for the root and (unless overridden) every subagent.
        subagents: How subagents are spawned (depth, turns, output size, concurrency).
        quota: Limits shared by every subagent of this runtime, or a :class:`QuotaTracker`
            to share with other runtimes.
        telemetry: A subscriber for OpenTelemetry; ``None`` subscribes ``xzatoma.telemetry``
            (which goes to OTel's no-op API unless an SDK is configured), ``False``
            subscribes nothing.
        hooks: More subscribers (progress display, your own).

    Raises:
        ConfigError: The subagents' provider or model cannot be set up (found here, before
            any run).
    """

    def __init__(
        self,
        provider: Provider,
        *,
        subagents: SubagentConfig | None = None,
        quota: QuotaLimits | QuotaTracker | None = None,
        telemetry: Instrument | Hook | bool | None = None,
        hooks: Iterable[Instrument | Hook] = (),
    ) -> None:
        self.provider = provider
        self.config = subagents if subagents is not None else SubagentConfig()
        tracker = as_tracker(quota)
        self.tracker = tracker if tracker is not None else QuotaTracker()
        self.hooks = Hooks(hooks)
        if telemetry is None or telemetry is True:
            from .telemetry import TelemetrySubscriber

            self.hooks.add(TelemetrySubscriber())
        elif telemetry is not False:
            self.hooks.add(telemetry)
        self.spawner = Spawner(self.config, self.tracker, provider=provider)
        self.subagent_tool = SubagentTool(_spawner=self.spawner)
        self.parallel_tool = ParallelSubagentTool(_spawner=self.spawner)

    def agent(
        self,
        *,
        tools: Sequence[Tool[Any]] = (),
        system_prompt: str | None = None,
        max_turns: int = 50,
        name: str = "agent",
        timeout: float | None = None,
    ) -> Agent:
        """A depth-0 agent with ``tools`` plus both subagent tools, on this runtime's quota."""
        return Agent(
            self.provider,
            tools=[*tools, self.subagent_tool, self.parallel_tool],
            system_prompt=system_prompt,
            max_turns=max_turns,
            name=name,
            timeout=timeout,
            hooks=self.hooks,
            quota=self.tracker,
        )

    async def run(self, prompt: str, **agent_options: Any) -> RunResult:
        """``await runtime.agent(**agent_options).run(prompt)``."""
        return await self.agent(**agent_options).run(prompt)

    async def run_batch(
        self,
        tasks: Iterable[SubagentTask | Mapping[str, Any]],
        *,
        max_concurrent: int | None = None,
        fail_fast: bool = False,
        tools: Sequence[Tool[Any]] = (),
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline for the tree, not a wait
    ) -> BatchResult:
        """Run a parallel batch of subagents at depth 1, with no parent model.

        ``tasks`` are :class:`SubagentTask` or dicts of its keys (``label``, ``task_prompt``,
        ``summary_prompt``, ``allowed_tools``, ``max_turns``); ``allowed_tools`` name entries
        of ``tools``. Results come back in input order. Raises :class:`ConfigError` for
        invalid tasks or an invalid ``max_concurrent`` before anything runs.
        """
        parsed = [_task(t, i) for i, t in enumerate(tasks)]
        if not parsed:
            raise ConfigError("run_batch needs at least one task")
        check_count("max_concurrent", max_concurrent)
        check_timeout(timeout)
        offered = [*tools, self.subagent_tool, self.parallel_tool]
        tools_by_name(offered)  # two tools of one name: a ConfigError before anything runs
        now = loop_clock()
        root = Run(
            label="batch",
            name="batch",
            hooks=self.hooks,
            quota=self.tracker,
            provider=self.provider,
            tools=offered,
            deadline=math.inf if timeout is None else now() + timeout,
            now=now,
        )
        return await self.spawner.run_batch(
            root, parsed, max_concurrent=max_concurrent, fail_fast=fail_fast
        )


def _task(task: SubagentTask | Mapping[str, Any], index: int) -> SubagentTask:
    if isinstance(task, SubagentTask):
        return task
    try:
        return SubagentTask.model_validate(task)
    except Exception as exc:
        raise ConfigError(f"task {index}: {exc}") from None
