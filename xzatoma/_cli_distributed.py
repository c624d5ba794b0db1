"""The command line's scale-out: the quota shared through Redis (``--redis-url``), checked
once before anything runs, and a batch's Ray workers (``--ray``)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._redis_quota import RedisQuota
from .errors import ConfigError, QuotaUnavailable

if TYPE_CHECKING:
    from ._limits import QuotaLimits
    from ._ray_executor import RayExecutor
    from .config import XzatomaConfig
    from .telemetry import MetricsServer

__all__ = ("check_distributed", "check_reachable", "ray_executor")

_QUOTA_KEYS = ("max_executions", "max_total_tokens", "max_total_time", "max_total_cost")
_RAY_FLAGS = (("--workers", "workers"), ("--per-worker", "per_worker"), ("--file-sd", "file_sd"))


def check_distributed(args: argparse.Namespace, config: XzatomaConfig) -> None:
    """Refuse, before anything runs, a scale-out flag that would do nothing, and a Ray batch
    with a quota its workers could not reach (one kept in this process)."""
    d = config.distributed
    batch = args.command == "batch"
    given = [flag for flag, dest in _RAY_FLAGS if getattr(args, dest, None) is not None]
    if batch and given and not d.ray:
        raise ConfigError(
            f"{' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} to a batch on "
            "Ray, and this one is not: add --ray [ADDRESS] (or distributed.ray: true in the "
            "--config file)"
        )
    if batch and d.ray and d.file_sd is not None and not config.telemetry.enabled:
        raise ConfigError(
            "--file-sd lists the /metrics of the workers, which serve one only when the batch "
            "does: add --metrics-port PORT (or telemetry.enabled in the --config file)"
        )
    if args.quota_tree is not None and d.redis_url is None:
        raise ConfigError(
            "--quota-tree names a quota kept in Redis, and there is none: add --redis-url URL "
            "(or distributed.redis_url in the --config file)"
        )
    s = config.agent.subagent
    limited = [f"agent.subagent.{key}" for key in _QUOTA_KEYS if getattr(s, key) is not None]
    if batch and d.ray and d.redis_url is None and limited:
        raise ConfigError(
            f"a batch on Ray needs its quota ({', '.join(limited)}) where every worker "
            "reaches it: add --redis-url URL (or distributed.redis_url in the --config file), "
            "or run the batch without Ray"
        )


def check_reachable(quota: QuotaLimits | RedisQuota) -> None:
    """Read a quota kept in Redis once, so a Redis that is down or slow, or a tree made with
    other limits, is one error line before anything runs, not a run whose every spawn
    fails. It blocks, for one round trip: call it before the event loop starts."""
    if isinstance(quota, RedisQuota):
        try:
            quota.statistics()
        except QuotaUnavailable as exc:
            raise ConfigError(str(exc)) from None
        finally:
            quota.close()  # the blocking connection; the run opens its own on its loop


def ray_executor(config: XzatomaConfig, metrics: MetricsServer | None) -> RayExecutor | None:
    """The Ray workers ``distributed`` asks for (None: the batch runs in this process).
    Imported only then: Ray is an extra, and RayExecutor says which to install. With
    ``metrics`` (this process's ``/metrics``), each worker serves its own on the same host,
    and ``distributed.file_sd`` lists them all for Prometheus."""
    if not config.distributed.ray:
        return None
    from ._ray_executor import RayExecutor
    from ._ray_worker import metrics_target

    d = config.distributed
    return RayExecutor(
        d.ray_address,
        workers=d.workers,
        per_worker=d.per_worker,
        metrics_host=None if metrics is None else metrics.host,
        file_sd=d.file_sd,
        driver_target=None if metrics is None else metrics_target(metrics.url),
    )
