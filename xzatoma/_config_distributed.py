"""The configuration's ``distributed`` section: where a batch runs (Ray), and where the quota
is kept (Redis) so that many processes share it.

Its own module because its rules (a Redis URL, the Ray switch) have nothing to do with the
model endpoint or the agent; :mod:`xzatoma._config_models` makes it a section of the file.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pydantic

from ._files import shown
from ._limits import QuotaLimits
from ._redis_quota import RedisQuota
from .errors import ConfigError
from .providers._urls import _check_port as check_port

__all__ = ("DistributedSettings",)

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class DistributedSettings(pydantic.BaseModel):
    """``distributed``: batches on Ray, and one quota for many processes kept in Redis."""

    # The rules of every section (_config_models._Section), which imports this module.
    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)

    ray: bool = False
    """Run ``xzatoma batch`` on Ray (``--ray``); ``xzatoma run`` always runs in this process."""
    ray_address: str | None = None
    """With ``ray``: the cluster, ``auto`` (the one ``ray start --head`` started here),
    ``HOST:PORT``, ``ray://HOST:PORT`` or ``local`` (a new local Ray); null is Ray's default
    (the cluster ``RAY_ADDRESS`` names or the last one started here, else a new local one)."""
    workers: int = 2
    """With ``ray``: the Ray actors the batch runs in, each on its own event loop."""
    per_worker: int = 8
    """With ``ray``: the tasks each worker runs at once."""
    file_sd: str | None = None
    """With ``ray``: a Prometheus ``file_sd`` file the batch writes the workers' ``/metrics``
    targets to (and this process's, when it serves one), kept up to date as workers go."""
    redis_url: str | None = None
    """Keep the quota in this Redis (``redis://``, ``rediss://`` or ``unix://``), shared by
    every process that names the same ``tree``; null keeps it in this process."""
    tree: str = "xzatoma"
    """The quota's name in Redis: processes with the same Redis and tree share one quota."""

    def check(self) -> None:
        """The rules pydantic's types cannot say, each message naming ``distributed.KEY``."""
        for key in ("workers", "per_worker"):
            if getattr(self, key) < 1:
                raise ConfigError(f"distributed.{key} must be at least 1")
        address = self.ray_address
        if address is not None and (not address.strip() or not address.isprintable()):
            raise ConfigError(
                "distributed.ray_address must name a Ray cluster (auto, local, HOST:PORT or "
                f"ray://HOST:PORT) or be null, got {shown(address)}"
            )
        if self.file_sd is not None and not self.file_sd.strip():
            raise ConfigError("distributed.file_sd must name a file, or be null")
        if self.redis_url is not None:
            _check_redis_url(self.redis_url, "distributed.redis_url")
        if not self.tree.strip():
            raise ConfigError(
                f"distributed.tree must name the quota's tree in Redis, got {shown(self.tree)}"
            )

    def quota(self, limits: QuotaLimits) -> QuotaLimits | RedisQuota:
        """``limits`` kept in Redis under ``tree`` when ``redis_url`` is set (that needs the
        ``redis`` extra), else ``limits`` themselves, kept in this process. Nothing
        connects here: the quota's first use does."""
        if self.redis_url is None:
            return limits
        return RedisQuota(self.redis_url, tree=self.tree, limits=limits)


def _check_redis_url(url: str, what: str) -> None:
    """Refuse a Redis URL the client could not use, naming ``what``. The URL is never quoted
    back: it may hold a password."""
    if not url.startswith(_REDIS_SCHEMES):
        raise ConfigError(f"{what} must start with redis://, rediss:// or unix://")
    bad = next((i for i, ch in enumerate(url) if ch.isspace() or not ch.isprintable()), None)
    if bad is not None:
        raise ConfigError(
            f"{what} has a space or control character at position {bad}; a URL holds "
            "neither (percent-encode it, e.g. %20)"
        )
    parts = urlsplit(url)
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError(f"{what} names no socket; write unix:///path/to/redis.sock")
        return
    check_port(parts.netloc.rpartition("@")[2], what)  # the words of provider.base_url's
    database = parts.path.removeprefix("/")
    if database and not (database.isascii() and database.isdigit()):
        raise ConfigError(
            f"{what} has the path {shown(parts.path)}, which is not a database number "
            "(e.g. redis://127.0.0.1:6379/0)"
        )
