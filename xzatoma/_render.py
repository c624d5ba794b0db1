"""What the command line prints for a result: trees, batch reports, JSON documents.

Every string that came from a model or an endpoint (labels, outputs, errors) goes through
:func:`~xzatoma._terminal.printable` here before it is printed; ``--json`` documents keep the
exact text (:func:`~xzatoma._terminal.json_text`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TextIO

from ._result import ANSWERED, RunResult
from ._subagent_models import BatchResult
from ._terminal import json_text, one_line, printable
from ._views import finished_entry, journal_dict
from .errors import usd

if TYPE_CHECKING:
    from ._journal import JournalView

__all__ = (
    "describe_status",
    "format_tree",
    "print_batch",
    "print_interrupted",
    "print_journal",
    "print_json",
    "print_run",
)


def describe_status(status: str, error_type: str | None) -> str:
    """``complete``, ``cancelled``, or ``failed (execution_failed)``."""
    return f"{status} ({error_type})" if error_type and error_type != status else status


def print_json(data: object, out: TextIO) -> None:
    """One JSON document, exact text, on ``out``."""
    print(json_text(data, out), file=out, flush=True)


def print_run(
    result: RunResult, out: TextIO, err: TextIO, *, tree: bool, as_json: bool = False
) -> None:
    """The ``run`` report: the answer on ``out`` (unless ``as_json``: the caller printed the
    document); the tree and why the run did not complete on ``err``."""
    if not as_json:
        print(printable(result.output), file=out, flush=True)
    if tree:
        print("\n".join(format_tree(result)), file=err)
    if result.status != "complete":
        why = describe_status(result.status, result.error_type)
        print(f"xzatoma: run {why}: {one_line(str(result.error))}", file=err)


def print_batch(batch: BatchResult, out: TextIO) -> None:
    """Each task's header and output, then the batch's counts."""
    resumed = frozenset(batch.resumed)
    for index, r in enumerate(batch.results):
        status = describe_status(r.status, r.error_type)
        label = printable(r.label, single_line=True)
        header = f"== {label}: {status}, {r.turns} turns, {r.total_usage.total_tokens} tokens"
        if r.total_cost is not None and r.total_usage.requests:
            header += f", {usd(r.total_cost)}"
        if index in resumed:
            header += " (from the journal)"
        print(f"\n{header}", file=out)
        if r.output:
            print(printable(r.output), file=out)
        else:
            print(f"(no output) {one_line(r.error or '')}".rstrip(), file=out)
    cost = batch.total_cost
    spent = "cost unknown" if cost is None else usd(cost)
    from_journal = f"; {len(batch.resumed)} from the journal" if batch.resumed else ""
    print(
        f"\nbatch {batch.status}: {batch.successful} succeeded, {batch.failed} failed, "
        f"{batch.cancelled} cancelled{from_journal}; {batch.total_usage.total_tokens} tokens "
        f"({spent}) in {batch.duration:.1f} s",
        file=out,
        flush=True,
    )


def format_tree(result: RunResult, *, errors: bool = True) -> list[str]:
    """The result tree as aligned text lines: label, status, depth, turns, own tokens, and
    own cost when any node's is known (``?``: unknown).

    With ``errors``, a failed node is followed by its error message, indented under it.
    """
    rows = [(p, c, printable(n.label, single_line=True), n) for p, c, n in _rows(result, "", "")]
    priced = any(n.cost is not None and n.usage.requests for *_, n in rows)
    width = max(len(prefix) + len(label) for prefix, _, label, _ in rows)
    status_width = max(len(describe_status(n.status, n.error_type)) for *_, n in rows)
    lines = []
    for prefix, cont, label, node in rows:
        name = f"{prefix}{label}".ljust(width)
        status = describe_status(node.status, node.error_type).ljust(status_width)
        line = (
            f"{name}  {status}  depth {node.depth}  turns {node.turns:>2}  "
            f"tokens {node.usage.total_tokens:>6}"
        )
        if priced:
            line += f"  cost {'?' if node.cost is None else usd(node.cost)}"
        lines.append(line)
        if errors and node.error and node.status not in ANSWERED:
            lines.append(f"{cont}↳ {one_line(node.error)}")
    return lines


def _rows(node: RunResult, prefix: str, cont: str) -> Iterator[tuple[str, str, RunResult]]:
    """(the node's line prefix, the prefix of lines under it, node), depth first."""
    yield prefix, cont + ("│  " if node.children else "   "), node
    last = len(node.children) - 1
    for index, child in enumerate(node.children):
        branch, further = ("└─ ", "   ") if index == last else ("├─ ", "│  ")
        yield from _rows(child, cont + branch, cont + further)


def print_interrupted(
    finished: Sequence[RunResult],
    signal_name: str,
    *,
    as_json: bool,
    total: int | None = None,
    journaled: int = 0,
    partial_output: str = "",
    out: TextIO | None = None,
) -> None:
    """Say what had finished when the command was interrupted, on ``out`` (stdout).

    ``finished`` are the results of the depth-1 subagents (a batch's tasks, or the root's
    children), in the order they ended; those the interruption itself cancelled are left
    out. ``total`` is the batch's size, ``journaled`` how many of its tasks were read back
    from a journal, not run; ``partial_output`` what the root of a ``run`` had answered.
    """
    out = sys.stdout if out is None else out
    done = [e for e in finished if e.status != "cancelled"]
    if as_json:
        report: dict[str, object] = {"status": "interrupted", "signal": signal_name}
        if total is not None:
            report["total"] = total
            report["resumed"] = journaled
        else:
            report["output"] = partial_output
        report["finished"] = [finished_entry(e) for e in done]
        print_json(report, out)
        return
    if total is not None and journaled:
        print(
            f"\ninterrupted: {len(done)} of the {total - journaled} tasks run had finished"
            f" ({journaled} more were read from the journal)",
            file=out,
        )
    elif total is not None:
        print(f"\ninterrupted: {len(done)} of {total} tasks had finished", file=out)
    else:
        print(f"\ninterrupted: {len(done)} subagents had finished", file=out)
    for e in done:
        status = describe_status(e.status, e.error_type)
        label = printable(e.label, single_line=True)
        print(f"  {label}: {status}, {e.turns} turns, {e.usage.total_tokens} tokens", file=out)
        if e.output:
            print(_indent(printable(e.output)), file=out)
    if partial_output:
        print("  partial answer of the root agent:", file=out)
        print(_indent(printable(partial_output)), file=out)
    out.flush()


def print_journal(view: JournalView, out: TextIO, *, as_json: bool) -> None:
    """``xzatoma journal show``: one line per task, then the counts (or the JSON document)."""
    if as_json:
        print_json(journal_dict(view), out)
        return
    counts = view.counts()
    again = sum(1 for e in view.entries if e.will_run)
    width = max((len(printable(e.label, single_line=True)) for e in view.entries), default=5)
    for e in view.entries:
        label = printable(e.label, single_line=True).ljust(width)
        status = describe_status(e.status, e.error_type)
        cost = f"  {usd(e.total_cost)}" if e.total_cost is not None and e.total_tokens else ""
        line = f"{e.index:>5}  {label}  {status:<28} turns {e.turns:>2}  tokens {e.total_tokens:>7}"
        print(f"{line}{cost}{'  (runs again)' if e.will_run else ''}", file=out)
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    busy = "; in use by a running batch" if view.in_use else ""
    print(
        f"\n{printable(str(view.path))}: {len(view.entries)} tasks ({summary or 'none'}); "
        f"{again} would run again on resume{busy}",
        file=out,
        flush=True,
    )


def _indent(text: str) -> str:
    # On "\n" only: splitlines() would also break at U+2028, U+0085 and other characters
    # that printable() shows as escapes or keeps, and the output would not be the same text.
    return "\n".join("    " + line for line in text.removesuffix("\n").split("\n"))
