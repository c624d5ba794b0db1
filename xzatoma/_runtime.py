"""``Runtime``: the front door that wires a tree of agents to one quota and one set of hooks."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._agent import Agent, tools_by_name
from ._hooks import Hook, Hooks, Instrument
from ._limits import Quota, QuotaLimits, QuotaTracker, as_tracker, check_count, check_timeout
from ._pricing import Price, Pricing, as_pricing
from ._result import RunResult
from ._run import Run, loop_clock
from ._session import session_id_or_new
from ._spawn import Spawner
from ._statistics import RuntimeStatistics, StatisticsRecorder
from ._subagent_models import BatchResult, SubagentConfig, SubagentTask
from ._subagents import ParallelSubagentTool, SubagentTool
from ._tools import Tool
from .errors import ConfigError, JournalWriteError
from .providers._base import Provider

if TYPE_CHECKING:
    from ._journal import BatchJournal
    from ._ray_executor import RayExecutor
    from ._ray_worker import WorkerSetup

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
        tools: Tools every agent and batch of this runtime has, before those given to
            :meth:`agent` and :meth:`run_batch`: the place for tools shared by the whole
            tree, such as those of :func:`xzatoma.mcp.open_servers`.
        pricing: Where the tree's prices come from: a :class:`Pricing`, or prices by model
            name (``{"my-model": Price(0.1, 0.4)}``, US dollars per million tokens) looked up
            before genai-prices' bundled data (the default, alone). See ``docs/cost.md``.
        session_id: What names this runtime's tree on every span (``xzatoma.session.id``),
            as OTel baggage while a traced tree runs, and in :meth:`statistics`; ``None``:
            a new random one (a UUID). Never a metric attribute unless the telemetry subscriber is
            told so (``metrics_include_session_id``).

    Raises:
        ConfigError: The subagents' provider or model cannot be set up, the quota has a
            ``max_total_cost`` while a model's price is not known (found here, before any
            run), or the session id is not a short printable string.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        subagents: SubagentConfig | None = None,
        quota: QuotaLimits | Quota | None = None,
        telemetry: Instrument | Hook | bool | None = None,
        hooks: Iterable[Instrument | Hook] = (),
        tools: Sequence[Tool[Any]] = (),
        pricing: Pricing | Mapping[str, Price | Mapping[str, object]] | None = None,
        session_id: str | None = None,
    ) -> None:
        self._session_id = session_id_or_new(session_id)
        self.provider = provider
        self.tools: tuple[Tool[Any], ...] = tuple(tools)
        self.config = subagents if subagents is not None else SubagentConfig()
        tracker = as_tracker(quota)
        self.tracker = tracker if tracker is not None else QuotaTracker()
        self._statistics = StatisticsRecorder(self._session_id)
        self.hooks = Hooks([self._statistics, *hooks])
        if telemetry is None or telemetry is True:
            from .telemetry import TelemetrySubscriber

            self.hooks.add(TelemetrySubscriber())
        elif telemetry is not False:
            self.hooks.add(telemetry)
        self._telemetry = telemetry is not False
        self.spawner = Spawner(self.config, self.tracker, provider=provider)
        self.pricing = as_pricing(pricing)
        for priced in dict.fromkeys((provider, self.spawner.child_provider(provider))):
            self.pricing.price_for(priced)  # looked up now, not in the first run (then cached)
            if self.tracker.limits.max_total_cost is not None:
                self.pricing.require(priced, "max_total_cost")
        self.subagent_tool = SubagentTool(_spawner=self.spawner)
        self.parallel_tool = ParallelSubagentTool(_spawner=self.spawner)

    @property
    def session_id(self) -> str:
        """The session id, given or generated (fixed for the runtime's life)."""
        return self._session_id

    def statistics(self) -> RuntimeStatistics:
        """A frozen snapshot of this runtime's own subagent figures, by depth: executions,
        completions by status, errors by type, active, tokens, turns, and durations (count
        and sum). They count what the ``subagent.*`` metrics count, for this runtime alone,
        with no metrics backend. With a Ray executor, the depth-1 tasks are counted here
        and deeper levels in the workers."""
        return self._statistics.snapshot()

    def agent(
        self,
        *,
        tools: Sequence[Tool[Any]] = (),
        system_prompt: str | None = None,
        max_turns: int = 50,
        name: str = "agent",
        timeout: float | None = None,
    ) -> Agent:
        """A depth-0 agent with the runtime's tools, ``tools`` and both subagent tools, on
        this runtime's quota."""
        return Agent(
            self.provider,
            tools=[*self.tools, *tools, self.subagent_tool, self.parallel_tool],
            system_prompt=system_prompt,
            max_turns=max_turns,
            name=name,
            timeout=timeout,
            hooks=self.hooks,
            quota=self.tracker,
            pricing=self.pricing,
            session_id=self.session_id,
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
        journal: str | os.PathLike[str] | None = None,
        rerun_failed: bool = False,
        extend_journal: bool = False,
        executor: RayExecutor | None = None,
    ) -> BatchResult:
        """Run a parallel batch of subagents at depth 1, with no parent model.

        ``tasks`` are :class:`SubagentTask` or dicts of its keys (``label``, ``task_prompt``,
        ``summary_prompt``, ``allowed_tools``, ``max_turns``); ``allowed_tools`` name entries
        of the runtime's tools and ``tools``. Results come back in input order.

        With ``journal`` (a path), each task's result is committed to that SQLite file as the
        task ends, and a batch run again with the same journal skips the tasks that already
        finished: their results are read back (their indexes are ``BatchResult.resumed``)
        and only the others run, so the quota counts only those. ``rerun_failed`` runs
        failed tasks again too; ``extend_journal`` accepts a journal made from other tasks
        and adds these. What counts as finished: ``docs/batches.md``.

        With ``executor`` (a :class:`~xzatoma.RayExecutor`), the tasks run in Ray workers,
        with the same results, order, ``fail_fast``, timeout and journal; the quota must be
        one every worker reaches (a :class:`~xzatoma.RedisQuota`) when it has limits. See
        ``docs/distributed.md``.

        Raises:
            ConfigError: Invalid tasks or an invalid ``max_concurrent``; with an executor,
                an in-memory quota with limits, MCP tools, or a provider or tool that
                cannot be sent to the workers (before anything runs).
            JournalError: The journal cannot be used (not a journal, corrupt, in use by
                another process, newer, made from other tasks), before anything runs.
            JournalWriteError: The journal could not be written during the batch, which
                then stops (``.result`` holds what ended; the same call resumes it).
        """
        parsed = [_task(t, i) for i, t in enumerate(tasks)]
        if not parsed:
            raise ConfigError("run_batch needs at least one task")
        check_count("max_concurrent", max_concurrent)
        check_timeout(timeout)
        offered = [*self.tools, *tools, self.subagent_tool, self.parallel_tool]
        tools_by_name(offered)  # two tools of one name: a ConfigError before anything runs
        own = [*self.tools, *tools]
        if executor is not None and any(getattr(t, "mcp_server", None) for t in own):
            # By attribute, not isinstance: the runtime does not import the MCP SDK.
            raise ConfigError(
                "MCP servers (MCPTool, from xzatoma.mcp.open_servers) run in this process, and "
                "a batch on Ray runs in its workers: run the batch without an executor, or "
                "without MCP tools"
            )
        remote = None if executor is None else (executor, self._worker_setup(own))
        if journal is None:
            return await self._batch(parsed, offered, max_concurrent, fail_fast, timeout, remote)
        from ._journal import BatchJournal

        with BatchJournal.open(
            journal, parsed, extend=extend_journal, rerun_failed=rerun_failed
        ) as book:
            return await self._batch(
                parsed, offered, max_concurrent, fail_fast, timeout, remote, book
            )

    def _worker_setup(self, tools: Sequence[Tool[Any]]) -> WorkerSetup:
        """What Ray workers run this runtime's batch with, checked to travel there."""
        from ._ray_worker import WorkerSetup, check_sendable

        quota = self.tracker
        shared: Quota | None = quota
        if isinstance(quota, QuotaTracker):
            if quota.limits != QuotaLimits():
                raise ConfigError(
                    "a Ray batch's quota must be one every worker reaches: give the Runtime "
                    "quota=RedisQuota(url, tree=..., limits=...) (an in-memory QuotaTracker "
                    "lives in this process only)"
                )
            shared = None  # unlimited: the driver counts what the workers report
        setup = WorkerSetup(
            self.provider,
            self.config,
            shared,
            tuple(tools),
            self.pricing,
            self._telemetry,
            self.session_id,
        )
        check_sendable(setup)
        return setup

    def batch_root(self, tools: Sequence[Tool[Any]], timeout: float | None) -> Run:
        """The root a batch's tasks are children of (no model of its own): this runtime's
        hooks, quota, provider and prices, ``tools`` to choose from, ``timeout`` seconds
        from now (None: no deadline). A Ray worker makes one per task."""
        now = loop_clock()
        return Run(
            label="batch",
            name="batch",
            hooks=self.hooks,
            quota=self.tracker,
            provider=self.provider,
            tools=tools,
            deadline=math.inf if timeout is None else now() + timeout,
            now=now,
            pricing=self.pricing,
            session_id=self.session_id,
        )

    async def _batch(
        self,
        tasks: list[SubagentTask],
        offered: list[Tool[Any]],
        max_concurrent: int | None,
        fail_fast: bool,
        timeout: float | None,  # noqa: ASYNC109 - a deadline for the tree, not a wait
        remote: tuple[RayExecutor, WorkerSetup] | None,
        book: BatchJournal | None = None,
    ) -> BatchResult:
        """The batch of ``tasks``; with a journal, only those it does not hold as done."""
        root = self.batch_root(offered, timeout)

        async def run(
            tasks: list[SubagentTask], on_end: Callable[[int, RunResult], bool] | None = None
        ) -> BatchResult:
            if remote is None:
                return await self.spawner.run_batch(
                    root, tasks, max_concurrent=max_concurrent, fail_fast=fail_fast, on_end=on_end
                )
            executor, setup = remote
            return await executor.run_batch(
                self.spawner,
                root,
                tasks,
                setup,
                max_concurrent=max_concurrent,
                fail_fast=fail_fast,
                on_end=on_end,
            )

        if book is None:
            return await run(tasks)
        to_run, failures = book.to_run, list[JournalWriteError]()

        def commit(position: int, result: RunResult) -> bool:
            try:
                book.record(to_run[position], result)
            except JournalWriteError as exc:
                failures.append(exc)
                return False  # stop the batch: what ends now could no longer be kept
            return True

        results: list[RunResult | None] = [book.done.get(i) for i in range(len(tasks))]
        duration = 0.0
        if to_run:
            ran = await run([tasks[i] for i in to_run], commit)
            for index, result in zip(to_run, ran.results, strict=True):
                results[index] = result
            duration = ran.duration
        ended = [r for r in results if r is not None]
        assert len(ended) == len(tasks), "every task ran or was read back"
        batch = BatchResult.of(ended, duration, resumed=sorted(book.done))
        if failures:
            raise JournalWriteError(f"the batch stopped: {failures[0]}", result=batch)
        return batch


def _task(task: SubagentTask | Mapping[str, Any], index: int) -> SubagentTask:
    if isinstance(task, SubagentTask):
        return task
    try:
        return SubagentTask.model_validate(task)
    except Exception as exc:
        raise ConfigError(f"task {index}: {exc}") from None
