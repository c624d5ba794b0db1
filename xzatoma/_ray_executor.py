"""``RayExecutor``: a parallel batch run by Ray async actors, with the in-process semantics.

The driver (the process that calls ``run_batch``) keeps the batch: it hands out tasks in
input order to ``workers`` actors, at most ``per_worker`` at once on each, and announces each
task's start and end on its own hooks (progress, the depth-1 metrics, the journal), adopting
the result the worker sends back. ``fail_fast``, the batch's timeout and a cancellation from
outside (Ctrl-C) stop the remote work too: the driver tells every worker to cancel what it
runs and waits (``cancel_grace`` seconds at most) for those results. A worker that dies
mid-batch fails the tasks it was running (``execution_failed``, naming the worker); they
are not retried, and the rest of the batch goes to the workers left.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ._extras import install_hint
from ._limits import Quota, QuotaTracker, check_count
from ._ray_worker import BatchWorker, WorkerInfo, WorkerSetup
from ._result import RunResult
from ._run import Batch, Run
from ._subagent_models import BatchResult, SubagentTask
from .errors import ConfigError

if TYPE_CHECKING:
    from ._spawn import Spawner

__all__ = ("RayExecutor",)

_batch_ids = itertools.count(1)


class RayExecutor:
    """Runs ``Runtime.run_batch`` on Ray: ``run_batch(tasks, executor=RayExecutor(...))``.

    Needs the ``ray`` extra (``pip install '.[ray]'`` in a checkout) and anyio's asyncio
    backend. The workers are started at the first batch and kept for the next ones (and their
    ``/metrics``) until :meth:`close` or the end of a ``with`` block.

    Args:
        address: The Ray cluster: ``None`` joins the one this process already joined, or
            starts a local one; ``"auto"`` joins the cluster ``ray start --head`` started
            on this machine; ``"ray://host:10001"`` a remote one.
        workers: Ray actors (worker processes) the batch runs in.
        per_worker: Tasks each worker runs at once, on its own event loop.
        metrics_host: Each worker serves its metrics at ``/metrics`` on a free port of this
            address (``None``: no server). ``workers_info`` says where.
        file_sd: A Prometheus ``file_sd_configs`` file to write the workers' targets to
            (and ``driver_target``'s), rewritten whenever the workers change.
        driver_target: The driver's own ``/metrics`` as ``host:port``, listed in
            ``file_sd``: the batch's depth-1 executions are counted there.
        worker_setup: Called once in each worker process before its first task (configure
            an OTLP exporter there, for instance). Sent to the workers with cloudpickle.
        worker_options: Ray actor options (``num_cpus``, ``resources``,
            ``scheduling_strategy``...); by default ``num_cpus=0`` (agents wait on models;
            give CPUs to CPU-heavy tools) and spread over the cluster's nodes.
        init_options: Passed to ``ray.init`` when this executor starts Ray.
        cancel_grace: Seconds to wait for a worker's cancelled tasks to report back.

    Raises:
        ConfigError: An invalid argument, or the ``ray`` extra is not installed.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int = 2,
        per_worker: int = 8,
        metrics_host: str | None = "127.0.0.1",
        file_sd: str | os.PathLike[str] | None = None,
        driver_target: str | None = None,
        worker_setup: Callable[[], object] | None = None,
        worker_options: Mapping[str, Any] | None = None,
        init_options: Mapping[str, Any] | None = None,
        cancel_grace: float = 30.0,
    ) -> None:
        _require_ray()
        check_count("workers", workers)
        check_count("per_worker", per_worker)
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ConfigError(f"ray_address must be a cluster address or None, got {address!r}")
        self.address = address
        self.workers = workers
        self.per_worker = per_worker
        self.metrics_host = metrics_host
        self.file_sd = None if file_sd is None else Path(file_sd)
        self.driver_target = driver_target
        self.cancel_grace = float(cancel_grace)
        self._setup = worker_setup
        self._options = {"num_cpus": 0, "scheduling_strategy": "SPREAD", **(worker_options or {})}
        self._init_options = {"include_dashboard": False, **(init_options or {})}
        self._actors: list[Any] = []
        self._info: list[WorkerInfo] = []
        self._lost: dict[int, str] = {}

    def __repr__(self) -> str:
        return (
            f"RayExecutor(address={self.address!r}, workers={self.workers}, "
            f"per_worker={self.per_worker})"
        )

    @property
    def workers_info(self) -> tuple[WorkerInfo, ...]:
        """The workers started (pid, host, ``/metrics``), in their order."""
        return tuple(self._info)

    @property
    def lost(self) -> Mapping[int, str]:
        """The workers lost so far, by index, and how."""
        return dict(self._lost)

    async def running(self) -> tuple[int, ...]:
        """Tasks each worker is running now (a lost worker: 0), in the workers' order."""
        counts = []
        for index, actor in enumerate(self._actors):
            counts.append(0 if index in self._lost else await actor.running.remote())
        return tuple(counts)

    # -- the workers -------------------------------------------------------------------------
    async def start(self) -> tuple[WorkerInfo, ...]:
        """Start the workers (``run_batch`` does it at the first batch); returns where they run."""
        if self._actors and not self._lost:
            return self.workers_info
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, **self._init_options)
        self.close()
        actor = ray.remote(BatchWorker)
        self._actors = [
            actor.options(max_concurrency=self.per_worker + 8, **self._options).remote(
                i, self.metrics_host, self._setup
            )
            for i in range(self.workers)
        ]
        self._info = [await a.info.remote() for a in self._actors]
        self._write_file_sd()
        return self.workers_info

    def close(self) -> None:
        """Stop the workers (a later batch starts new ones). Idempotent."""
        if self._actors:
            import ray

            for a in self._actors:
                with contextlib.suppress(Exception):  # already gone
                    ray.kill(a)
        self._actors, self._info, self._lost = [], [], {}

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _write_file_sd(self) -> None:
        if self.file_sd is None:
            return
        groups: list[dict[str, Any]] = []
        if self.driver_target is not None:
            groups.append({"targets": [self.driver_target], "labels": {"role": "driver"}})
        for info in self._info:
            if info.metrics_target is not None and info.index not in self._lost:
                labels = {"role": "worker", "worker": str(info.index)}
                groups.append({"targets": [info.metrics_target], "labels": labels})
        # Written beside and renamed over: Prometheus never reads half a file.
        folder = self.file_sd.parent
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".xzatoma-sd-", suffix=".json")
        os.fchmod(fd, 0o644)  # mkstemp makes it 0600: Prometheus runs as its own user
        with os.fdopen(fd, "w") as out:
            json.dump(groups, out, indent=1)
        Path(tmp).replace(self.file_sd)

    # -- a batch -----------------------------------------------------------------------------
    async def run_batch(
        self,
        spawner: Spawner,
        parent: Run,
        tasks: Sequence[SubagentTask],
        setup: WorkerSetup,
        *,
        max_concurrent: int | None = None,
        fail_fast: bool = False,
        on_end: Callable[[int, RunResult], bool] | None = None,
    ) -> BatchResult:
        """Run ``tasks`` as the children of ``parent`` on the workers (``Spawner.run_batch``'s
        semantics: results in input order, never-started tasks ``cancelled``)."""
        _require_asyncio()
        await self.start()
        batch_id = next(_batch_ids)
        await self._configure(batch_id, setup)
        count = len(tasks)
        children: list[Run | None] = [None] * count
        batch = Batch(parent, None, count)
        parent.hooks.batch_started(parent, batch)
        pending = iter(range(count))
        carrier = _trace_context()
        tracker = parent.quota if setup.quota is None else None
        limit = max_concurrent or math.inf
        try:
            async with anyio.create_task_group() as tg:

                async def slot(worker: int) -> None:
                    while worker not in self._lost:
                        index = next(pending, None)
                        if index is None or parent.remaining_time() == 0:
                            return
                        await anyio.lowlevel.checkpoint_if_cancelled()
                        task = tasks[index]
                        child = children[index] = spawner.child_of(parent, task.label, index)
                        parent.hooks.subagent_started(child)
                        try:
                            await self._run_one(worker, batch_id, (index, task, child), carrier)
                        finally:
                            if child.status is None:  # cancelled from outside before an answer
                                child.interrupted(None)
                            child.attach()
                            parent.hooks.subagent_ended(child)
                            if on_end is not None and not on_end(index, child.result()):
                                tg.cancel_scope.cancel()
                        if fail_fast and not child.result().succeeded:
                            tg.cancel_scope.cancel()

                slots = 0
                for _ in range(self.per_worker):
                    for worker in range(self.workers):
                        if slots < min(count, limit):
                            tg.start_soon(slot, worker)
                            slots += 1
        finally:
            every_worker_lost = len(self._lost) == self.workers
            ended = [
                child
                if child is not None
                else self._never_started(spawner, parent, task, i, every_worker_lost)
                for i, (task, child) in enumerate(zip(tasks, children, strict=True))
            ]
            batch.result = BatchResult.of(
                [child.result() for child in ended], parent.now() - batch.started
            )
            parent.hooks.batch_ended(parent, batch)
            with anyio.CancelScope(shield=True):
                await self._forget(batch_id, tracker)
        return batch.result

    async def _configure(self, batch_id: int, setup: WorkerSetup) -> None:
        for index, actor in enumerate(self._actors):
            try:
                await actor.configure.remote(batch_id, setup)
            except Exception as exc:
                if not _is_lost(exc):
                    raise ConfigError(
                        f"Ray worker {index} could not set up the batch: {exc}"
                    ) from exc
                self._worker_lost(index, exc)

    async def _forget(self, batch_id: int, tracker: Quota | None) -> None:
        """End the batch on every worker; the driver's in-memory ``tracker`` (unlimited) is
        told what each worker's tasks took, so its statistics cover the whole tree."""
        for index, actor in enumerate(self._actors):
            if index in self._lost:
                continue
            try:
                with anyio.move_on_after(self.cancel_grace):
                    used = await actor.forget.remote(batch_id)
                    if used is not None and isinstance(tracker, QuotaTracker):
                        tracker.record_elsewhere(
                            used.executions, used.total_tokens, used.total_cost
                        )
            except Exception as exc:
                if _is_lost(exc):
                    self._worker_lost(index, exc)

    async def _run_one(
        self,
        worker: int,
        batch_id: int,
        job: tuple[int, SubagentTask, Run],
        carrier: dict[str, str] | None,
    ) -> None:
        """Task ``index`` on ``worker``; ``child`` (the driver's record of it) ends as the
        remote run did, or failed for a lost worker; a cancellation cancels the remote run
        and waits for its result before it goes on."""
        index, task, child = job
        actor = self._actors[worker]
        ref = actor.run.remote(batch_id, index, task, child.remaining_time(), carrier)
        try:
            try:
                result: RunResult = await ref
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    actor.cancel.remote(batch_id, [index])
                    with anyio.move_on_after(self.cancel_grace):
                        try:
                            child.adopt(await ref)
                        except Exception as exc:  # lost meanwhile: recorded, still cancelled
                            self._ended_remotely(worker, child, exc)
                raise
        except Exception as exc:
            self._ended_remotely(worker, child, exc)
            return
        child.adopt(result)

    def _ended_remotely(self, worker: int, child: Run, exc: Exception) -> None:
        """End ``child`` for what its remote run raised: its worker lost, or a failure."""
        if _is_lost(exc):
            self._worker_lost(worker, exc)
            child.finish("failed", "execution_failed", self._lost_message(worker, exc))
        else:
            why = f"Ray worker {worker} failed the task: {_first_line(exc)}"
            child.finish("failed", "execution_failed", why)

    def _worker_lost(self, worker: int, exc: BaseException) -> None:
        if worker not in self._lost:
            self._lost[worker] = _first_line(exc)
            self._write_file_sd()

    def _lost_message(self, worker: int, exc: BaseException) -> str:
        info = self._info[worker] if worker < len(self._info) else None
        where = f" (pid {info.pid} on {info.host})" if info is not None else ""
        return (
            f"Ray worker {worker}{where} was lost while it ran this task: {_first_line(exc)}; "
            "the task was not retried (run the batch again with its journal to run it)"
        )

    def _never_started(
        self, spawner: Spawner, parent: Run, task: SubagentTask, index: int, no_worker: bool
    ) -> Run:
        from ._spawn import Refused

        child = spawner.child_of(parent, task.label, index)
        if no_worker:
            lost = "; ".join(f"worker {i}: {why}" for i, why in sorted(self._lost.items()))
            refusal = Refused(
                "execution_failed",
                f"never started: every Ray worker of the batch was lost ({lost})",
            )
        else:
            refusal = Refused("cancelled", "cancelled before it started", status="cancelled")
        return spawner.refuse(child, refusal)


def _trace_context() -> dict[str, str] | None:
    """The current span and baggage (the session id) as W3C headers: the workers' spans nest
    under the driver's and carry its session."""
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def _is_lost(exc: BaseException) -> bool:
    import ray.exceptions

    return isinstance(exc, ray.exceptions.RayActorError | ray.exceptions.ActorUnavailableError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError(f"RayExecutor needs the ray extra: {install_hint('ray')}") from None


def _require_asyncio() -> None:
    import sniffio

    if sniffio.current_async_library() != "asyncio":
        raise ConfigError(
            "RayExecutor runs on asyncio only: run the batch with anyio's asyncio backend"
        )
