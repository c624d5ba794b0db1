"""The worker half of a Ray batch: one :class:`BatchWorker` (a Ray async actor) per worker.

A worker is a process of its own with its own event loop and its own :class:`Runtime`, built
from a :class:`WorkerSetup` the driver sends (the provider as its settings, never its API
key: see ``OpenAIProvider.__reduce__``). It runs each task it is given as a depth-1 child of
a root of its own, under the tree's quota (a ``RedisQuota``, which every worker reaches), and
returns the child's result. The task's start and end hooks are the driver's (so the depth-1
metrics are counted once, where the batch is); what the task's own children do is recorded
here, on this worker's ``/metrics``.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from ._limits import Quota, QuotaStatistics
from ._pricing import Pricing
from ._result import RunResult
from ._subagent_models import SubagentConfig, SubagentTask
from ._tools import Tool
from .errors import ConfigError
from .providers._base import Provider

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ("BatchWorker", "WorkerInfo", "WorkerSetup", "check_sendable", "metrics_target")


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """What a worker needs to run a batch's tasks, sent to it once per batch."""

    provider: Provider
    subagents: SubagentConfig
    quota: Quota | None
    """The tree's quota when every process can reach it (``RedisQuota``); ``None``: the
    driver's in-memory tracker, unlimited, which the driver brings up to date at the end
    of the batch with what each worker counted (:meth:`BatchWorker.forget`)."""
    tools: tuple[Tool[Any], ...]
    pricing: Pricing
    telemetry: bool
    session_id: str
    """The driver's runtime's: the workers' spans carry it too."""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """Where a worker runs: its index in the executor, process, host and ``/metrics``."""

    index: int
    pid: int
    host: str
    metrics_url: str | None

    @property
    def metrics_target(self) -> str | None:
        """``host:port`` of its ``/metrics`` (for Prometheus), when it serves one."""
        return None if self.metrics_url is None else metrics_target(self.metrics_url)


def metrics_target(url: str) -> str:
    """``host:port`` of a ``/metrics`` URL, as Prometheus lists its targets."""
    return url.removeprefix("http://").removesuffix("/metrics")


class BatchWorker:
    """A Ray async actor that runs batch tasks, up to its ``max_concurrency`` at once.

    Args:
        index: Its place among the executor's workers (named in messages and metrics).
        metrics_host: Serve this worker's metrics at ``/metrics`` on a free port of this
            address (``None``: no server).
        setup: Called once, first, in the worker process: configure telemetry exporters
            (OTLP) or anything else a worker needs.
    """

    def __init__(
        self, index: int, metrics_host: str | None, setup: Callable[[], object] | None
    ) -> None:
        if setup is not None:
            setup()
        self._server: Any = None
        url = None
        if metrics_host is not None:
            from .telemetry import start_metrics_server

            self._server = start_metrics_server(metrics_host, 0)
            url = self._server.url
            if metrics_host in ("0.0.0.0", "::", ""):  # every interface: name this node's
                import ray.util

                node = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
                url = f"http://{node}:{self._server.port}/metrics"
        self._info = WorkerInfo(index, os.getpid(), socket.gethostname(), url)
        self._batches: dict[int, tuple[WorkerSetup, Runtime, dict[tuple[object, ...], Any]]] = {}
        self._running: dict[tuple[int, int], anyio.CancelScope] = {}
        # Cancels that came before their task started (Ray may start a worker's calls in
        # another order than they were sent): the task is cancelled as it starts.
        self._cancelled: dict[int, set[int] | None] = {}

    async def info(self) -> WorkerInfo:
        return self._info

    async def configure(self, batch: int, setup: WorkerSetup) -> None:
        """Make the runtime batch ``batch``'s tasks run on (a batch's first call)."""
        from ._runtime import Runtime

        runtime = Runtime(
            setup.provider,
            subagents=setup.subagents,
            quota=setup.quota,
            telemetry=None if setup.telemetry else False,
            pricing=setup.pricing,
            session_id=setup.session_id,
        )
        self._batches[batch] = (setup, runtime, {})

    async def forget(self, batch: int) -> QuotaStatistics | None:
        """Drop batch ``batch``'s runtime (its last call); returns what its tasks took from
        the runtime's own tracker when the tree's quota is the driver's (else ``None``)."""
        made = self._batches.pop(batch, None)
        self._cancelled.pop(batch, None)
        if made is None or made[0].quota is not None:
            return None
        return made[1].tracker.statistics()

    async def run(
        self,
        batch: int,
        index: int,
        task: SubagentTask,
        remaining: float,
        trace_context: dict[str, str] | None,
    ) -> RunResult:
        """Run task ``index`` of ``batch`` with ``remaining`` seconds of the batch's time."""
        setup, runtime, agents = self._batches[batch]
        tools = (*setup.tools, runtime.subagent_tool, runtime.parallel_tool)
        root = runtime.batch_root(tools, None if remaining == math.inf else remaining)
        root.child_agents = agents  # one set of child agents for all of this batch's tasks
        child = runtime.spawner.child_of(root, task.label, index)
        scope = self._running[(batch, index)] = anyio.CancelScope()
        if batch in self._cancelled:
            early = self._cancelled[batch]
            if early is None or index in early:
                scope.cancel()  # cancelled before it started: it ends at once, cancelled
        attached = _attach(trace_context)
        try:
            with scope:
                await runtime.spawner.run_announced_elsewhere(child, task)
        finally:
            del self._running[(batch, index)]
            _detach(attached)
        return child.result()

    async def running(self) -> int:
        """Tasks running here now (of any batch)."""
        return len(self._running)

    async def cancel(self, batch: int, indexes: Sequence[int] | None = None) -> int:
        """Cancel batch ``batch``'s tasks (those of ``indexes``; all when None): those
        running now, and those that start later (a call that overtook its task)."""
        cancelled = 0
        for (b, index), scope in list(self._running.items()):
            if b == batch and (indexes is None or index in indexes):
                scope.cancel()
                cancelled += 1
        if indexes is None:
            self._cancelled[batch] = None
        else:
            early = self._cancelled.setdefault(batch, set())
            if early is not None:
                early.update(indexes)
        return cancelled


def _attach(carrier: dict[str, str] | None) -> object:
    """Make the driver's span (sent as W3C trace context) current here, when tracing."""
    if not carrier:
        return None
    from opentelemetry import context, propagate

    return context.attach(propagate.extract(carrier))


def _detach(token: object) -> None:
    if token is not None:
        from opentelemetry import context

        context.detach(token)  # type: ignore[arg-type]


def check_sendable(setup: WorkerSetup) -> None:
    """Refuse, before anything runs, a setup that cannot travel to the workers."""
    from ray import cloudpickle

    try:
        cloudpickle.dumps(setup)  # type: ignore[no-untyped-call]
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"the batch's provider, tools or pricing cannot be sent to Ray workers: {exc} "
            "(tools must be picklable: functions of an importable module, or registered "
            "with cloudpickle.register_pickle_by_value)"
        ) from None
