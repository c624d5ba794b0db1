"""``runtime.statistics()``: one runtime's own subagent figures by depth, with no backend.

A :class:`StatisticsRecorder` is subscribed by every :class:`~xzatoma.Runtime`. It counts
what the ``subagent.*`` metrics count, with the same rules (an execution when it is
announced, its outcome exactly once when it ends), in plain integers of its own, so a
service can show each user their own tree's figures without Prometheus and without a
series per session. A snapshot is frozen; the recorder goes on counting.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from ._hooks import Instrument
from ._run import Run

__all__ = ("FrozenDict", "RuntimeStatistics", "StatisticsRecorder", "SubagentStatistics")

_K = TypeVar("_K")
_V = TypeVar("_V")


class FrozenDict(dict[_K, _V]):
    """A ``dict`` that cannot be changed (its changing methods raise ``TypeError``), so a
    snapshot pickles, copies, compares, hashes and goes into JSON like plain data."""

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("statistics are a snapshot: they cannot be changed")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[type[FrozenDict[_K, _V]], tuple[dict[_K, _V]]]:
        return (type(self), (dict(self),))


def _no_counts() -> Mapping[str, int]:
    return FrozenDict()


@dataclass(frozen=True, slots=True)
class SubagentStatistics:
    """Subagent executions at one depth (or at every depth, as ``RuntimeStatistics.total``).

    ``executions == completed + failed + active`` at every moment, and ``active == 0`` once
    nothing runs.
    """

    executions: int = 0
    """Spawns announced, refused ones included (``subagent.executions``)."""
    completions: Mapping[str, int] = field(default_factory=_no_counts)
    """Executions that returned an answer, by status: ``complete``, ``incomplete``."""
    errors: Mapping[str, int] = field(default_factory=_no_counts)
    """Refused, failed, timed-out or cancelled executions, by error type."""
    active: int = 0
    """Executions running now."""
    tokens: int = 0
    """Tokens of the executions that ended, failed ones included."""
    turns: int = 0
    """Model calls of the executions that ended."""
    duration_count: int = 0
    """Executions whose duration is in :attr:`duration_sum` (every one that ended)."""
    duration_sum: float = 0.0
    """Seconds from spawn to end, added up over the executions that ended."""

    @property
    def completed(self) -> int:
        """Executions that returned an answer (complete or incomplete)."""
        return sum(self.completions.values())

    @property
    def failed(self) -> int:
        """Executions that ended without one."""
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        """The figures as plain JSON types."""
        return {
            "executions": self.executions,
            "completions": dict(self.completions),
            "errors": dict(self.errors),
            "active": self.active,
            "tokens": self.tokens,
            "turns": self.turns,
            "duration_count": self.duration_count,
            "duration_sum": self.duration_sum,
        }


@dataclass(frozen=True, slots=True)
class RuntimeStatistics:
    """A frozen snapshot of one runtime's subagent figures (:meth:`Runtime.statistics`)."""

    session_id: str
    """The runtime's session id."""
    by_depth: Mapping[int, SubagentStatistics]
    """The figures of each depth that had an execution (1 for children of the root)."""
    total: SubagentStatistics
    """The figures of every depth together."""

    @property
    def at_rest(self) -> bool:
        """Whether nothing runs and every execution has its one outcome."""
        total = self.total
        return total.active == 0 and total.executions == total.completed + total.failed

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as plain JSON types (depths as string keys, as JSON has them)."""
        return {
            "session_id": self.session_id,
            "by_depth": {str(depth): s.to_dict() for depth, s in self.by_depth.items()},
            "total": self.total.to_dict(),
        }


class _Depth:
    """The running figures of one depth."""

    __slots__ = (
        "active",
        "completions",
        "duration_count",
        "duration_sum",
        "errors",
        "executions",
        "tokens",
        "turns",
    )

    def __init__(self) -> None:
        self.executions = self.active = self.tokens = self.turns = self.duration_count = 0
        self.duration_sum = 0.0
        self.completions: dict[str, int] = {}
        self.errors: dict[str, int] = {}

    def add(self, other: _Depth) -> None:
        """Add ``other``'s figures to these (the total of every depth)."""
        self.executions += other.executions
        self.active += other.active
        self.tokens += other.tokens
        self.turns += other.turns
        self.duration_count += other.duration_count
        self.duration_sum += other.duration_sum
        for mine, theirs in ((self.completions, other.completions), (self.errors, other.errors)):
            for key, count in theirs.items():
                mine[key] = mine.get(key, 0) + count

    def frozen(self) -> SubagentStatistics:
        return SubagentStatistics(
            executions=self.executions,
            completions=FrozenDict(self.completions),
            errors=FrozenDict(self.errors),
            active=self.active,
            tokens=self.tokens,
            turns=self.turns,
            duration_count=self.duration_count,
            duration_sum=self.duration_sum,
        )


class StatisticsRecorder(Instrument):
    """Counts a tree's subagent executions by depth; :meth:`snapshot` freezes them.

    Args:
        session_id: The session the figures belong to (named in each snapshot).
    """

    __slots__ = ("_by_depth", "_lock", "session_id")

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self._by_depth: dict[int, _Depth] = {}
        # The runs update from their event loop; a snapshot may be taken from any thread.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"StatisticsRecorder(session_id={self.session_id!r})"

    def subagent_started(self, run: Run) -> None:
        with self._lock:
            figures = self._by_depth.get(run.depth)
            if figures is None:
                figures = self._by_depth[run.depth] = _Depth()
            figures.executions += 1
            figures.active += 1

    def subagent_ended(self, run: Run) -> None:
        result = run.result()
        with self._lock:
            figures = self._by_depth.get(run.depth)
            if figures is None:  # started before this recorder was subscribed
                return
            key: str
            if result.succeeded:
                outcomes, key = figures.completions, result.status
            else:
                outcomes, key = figures.errors, result.error_type or "execution_failed"
            outcomes[key] = outcomes.get(key, 0) + 1
            figures.active -= 1
            figures.tokens += result.usage.total_tokens
            figures.turns += result.turns
            figures.duration_count += 1
            figures.duration_sum += result.duration

    def snapshot(self) -> RuntimeStatistics:
        """The figures as they are now, frozen."""
        total = _Depth()
        with self._lock:
            by_depth = {}
            for depth in sorted(self._by_depth):
                figures = self._by_depth[depth]
                by_depth[depth] = figures.frozen()
                total.add(figures)
        return RuntimeStatistics(
            session_id=self.session_id, by_depth=FrozenDict(by_depth), total=total.frozen()
        )
