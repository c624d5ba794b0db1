"""SIGINT and SIGTERM during a command: cancel the tree, keep what finished, say so.

One Python-level handler (:func:`handling_signals`) owns both signals from the moment the
command line starts until it returns, so neither ever ends in Python's default handling (a
``KeyboardInterrupt`` traceback, or death by SIGTERM with every finished result lost):

- before the work starts (reading the prompt from stdin, loading files), a signal raises
  :class:`Interrupted`, which the command reports as one line;
- while the work runs (:func:`until_signal`), the handler only writes the signal's number to
  a socket the event loop watches (so does Python's C-level handler, as the wakeup fd, in
  whichever thread the kernel gave the signal to): the first cancels the work's task group
  like any other cancellation (every subagent cancelled, the results of the finished ones
  kept, printed by :func:`~xzatoma._render.print_interrupted`); a second one, however
  soon, changes nothing;
- once the work has ended, a signal changes nothing either: the report is printed and the
  command exits with its own code; during ``--metrics-linger`` a signal ends the linger.

An interrupted command exits ``128 + signal``: 130 for SIGINT, 143 for SIGTERM. asyncio's
own signal receivers are not used: closing one resets the signal to its default action,
which left windows where a second signal killed the process.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import TypeVar

import anyio

__all__ = (
    "SIGNALS",
    "Interrupted",
    "handling_signals",
    "linger",
    "until_signal",
)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""What ends a command early: Ctrl-C, and what ``kill``, systemd or Kubernetes send."""

_T = TypeVar("_T")


class Interrupted(Exception):
    """A signal cancelled the command's work; carries which one."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.name}")

    @property
    def exit_code(self) -> int:
        """The shell's convention: ``128 + signal`` (130 SIGINT, 143 SIGTERM)."""
        return 128 + self.signum


class _Handler:
    """What a signal does now: raise (before the work), wake the loop (during), nothing
    (after)."""

    def __init__(self) -> None:
        self.raising = True
        self.wake: socket.socket | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        wake = self.wake
        if wake is not None:
            with contextlib.suppress(OSError):  # a full buffer: a signal is pending anyway
                wake.send(bytes([signum]))
        elif self.raising:
            self.raising = False
            raise Interrupted(signum)


_handler = _Handler()


@contextlib.contextmanager
def handling_signals(*, restore: bool = True) -> Iterator[None]:
    """Own SIGINT and SIGTERM while the block runs (the whole command).

    Afterwards the previous handlers come back, or, with ``restore=False`` (the process is
    about to exit: the console script), both signals are ignored, so one that arrives while
    the interpreter shuts down cannot change the exit status. Outside the main thread, where
    Python cannot install handlers, signals keep their default handling.
    """
    global _handler
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _handler = _Handler()
    previous = {signum: signal.signal(signum, _handler) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if restore else signal.SIG_IGN)


def until_signal(work: Callable[[], Awaitable[_T]]) -> _T:
    """``anyio.run(work)``; the first SIGINT or SIGTERM cancels it and raises
    :class:`Interrupted`. The command's work is over afterwards, whatever the outcome:
    later signals change nothing (see the module docstring)."""
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    _handler.wake = writer
    # The kernel hands a process's signal to any of its threads (the /metrics server's, say);
    # Python runs the handler in the main thread only when that thread next runs bytecode,
    # which an event loop asleep in the kernel (a linger, a slow model) may not do for
    # minutes. The wakeup fd is written by the C-level handler in whichever thread got it.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False) if main else -1
    try:
        return anyio.run(_cancel_on_signal, work, reader)
    finally:
        _handler.raising = False  # first: a signal in between must not raise
        _handler.wake = None
        if main:
            signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()


async def _cancel_on_signal(work: Callable[[], Awaitable[_T]], signals: socket.socket) -> _T:
    caught: list[int] = []
    result: list[_T] = []

    async def watch() -> None:
        # The wakeup fd carries every signal that has a Python handler; only ours end it.
        while not caught:
            await anyio.wait_readable(signals)
            with contextlib.suppress(BlockingIOError):
                caught.extend(s for s in signals.recv(64) if s in SIGNALS)
        group.cancel_scope.cancel()

    failed: list[Exception] = []
    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        try:
            result.append(await work())
        except Exception as exc:  # raised as itself, not in the group's ExceptionGroup
            failed.append(exc)
        group.cancel_scope.cancel()  # the work is done: a signal now changes nothing
    if failed:
        raise failed[0]
    if result:
        return result[0]
    raise Interrupted(caught[0])


def linger(seconds: float, announcement: str) -> None:
    """Sleep ``seconds`` (``--metrics-linger``); a SIGINT or SIGTERM ends it early.

    ``announcement`` is printed on stderr once signals are being listened for, so whoever
    reads it may signal at once.
    """

    async def sleep() -> None:
        print(announcement, file=sys.stderr, flush=True)
        await anyio.sleep(seconds)

    with contextlib.suppress(Interrupted):
        until_signal(sleep)
