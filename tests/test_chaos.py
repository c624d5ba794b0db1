"""Chaos: 500 seeded random trees with injected faults and random cancellations.

Every tree must end with: no exception out of ``run`` but the caller's own cancellation;
every started execution, run, model call, tool call and batch ended exactly once (events and
metrics: executions = completions + errors per depth, active = 0); the quota never exceeded;
``total_usage`` equal to what the provider reported; no task of the tree still alive. A failing
seed is named in the assertion, so ``pytest -k`` plus the seed replays it.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import anyio
import pytest
from _trees import CancelAfter, TreeModel, spec_json
from test_properties import assert_every_start_has_exactly_one_end

from xzatoma import QuotaLimits, Runtime, SubagentConfig, Usage
from xzatoma.events import RunStarted
from xzatoma.telemetry import TelemetrySubscriber
from xzatoma.telemetry import _names as n
from xzatoma.testing import EventCapture, FaultyProvider, capture_telemetry

SEEDS = range(500)


def random_tree(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    node: dict[str, Any] = {"id": f"d{depth}-{rng.randrange(10**6)}"}
    if depth < 4:
        node["spawn"] = [random_tree(rng, depth + 1) for _ in range(rng.choice((0, 0, 1, 2)))]
        node["parallel"] = [random_tree(rng, depth + 1) for _ in range(rng.choice((0, 0, 2, 4)))]
        node["fail_fast"] = rng.random() < 0.3
    return node


def run_one(seed: int) -> None:
    rng = random.Random(seed)
    tree = random_tree(rng)
    model = TreeModel()
    provider = FaultyProvider(model.provider(), rate=0.15, seed=seed)
    max_executions = rng.choice((None, None, 0, 1, 3, 8))
    cancel_after = rng.choice((None, None, None, None, 1, 2, 3, 5, 8))
    events = EventCapture()
    subscriber = TelemetrySubscriber()
    maybe_cancel = CancelAfter(cancel_after)

    with capture_telemetry() as captured:
        runtime = Runtime(
            provider,
            subagents=SubagentConfig(max_depth=3, timeout=0.02, max_concurrent=3),
            quota=QuotaLimits(max_executions=max_executions),
            telemetry=subscriber,
            hooks=[events, maybe_cancel],
        )

        async def main() -> None:
            before = asyncio.all_tasks()
            with anyio.CancelScope() as maybe_cancel.scope:
                result = await runtime.agent(timeout=0.2).run(spec_json(tree))
                # A malformed reply reported no usage, but it is a model call all the same.
                malformed = sum(1 for _, fault in provider.injected if fault == "malformed")
                expected = model.usage() + Usage(requests=malformed)
                assert result.total_usage == expected, f"seed {seed}: usage"
            assert asyncio.all_tasks() - before == set(), f"seed {seed}: tasks left"

        anyio.run(main)

        assert_every_start_has_exactly_one_end(events.events)
        assert subscriber.in_flight == 0, f"seed {seed}: spans or executions in flight"
        started = sum(1 for e in events.of(RunStarted) if e.depth > 0)  # type: ignore[union-attr]
        assert runtime.tracker.statistics().executions == started, f"seed {seed}: quota"
        if max_executions is not None:
            assert started <= max_executions, f"seed {seed}: quota exceeded"
        for attributes in captured.attribute_sets(n.EXECUTIONS):
            depth = attributes[n.DEPTH]
            executions = captured.value(n.EXECUTIONS, depth=depth)
            ended = captured.value(n.COMPLETIONS, depth=depth) + captured.value(
                n.ERRORS, depth=depth
            )
            assert executions == ended, f"seed {seed}: depth {depth} {executions} != {ended}"
            assert captured.value(n.ACTIVE_COUNT, depth=depth) == 0, f"seed {seed}: active"


@pytest.mark.parametrize("block", range(10))
def test_chaos(block: int) -> None:
    for seed in SEEDS[block::10]:
        run_one(seed)
