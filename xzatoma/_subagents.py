"""The subagent tools: ``subagent`` (one child) and ``parallel_subagent`` (a batch).

Both are thin model-facing shells over one :class:`~xzatoma._spawn.Spawner`, which owns
every execution from start to end; they only turn its results into the tool message the
model reads.
"""

from __future__ import annotations

from ._limits import Quota, QuotaLimits
from ._run import Run
from ._spawn import Spawner
from ._subagent_models import ParallelSubagentArgs, SubagentConfig, SubagentTask
from ._tool_messages import describe_batch, describe_child
from ._tools import ArgsT, Tool, ToolContext, ToolResult

__all__ = ("ParallelSubagentTool", "SubagentTool")


class _SpawningTool(Tool[ArgsT]):
    """What both subagent tools share: the spawner.

    Args:
        config: How subagents are spawned.
        quota: The quota spawns reserve from when the tree has none of its own: a
            :class:`QuotaTracker` to share, or :class:`QuotaLimits` for one of its own.
        _spawner: The spawner to share with the other subagent tool, in place of
            ``config`` and ``quota`` (what ``Runtime`` does).
    """

    is_subagent_tool = True

    def __init__(
        self,
        config: SubagentConfig | None = None,
        quota: Quota | QuotaLimits | None = None,
        *,
        _spawner: Spawner | None = None,
    ) -> None:
        self.spawner = _spawner if _spawner is not None else Spawner(config, quota)


class SubagentTool(_SpawningTool[SubagentTask]):
    """The ``subagent`` tool: delegate one task to a fresh agent one level deeper."""

    name = "subagent"
    description = (
        "Delegate a self-contained task to a subagent with a fresh context. It can use your "
        "tools (or the subset in allowed_tools) and returns its summarized findings."
    )
    parameters = SubagentTask

    async def invoke(self, ctx: ToolContext) -> ToolResult:
        child = await self.spawner.spawn(ctx.run, ctx.call.arguments, call_id=ctx.id)
        return describe_child(child.result(), self.spawner.config.output_max_size)


class ParallelSubagentTool(_SpawningTool[ParallelSubagentArgs]):
    """The ``parallel_subagent`` tool: run a batch of independent tasks at once."""

    name = "parallel_subagent"
    description = (
        "Run several independent tasks at once, each in its own subagent. Returns JSON with "
        "each task's output and status, in the order given."
    )
    parameters = ParallelSubagentArgs

    async def invoke(self, ctx: ToolContext) -> ToolResult:
        limit = self.spawner.config.output_max_size
        outcome = await self.spawner.spawn_batch(ctx.run, ctx.call.arguments, call_id=ctx.id)
        if isinstance(outcome, Run):
            return describe_child(outcome.result(), limit)
        return describe_batch(outcome, limit)
