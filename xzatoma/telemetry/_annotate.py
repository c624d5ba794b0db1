"""What a span's end adds to it: usage, cost, status, and the error of a failed end."""

from __future__ import annotations

from opentelemetry.trace import Span, Status, StatusCode

from .._run import ModelCall, Run
from .._tools import ToolResult
from . import _names as n

__all__ = ("annotate_chat", "annotate_run", "annotate_tool")


def annotate_run(span: Span, run: Run) -> None:
    span.set_attributes(
        {
            n.GEN_AI_USAGE_INPUT_TOKENS: run.usage.prompt_tokens,
            n.GEN_AI_USAGE_OUTPUT_TOKENS: run.usage.completion_tokens,
            n.XZ_TOTAL_TOKENS: run.usage.total_tokens,
            n.XZ_TURNS: run.turns,
            n.XZ_STATUS: run.status or "cancelled",
        }
    )
    if run.cost is not None:
        span.set_attribute(n.XZ_COST, float(run.cost))
        total = run.result().total_cost
        if total is not None:
            span.set_attribute(n.XZ_TOTAL_COST, float(total))
    if run.status == "failed" or run.status == "cancelled":
        _fail(span, run.error_type or run.status)


def annotate_chat(span: Span, call: ModelCall) -> None:
    completion = call.completion
    if completion is None:
        _fail(span, call.error_code or n.CANCELLED)
        return
    usage = completion.usage
    span.set_attributes(
        {
            n.GEN_AI_USAGE_INPUT_TOKENS: usage.prompt_tokens,
            n.GEN_AI_USAGE_OUTPUT_TOKENS: usage.completion_tokens,
        }
    )
    if completion.model is not None:
        span.set_attribute(n.GEN_AI_RESPONSE_MODEL, completion.model)
    if completion.response_id is not None:
        span.set_attribute(n.GEN_AI_RESPONSE_ID, completion.response_id)
    if completion.finish_reason is not None:
        span.set_attribute(n.GEN_AI_RESPONSE_FINISH_REASONS, (completion.finish_reason,))
    if call.cost is not None:
        span.set_attribute(n.XZ_COST, float(call.cost))
    if completion.tool_calls_from_text:
        span.set_attribute(n.XZ_TOOL_CALLS_FROM_TEXT, len(completion.tool_calls))


def annotate_tool(span: Span, result: ToolResult | None) -> None:
    if result is None or result.is_error:
        _fail(span, n.CANCELLED if result is None else n.TOOL_ERROR)


def _fail(span: Span, error_type: str) -> None:
    span.set_attribute(n.OTEL_ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR, error_type))
