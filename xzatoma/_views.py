"""The JSON views of results, in one place: what ``--json`` prints for a run and a batch,
and the entries of the batch document a parent model reads (``_tool_messages`` fits it)."""

from __future__ import annotations

from ._result import RunResult
from ._subagent_models import BatchResult
from ._types import Message, Usage

__all__ = ("batch_dict", "batch_summary", "finished_entry", "run_dict", "task_entry")


def run_dict(result: RunResult, *, messages: bool = False) -> dict[str, object]:
    """A run's tree as ``--json`` prints it (``RunResult.to_dict``); messages only when asked."""
    data: dict[str, object] = {
        "label": result.label,
        "depth": result.depth,
        "status": result.status,
        "output": result.output,
        "turns": result.turns,
        "error_type": result.error_type,
        "error": result.error,
        "truncated": result.truncated,
        "duration_s": round(result.duration, 6),
        "usage": _usage_dict(result.usage),
        "total_usage": _usage_dict(result.total_usage),
        "children": [run_dict(c, messages=messages) for c in result.children],
    }
    if messages:
        data["messages"] = [_message_dict(m) for m in result.messages]
    return data


def batch_dict(batch: BatchResult) -> dict[str, object]:
    """``--json`` for a batch: the counts, and each task's :func:`run_dict`."""
    return {
        "status": batch.status,
        "successful": batch.successful,
        "failed": batch.failed,
        "cancelled": batch.cancelled,
        "duration_s": round(batch.duration, 6),
        "total_tokens": batch.total_usage.total_tokens,
        "results": [run_dict(r) for r in batch.results],
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


def _message_dict(message: Message) -> dict[str, object]:
    data: dict[str, object] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        data["tool_calls"] = [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        data["tool_call_id"] = message.tool_call_id
    return data
