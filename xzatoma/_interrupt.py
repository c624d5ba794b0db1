"""SIGINT and SIGTERM during a command: cancel the tree, keep what finished, say so.

The signals are received inside the event loop (``anyio.open_signal_receiver``), so the
first one cancels the run's task group like any other cancellation: every subagent is
cancelled, the events of the tasks that had finished are kept, and the command prints them
(:func:`print_interrupted`) and exits ``128 + signal`` (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TextIO, TypeVar

import anyio
import anyio.abc

from ._hooks import SubagentEnded
from ._render import describe_status, print_json
from ._terminal import printable

__all__ = ("SIGNALS", "Interrupted", "cancel_on_signals", "linger", "print_interrupted")

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


async def cancel_on_signals(work: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``work``; the first SIGINT or SIGTERM cancels it and raises :class:`Interrupted`.

    The receiver is installed before ``work`` starts, so a signal sent once the command
    has reported anything is always caught here, never by Python's default handling
    (which would kill the process on SIGTERM and lose every finished result).
    """
    caught: list[int] = []
    result: list[_T] = []

    async def watch(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(*SIGNALS) as signals:
            task_status.started()
            async for signum in signals:
                caught.append(signum)
                group.cancel_scope.cancel()
                return

    async with anyio.create_task_group() as group:
        await group.start(watch)
        result.append(await work())
        group.cancel_scope.cancel()  # the work is done: stop watching
    if caught:
        raise Interrupted(caught[0])
    return result[0]


async def linger(seconds: float, announcement: str) -> None:
    """Sleep ``seconds`` (``--metrics-linger``); a SIGINT or SIGTERM ends it early.

    ``announcement`` is printed on stderr once the signals are being listened for, so
    whoever reads it may signal at once.
    """
    with anyio.move_on_after(seconds), anyio.open_signal_receiver(*SIGNALS) as signals:
        print(announcement, file=sys.stderr, flush=True)
        async for _ in signals:
            return


def print_interrupted(
    finished: Sequence[SubagentEnded],
    why: Interrupted,
    *,
    as_json: bool,
    total: int | None = None,
    partial_output: str = "",
    out: TextIO | None = None,
) -> None:
    """Say what had finished when the command was interrupted, on ``out`` (stdout).

    ``finished`` are the end events of the depth-1 subagents (a batch's tasks, or the root's
    children); those the interruption itself cancelled are left out. ``total`` is the
    batch's size; ``partial_output`` what the root of a ``run`` had answered so far.
    """
    out = sys.stdout if out is None else out
    done = [e for e in finished if e.status != "cancelled"]
    if as_json:
        report: dict[str, object] = {"status": "interrupted", "signal": why.name}
        if total is not None:
            report["total"] = total
        else:
            report["output"] = partial_output
        report["finished"] = [
            {"label": e.label, "status": e.status, "error_type": e.error_type,
             "turns": e.turns, "tokens": e.usage.total_tokens, "output": e.result.output}
            for e in done
        ]  # fmt: skip
        print_json(report, out)
        return
    if total is not None:
        print(f"\ninterrupted: {len(done)} of {total} tasks had finished", file=out)
    else:
        print(f"\ninterrupted: {len(done)} subagents had finished", file=out)
    for e in done:
        status = describe_status(e.status, e.error_type)
        label = printable(e.label, single_line=True)
        print(f"  {label}: {status}, {e.turns} turns, {e.usage.total_tokens} tokens", file=out)
        if e.result.output:
            print(_indent(printable(e.result.output)), file=out)
    if partial_output:
        print("  partial answer of the root agent:", file=out)
        print(_indent(printable(partial_output)), file=out)
    out.flush()


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
