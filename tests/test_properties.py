"""Property tests over random agent trees: quota, accounting and event pairing always hold.

Each example runs on virtual time (``tests/_clock.py``) on a backend Hypothesis draws: asyncio,
or trio, whose scheduler starts the tasks of a batch in a shuffled order. Under Hypothesis,
trio seeds that shuffle from the example (its Hypothesis plugin), so a failing example
replays and shrinks on either backend; a hanging child times out at the same virtual instant
on every run, however loaded the machine.
"""

from __future__ import annotations

from typing import Any

import anyio
from _clock import BACKENDS, Backend, live_tasks, run_virtual
from _trees import CancelAfter, TreeModel, spec_json, trees
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xzatoma import QuotaLimits, Runtime, SubagentConfig
from xzatoma.events import Event, ModelCallStarted, RunStarted
from xzatoma.testing import EventCapture

PAIRS = {
    "RunStarted": "RunEnded",
    "ModelCallStarted": "ModelCallEnded",
    "ToolCallStarted": "ToolCallEnded",
    "SubagentStarted": "SubagentEnded",
    "BatchStarted": "BatchEnded",
}


def assert_every_start_has_exactly_one_end(events: list[Event]) -> None:
    started: dict[str, list[int]] = {}
    ended: dict[str, list[int]] = {}
    for event in events:
        kind = type(event).__name__
        if kind in PAIRS:
            started.setdefault(PAIRS[kind], []).append(event.id)
        else:
            ended.setdefault(kind, []).append(event.id)
    for end_kind in PAIRS.values():
        starts, ends = started.get(end_kind, []), ended.get(end_kind, [])
        assert sorted(starts) == sorted(ends), end_kind
        assert len(set(ends)) == len(ends), f"{end_kind} emitted twice"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=trees(faults=False),
    limit=st.integers(min_value=0, max_value=400),
    backend=st.sampled_from(BACKENDS),
)
def test_no_model_call_after_the_token_limit_is_reached(
    tree: dict[str, Any], limit: int, backend: Backend
) -> None:
    model = TreeModel()
    violations: list[int] = []
    runtime: Runtime | None = None

    def watch(event: Event) -> None:
        if isinstance(event, ModelCallStarted) and event.depth > 0:
            assert runtime is not None
            used = runtime.tracker.statistics().total_tokens
            if used >= limit:
                violations.append(used)

    runtime = Runtime(
        model.provider(),
        subagents=SubagentConfig(max_depth=3),
        quota=QuotaLimits(max_total_tokens=limit),
        telemetry=False,
        hooks=[watch],
    )

    async def main() -> None:
        assert runtime is not None
        result = await runtime.agent().run(spec_json(tree))
        assert result.status == "complete"  # the root always answers
        assert result.total_usage == model.usage()

    run_virtual(main, backend)
    assert violations == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=trees(),
    max_executions=st.one_of(st.none(), st.integers(min_value=0, max_value=12)),
    cancel_after=st.one_of(st.none(), st.integers(min_value=1, max_value=25)),
    backend=st.sampled_from(BACKENDS),
)
def test_random_trees_with_faults_keep_every_invariant(
    tree: dict[str, Any], max_executions: int | None, cancel_after: int | None, backend: Backend
) -> None:
    model = TreeModel()
    capture = EventCapture()
    cancel_at_random = CancelAfter(cancel_after)

    runtime = Runtime(
        model.provider(),
        subagents=SubagentConfig(max_depth=3, timeout=2),  # virtual seconds: a hang times out
        quota=QuotaLimits(max_executions=max_executions),
        telemetry=False,
        hooks=[capture, cancel_at_random],
    )

    async def main() -> None:
        before = live_tasks()
        with anyio.CancelScope() as cancel_at_random.scope:
            result = await runtime.agent().run(spec_json(tree))
            assert result.status == "complete"
            assert result.total_usage == model.usage()
        assert live_tasks() - before == set()  # nothing of the tree outlives run()

    run_virtual(main, backend)
    assert_every_start_has_exactly_one_end(capture.events)
    spawns_started = sum(1 for e in capture.of(RunStarted) if e.depth > 0)
    assert runtime.tracker.statistics().executions == spawns_started
    if max_executions is not None:
        assert spawns_started <= max_executions
