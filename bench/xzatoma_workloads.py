"""The benchmark workloads on xzatoma.

``python bench/xzatoma_workloads.py --workload W2 --n 1000 --telemetry metrics`` prints one
JSON line (see ``_harness.py``). The model is :class:`BenchProvider`, a provider like any real
adapter (``name``, ``model``, ``async complete``) that answers at once and builds a fresh
``Completion`` on every call, reporting 20 input and 5 output tokens. It stands in for
``OpenAIProvider`` rather than ``xzatoma.testing.ScriptedProvider``, which keeps every request
it received for tests to inspect and so would grow with the workload.

- W0: ``agent.run()``; one model call that answers with text; N runs in sequence.
- W1: parent call 1 asks for one ``subagent``; the child (no summary turn) answers in one call;
  parent call 2 answers. N parents in sequence.
- W2: one parent reply asks for N ``subagent`` calls at once (all run concurrently); cost per
  child.
- W3: ``Runtime.run_batch`` of N tasks (default ``max_concurrent``, 5); cost per child.

Telemetry: ``off`` is ``Runtime(telemetry=False)``; ``metrics`` configures an SDK
``MeterProvider`` with a ``PrometheusMetricReader``; ``tracing`` adds an SDK
``TracerProvider`` whose span processor drops every span (span creation is measured,
exporting is not).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from typing import Any

from _harness import Run, main

from xzatoma import (
    Completion,
    Message,
    QuotaLimits,
    Runtime,
    SubagentConfig,
    SubagentTask,
    ToolCall,
    ToolSpec,
    Usage,
)

PARENT_PROMPT = "Delegate the work."
CHILD_PROMPT = "Do one piece of the work."


class BenchProvider:
    """An instant model: the parent delegates ``fanout`` tasks, everyone else answers."""

    name = "bench"
    model = "bench-model"

    def __init__(self, fanout: int = 1) -> None:
        self.fanout = fanout

    async def complete(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        usage = Usage(1, 20, 5, 25)
        if messages[0].content == PARENT_PROMPT and messages[-1].role == "user":
            calls = tuple(
                ToolCall(
                    f"call_{i}",
                    "subagent",
                    f'{{"label": "child-{i}", "task_prompt": "{CHILD_PROMPT}"}}',
                )
                for i in range(self.fanout)
            )
            return Completion(tool_calls=calls, usage=usage, model=self.model)
        return Completion(content="done", usage=usage, model=self.model)


_readers: list[Any] = []


def _runtime(provider: BenchProvider, telemetry: str) -> Runtime:
    if telemetry != "off":
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

        from xzatoma.telemetry import configure

        reader = PrometheusMetricReader()
        _readers.append(reader)
        tracer_provider = None
        if telemetry == "tracing":
            tracer_provider = TracerProvider()
            tracer_provider.add_span_processor(SpanProcessor())  # its on_end does nothing
        configure(MeterProvider(metric_readers=[reader]), tracer_provider)
    return Runtime(
        provider,
        subagents=SubagentConfig(summary_prompt=None),
        quota=QuotaLimits(),  # unlimited: W2 at N=10000 makes 10000 executions in one turn
        telemetry=None if telemetry != "off" else False,
    )


def make(workload: str, n: int, telemetry: str) -> Run:
    """Set up ``workload`` and return the function that performs ``n`` of its units."""
    if workload == "W2":
        provider = BenchProvider()
        runtime = _runtime(provider, telemetry)
        parent = runtime.agent()

        async def fan_out(n: int) -> None:
            provider.fanout = n
            result = await parent.run(PARENT_PROMPT)
            _expect(result.status == "complete" and len(result.children) == n, result)
            _expect(result.total_usage.requests == n + 2, result)

        return fan_out

    runtime = _runtime(BenchProvider(), telemetry)
    if workload == "W3":

        async def batch(n: int) -> None:
            tasks = [SubagentTask(label=f"child-{i}", task_prompt=CHILD_PROMPT) for i in range(n)]
            result = await runtime.run_batch(tasks)
            _expect(result.successful == n and result.total_usage.requests == n, result)

        return batch

    agent = runtime.agent()
    prompt, requests = ("Answer.", 1) if workload == "W0" else (PARENT_PROMPT, 3)

    async def sequential(n: int) -> None:
        for _ in range(n):
            result = await agent.run(prompt)
            _expect(result.status == "complete" and result.total_usage.requests == requests, result)

    return sequential


def _expect(ok: bool, result: object) -> None:
    if not ok:
        raise SystemExit(f"workload did not do its work: {result!r:.2000}")


def describe(telemetry: str) -> Mapping[str, Any]:
    """Versions of what was measured."""
    names = ["xzatoma", "anyio", "pydantic"]
    if telemetry != "off":
        names += ["opentelemetry-sdk", "opentelemetry-exporter-prometheus"]
    return {"versions": {name: version(name) for name in names}}


def check(telemetry: str) -> Mapping[str, Any]:
    """With metrics on: the executions Prometheus would scrape (proof they were recorded)."""
    if telemetry == "off":
        return {}
    from prometheus_client import REGISTRY, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(REGISTRY).decode()
    executions = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "subagent_executions_total"
    )
    return {"scraped_executions": executions}


if __name__ == "__main__":
    sys.exit(main("xzatoma", make, telemetry_modes=("off", "metrics", "tracing"),
                  describe=describe, check=check))  # fmt: skip
