"""``RedisQuota``: one tree's quota kept in Redis, shared by every process that names the tree.

Executions, tokens, dollars and the start of the time limit live in one Redis hash,
``xzatoma:quota:{tree}``. Every step (check, check-and-reserve, charge, snapshot) is one run
of one Lua script, which Redis executes atomically: 50 processes racing for the last slot
start exactly one, and a charge is seen by every process at once. The hash records the
limits it was made with, so processes that disagree about them are told so instead of each
enforcing its own; it expires ``expire`` seconds after its last use, so an abandoned tree
does not stay in Redis forever.

A Redis that is down, refuses us or does not answer within ``timeout`` raises
:class:`~xzatoma.errors.QuotaUnavailable`: the spawn that needed it is refused
(``execution_failed``), never run unlimited.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from decimal import ROUND_CEILING, Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ._extras import install_hint
from ._limits import QuotaLimits, QuotaStatistics, snapshot
from ._pricing import dollars
from ._result import NO_COST
from .errors import ConfigError, QuotaExceeded, QuotaUnavailable

__all__ = ("RedisQuota",)

NANO = Decimal("0.000000001")
"""Dollars are kept in Redis as whole nano-dollars (charges rounded up, never down)."""

_SCRIPT = """
local key = KEYS[1]
local op, limits, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local stored = redis.call('HGET', key, 'limits')
if not stored then
  redis.call('HSET', key, 'limits', limits, 'started', now, 'executions', 0, 'tokens', 0,
             'nanos', 0)
elseif stored ~= limits then
  return {'limits', stored}
end
if op == 'charge' then
  redis.call('HINCRBY', key, 'tokens', ARGV[8])
  redis.call('HINCRBY', key, 'nanos', ARGV[9])
end
local v = redis.call('HMGET', key, 'executions', 'tokens', 'nanos', 'started')
local executions, tokens, nanos = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
local elapsed = now - tonumber(v[4])
local code = 'ok'
if op == 'check' or op == 'reserve' or op == 'running' then
  local max_exec, max_tokens = tonumber(ARGV[4]), tonumber(ARGV[5])
  local max_nanos, max_micros = tonumber(ARGV[6]), tonumber(ARGV[7])
  if op ~= 'running' and max_exec >= 0 and executions >= max_exec then
    code = 'executions'
  elseif max_tokens >= 0 and tokens >= max_tokens then
    code = 'tokens'
  elseif max_nanos >= 0 and nanos >= max_nanos then
    code = 'cost'
  elseif max_micros >= 0 and elapsed >= max_micros then
    code = 'time'
  end
  if code == 'ok' and op == 'reserve' then
    executions = redis.call('HINCRBY', key, 'executions', 1)
  end
end
redis.call('EXPIRE', key, ttl)
return {code, executions, tokens, nanos, elapsed}
"""


class RedisQuota:
    """A quota shared through Redis by every process (and Ray worker) that names ``tree``.

    ``Runtime(provider, quota=RedisQuota("redis://127.0.0.1:6379/0", tree="nightly",
    limits=QuotaLimits(max_executions=500)))`` in as many processes as you like: together
    they start at most 500 subagents. Needs the ``redis`` extra (``pip install '.[redis]'``
    in a checkout) and an asyncio event loop.

    Args:
        url: The Redis server, ``redis://host:port/db`` (``rediss://`` for TLS).
        tree: The tree's name: processes with the same name (and Redis) share one quota.
        limits: The tree's limits; every process of the tree must give the same ones.
        expire: Seconds after its last use that Redis forgets the tree (default a day).
        timeout: Seconds to wait for Redis (connecting, and each answer) before the spawn
            that asked fails with :class:`~xzatoma.errors.QuotaUnavailable`.
        max_connections: Connections this process opens to Redis at most (spawns past it
            wait, within ``timeout``, for one to be free).

    Raises:
        ConfigError: An invalid argument, or the ``redis`` extra is not installed.
    """

    __slots__ = (
        "_async",
        "_max_nanos",
        "_seen",
        "_sync",
        "counts_usage",
        "expire",
        "key",
        "limits",
        "max_connections",
        "shown_url",
        "timeout",
        "tree",
        "url",
    )

    def __init__(
        self,
        url: str,
        *,
        tree: str,
        limits: QuotaLimits | None = None,
        expire: float = 86_400,
        timeout: float = 5.0,
        max_connections: int = 50,
    ) -> None:
        _require_redis()
        if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"redis_url must be a redis://, rediss:// or unix:// URL, got {url!r}"
            )
        if not isinstance(tree, str) or not tree.strip():
            raise ConfigError(f"tree must name the quota's tree (a non-empty string), got {tree!r}")
        for name, value in (("expire", expire), ("timeout", timeout)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value < math.inf
            ):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or max_connections < 1
        ):
            raise ConfigError(
                f"max_connections must be an integer of at least 1, got {max_connections!r}"
            )
        self.url = url
        self.shown_url = _without_password(url)
        self.tree = tree
        self.key = f"xzatoma:quota:{tree}"
        self.limits = limits if limits is not None else QuotaLimits()
        cost = self.limits.max_total_cost
        self._max_nanos = None if cost is None else _nanos(dollars(cost, "max_total_cost"))
        self.counts_usage = self.limits.max_total_tokens is not None or cost is not None
        self.expire = max(1, math.ceil(expire))
        self.timeout = float(timeout)
        self.max_connections = max_connections
        self._async: tuple[asyncio.AbstractEventLoop, Any] | None = None
        self._sync: Any = None
        self._seen: tuple[float, float] | None = None  # (time.monotonic(), elapsed) last read

    def __repr__(self) -> str:
        return f"RedisQuota({self.shown_url!r}, tree={self.tree!r}, limits={self.limits!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Sent to another process (a Ray worker) as its settings; it connects on first use."""
        return (
            _rebuild,
            (self.url, self.tree, self.limits, self.expire, self.timeout, self.max_connections),
        )

    # -- the Quota protocol ------------------------------------------------------------------
    async def acheck(self) -> None:
        self._raise_for(await self._run("check"), executions=True)

    async def areserve(self) -> None:
        self._raise_for(await self._run("reserve"), executions=True)

    async def acheck_running(self) -> None:
        self._raise_for(await self._run("running"), executions=False)

    async def acharge(self, tokens: int, cost: Decimal | None = None) -> None:
        if type(tokens) is not int or tokens < 0:
            raise ConfigError(
                f"RedisQuota.acharge() takes a non-negative int token count, got {tokens!r}"
            )
        if cost is not None and not (isinstance(cost, Decimal) and cost.is_finite() and cost >= 0):
            raise ConfigError(
                f"RedisQuota.acharge() takes a non-negative, finite Decimal cost, got {cost!r}"
            )
        await self._run("charge", tokens, _nanos(cost) if cost else 0)

    def remaining_time(self) -> float | None:
        limit = self.limits.max_total_time
        if limit is None:
            return None
        seen = self._seen
        if seen is None:
            return float(limit)
        at, elapsed = seen
        return max(0.0, limit - elapsed - (time.monotonic() - at))

    async def astatistics(self) -> QuotaStatistics:
        return self._statistics(await self._run("stats"))

    def statistics(self) -> QuotaStatistics:
        """A snapshot read from Redis (blocks for one round trip; :meth:`astatistics` does
        not). Raises :class:`QuotaUnavailable` when Redis cannot be reached."""
        try:
            script = self._sync
            if script is None:
                import redis

                client = redis.Redis.from_url(self.url, **self._options(asynchronous=False))
                script = self._sync = client.register_script(_SCRIPT)
            reply = script(keys=[self.key], args=self._args("stats"))
        except Exception as exc:
            raise self._unavailable(exc) from None
        return self._statistics(self._decoded(reply))

    async def aclose(self) -> None:
        """Close this process's connections to Redis (the tree stays there). A later call
        connects again."""
        made, self._async = self._async, None
        if made is not None:
            await made[1].registered_client.aclose(close_connection_pool=True)
        self.close()

    def close(self) -> None:
        """Close the blocking connection :meth:`statistics` opened, if any."""
        script, self._sync = self._sync, None
        if script is not None:
            script.registered_client.close()

    async def __aenter__(self) -> RedisQuota:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- Redis -------------------------------------------------------------------------------
    def _options(self, *, asynchronous: bool) -> dict[str, Any]:
        from redis.backoff import NoBackoff

        if asynchronous:
            from redis.asyncio.retry import Retry
        else:
            from redis.retry import Retry  # type: ignore[assignment]
        from redis.exceptions import ConnectionError as Unreachable

        # One retry at once, of a connection error only (a connection Redis closed while
        # idle): a timed-out call may have run the script, and reserving or charging twice
        # would count twice.
        return {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 1, supported_errors=(Unreachable,)),
        }

    def _script(self) -> Any:
        """The script on this event loop's client (a client is bound to the loop that made it)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise QuotaUnavailable(
                "RedisQuota runs on asyncio only (the redis package's asyncio client); "
                "run the tree with anyio's asyncio backend"
            ) from None
        made = self._async
        if made is not None and made[0] is loop:
            return made[1]
        import redis.asyncio

        pool = redis.asyncio.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=self.timeout,
            **self._options(asynchronous=True),
        )
        script = redis.asyncio.Redis(connection_pool=pool).register_script(_SCRIPT)
        self._async = (loop, script)
        return script

    def _args(self, op: str, tokens: int = 0, nanos: int = 0) -> list[str | int]:
        limits = self.limits
        time_limit = limits.max_total_time
        return [
            op,
            self._limits_text(),
            self.expire,
            _or_minus_one(limits.max_executions),
            _or_minus_one(limits.max_total_tokens),
            _or_minus_one(self._max_nanos),
            -1 if time_limit is None else math.ceil(time_limit * 1_000_000),
            tokens,
            nanos,
        ]

    def _limits_text(self) -> str:
        limits = self.limits
        return json.dumps(
            [
                limits.max_executions,
                limits.max_total_tokens,
                # 60 and 60.0 are one limit: written the same whichever a process was given.
                None if limits.max_total_time is None else float(limits.max_total_time),
                self._max_nanos,
            ]
        )

    async def _run(
        self, op: str, tokens: int = 0, nanos: int = 0
    ) -> tuple[str, int, int, int, int]:
        try:
            script = self._script()
            reply = await script(keys=[self.key], args=self._args(op, tokens, nanos))
        except QuotaUnavailable:
            raise
        except Exception as exc:
            raise self._unavailable(exc) from None
        return self._decoded(reply)

    def _decoded(self, reply: list[Any]) -> tuple[str, int, int, int, int]:
        code = _text(reply[0])
        if code == "limits":
            raise QuotaUnavailable(
                f"the quota tree {self.tree!r} at {self.shown_url} was made with other limits "
                f"(executions, tokens, seconds, nano-dollars: {_text(reply[1])}) than this "
                f"process's ({self._limits_text()}); give every process of a tree the same "
                "limits, or name another tree"
            )
        executions, tokens, nanos, micros = (int(x) for x in reply[1:5])
        self._seen = (time.monotonic(), micros / 1_000_000)
        return code, executions, tokens, nanos, micros

    def _raise_for(self, reply: tuple[str, int, int, int, int], *, executions: bool) -> None:
        code, used, tokens, nanos, micros = reply
        if code == "ok":
            return
        limits = self.limits
        if code == "executions" and executions:
            assert limits.max_executions is not None
            raise QuotaExceeded(limit="executions", used=used, maximum=limits.max_executions)
        if code == "tokens":
            assert limits.max_total_tokens is not None
            raise QuotaExceeded(limit="tokens", used=tokens, maximum=limits.max_total_tokens)
        if code == "cost":
            assert self._max_nanos is not None
            raise QuotaExceeded(limit="cost", used=nanos * NANO, maximum=self._max_nanos * NANO)
        if code == "time":
            assert limits.max_total_time is not None
            raise QuotaExceeded(
                limit="time", used=micros / 1_000_000, maximum=limits.max_total_time
            )

    def _unavailable(self, exc: BaseException) -> QuotaUnavailable:
        what = str(exc) or type(exc).__name__
        return QuotaUnavailable(
            f"the shared quota (tree {self.tree!r}) at {self.shown_url} could not be reached "
            f"(timeout {self.timeout:g}s, one retry): {what}; no subagent starts without it "
            "(is redis-server running there?)"
        )

    def _statistics(self, reply: tuple[str, int, int, int, int]) -> QuotaStatistics:
        _, executions, tokens, nanos, micros = reply
        cost = nanos * NANO if nanos else NO_COST
        max_cost = None if self._max_nanos is None else self._max_nanos * NANO
        return snapshot(self.limits, executions, tokens, micros / 1_000_000, cost, max_cost)


def _rebuild(
    url: str, tree: str, limits: QuotaLimits, expire: float, timeout: float, connections: int
) -> RedisQuota:
    return RedisQuota(
        url, tree=tree, limits=limits, expire=expire, timeout=timeout, max_connections=connections
    )


def _nanos(cost: Decimal) -> int:
    return int((cost / NANO).to_integral_value(rounding=ROUND_CEILING))


def _or_minus_one(value: int | None) -> int:
    return -1 if value is None else value


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _without_password(url: str) -> str:
    """The URL as messages show it: any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _require_redis() -> None:
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        raise ConfigError(f"RedisQuota needs the redis extra: {install_hint('redis')}") from None
