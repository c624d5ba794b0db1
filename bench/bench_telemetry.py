"""What telemetry costs per subagent execution: off, metrics on, metrics plus tracing.

Runs ``--executions`` subagents (one scripted model call each) through ``Runtime.run_batch``
under each setting, ``--rounds`` times in an interleaved order, and prints the best and the
median microseconds per execution, and the best's difference to telemetry off:

- ``off``: ``Runtime(telemetry=False)``, no subscriber at all;
- ``no-op API``: the default subscriber with nothing configured (OTel's no-op API);
- ``metrics``: an SDK ``MeterProvider`` with a ``PrometheusMetricReader``;
- ``metrics+tracing``: the same plus an SDK ``TracerProvider`` whose span processor drops
  every span (so span creation is measured, exporting is not).

Usage: ``python bench/bench_telemetry.py [--executions 2000] [--rounds 7]``. Not a test: the
numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from prometheus_client import CollectorRegistry

from xzatoma import Message, Runtime, SubagentConfig, SubagentTask, ToolSpec, Usage
from xzatoma.telemetry import configure
from xzatoma.testing import ScriptedProvider


class _DropSpans(SpanProcessor):
    """Accepts every span and keeps none."""


def _answer(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> str:
    return "done"


def _runtime(telemetry: bool) -> Runtime:
    provider = ScriptedProvider(_answer, usage=Usage(1, 10, 5, 15))
    config = SubagentConfig(summary_prompt=None, max_concurrent=50)
    return Runtime(provider, subagents=config, telemetry=None if telemetry else False)


async def _run(runtime: Runtime, tasks: list[SubagentTask]) -> float:
    started = time.perf_counter()
    batch = await runtime.run_batch(tasks)
    elapsed = time.perf_counter() - started
    assert batch.successful == len(tasks), batch.status
    return elapsed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    tasks = [SubagentTask(label=f"t{i}", task_prompt="go") for i in range(args.executions)]

    registry = CollectorRegistry()
    meters = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)], shutdown_on_exit=False
    )
    tracers = TracerProvider(shutdown_on_exit=False)
    tracers.add_span_processor(_DropSpans())

    settings: dict[str, tuple[bool, Callable[[], None]]] = {
        "off": (False, configure),
        "no-op API": (True, configure),
        "metrics": (True, lambda: configure(meter_provider=meters)),
        "metrics+tracing": (True, lambda: configure(meters, tracers)),
    }
    timings: dict[str, list[float]] = {name: [] for name in settings}

    async def bench() -> None:
        for round_ in range(args.rounds + 1):  # round 0 warms up and is not counted
            for name, (telemetry, setup) in settings.items():
                setup()
                elapsed = await _run(_runtime(telemetry), tasks)
                if round_:
                    timings[name].append(elapsed)
        configure()

    anyio.run(bench)
    executions = _scraped_executions(registry)
    expected = 2 * (args.rounds + 1) * args.executions
    assert executions == expected, (executions, expected)

    print(f"{args.executions} subagent executions per run, {args.rounds} runs per setting")
    print(f"  {'setting':<16} {'best':>8} {'median':>8}   best over off (µs per execution)")
    base = min(timings["off"]) / args.executions * 1e6
    for name, values in timings.items():
        best = min(values) / args.executions * 1e6
        median = statistics.median(values) / args.executions * 1e6
        delta = "" if name == "off" else f"  +{best - base:6.1f} ({best / base - 1:+.0%})"
        print(f"  {name:<16} {best:8.1f} {median:8.1f} {delta}".rstrip())
    meters.shutdown()
    tracers.shutdown()


def _scraped_executions(registry: Any) -> float:
    """``subagent_executions_total`` as Prometheus would scrape it: proof metrics recorded."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(registry).decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "subagent_executions_total"
    )


if __name__ == "__main__":
    main()
