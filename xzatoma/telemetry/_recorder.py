"""``SubagentMetrics``: the Python form of the seed's panic-safe recorder of one execution.

It counts an execution and raises ``active_count`` when made, records its outcome exactly
once, and, used as a context manager, records ``cancelled`` or ``execution_failed`` for an
exit that recorded nothing, so ``executions = completions + errors`` and ``active = 0`` hold
at rest whatever happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Final, get_args

import anyio

from .._result import ANSWERED, AnswerStatus, ErrorType
from .._run import loop_clock
from . import _names as n
from ._attributes import SHARED, AttributeSets
from ._metrics import NO_EXEMPLARS, Instruments, current_instruments
from ._tally import Key as _Key
from ._tally import Tally

__all__ = ("SubagentMetrics",)

_ERROR_TYPES: Final = frozenset(get_args(ErrorType))


class SubagentMetrics:
    """Records one subagent execution: counted when made, its outcome exactly once.

    Making one adds 1 to ``subagent.executions`` and ``subagent.active_count`` at ``depth``.
    Then exactly one of :meth:`record_completion` or :meth:`record_error` takes effect (a
    second call is ignored and returns False); either records the duration, the turns and
    tokens when there were any, and brings ``active_count`` back down. Used as a context
    manager, an exit that recorded nothing records ``cancelled`` on cancellation and
    ``execution_failed`` otherwise (an exception, or a caller that forgot), so the invariant
    ``executions = completions + errors`` holds whatever the exit.

    Args:
        label: The task's label; kept for ``repr`` and logs, never used as an attribute.
        depth: The subagent's depth (1 for a child of the root).
        instruments: Where to record; default: those of the current :func:`configure`.
        attributes: The attribute sets to record with; default: the shared ones (a
            subscriber that puts the session id on its metrics passes that session's).
    """

    __slots__ = (
        "_attrs",
        "_clock",
        "_instruments",
        "_key",
        "_recorded",
        "_sets",
        "_started",
        "depth",
        "label",
    )

    def __init__(
        self,
        label: str,
        depth: int,
        *,
        instruments: Instruments | None = None,
        attributes: AttributeSets = SHARED,
    ) -> None:
        self.label = label
        self.depth = depth
        self._instruments = instruments if instruments is not None else current_instruments()
        self._sets = attributes
        self._attrs = attributes.depth(depth)
        self._key: _Key = tuple(self._attrs.items())
        self._recorded = False
        # The runtime's one clock (anyio's) inside an event loop, for a duration not given.
        self._clock = loop_clock()
        try:
            self._started = self._clock()
        except Exception:  # made outside any event loop
            self._clock = time.monotonic
            self._started = self._clock()
        inst = self._instruments
        with inst.lock:
            inst.executions.add_locked(1, self._key)
            inst.active.add_locked(1, self._key)

    def __repr__(self) -> str:
        state = "recorded" if self._recorded else "active"
        return f"SubagentMetrics(label={self.label!r}, depth={self.depth}, {state})"

    @property
    def recorded(self) -> bool:
        """Whether the outcome has been recorded (active_count is back down)."""
        return self._recorded

    def record_completion(
        self,
        turns: int,
        tokens: int,
        status: AnswerStatus = "complete",
        *,
        duration: float | None = None,
    ) -> bool:
        """Record a run that returned an answer (``complete``, or ``incomplete``: out of turns).

        Args:
            turns: Model calls the execution made.
            tokens: Tokens it consumed.
            status: ``complete`` or ``incomplete``.
            duration: Seconds it took; default: since this recorder was made.

        Returns:
            True if this call recorded the outcome, False if one was already recorded.
        """
        if status not in ANSWERED:
            raise ValueError(f"status must be 'complete' or 'incomplete', got {status!r}")
        if self._recorded:
            return False
        self._recorded = True
        by_status = self._sets.pair(self.depth, n.STATUS, status)
        self._finish(self._instruments.completions, by_status, by_status, turns, tokens, duration)
        return True

    def record_error(
        self,
        error_type: ErrorType,
        *,
        turns: int = 0,
        tokens: int = 0,
        duration: float | None = None,
    ) -> bool:
        """Record a refused, failed, timed-out or cancelled execution.

        Args:
            error_type: One of the bounded set (``quota_exceeded``, ``max_depth_reached``,
                ``invalid_input``, ``initialization_failed``, ``execution_failed``,
                ``timeout``, ``cancelled``).
            turns: Model calls it made before it ended.
            tokens: Tokens it consumed before it ended.
            duration: Seconds it took; default: since this recorder was made.

        Returns:
            True if this call recorded the outcome, False if one was already recorded.
        """
        if error_type not in _ERROR_TYPES:
            raise ValueError(f"unknown error_type {error_type!r}")
        if self._recorded:
            return False
        self._recorded = True
        status = "cancelled" if error_type == "cancelled" else "failed"
        self._finish(
            self._instruments.errors,
            self._sets.pair(self.depth, n.ERROR_TYPE, error_type),
            self._sets.pair(self.depth, n.STATUS, status),
            turns,
            tokens,
            duration,
        )
        return True

    def _finish(
        self,
        outcome: Tally,
        outcome_attributes: Mapping[str, str | int],
        by_status: Mapping[str, str | int],
        turns: int,
        tokens: int,
        duration: float | None,
    ) -> None:
        """Count the outcome and bring ``active`` down (one lock), then the histograms."""
        inst, attrs = self._instruments, self._attrs
        outcome_key = tuple(outcome_attributes.items())
        with inst.lock:
            outcome.add_locked(1, outcome_key)
            inst.active.add_locked(-1, self._key)
        if duration is None:
            duration = self._clock() - self._started
        inst.duration.record(duration, by_status, NO_EXEMPLARS)
        if turns > 0:
            inst.turns.record(turns, attrs, NO_EXEMPLARS)
        if tokens > 0:
            inst.tokens.record(tokens, attrs, NO_EXEMPLARS)

    def __enter__(self) -> SubagentMetrics:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._recorded:
            cancelled = exc is not None and _is_cancellation(exc)
            self.record_error("cancelled" if cancelled else "execution_failed")


def _is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is the async library's cancellation (or a group of nothing else)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancellation(e) for e in exc.exceptions)
    if isinstance(exc, asyncio.CancelledError):
        return True
    try:
        cancelled = anyio.get_cancelled_exc_class()
    except RuntimeError:  # no async library running (sniffio found none): not a cancellation
        return False
    return isinstance(exc, cancelled)
