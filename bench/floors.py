"""What the building blocks under xzatoma's hot path cost on this machine, in µs per operation.

The floors a subagent execution cannot go below while it uses them: spawning an anyio task
(one per tool call of a reply, so one per W2 child), passing an anyio ``CapacityLimiter``
(W3), recording one measurement with the OpenTelemetry SDK (a child execution records six
histogram values: three ``gen_ai.client.*`` for its model call and three ``subagent.*``),
the same through xzatoma's histogram bound to its SDK aggregation (what the runtime does,
see ``xzatoma/telemetry/_fast.py``), and starting and ending one SDK span (three per child
with tracing on). ``python -m bench`` runs
this and prints it under the tables; ``python bench/floors.py`` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel

ROUNDS = 15
TASKS = 1000
RECORDS = 20000


def _median_us(samples: list[float], per: int) -> float:
    return round(statistics.median(samples) / per * 1e6, 2)


async def _child() -> None:
    await anyio.lowlevel.checkpoint_if_cancelled()


async def _spawn_rounds(spawn_all: Callable[[], Awaitable[None]]) -> float:
    """Median µs per task of ``spawn_all`` (which spawns and awaits ``TASKS`` tasks)."""
    samples = []
    for _ in range(ROUNDS):
        gc.collect()
        started = time.perf_counter()
        await spawn_all()
        samples.append(time.perf_counter() - started)
    return _median_us(samples, TASKS)


async def _anyio_spawn() -> float:
    async def spawn_all() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(TASKS):
                tg.start_soon(_child)

    return await _spawn_rounds(spawn_all)


async def _anyio_spawn_limited() -> float:
    async def limited(limiter: anyio.CapacityLimiter) -> None:
        async with limiter:
            await _child()

    async def spawn_all() -> None:
        limiter = anyio.CapacityLimiter(5)
        async with anyio.create_task_group() as tg:
            for _ in range(TASKS):
                tg.start_soon(limited, limiter)

    return await _spawn_rounds(spawn_all)


async def _asyncio_spawn() -> float:
    async def child() -> None:
        await asyncio.sleep(0)

    async def spawn_all() -> None:
        async with asyncio.TaskGroup() as tg:
            for _ in range(TASKS):
                tg.create_task(child())

    return await _spawn_rounds(spawn_all)


def _per_call(operation: Callable[[], Any], count: int = RECORDS) -> float:
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(count):
            operation()
        samples.append(time.perf_counter() - started)
    return _median_us(samples, count)


def _otel() -> dict[str, float]:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    from xzatoma.telemetry._fast import fast_histogram

    meter = MeterProvider(metric_readers=[PrometheusMetricReader()]).get_meter("floors")
    histogram = meter.create_histogram("floor", explicit_bucket_boundaries_advisory=[1.0, 4.0])
    one = {"depth": 1}
    four = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "bench",
        "gen_ai.request.model": "bench-model",
        "gen_ai.token.type": "input",
    }
    tracers = TracerProvider()
    tracers.add_span_processor(SpanProcessor())
    tracer = tracers.get_tracer("floors")
    attributes = {"gen_ai.operation.name": "chat", "xzatoma.depth": 1}

    def span() -> None:
        tracer.start_span("chat bench-model", attributes=attributes).end()

    bound = fast_histogram(histogram)
    return {
        "otel_histogram_record_1_attribute": _per_call(lambda: histogram.record(2.0, one)),
        "otel_histogram_record_4_attributes": _per_call(lambda: histogram.record(2.0, four)),
        "xzatoma_bound_histogram_record_4_attributes": _per_call(lambda: bound.record(2.0, four)),
        "otel_span_start_end": _per_call(span, RECORDS // 4),
    }


async def _tasks() -> dict[str, float]:
    return {
        "anyio_task_spawn": await _anyio_spawn(),
        "anyio_task_spawn_with_capacity_limiter": await _anyio_spawn_limited(),
        "asyncio_taskgroup_spawn_for_reference": await _asyncio_spawn(),
    }


def measure() -> dict[str, float]:
    """Every floor, in µs per operation (median of several rounds)."""
    return {**anyio.run(_tasks), **_otel()}


if __name__ == "__main__":
    print(json.dumps(measure()))
