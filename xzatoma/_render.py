"""What the command line prints for a result: trees, batch reports, JSON documents.

Every string that came from a model or an endpoint (labels, outputs, errors) goes through
:func:`~xzatoma._terminal.printable` here before it is printed; ``--json`` documents keep the
exact text (:func:`~xzatoma._terminal.json_text`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TextIO

from ._result import RunResult
from ._subagent_models import SUCCEEDED, BatchResult
from ._terminal import json_text, one_line, printable

__all__ = (
    "batch_dict",
    "describe_status",
    "format_tree",
    "print_batch",
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
        label = printable(r.label, single_line=True)
        header = f"== {label}: {status}, {r.turns} turns, {r.total_usage.total_tokens} tokens"
        print(f"\n{header}", file=out)
        if r.output:
            print(printable(r.output), file=out)
        else:
            print(f"(no output) {one_line(r.error or '')}".rstrip(), file=out)
    print(
        f"\nbatch {batch.status}: {batch.successful} succeeded, {batch.failed} failed, "
        f"{batch.cancelled} cancelled; {batch.total_usage.total_tokens} tokens in "
        f"{batch.duration:.1f} s",
        file=out,
        flush=True,
    )


def format_tree(result: RunResult, *, errors: bool = True) -> list[str]:
    """The result tree as aligned text lines: label, status, depth, turns, own tokens.

    With ``errors``, a failed node is followed by its error message, indented under it.
    """
    rows = [(p, c, printable(n.label, single_line=True), n) for p, c, n in _rows(result, "", "")]
    width = max(len(prefix) + len(label) for prefix, _, label, _ in rows)
    status_width = max(len(describe_status(n.status, n.error_type)) for *_, n in rows)
    lines = []
    for prefix, cont, label, node in rows:
        name = f"{prefix}{label}".ljust(width)
        status = describe_status(node.status, node.error_type).ljust(status_width)
        lines.append(
            f"{name}  {status}  depth {node.depth}  turns {node.turns:>2}  "
            f"tokens {node.usage.total_tokens:>6}"
        )
        if errors and node.error and node.status not in SUCCEEDED:
            lines.append(f"{cont}↳ {one_line(node.error)}")
    return lines


def _rows(node: RunResult, prefix: str, cont: str) -> Iterator[tuple[str, str, RunResult]]:
    """(the node's line prefix, the prefix of lines under it, node), depth first."""
    yield prefix, cont + ("│  " if node.children else "   "), node
    last = len(node.children) - 1
    for index, child in enumerate(node.children):
        branch, further = ("└─ ", "   ") if index == last else ("├─ ", "│  ")
        yield from _rows(child, cont + branch, cont + further)
