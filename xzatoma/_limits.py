"""Policy objects for a tree of agents: the shared quota, the depth rule, output truncation.

The spawner and the agent loop await a :class:`Quota` (the protocol): the in-memory
:class:`QuotaTracker` here, the embedded default, or ``RedisQuota`` (``_redis_quota.py``) that
many processes share. The tracker is plain synchronous code with tiny methods, testable
without an event loop; its awaitable methods (``acheck``...) only call them. Reservation
happens under a lock in one call, so there is no window between "is a slot free?" and "take
it" even if threads share a tracker.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, runtime_checkable

import anyio

from ._pricing import dollars
from ._result import NO_COST
from ._usage import describe_count
from .errors import ConfigError, DepthLimitExceeded, QuotaExceeded

__all__ = (
    "Clock",
    "Quota",
    "QuotaLimits",
    "QuotaStatistics",
    "QuotaTracker",
    "as_tracker",
    "check_count",
    "check_depth",
    "check_timeout",
    "snapshot",
    "truncate_utf8",
)

Clock = Callable[[], float]
"""Seconds from an arbitrary origin, never going back (anyio's clock by default)."""

TRUNCATION_MARKER = "\n[... output truncated to {limit} bytes]"


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """Limits shared by a whole tree of subagents; ``None`` means unlimited."""

    max_executions: int | None = None
    """Subagent executions that may start (failed and cancelled ones count)."""
    max_total_tokens: int | None = None
    """Tokens the whole tree may consume; charged after every model call."""
    max_total_time: float | None = None
    """Seconds from the tracker's creation after which no subagent may run."""
    max_total_cost: Decimal | float | int | str | None = None
    """US dollars the whole tree may spend; charged after every model call, like tokens.
    Read back as a ``Decimal``. Every model of the tree needs a known price (``Pricing``)."""

    def __post_init__(self) -> None:
        # A NaN, an infinity or a string here would switch the limit off or fail at the
        # first comparison, deep inside a run: refuse them where the limit is made.
        for name in ("max_executions", "max_total_tokens"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 0):
                raise ConfigError(
                    f"{name} must be a non-negative integer or None, got {describe_count(value)}"
                )
        seconds = self.max_total_time
        if seconds is not None and (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 < seconds < math.inf
        ):
            raise ConfigError(
                "max_total_time must be a positive, finite number of seconds or None, "
                f"got {describe_count(seconds)}"
            )
        if self.max_total_cost is not None:
            object.__setattr__(
                self, "max_total_cost", dollars(self.max_total_cost, "max_total_cost")
            )


@dataclass(frozen=True, slots=True)
class QuotaStatistics:
    """A frozen snapshot of a tracker: what was used, the limits, and what remains."""

    executions: int
    total_tokens: int
    elapsed: float
    limits: QuotaLimits
    remaining_executions: int | None
    remaining_tokens: int | None
    remaining_time: float | None
    total_cost: Decimal = NO_COST
    """US dollars charged (calls whose price is not known add nothing)."""
    remaining_cost: Decimal | None = None
    """US dollars left under ``max_total_cost``; ``None`` when there is no cost limit."""


def snapshot(
    limits: QuotaLimits,
    executions: int,
    tokens: int,
    elapsed: float,
    cost: Decimal,
    max_cost: Decimal | None,
) -> QuotaStatistics:
    """What a quota has used, with its limits and what remains (every :class:`Quota`'s
    ``statistics()``)."""
    return QuotaStatistics(
        executions=executions,
        total_tokens=tokens,
        elapsed=elapsed,
        limits=limits,
        remaining_executions=None
        if limits.max_executions is None
        else max(0, limits.max_executions - executions),
        remaining_tokens=None
        if limits.max_total_tokens is None
        else max(0, limits.max_total_tokens - tokens),
        remaining_time=None
        if limits.max_total_time is None
        else max(0.0, limits.max_total_time - elapsed),
        total_cost=cost,
        remaining_cost=None if max_cost is None else max(NO_COST, max_cost - cost),
    )


@runtime_checkable
class Quota(Protocol):
    """What a tree's quota does, as the spawner and the agent loop await it.

    Every method raises :class:`QuotaExceeded` for a limit reached; a quota kept elsewhere
    (``RedisQuota``) raises :class:`~xzatoma.errors.QuotaUnavailable` when it cannot be
    reached, and the spawn or run that needed it fails (it never runs unlimited).
    """

    limits: QuotaLimits
    counts_usage: bool
    """Whether a limit counts usage (tokens or dollars): a call that reported none is then
    estimated, so it cannot slip past the limit."""

    # Awaitables rather than ``async def``: an implementation may be a coroutine function
    # (RedisQuota) or do its work at once and return a done awaitable (QuotaTracker).
    def acheck(self) -> Awaitable[None]:
        """Raise if a new execution could not start now (takes nothing)."""

    def areserve(self) -> Awaitable[None]:
        """Take one execution slot, or raise and take nothing (one atomic step)."""

    def acheck_running(self) -> Awaitable[None]:
        """Raise if a running subagent must not call its model again."""

    def acharge(self, tokens: int, cost: Decimal | None = None) -> Awaitable[None]:
        """Add one model call's tokens (and dollars, when known); every sharer sees them."""

    def remaining_time(self) -> float | None:
        """Seconds left under ``max_total_time`` (never negative), or None if unlimited."""

    def statistics(self) -> QuotaStatistics:
        """A frozen snapshot: used, limits and remaining."""

    async def astatistics(self) -> QuotaStatistics:
        """:meth:`statistics` without blocking the event loop."""


class _Done(tuple[()]):
    """An awaitable that is already done: ``await DONE`` is ``None`` and never yields.

    An empty tuple whose ``__await__`` is the tuple's own C iterator, exhausted at once:
    awaiting it runs no Python frame (the in-memory tracker is awaited at every spawn and
    model call).
    """

    __slots__ = ()
    __await__ = tuple.__iter__


DONE: Awaitable[None] = _Done()  # type: ignore[assignment]


class QuotaTracker:
    """The one quota a whole agent tree shares, in this process (the default :class:`Quota`).

    A spawn calls :meth:`reserve` (atomic check-and-take of an execution slot); every model
    call is charged with :meth:`charge`; a running subagent calls :meth:`check_running`
    before each model call so it stops as soon as the tree is out of tokens or time.
    """

    __slots__ = (
        "_clock",
        "_cost",
        "_executions",
        "_last",
        "_lock",
        "_made",
        "_max_cost",
        "_started",
        "_tokens",
        "counts_usage",
        "limits",
    )

    def __init__(self, limits: QuotaLimits | None = None, *, clock: Clock | None = None) -> None:
        self.limits = limits if limits is not None else QuotaLimits()
        cost = self.limits.max_total_cost
        self._max_cost = None if cost is None else dollars(cost, "max_total_cost")
        self.counts_usage = self.limits.max_total_tokens is not None or cost is not None
        """Whether a limit counts usage (tokens or dollars): a call that reported none is
        then estimated, so it cannot slip past the limit."""
        # The runtime's one clock, anyio's, unless a test without an event loop brings one.
        self._clock: Clock = clock if clock is not None else anyio.current_time
        self._started: float | None = None
        with contextlib.suppress(Exception):  # made outside an event loop: see _elapsed
            self._started = self._clock()
        self._last = self._started
        self._made = time.monotonic()
        self._executions = 0
        self._tokens = 0
        self._cost = NO_COST
        self._lock = threading.Lock()

    def _check_usage(self) -> None:
        """Raise if the tree is out of tokens, dollars or time."""
        limits = self.limits
        if limits.max_total_tokens is not None and self._tokens >= limits.max_total_tokens:
            raise QuotaExceeded(limit="tokens", used=self._tokens, maximum=limits.max_total_tokens)
        max_cost = self._max_cost
        if max_cost is not None and self._cost >= max_cost:
            raise QuotaExceeded(limit="cost", used=self._cost, maximum=max_cost)
        if limits.max_total_time is not None:
            elapsed = self._elapsed()
            if elapsed >= limits.max_total_time:
                raise QuotaExceeded(limit="time", used=elapsed, maximum=limits.max_total_time)

    # The spawner and the loop await the ``a`` methods (the Quota protocol); each does its
    # work when called and returns DONE, an awaitable already done, so an in-memory quota
    # costs no coroutine. The plain methods are the same for code without an event loop.
    def acheck(self) -> Awaitable[None]:
        """Raise :class:`QuotaExceeded` if a new execution could not start now (takes
        nothing); returns an awaitable that is already done."""
        with self._lock:
            self._check_executions()
            self._check_usage()
        return DONE

    def check(self) -> None:
        """:meth:`acheck`, without awaiting."""
        self.acheck()  # done already: nothing to await

    def _check_executions(self) -> None:
        maximum = self.limits.max_executions
        if maximum is not None and self._executions >= maximum:
            raise QuotaExceeded(limit="executions", used=self._executions, maximum=maximum)

    def areserve(self) -> Awaitable[None]:
        """Take one execution slot, or raise :class:`QuotaExceeded` and take nothing."""
        with self._lock:
            self._check_executions()
            self._check_usage()
            self._executions += 1
        return DONE

    def reserve(self) -> None:
        """:meth:`areserve`, without awaiting."""
        self.areserve()  # done already: nothing to await

    def acheck_running(self) -> Awaitable[None]:
        """Raise :class:`QuotaExceeded` if a running subagent must not call its model again."""
        with self._lock:
            self._check_usage()
        return DONE

    def check_running(self) -> None:
        """:meth:`acheck_running`, without awaiting."""
        self.acheck_running()  # done already: nothing to await

    def acharge(self, tokens: int, cost: Decimal | None = None) -> Awaitable[None]:
        """Add the tokens (and the dollars, when known) of one model call; siblings see them
        at once.

        Only a non-negative ``int`` is taken: a negative count would refund the tree's
        tokens, and a float NaN would make every later comparison false, switching
        ``max_total_tokens`` off. Anything else raises :class:`ConfigError` and charges
        nothing (the agent loop checks a provider's usage before it gets here).
        """
        if type(tokens) is not int or tokens < 0:
            raise ConfigError(
                f"QuotaTracker.charge() takes a non-negative int token count, got "
                f"{describe_count(tokens)}; a provider's usage must be checked before it is charged"
            )
        if cost is not None and not (isinstance(cost, Decimal) and cost.is_finite() and cost >= 0):
            raise ConfigError(
                f"QuotaTracker.charge() takes a non-negative, finite Decimal cost, got {cost!r}"
            )
        with self._lock:
            self._tokens += tokens
            if cost:
                self._cost += cost
        return DONE

    def charge(self, tokens: int, cost: Decimal | None = None) -> None:
        """:meth:`acharge`, without awaiting."""
        self.acharge(tokens, cost)  # done already: nothing to await

    def record_elsewhere(self, executions: int, tokens: int, cost: Decimal) -> None:
        """Count what ran in another process on this tree's behalf (a Ray worker's task,
        under a tracker with no limit), so :meth:`statistics` covers the whole tree."""
        with self._lock:
            self._executions += executions
            self._tokens += tokens
            self._cost += cost

    async def astatistics(self) -> QuotaStatistics:
        """:meth:`statistics`, awaitable."""
        return self.statistics()

    def _elapsed(self) -> float:
        now = self._last = self._clock()
        if self._started is None:
            # Made outside an event loop (a Runtime built before anyio.run): the time since
            # then is carried onto the loop's clock at its first reading, so the limit still
            # counts from the tracker's creation.
            self._started = now - (time.monotonic() - self._made)
        return now - self._started

    def remaining_time(self) -> float | None:
        """Seconds left under ``max_total_time`` (never negative), or None if unlimited."""
        if self.limits.max_total_time is None:
            return None
        return max(0.0, self.limits.max_total_time - self._elapsed())

    def statistics(self) -> QuotaStatistics:
        """A frozen snapshot: used, limits and remaining."""
        with self._lock:
            limits = self.limits
            executions, tokens, cost = self._executions, self._tokens, self._cost
        try:
            elapsed = self._elapsed()
        except Exception:  # asked after the event loop ended: as of the last reading
            last, started = self._last, self._started
            elapsed = 0.0 if last is None or started is None else last - started
        return snapshot(limits, executions, tokens, elapsed, cost, self._max_cost)


def as_tracker(quota: QuotaLimits | Quota | None) -> Quota | None:
    """What every ``quota=`` takes: limits make a tracker of their own, a quota is shared."""
    if isinstance(quota, QuotaLimits):
        return QuotaTracker(quota)
    # A protocol's isinstance() looks up every member: the common tracker skips it.
    if quota is not None and type(quota) is not QuotaTracker and not isinstance(quota, Quota):
        raise ConfigError(
            "quota must be QuotaLimits, a QuotaTracker, a RedisQuota or None, got "
            f"{type(quota).__name__}"
        )
    return quota


def check_count(name: str, value: int | None) -> None:
    """Refuse a count (``max_turns``, ``max_concurrent``) that is not an integer of at least 1
    (``None``: the default)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} must be an integer of at least 1, got {value!r}")


def check_timeout(timeout: float | None) -> None:
    """Refuse a ``timeout`` that is not a positive number of seconds (``None``: none)."""
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
    ):
        raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")


def check_depth(depth: int, max_depth: int) -> None:
    """Raise :class:`DepthLimitExceeded` unless an agent at ``depth`` may spawn a child."""
    if depth >= max_depth:
        raise DepthLimitExceeded(max_depth=max_depth, depth=depth)


def truncate_utf8(text: str, max_bytes: int) -> tuple[str, bool]:
    """Cut ``text`` to at most ``max_bytes`` of UTF-8, marker included, on a character boundary.

    Returns the text and whether it was cut. Lone surrogates (which cannot be encoded) are
    replaced so the result is always valid UTF-8.
    """
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return (text if len(data) == len(text) or _encodable(text) else data.decode()), False
    marker = TRUNCATION_MARKER.format(limit=max_bytes).encode()
    keep = max(0, max_bytes - len(marker))
    # errors="ignore" drops a multi-byte character split at the cut, so the text stays valid.
    head = data[:keep].decode("utf-8", "ignore")
    return head + marker.decode(), True


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
