"""What the command line draws: live batch progress, and result trees as text.

:class:`BatchProgress` is an event hook: it counts the batch's tasks (done, failed, running)
and the tokens spent so far, and draws them with rich on a terminal or as plain lines
(``[3/8] done label (complete, 2 turns, 40 tokens)``) anywhere else. It also remembers which
tasks finished, so an interrupted batch can still say what it had.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

from ._hooks import BatchStarted, Event, ModelCallEnded, SubagentEnded, SubagentStarted
from ._result import RunResult
from ._subagent_models import BatchResult

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ("BatchProgress", "batch_dict", "describe_status", "format_tree", "print_batch")

_SUCCEEDED = ("complete", "incomplete")


def describe_status(status: str, error_type: str | None) -> str:
    """``complete``, ``cancelled``, or ``failed (execution_failed)``."""
    return f"{status} ({error_type})" if error_type and error_type != status else status


class BatchProgress:
    """A hook that follows one top-level batch (its tasks run at depth 1) and draws it.

    Args:
        stream: Where to draw.
        live: Draw a live rich progress bar (a terminal) instead of plain lines. Falls back
            to plain lines when rich is not installed.
    """

    def __init__(self, stream: TextIO, *, live: bool) -> None:
        self.stream = stream
        self.total = 0
        self.done = 0
        self.failed = 0
        self.running = 0
        self.tokens = 0
        self.finished: list[SubagentEnded] = []
        """End events of the batch's tasks, in the order they finished."""
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if live:
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
                console=Console(file=stream),
                transient=False,
            )

    @property
    def stats(self) -> str:
        """``done 3  failed 1  running 4  tokens 1234``."""
        return (
            f"done {self.done}  failed {self.failed}  running {self.running}  tokens {self.tokens}"
        )

    def wanted_events(self) -> frozenset[type[Event]]:
        """Of a run's own events, only the model calls' ends (for the token count)."""
        return _WANTED

    def __call__(self, event: Event) -> None:
        if isinstance(event, BatchStarted):
            if event.depth == 1 and self.total == 0:
                self.total = event.size
                self._started(event.size)
        elif isinstance(event, SubagentStarted):
            if event.depth == 1:
                self.running += 1
                self._redraw()
        elif isinstance(event, SubagentEnded):
            if event.depth == 1:
                self._ended(event)
        elif isinstance(event, ModelCallEnded):
            self.tokens += event.usage.total_tokens
            self._redraw()

    def _started(self, size: int) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task("batch", total=size, stats=self.stats)
            self._progress.start()
        else:
            self._line(f"batch: {size} tasks")

    def _ended(self, event: SubagentEnded) -> None:
        self.running -= 1
        ok = event.status in _SUCCEEDED
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.finished.append(event)
        count = len(self.finished)
        status = describe_status(event.status, event.error_type)
        detail = f"{status}, {event.turns} turns, {event.usage.total_tokens} tokens"
        if self._progress is not None and self._task is not None:
            mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
            self._progress.console.print(f"{mark} {_escape(event.label)}  ({detail})")
            self._progress.update(self._task, completed=count, stats=self.stats)
        else:
            verb = "done" if ok else event.status
            self._line(f"[{count}/{self.total}] {verb} {event.label} ({detail})")

    def _redraw(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, stats=self.stats)

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def print_interrupted(self, total: int, *, as_json: bool) -> None:
        """Say which tasks had finished when the batch was interrupted (on stdout); the
        ones the interruption cancelled are not among them."""
        done = [e for e in self.finished if e.status != "cancelled"]
        if as_json:
            rows = [
                {"label": e.label, "status": e.status, "error_type": e.error_type,
                 "turns": e.turns, "tokens": e.usage.total_tokens, "output": e.result.output}
                for e in done
            ]  # fmt: skip
            report = {"status": "interrupted", "total": total, "finished": rows}
            print(json.dumps(report, indent=2, ensure_ascii=False), flush=True)
            return
        print(f"\ninterrupted: {len(done)} of {total} tasks had finished", flush=True)
        for e in done:
            status = describe_status(e.status, e.error_type)
            print(f"  {e.label}: {status}, {e.turns} turns, {e.usage.total_tokens} tokens")
            if e.result.output:
                print(_indent(e.result.output), flush=True)

    def close(self) -> None:
        """Stop the live display (idempotent)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def batch_dict(batch: BatchResult) -> dict[str, object]:
    """``--json`` for a batch: the counts, and each task's ``RunResult.to_dict()``."""
    return {
        "status": batch.status,
        "successful": batch.successful,
        "failed": batch.failed,
        "cancelled": batch.cancelled,
        "duration_s": round(batch.duration, 6),
        "total_tokens": batch.total_usage.total_tokens,
        "results": [r.to_dict() for r in batch.results],
    }


def print_batch(batch: BatchResult, out: TextIO) -> None:
    """Each task's header and output, then the batch's counts."""
    for r in batch.results:
        status = describe_status(r.status, r.error_type)
        header = f"== {r.label}: {status}, {r.turns} turns, {r.total_usage.total_tokens} tokens"
        print(f"\n{header}", file=out)
        print(r.output if r.output else f"(no output) {r.error or ''}".rstrip(), file=out)
    print(
        f"\nbatch {batch.status}: {batch.successful} succeeded, {batch.failed} failed, "
        f"{batch.cancelled} cancelled; {batch.total_usage.total_tokens} tokens in "
        f"{batch.duration:.1f} s",
        file=out,
    )


def format_tree(result: RunResult, *, errors: bool = True) -> list[str]:
    """The result tree as aligned text lines: label, status, depth, turns, own tokens.

    With ``errors``, a failed node is followed by its error message, indented under it.
    """
    rows = list(_rows(result, "", ""))
    width = max(len(prefix) + len(node.label) for prefix, _, node in rows)
    status_width = max(len(describe_status(n.status, n.error_type)) for _, _, n in rows)
    lines = []
    for prefix, cont, node in rows:
        name = f"{prefix}{node.label}".ljust(width)
        status = describe_status(node.status, node.error_type).ljust(status_width)
        lines.append(
            f"{name}  {status}  depth {node.depth}  turns {node.turns:>2}  "
            f"tokens {node.usage.total_tokens:>6}"
        )
        if errors and node.error and node.status not in _SUCCEEDED:
            lines.append(f"{cont}↳ {node.error}")
    return lines


def _rows(node: RunResult, prefix: str, cont: str) -> Iterator[tuple[str, str, RunResult]]:
    """(the node's line prefix, the prefix of lines under it, node), depth first."""
    yield prefix, cont + ("│  " if node.children else "   "), node
    last = len(node.children) - 1
    for index, child in enumerate(node.children):
        branch, further = ("└─ ", "   ") if index == last else ("├─ ", "│  ")
        yield from _rows(child, cont + branch, cont + further)


_WANTED: frozenset[type[Event]] = frozenset(
    {BatchStarted, SubagentStarted, SubagentEnded, ModelCallEnded}
)
