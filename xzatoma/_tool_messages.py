"""What a parent model reads about its children: the ``subagent`` and ``parallel_subagent``
tool messages, each fitted whole into ``output_max_size`` bytes of UTF-8.

The limit bounds the message, not only a child's output: the ``Error:`` prefix, the header
that names the child, the truncation marker and a batch's JSON are all inside it, so one
call grows the parent's context by at most ``output_max_size`` bytes, whatever labels and
texts the children came back with. The ``RunResult`` tree the Python caller reads is not
touched: there each child's output is cut to the limit on its own (``RunResult.truncated``).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ._limits import truncate_utf8
from ._result import RunResult
from ._subagent_models import BatchResult
from ._tools import ToolResult
from ._views import batch_summary, task_entry

__all__ = ("describe_batch", "describe_child")

_REFUSALS = frozenset(
    {"quota_exceeded", "max_depth_reached", "invalid_input", "initialization_failed"}
)
_ELLIPSIS = "…"

Head = Callable[[str, str], str]
"""Builds a message's header from a label and a detail (the error text)."""


def describe_child(result: RunResult, max_bytes: int) -> ToolResult:
    """What the parent model reads about one child: at most ``max_bytes`` of UTF-8 in all."""
    label, detail, output = result.label, result.error or result.status, result.output
    if result.status == "complete":  # the spawner cut it to the limit already: no header
        return ToolResult(output)
    if result.status == "incomplete":
        return ToolResult(_fit(_incomplete_head, label, detail, output, max_bytes))
    if not result.turns and result.error_type in _REFUSALS:
        return ToolResult(_fit(_refusal_head, "", detail, "", max_bytes), True)
    status, error_type = result.status, result.error_type

    def head(label: str, detail: str) -> str:
        return f"Error: subagent '{label}' {status} ({error_type}): {detail}"

    body = f"\nPartial output:\n{output}" if output else ""
    return ToolResult(_fit(head, label, detail, body, max_bytes), True)


def _incomplete_head(label: str, detail: str) -> str:
    return f"[subagent '{label}' ended incomplete: {detail}]\n"


def _refusal_head(label: str, detail: str) -> str:
    return f"Error: {detail}"


def _fit(head: Head, label: str, detail: str, body: str, max_bytes: int) -> str:
    """``head(label, detail) + body`` in at most ``max_bytes``, cut on character boundaries.

    When it is too long, the header takes at most half the limit (all the body leaves, if
    more), the label at most half of that (all the detail leaves, if more), each cut with
    an ellipsis; the body is cut last, behind the usual truncation marker.
    """
    text, cut = truncate_utf8(head(label, detail) + body, max_bytes)
    if not cut:
        return text
    room = max(max_bytes // 2, max_bytes - _size(body)) - _size(head("", ""))
    label = _shorten(label, max(room // 2, room - _size(detail)))
    detail = _shorten(detail, room - _size(label))
    return truncate_utf8(head(label, detail) + body, max_bytes)[0]


def _size(text: str) -> int:
    """Bytes of UTF-8 (a lone surrogate counts as the one ``?`` it will be replaced by)."""
    return len(text.encode("utf-8", "replace"))


def _shorten(text: str, room: int) -> str:
    """``text`` in at most ``room`` bytes of UTF-8, ending in an ellipsis when cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= room:
        return text
    keep = room - len(_ELLIPSIS.encode())
    return data[:keep].decode("utf-8", "ignore") + _ELLIPSIS if keep > 0 else ""


# -- a batch -------------------------------------------------------------------------------


def describe_batch(batch: BatchResult, max_bytes: int) -> ToolResult:
    """What the parent model reads about a batch: one JSON document, at most ``max_bytes``
    of UTF-8 with the ``Error:`` line that comes first when no task succeeded."""
    if batch.status != "failed":
        return ToolResult(batch_json_within(batch, max_bytes))
    first = f"Error: parallel batch failed: none of the {len(batch.results)} tasks succeeded.\n"
    return ToolResult(first + batch_json_within(batch, max_bytes - _size(first)), True)


def batch_json_within(batch: BatchResult, max_bytes: int) -> str:
    """The batch document in at most ``max_bytes`` of UTF-8, always valid JSON.

    The whole document when it fits. Otherwise, step by step: the JSON loses its spaces;
    the texts (labels, outputs, errors) share the bytes the other fields leave, labels
    first, then outputs and errors fairly (none gets more than an equal share while
    another wants more), and a task whose text was cut says ``"truncated": true``; if not
    every task fits even with empty texts, each task keeps only its label, status, output
    and error; as a last resort the trailing tasks are left out and ``"omitted_tasks"``
    says how many. The counts and totals always cover every task. ``max_bytes`` must
    leave room for those (a few hundred bytes; ``output_max_size`` is at least 1024).
    """
    entries = [task_entry(result) for result in batch.results]
    summary = batch_summary(batch)
    lower_bound = sum(len(r.label) + len(r.output) + len(r.error or "") for r in batch.results)
    if lower_bound <= max_bytes:  # a character is at least one byte: only then can it fit
        whole = json.dumps({"tasks": entries, **summary}, ensure_ascii=False)
        try:
            size = len(whole.encode())
        except UnicodeEncodeError:  # a lone surrogate in a label or an error
            whole = _valid(whole)
            size = len(whole.encode())
        if size <= max_bytes:
            return whole
    return _valid(_squeezed(entries, summary, max_bytes))


_BRIEF = ("label", "status", "output", "error", "truncated")
"""The fields a task keeps when the batch is too large for every task's whole entry."""


def _squeezed(entries: list[dict[str, object]], summary: dict[str, object], room: int) -> str:
    count = len(entries)
    for brief in (False, True):
        if brief:
            entries = [{k: e[k] for k in _BRIEF if e.get(k) is not None} for e in entries]
        sizes = [_compact_size(_skeleton(e)) for e in entries]
        kept, fixed = _tasks_that_fit(sizes, summary, room)
        if kept == count:
            break
    entries = entries[:kept]
    free = room - fixed
    labels = _cut_all([str(e["label"]) for e in entries], free)
    free -= sum(_json_size(label) for label in labels)
    # Outputs and errors share what is left, one pool, so a long error cannot starve outputs.
    bodies = [str(e["output"]) for e in entries]
    bodies += [str(e["error"]) for e in entries if e.get("error") is not None]
    cut = _cut_all(bodies, free)
    outputs, errors = iter(cut[:kept]), iter(cut[kept:])
    tasks = []
    for entry, label in zip(entries, labels, strict=True):
        fitted = dict(entry, label=label, output=next(outputs))
        if entry.get("error") is not None:
            fitted["error"] = next(errors)
        if any(fitted[k] != entry[k] for k in ("label", "output", "error") if k in entry):
            fitted["truncated"] = True
        tasks.append(fitted)
    document: dict[str, object] = {"tasks": tasks}
    if kept < count:
        document["omitted_tasks"] = count - kept
    return _compact(document | summary)


def _skeleton(entry: dict[str, object]) -> dict[str, object]:
    """A task's entry with its texts emptied, flagged as if cut when it has any text."""
    skeleton = dict(entry, label="", output="")
    if entry.get("error") is not None:
        skeleton["error"] = ""
    if entry["label"] or entry["output"] or entry.get("error"):
        skeleton["truncated"] = True
    return skeleton


def _tasks_that_fit(sizes: list[int], summary: dict[str, object], room: int) -> tuple[int, int]:
    """How many leading tasks fit with their texts emptied, and the bytes that takes."""
    count = len(sizes)
    every = _compact_size({"tasks": [], **summary}) + sum(sizes) + count - 1
    if every <= room:
        return count, every
    kept, used = 0, 0
    while kept < count:
        more = used + sizes[kept] + (1 if kept else 0)
        total = more + _compact_size({"tasks": [], "omitted_tasks": count - kept - 1, **summary})
        if total > room:
            break
        kept, used = kept + 1, more
    return kept, used + _compact_size({"tasks": [], "omitted_tasks": count - kept, **summary})


def _cut_all(texts: list[str], room: int) -> list[str]:
    """Each text cut to a fair share of ``room`` bytes of JSON (max-min fair).

    Texts are served shortest first, each getting what it needs up to an equal share of
    what is left; a text longer (in characters) than that share needs more than it, so it
    is not measured in full: the work stays near ``room``, not the texts' total size.
    """
    shares = [0] * len(texts)
    left = len(texts)
    for i in sorted(range(len(texts)), key=lambda i: len(texts[i])):
        level = max(0, room) // left
        need = _json_size(texts[i]) if len(texts[i]) <= level else level
        shares[i] = min(need, level)
        room -= shares[i]
        left -= 1
    return [_json_prefix(text, share) for text, share in zip(texts, shares, strict=True)]


def _json_prefix(text: str, room: int) -> str:
    """The longest prefix of ``text`` whose JSON string body takes at most ``room`` bytes."""
    if len(text) <= room and _json_size(text) <= room:
        return text
    low, high = 0, min(len(text), room)  # a character takes at least one byte
    while low < high:
        middle = (low + high + 1) // 2
        if _json_size(text[:middle]) <= room:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def _json_size(text: str) -> int:
    """Bytes ``text`` takes inside a JSON string, quotes not counted."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8", "replace")) - 2


def _compact(document: dict[str, object]) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def _compact_size(document: dict[str, object]) -> int:
    return len(_compact(document).encode("utf-8", "replace"))


def _valid(text: str) -> str:
    """``text`` with any lone surrogate replaced by ``?``, so that it encodes (and stays JSON)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode()
    return text
