"""``Tally``: a sum kept in-process, reported by an observable instrument at collection."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from opentelemetry import metrics

__all__ = ("Key", "Tally")

Key = tuple[tuple[str, str | int], ...]
"""A series: its attributes as ``(name, value)`` pairs, in the order they were built."""


class Tally:
    """A cumulative sum kept in-process and reported by an observable instrument.

    ``add`` has the signature of ``Counter.add`` but costs a dict update, not an SDK
    measurement (several times dearer; bench/README.md, "The telemetry fast path"): the SDK
    reads the totals only when a reader collects, so the cost is per scrape and per series,
    not per execution. The exported data is the same cumulative sum a synchronous instrument
    would give.
    """

    __slots__ = ("_lock", "_values")

    def __init__(self, lock: threading.Lock | None = None) -> None:
        self._values: dict[Key, float] = {}
        self._lock = lock if lock is not None else threading.Lock()

    def add(self, amount: float, attributes: Mapping[str, str | int]) -> None:
        """Add ``amount`` to the series of ``attributes`` (always built in the same order)."""
        key = tuple(attributes.items())
        with self._lock:
            self.add_locked(amount, key)

    def add_locked(self, amount: float, key: Key) -> None:
        """``add`` for a caller that holds this tally's lock and has the series' key."""
        self._values[key] = self._values.get(key, 0) + amount

    def observe(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        """The observable instrument's callback: one observation per series."""
        with self._lock:
            items = list(self._values.items())
        return [metrics.Observation(total, dict(key)) for key, total in items]
