"""The JSON views of results, in one place: what ``--json`` prints for a run and a batch,
and the entries of the batch document a parent model reads (``_tool_messages`` fits it)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ._result import RunResult
from ._subagent_models import BatchResult
from ._types import Message, ToolCall, Usage

if TYPE_CHECKING:
    from ._journal import JournalView

__all__ = (
    "batch_dict",
    "batch_summary",
    "cost_value",
    "finished_entry",
    "journal_dict",
    "run_dict",
    "run_from_dict",
    "task_entry",
)


def run_dict(
    result: RunResult, *, messages: bool = False, exact: bool = False
) -> dict[str, object]:
    """A run's tree as ``--json`` prints it (``RunResult.to_dict``); messages only when asked.

    ``exact`` (the batch journal's form, read back by :func:`run_from_dict`): durations
    unrounded and costs as decimal strings, so a result read back equals the one written.
    """
    data: dict[str, object] = {
        "label": result.label,
        "depth": result.depth,
        "status": result.status,
        "output": result.output,
        "turns": result.turns,
        "error_type": result.error_type,
        "error": result.error,
        "truncated": result.truncated,
        "duration_s": result.duration if exact else round(result.duration, 6),
        "usage": _usage_dict(result.usage),
        "total_usage": _usage_dict(result.total_usage),
        "cost": _exact_cost(result.cost) if exact else cost_value(result.cost),
        "total_cost": _exact_cost(result.total_cost) if exact else cost_value(result.total_cost),
        "children": [run_dict(c, messages=messages, exact=exact) for c in result.children],
    }
    if messages:
        data["messages"] = [_message_dict(m) for m in result.messages]
    return data


def cost_value(cost: Decimal | None) -> float | None:
    """A cost for JSON: US dollars as a number, ``null`` when unknown."""
    return None if cost is None else float(cost)


def _exact_cost(cost: Decimal | None) -> str | None:
    return None if cost is None else str(cost)


def run_from_dict(data: Mapping[str, Any]) -> RunResult:
    """The :class:`RunResult` that :func:`run_dict` was made from (the batch journal keeps
    results as ``run_dict(messages=True, exact=True)``). Messages come back when they were
    kept; totals are recomputed from the tree, as always."""
    cost = data.get("cost", 0)
    return RunResult(
        output=data["output"],
        status=data["status"],
        turns=data["turns"],
        usage=_usage_of(data["usage"]),
        children=tuple(run_from_dict(c) for c in data.get("children", ())),
        messages=tuple(_message_of(m) for m in data.get("messages", ())),
        error_type=data.get("error_type"),
        error=data.get("error"),
        label=data["label"],
        depth=data["depth"],
        truncated=data.get("truncated", False),
        duration=data.get("duration_s", 0.0),
        cost=None if cost is None else Decimal(cost if isinstance(cost, str) else repr(cost)),
    )


def batch_dict(batch: BatchResult) -> dict[str, object]:
    """``--json`` for a batch: the counts, and each task's :func:`run_dict`, marked
    ``"resumed": true`` when it was read from the journal rather than run this time."""
    resumed = frozenset(batch.resumed)
    return {
        "status": batch.status,
        "successful": batch.successful,
        "failed": batch.failed,
        "cancelled": batch.cancelled,
        "duration_s": round(batch.duration, 6),
        "total_tokens": batch.total_usage.total_tokens,
        "total_cost": cost_value(batch.total_cost),
        "resumed": len(batch.resumed),
        "results": [{**run_dict(r), "resumed": i in resumed} for i, r in enumerate(batch.results)],
    }


def journal_dict(view: JournalView) -> dict[str, object]:
    """``xzatoma journal show --json``: the journal's facts, counts and tasks."""
    return {
        "path": str(view.path),
        "created_at": view.created_at,
        "xzatoma_version": view.xzatoma_version,
        "schema_version": view.schema_version,
        "in_use": view.in_use,
        "counts": view.counts(),
        "will_run": sum(1 for e in view.entries if e.will_run),
        "tasks": [
            {
                "index": e.index,
                "key": e.key,
                "label": e.label,
                "status": e.status,
                "error_type": e.error_type,
                "turns": e.turns,
                "total_tokens": e.total_tokens,
                "total_cost": cost_value(e.total_cost),
                "ended_at": e.ended_at,
                "runs": e.runs,
                "will_run": e.will_run,
            }
            for e in view.entries
        ],
    }


def finished_entry(result: RunResult) -> dict[str, object]:
    """One finished subagent in the report of an interrupted command (``--json``)."""
    return {
        "label": result.label,
        "status": result.status,
        "error_type": result.error_type,
        "turns": result.turns,
        "tokens": result.usage.total_tokens,
        "output": result.output,
    }


def task_entry(result: RunResult) -> dict[str, object]:
    """One task of the batch document the model receives (see ``_tool_messages``); it says
    ``"truncated": true`` only when its output was cut."""
    entry: dict[str, object] = {
        "label": result.label,
        "success": result.succeeded,
        "status": result.status,
        "output": result.output,
        "error": result.error if result.status != "complete" else None,
        "error_type": result.error_type,
        "duration_ms": round(result.duration * 1000, 3),
        "tokens_used": result.total_usage.total_tokens,
        "turns": result.turns,
    }
    if result.truncated:
        entry["truncated"] = True
    return entry


def batch_summary(batch: BatchResult) -> dict[str, object]:
    """The batch document's fields after ``tasks``: the counts, status and totals."""
    return {
        "successful": batch.successful,
        "failed": batch.failed,
        "cancelled": batch.cancelled,
        "status": batch.status,
        "total_duration_ms": round(batch.duration * 1000, 3),
        "total_tokens": batch.total_usage.total_tokens,
    }


def _usage_dict(usage: Usage) -> dict[str, int | bool]:
    return {
        "requests": usage.requests,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "estimated": usage.estimated,
    }


def _usage_of(data: Mapping[str, Any]) -> Usage:
    return Usage(
        data["requests"],
        data["prompt_tokens"],
        data["completion_tokens"],
        data["total_tokens"],
        data.get("estimated", False),
    )


def _message_dict(message: Message) -> dict[str, object]:
    data: dict[str, object] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        data["tool_calls"] = [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        data["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        data["name"] = message.name
    return data


def _message_of(data: Mapping[str, Any]) -> Message:
    calls = tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in data.get("tool_calls", ()))
    return Message(
        data["role"], data.get("content"), calls, data.get("tool_call_id"), data.get("name")
    )
