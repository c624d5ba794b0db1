"""Telling a real cancellation from a stray ``CancelledError`` a tool or provider raised.

A library a tool calls may raise ``asyncio.CancelledError`` for its own reasons (a future it
cancelled, a task it gave up on). Treated as cancellation, that one tool would bring down the
whole tree; treated as a failure, a real cancellation would be swallowed. A real one leaves a
trace: on asyncio a ``Task.cancel()`` (which anyio's cancel scopes use too) raises the task's
``cancelling()`` count above what it was when the call started, and a scope cancelled before it
could deliver is found by ``checkpoint_if_cancelled()``, which then raises that cancellation
itself. On trio a real cancellation is ``trio.Cancelled``, which never reaches these checks.
"""

from __future__ import annotations

import asyncio

import anyio.lowlevel

__all__ = ("cancel_requests", "is_stray_cancellation")


def cancel_requests() -> int:
    """The current asyncio task's pending cancellation requests (0 on trio).

    Taken when a call starts, so a count left behind by code that swallowed a cancellation
    without ``uncancel()`` cannot make a later stray look real.
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no asyncio loop running: the trio backend
        return 0
    return task.cancelling() if task is not None else 0


def _tool_failure(exc: BaseException) -> bool:
    return isinstance(exc, Exception | asyncio.CancelledError)


async def is_stray_cancellation(exc: BaseException, before: int) -> bool:
    """Whether ``exc`` (a ``CancelledError``, or a group of them and ordinary errors) was
    raised with nobody cancelling this run; ``before`` is :func:`cancel_requests` at the
    start of the call. Call it in the ``except`` block; it raises the real cancellation when
    a cancel scope around the call was cancelled. Costs nothing unless one was raised.
    """
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(_tool_failure)
        if rest is not None:  # KeyboardInterrupt, SystemExit, trio.Cancelled: never a failure
            return False
    if cancel_requests() > before:
        return False
    await anyio.lowlevel.checkpoint_if_cancelled()
    return True
