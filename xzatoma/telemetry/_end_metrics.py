"""The instruments recorded at the end of an agent run, a model call and a tool call, to a
subscriber's instruments and attribute sets (a subagent execution's are ``_recorder``'s)."""

from __future__ import annotations

from .._result import ANSWERED
from .._run import ModelCall, Run
from .._tools import ToolContext, ToolResult
from . import _names as n
from ._attributes import AttributeSets
from ._metrics import NO_EXEMPLARS, Instruments

__all__ = ("model_call_metrics", "run_metrics", "tool_metrics")


def model_call_metrics(inst: Instruments, sets: AttributeSets, call: ModelCall) -> None:
    call_attrs, input_attrs, output_attrs = sets.gen_ai(call.provider, call.model, call.error_code)
    inst.operation_duration.record(call.duration, call_attrs, NO_EXEMPLARS)
    usage = call.usage
    # A call that failed, or whose provider reported no usage, has no token counts to give.
    if call.error_type is None and (
        usage.prompt_tokens or usage.completion_tokens or usage.total_tokens
    ):
        inst.token_usage.record(usage.prompt_tokens, input_attrs, NO_EXEMPLARS)
        inst.token_usage.record(usage.completion_tokens, output_attrs, NO_EXEMPLARS)


def run_metrics(inst: Instruments, sets: AttributeSets, run: Run) -> None:
    """The agent-level instruments of one run's end (the root's dollars, too)."""
    depth = run.depth
    by_depth = sets.depth(depth)
    if run.parent is None and run.cost:
        # The root is no subagent execution: its own dollars are counted here, at depth 0.
        inst.cost.add(float(run.cost), by_depth)
    attributes = (
        by_depth
        if run.status in ANSWERED  # the one rule of a success (an answer, complete or not)
        else sets.pair(depth, n.OTEL_ERROR_TYPE, run.error_type or n.CANCELLED)
    )
    inst.invoke_agent_duration.record(run.duration, attributes)
    if run.turns:
        inst.model_calls.record(run.turns, by_depth, NO_EXEMPLARS)
    if run.tool_calls:
        inst.tool_calls.record(run.tool_calls, by_depth, NO_EXEMPLARS)


def tool_metrics(
    inst: Instruments, sets: AttributeSets, run: Run, ctx: ToolContext, result: ToolResult | None
) -> None:
    """``gen_ai.execute_tool.duration`` of one tool call."""
    name = ctx.call.name
    if ctx.agent.callable_tool(name) is None:  # the model's invention: not on a metric
        name = n.UNKNOWN_TOOL
    error = n.CANCELLED if result is None else n.TOOL_ERROR if result.is_error else None
    inst.execute_tool_duration.record(run.now() - ctx.started, sets.tool(run.depth, name, error))
