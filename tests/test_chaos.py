"""Chaos: 500 seeded random trees with injected faults and random cancellations.

Every tree must end with: no exception out of ``run`` but the caller's own cancellation;
every started execution, run, model call, tool call and batch ended exactly once (events and
metrics: executions = completions + errors per depth, active = 0); the quota never exceeded;
``total_usage`` equal to what the provider reported; no task of the tree still alive.

Every seed runs on virtual time (``tests/_clock.py``), so a timeout fires when the tree waits
for it, never because the machine was slow, and on both backends: on trio, whose scheduler
starts the tasks of a batch in a random order, and on asyncio, the backend most users run,
where a cancellation reaches a model call as a ``CancelledError`` that the runtime must tell
from a stray one (trio's ``Cancelled`` never takes that path). A failing seed is named in the
assertion; on asyncio ``pytest -k`` plus the seed replays it exactly, on trio it replays the
tree, the faults and the cancellation, but not necessarily the order the scheduler drew.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import anyio
import pytest
from _clock import BACKENDS, Backend, live_tasks, run_virtual
from _trees import CancelAfter, TreeModel, spec_json
from opentelemetry.sdk.metrics.export import NumberDataPoint
from opentelemetry.util.types import AttributeValue
from test_properties import assert_every_start_has_exactly_one_end

from xzatoma import QuotaLimits, Runtime, SubagentConfig, Usage
from xzatoma.events import RunStarted
from xzatoma.telemetry import TelemetrySubscriber
from xzatoma.telemetry import _names as n
from xzatoma.testing import EventCapture, FaultyProvider, TelemetryCapture, capture_telemetry

SEEDS = range(500)


def random_tree(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    node: dict[str, Any] = {"id": f"d{depth}-{rng.randrange(10**6)}"}
    if depth < 4:
        node["spawn"] = [random_tree(rng, depth + 1) for _ in range(rng.choice((0, 0, 1, 2)))]
        node["parallel"] = [random_tree(rng, depth + 1) for _ in range(rng.choice((0, 0, 2, 4)))]
        node["fail_fast"] = rng.random() < 0.3
    return node


def run_one(seed: int, backend: Backend, captured: TelemetryCapture) -> None:
    """One seed. ``captured`` may hold earlier seeds' metrics: they are cumulative, and the
    invariants held for those, so the totals still balance only if they hold for this one."""
    rng = random.Random(seed)
    tree = random_tree(rng)
    model = TreeModel()
    provider = FaultyProvider(model.provider(), rate=0.15, seed=seed)
    max_executions = rng.choice((None, None, 0, 1, 3, 8))
    cancel_after = rng.choice((None, None, None, None, 1, 2, 3, 5, 8))
    # Children time out after 2 virtual seconds; a batch of 4 at 3 at a time takes up to 4,
    # so a root timeout of 3 cuts a batch's second wave and 4 ends at the same instant as it.
    root_timeout = rng.choice((3, 4, 20))
    events = EventCapture()
    subscriber = TelemetrySubscriber()
    maybe_cancel = CancelAfter(cancel_after)

    runtime = Runtime(
        provider,
        subagents=SubagentConfig(max_depth=3, timeout=2, max_concurrent=3),
        quota=QuotaLimits(max_executions=max_executions),
        telemetry=subscriber,
        hooks=[events, maybe_cancel],
    )

    async def main() -> None:
        # On trio, anyio walks every nursery from trio's root task (system tasks
        # included): the equivalent of asyncio.all_tasks(), which it gives on asyncio.
        before = live_tasks()
        with anyio.CancelScope() as maybe_cancel.scope:
            result = await runtime.agent(timeout=root_timeout).run(spec_json(tree))
            # A malformed reply reported no usage, but it is a model call all the same.
            malformed = sum(1 for _, fault in provider.injected if fault == "malformed")
            expected = model.usage() + Usage(requests=malformed)
            assert result.total_usage == expected, f"seed {seed}: usage"
        assert live_tasks() - before == set(), f"seed {seed}: tasks left"

    run_virtual(main, backend)

    assert_every_start_has_exactly_one_end(events.events)
    assert subscriber.in_flight == 0, f"seed {seed}: spans or executions in flight"
    started = sum(1 for e in events.of(RunStarted) if e.depth > 0)
    assert runtime.tracker.statistics().executions == started, f"seed {seed}: quota"
    if max_executions is not None:
        assert started <= max_executions, f"seed {seed}: quota exceeded"
    totals = counters_by_depth(captured)
    completions, errors, active = (totals[k] for k in (n.COMPLETIONS, n.ERRORS, n.ACTIVE_COUNT))
    for depth, executions in totals[n.EXECUTIONS].items():
        ended = completions[depth] + errors[depth]
        assert executions == ended, f"seed {seed}: depth {depth!r} {executions} != {ended}"
        assert active[depth] == 0, f"seed {seed}: active"


Totals = defaultdict[str, defaultdict[AttributeValue, float]]


def counters_by_depth(captured: TelemetryCapture) -> Totals:
    """Every counter's totals per depth, from one collection of the in-memory reader.

    Not ``captured.value()`` per counter and depth: each lookup collects every instrument,
    which made up a third of the test's time.
    """
    totals: Totals = defaultdict(lambda: defaultdict(float))
    data = captured.metric_reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    if isinstance(point, NumberDataPoint) and point.attributes:
                        totals[metric.name][point.attributes.get(n.DEPTH)] += point.value
    return totals


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block", range(10))
def test_chaos(block: int, backend: Backend) -> None:
    with capture_telemetry() as captured:  # one per block: an SDK setup costs a seed's run
        for seed in SEEDS[block::10]:
            run_one(seed, backend, captured)
