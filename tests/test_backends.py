"""What must not depend on the backend or on the order its scheduler starts tasks in.

trio starts the tasks of one batch in an order it draws at random (a seeded shuffle once
Hypothesis is imported), on purpose, so that code leaning on asyncio's first-in-first-out
order shows up. These tests run a tree many times to meet both orders on trio. (Children
once took their place among their siblings from an id their tool call took when its task
started, so on trio they came back in the order the scheduler ran them.)
"""

from __future__ import annotations

import pytest
from _clock import BACKENDS, Backend, run_virtual
from _trees import TreeModel, spec_json

from xzatoma import Runtime

RUNS = 64
"""Runs per backend: on trio, the backwards order comes up at least once but for 2**-64."""


@pytest.mark.parametrize("backend", BACKENDS)
def test_children_come_back_in_the_order_the_model_asked_for_them(backend: Backend) -> None:
    tree = {"id": "root", "spawn": [{"id": "a"}, {"id": "b"}]}

    async def labels() -> tuple[str, ...]:
        runtime = Runtime(TreeModel().provider(), telemetry=False)
        result = await runtime.agent().run(spec_json(tree))
        return tuple(child.label for child in result.children)

    orders = {run_virtual(labels, backend) for _ in range(RUNS)}
    assert orders == {("a", "b")}
