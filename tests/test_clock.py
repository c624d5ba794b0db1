"""One clock: durations, deadlines and the quota's time limit all follow anyio's clock.

Every test runs on virtual time (``tests/_clock.py``), on trio's ``MockClock`` and on
asyncio, where time starts at 0 and jumps to the next deadline when every task waits. If any
part of the runtime read another clock (``time.monotonic``, a clock injected beside anyio's),
its figure would differ from the virtual one, so the asserts are equalities, not
approximations: a tool that sleeps 7 s makes a run of exactly 7.0 s (whole seconds, which
floats add and subtract exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
from _clock import on_virtual_time
from _trees import TreeModel, spec_json

from xzatoma import (
    Agent,
    Completion,
    Message,
    QuotaLimits,
    Runtime,
    SubagentConfig,
    ToolSpec,
    tool,
)
from xzatoma.events import ModelCallEnded, SubagentEnded, ToolCallEnded
from xzatoma.telemetry import _names as n
from xzatoma.testing import EventCapture, ScriptedProvider, call, capture_telemetry, reply
from xzatoma.testing import tool_calls as calls


@tool
async def wait(seconds: float) -> str:
    """Wait ``seconds`` on anyio's clock."""
    await anyio.sleep(seconds)
    return f"waited {seconds}"


@on_virtual_time
async def test_virtual_time_jumps_to_the_next_deadline_and_only_then() -> None:
    assert anyio.current_time() == 0.0
    await anyio.sleep(3600)
    assert anyio.current_time() == 3600.0
    with anyio.move_on_after(5) as scope:
        await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert anyio.current_time() == 3605.0
    for _ in range(1000):  # work that never waits moves no time
        await anyio.lowlevel.checkpoint()
    assert anyio.current_time() == 3605.0


@on_virtual_time
async def test_a_runs_duration_is_the_time_its_tool_waited() -> None:
    events = EventCapture()
    provider = ScriptedProvider([calls(call("wait", seconds=7)), reply("done")])
    result = await Agent(provider, tools=[wait], hooks=[events]).run("wait a week")
    assert result.status == "complete"
    assert result.duration == 7.0
    assert [e.duration for e in events.of(ToolCallEnded)] == [7.0]
    assert anyio.current_time() == 7.0


@on_virtual_time
async def test_a_child_times_out_exactly_at_its_timeout() -> None:
    events = EventCapture()
    model = TreeModel()
    tree = {"id": "root", "spawn": [{"id": "slow", "fault": "hang"}]}
    with capture_telemetry() as captured:
        runtime = Runtime(model.provider(), subagents=SubagentConfig(timeout=5), hooks=[events])
        result = await runtime.agent().run(spec_json(tree))
    (child,) = result.children
    assert (child.status, child.error_type, child.duration) == ("failed", "timeout", 5.0)
    assert result.status == "complete"  # the root answered at once with the child's failure
    assert result.duration == 5.0
    assert [e.duration for e in events.of(SubagentEnded)] == [5.0]
    hung = [e for e in events.of(ModelCallEnded) if e.depth == 1]
    assert [(e.error_type, e.duration) for e in hung] == [("timeout", 5.0)]
    histogram = captured.histogram(n.DURATION, depth=1)
    assert (histogram.count, histogram.sum) == (1, 5.0)


@on_virtual_time
async def test_the_roots_timeout_ends_it_exactly_then() -> None:
    provider = ScriptedProvider([calls(call("wait", seconds=3600)), reply("never")])
    result = await Agent(provider, tools=[wait], timeout=4).run("wait an hour")
    assert (result.status, result.error_type, result.duration) == ("failed", "timeout", 4.0)
    assert anyio.current_time() == 4.0


@on_virtual_time
async def test_the_quota_time_limit_counts_from_the_trackers_creation() -> None:
    """The root waits 2 s, then spawns a child that hangs: the quota's 3 s, counted from
    the runtime's creation, end the child 1 s after it started."""

    async def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if messages[-1].content == "hang":
            await anyio.sleep_forever()
        turn = sum(1 for m in messages if m.role == "assistant")
        if turn == 0:
            return calls(call("wait", seconds=2))
        if turn == 1:
            return calls(call("subagent", label="slow", task_prompt="hang"))
        return reply("done")

    runtime = Runtime(
        ScriptedProvider(model),
        subagents=SubagentConfig(timeout=5),
        quota=QuotaLimits(max_total_time=3),
        telemetry=False,
    )
    result = await runtime.agent(tools=[wait]).run("go")
    (child,) = result.children
    assert (child.status, child.error_type, child.duration) == ("failed", "quota_exceeded", 1.0)
    assert child.error == "Resource quota exceeded: time limit reached (3.0s/3.0s)"
    assert result.status == "complete"  # the quota never stops the root
    assert result.duration == 3.0
    stats = runtime.tracker.statistics()
    assert (stats.elapsed, stats.remaining_time) == (3.0, 0.0)


@on_virtual_time
async def test_a_batch_runs_its_tasks_on_the_same_clock() -> None:
    """Two hanging tasks one at a time, 5 s each, under a batch deadline of 7 s."""
    model = TreeModel()
    runtime = Runtime(
        model.provider(), subagents=SubagentConfig(timeout=5, max_concurrent=1), telemetry=False
    )
    hang: dict[str, Any] = {"fault": "hang"}
    tasks = [{"label": label, "task_prompt": spec_json({**hang, "id": label})} for label in "ab"]
    batch = await runtime.run_batch(tasks, timeout=7)
    assert [(r.label, r.error_type, r.duration) for r in batch.results] == [
        ("a", "timeout", 5.0),
        ("b", "timeout", 2.0),  # started at 5 s: the batch's deadline (7 s) came before its own
    ]
    assert batch.duration == 7.0
