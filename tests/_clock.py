"""Virtual time for tests: a timeout that fires at once, at the same instant on every run.

The runtime reads one clock, anyio's, so a test controls time by choosing the event loop's
clock. On trio that is ``trio.testing.MockClock(autojump_threshold=0)``; on asyncio it is
:class:`VirtualTimeLoop`, the same idea written for asyncio's loop (no public equivalent
exists). In both, time starts at 0 and moves only when every task is blocked, straight to
the next deadline, so whether a timeout fires depends on what the code awaits, never on how
loaded the machine is, and waiting costs no real time.

Tests on virtual time must not wait for worker threads or real I/O: time would jump while
they are busy (as it does with trio's autojumping clock).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import pytest
from trio.testing import MockClock

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

__all__ = (
    "BACKENDS",
    "Backend",
    "VirtualTimeLoop",
    "backend_options",
    "live_tasks",
    "on_virtual_time",
    "run_virtual",
    "virtual_time",
)

T = TypeVar("T")

Backend = Literal["asyncio", "trio"]
BACKENDS: tuple[Backend, ...] = ("asyncio", "trio")

F = TypeVar("F", bound=Callable[..., Any])


def virtual_time(*backends: Backend) -> Callable[[F], F]:
    """Run an async test on each of ``backends`` on virtual time (``tests/conftest.py`` makes
    a fresh clock per test); ``virtual_time("asyncio")`` for a test of asyncio behaviour."""

    def mark(test: F) -> F:
        parametrized: F = pytest.mark.parametrize("anyio_backend", backends, indirect=True)(test)
        # anyio's plugin adds this fixture to async tests only after parametrize is checked.
        marked: F = pytest.mark.usefixtures("anyio_backend")(parametrized)
        return marked

    return mark


on_virtual_time = virtual_time(*BACKENDS)
"""Run an async test on trio's ``MockClock`` and on :class:`VirtualTimeLoop`."""


class _JumpingSelector(selectors.BaseSelector):
    """A selector that never waits: with nothing ready, it moves the loop's clock instead.

    asyncio's loop asks its selector to wait ``timeout`` seconds for I/O when no callback
    is ready, ``timeout`` being the time to its next timer (``None`` with no timer at all).
    Polling instead, and advancing the clock by ``timeout`` when nothing is ready, is
    trio's autojump at threshold 0: the next timer is due at once.
    """

    def __init__(self, advance: Callable[[float], None]) -> None:
        self._inner = selectors.DefaultSelector()
        self._advance = advance

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:  # no timer: a real wait (a deadlock hangs, as it would on trio)
            return self._inner.select(None)
        ready = self._inner.select(0)
        if not ready and timeout > 0:
            self._advance(timeout)
        return ready

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop whose ``time()`` is virtual and jumps to the next timer when idle.

    ``loop.time()`` is what anyio's clock, its cancel scopes and ``asyncio.sleep`` read, so
    all of them follow it. Pass the class as anyio's ``loop_factory``.
    """

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_JumpingSelector(self._advance))

    def _advance(self, seconds: float) -> None:
        self._now += seconds

    def time(self) -> float:
        return self._now


def backend_options(backend: Backend) -> dict[str, Any]:
    """anyio's ``backend_options`` that put ``backend`` on virtual time (a fresh clock)."""
    if backend == "trio":
        return {"clock": MockClock(autojump_threshold=0)}
    return {"loop_factory": VirtualTimeLoop}


def run_virtual(fn: Callable[[], Awaitable[T]], backend: Backend = "trio") -> T:
    """``anyio.run(fn)`` on ``backend`` on virtual time."""
    return anyio.run(fn, backend=backend, backend_options=backend_options(backend))


def live_tasks() -> set[int]:
    """Ids of every task alive now, on either backend (anyio's task introspection).

    On asyncio it is ``asyncio.all_tasks()``; on trio, the walk from
    ``trio.lowlevel.current_root_task()`` through every nursery, system nursery included, so
    a task parked in a nursery outside the caller's (a background nursery kept by the
    runtime, a system task) is found. Ids stay unique while both tasks live, which is all a
    before/after comparison around a call needs, since the caller's task outlives the call.
    """
    return {task.id for task in anyio.get_running_tasks()}
