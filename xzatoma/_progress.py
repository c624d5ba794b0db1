"""Live progress of a batch, and what a run or batch had finished when it was interrupted.

:class:`Finished` is an instrument that keeps the results of the depth-1 subagents (a
batch's tasks, or the root's direct children in ``xzatoma run``) and the root run, so an
interrupted command can still print what it had. :class:`BatchProgress` also counts the
batch's tasks (done, failed, running) and the tokens spent so far, and draws them with rich
on a terminal or as plain lines (``[3/8] done label (complete, 2 turns, 40 tokens)``)
anywhere else. Labels are escaped for the terminal (:func:`~xzatoma._terminal.printable`)
and drawn as written: no markup, and none of rich's highlighting of numbers in them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

from ._hooks import Instrument
from ._render import describe_status
from ._result import RunResult
from ._run import Batch, ModelCall, Run
from ._terminal import printable

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.text import Text

__all__ = ("BatchProgress", "Finished")


class Finished(Instrument):
    """An instrument that keeps the root run and the results of depth-1 subagents."""

    def __init__(self) -> None:
        self.finished: list[RunResult] = []
        """Results of the depth-1 subagents, in the order they finished."""
        self.root: Run | None = None
        """The root run, once it started (what it had when a signal cancelled it)."""

    def run_started(self, run: Run) -> None:
        if run.depth == 0:
            self.root = run

    def subagent_ended(self, run: Run) -> None:
        if run.depth == 1:
            self.finished.append(run.result())


class BatchProgress(Finished):
    """An instrument that follows one top-level batch (its tasks run at depth 1) and draws it.

    Args:
        stream: Where to draw.
        live: Draw a live rich progress bar (a terminal) instead of plain lines. Falls back
            to plain lines when rich is not installed.
        of: The size of the whole batch, when it may run fewer tasks (a resumed journal
            reads the rest back): the start says how many are not run.
        show: Draw anything at all (``--quiet``: only count, for an interrupted report).
        console: The rich console to draw the live display on, instead of one on ``stream``.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        live: bool,
        of: int | None = None,
        show: bool = True,
        console: Console | None = None,
    ) -> None:
        super().__init__()
        self.stream = stream
        self.show = show
        self.of = of
        self.total = 0
        self.done = 0
        self.failed = 0
        self.running = 0
        self.tokens = 0
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if live and show:
            try:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    SpinnerColumn,
                    TextColumn,
                    TimeElapsedColumn,
                )
            except ImportError:  # the `cli` extra is not installed: plain lines will do
                return
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]batch"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                console=console or Console(file=stream, highlight=False),
                transient=False,
            )

    @property
    def journaled(self) -> int:
        """Tasks of the whole batch (``of``) that this run does not run: read back."""
        return self.of - self.total if self.of is not None and self.total else 0

    @property
    def stats(self) -> str:
        """``done 3  failed 1  running 4  tokens 1234``."""
        return (
            f"done {self.done}  failed {self.failed}  running {self.running}  tokens {self.tokens}"
        )

    def batch_started(self, run: Run, batch: Batch) -> None:
        if batch.depth == 1 and self.total == 0:
            self.total = batch.size
            self._started(batch.size)

    def subagent_started(self, run: Run) -> None:
        if run.depth == 1:
            self.running += 1
            self._redraw()

    def subagent_ended(self, run: Run) -> None:
        if run.depth == 1:
            self._ended(run.result())

    def model_call_ended(self, run: Run, call: ModelCall) -> None:
        self.tokens += call.usage.total_tokens
        self._redraw()

    def _started(self, size: int) -> None:
        journaled = self.journaled
        if self._progress is not None:
            if journaled:
                self._progress.console.print(
                    f"{journaled} tasks read from the journal", highlight=False
                )
            self._task = self._progress.add_task("batch", total=size, stats=self.stats)
            self._progress.start()
        else:
            more = f" to run ({journaled} more read from the journal)" if journaled else ""
            self._line(f"batch: {size} tasks{more}")

    def _ended(self, result: RunResult) -> None:
        self.running -= 1
        ok = result.succeeded
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.finished.append(result)
        count = len(self.finished)
        status = describe_status(result.status, result.error_type)
        detail = f"{status}, {result.turns} turns, {result.usage.total_tokens} tokens"
        label = printable(result.label, single_line=True)
        if self._progress is not None and self._task is not None:
            self._progress.console.print(finished_line(ok, label, detail), highlight=False)
            self._progress.update(self._task, completed=count, stats=self.stats)
        else:
            verb = "done" if ok else result.status
            self._line(f"[{count}/{self.total}] {verb} {label} ({detail})")

    def _redraw(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, stats=self.stats)

    def _line(self, text: str) -> None:
        if self.show:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Stop the live display (idempotent)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def finished_line(ok: bool, label: str, detail: str) -> Text:
    """A finished task's line in the live display: its mark coloured, the (escaped) label
    and the detail as plain text, so ``v2.0 [red]42[/]`` shows as written, digits
    uncoloured, whatever the console's highlighter."""
    from rich.text import Text

    mark = ("✓", "green") if ok else ("✗", "red")
    return Text.assemble(mark, " ", label, f"  ({detail})")
