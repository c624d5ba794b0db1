"""Batches on a real local Ray (``RayExecutor``): the in-process semantics across processes.

One Ray for the session (``ray_session``); each test starts its own workers. Models are the
scripted ones of ``tests/_ray_models.py`` (the only fakes: the model); Redis, Prometheus and
Ray are real.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
from pathlib import Path
from typing import Any

import _ray_models as models
import anyio
import pytest
from _http_server import Reply, ScriptedHTTPServer
from _prometheus import by_depth, prometheus_server, query
from _redis_server import RedisServer

from xzatoma import (
    Instrument,
    OpenAIProvider,
    QuotaLimits,
    RayExecutor,
    RedisQuota,
    Run,
    Runtime,
    SubagentConfig,
    Usage,
)
from xzatoma.errors import ConfigError
from xzatoma.testing import ScriptedProvider

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(300)]


USAGE = Usage(1, 10, 5, 15)


def tasks(*prompts: str) -> list[dict[str, str]]:
    return [{"label": f"t{i}", "task_prompt": p} for i, p in enumerate(prompts)]


class Ends(Instrument):
    """Counts the driver's subagent ends; calls ``at(count)`` after each."""

    def __init__(self, at: Any = None) -> None:
        self.ended: list[Run] = []
        self.at = at

    def subagent_ended(self, run: Run) -> None:
        self.ended.append(run)
        if self.at is not None:
            self.at(len(self.ended))


async def test_results_come_back_in_input_order_with_exact_usage_and_depth() -> None:
    runtime = Runtime(ScriptedProvider(models.spawning, usage=USAGE), telemetry=False)
    prompts = [f"p{i}" if i % 5 else "spawn" for i in range(40)]
    with RayExecutor(workers=2, per_worker=4) as executor:
        batch = await runtime.run_batch(tasks(*prompts), executor=executor)
        workers = {info.pid for info in executor.workers_info}
    assert len(workers) == 2
    assert os.getpid() not in workers
    assert batch.status == "complete", [r.error for r in batch.results if r.error]
    assert [r.label for r in batch.results] == [f"t{i}" for i in range(40)]
    assert [r.output for r in batch.results] == [f"did: {p}" for p in prompts]
    assert {r.depth for r in batch.results} == {1}
    spawned = [r for r in batch.results if r.children]
    assert len(spawned) == 8
    assert all(c.depth == 2 and c.output == "did: leaf" for r in spawned for c in r.children)
    # The driver's (unlimited) tracker counts every execution the workers ran, children too.
    stats = runtime.tracker.statistics()
    assert stats.executions == 40 + 8
    assert stats.total_tokens == batch.total_usage.total_tokens == 15 * (40 * 2 + 8 * 3)
    # The runtime's statistics count the depth-1 tasks the driver ran; deeper ones ran (and
    # are counted) in the workers (docs/telemetry.md).
    figures = runtime.statistics()
    assert list(figures.by_depth) == [1]
    assert figures.by_depth[1].executions == figures.by_depth[1].completed == 40
    assert figures.by_depth[1].tokens == sum(r.usage.total_tokens for r in batch.results)
    assert figures.at_rest


async def test_a_redis_quota_holds_across_the_workers(redis_server: RedisServer) -> None:
    quota = RedisQuota(redis_server.url, tree="ray-quota", limits=QuotaLimits(max_executions=10))
    runtime = Runtime(ScriptedProvider(models.echo), quota=quota, telemetry=False)
    with RayExecutor(workers=2, per_worker=4) as executor:
        batch = await runtime.run_batch(tasks(*(f"p{i}" for i in range(25))), executor=executor)
    ran = [r for r in batch.results if r.succeeded]
    refused = [r for r in batch.results if r.error_type == "quota_exceeded"]
    assert len(ran) == 10
    assert len(refused) == 15
    assert all("execution limit reached (10/10)" in (r.error or "") for r in refused)
    assert (await quota.astatistics()).executions == 10
    await quota.aclose()


async def test_fail_fast_cancels_the_tasks_running_on_every_worker() -> None:
    runtime = Runtime(ScriptedProvider(models.bad_fails_others_hang), telemetry=False)
    prompts = ["wait"] * 5 + ["bad"] + ["wait"] * 20
    with RayExecutor(workers=2, per_worker=3) as executor:
        batch = await runtime.run_batch(tasks(*prompts), executor=executor, fail_fast=True)
        assert await executor.running() == (0, 0)  # nothing left running remotely
    (failed,) = [r for r in batch.results if r.status == "failed"]
    assert failed.label == "t5"
    assert "the bad task's model failed" in (failed.error or "")
    statuses = {r.status for i, r in enumerate(batch.results) if i != 5}
    assert statuses == {"cancelled"}
    assert len(batch.results) == len(prompts)


async def test_the_batch_timeout_holds_on_the_workers() -> None:
    runtime = Runtime(ScriptedProvider(models.hang), telemetry=False)
    with RayExecutor(workers=2, per_worker=2) as executor:
        await executor.start()  # the batch's time counts from run_batch: workers up first
        batch = await runtime.run_batch(tasks(*["x"] * 6), executor=executor, timeout=2.0)
        assert await executor.running() == (0, 0)
    ran = [r for r in batch.results if r.status == "failed"]
    assert ran
    assert {r.error_type for r in ran} == {"timeout"}
    # What did not start before the deadline never started: cancelled, as in-process.
    assert {r.status for r in batch.results} <= {"failed", "cancelled"}
    assert len(batch.results) == 6


async def test_a_cancelled_driver_cancels_the_remote_work() -> None:
    started = anyio.Event()

    class Started(Instrument):
        def subagent_started(self, run: Run) -> None:
            started.set()

    runtime = Runtime(ScriptedProvider(models.hang), telemetry=False, hooks=[Started()])
    with RayExecutor(workers=2, per_worker=2) as executor:
        async with anyio.create_task_group() as tg:

            async def batch() -> None:
                await runtime.run_batch(tasks(*["x"] * 8), executor=executor)
                raise AssertionError("the batch was cancelled: it cannot return")

            tg.start_soon(batch)
            await started.wait()
            tg.cancel_scope.cancel()  # what Ctrl-C does to `xzatoma batch`
        assert await executor.running() == (0, 0)


async def test_a_killed_worker_fails_its_tasks_by_name_and_the_rest_finish(
    tmp_path: Path,
) -> None:
    killed: list[int] = []
    executor = RayExecutor(workers=3, per_worker=4)

    def kill_half_way(ended: int) -> None:
        if ended == 300 and not killed:
            victim = executor.workers_info[1].pid
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    ends = Ends(kill_half_way)
    runtime = Runtime(ScriptedProvider(models.brief), telemetry=False, hooks=[ends])
    with executor:
        batch = await runtime.run_batch(tasks(*["p"] * 600), executor=executor)
        assert list(executor.lost) == [1]
    assert len(batch.results) == 600
    assert len(ends.ended) == 600
    lost = [r for r in batch.results if r.status == "failed"]
    assert 1 <= len(lost) <= 4  # at most what worker 1 was running
    for result in lost:
        assert result.error_type == "execution_failed"
        assert f"Ray worker 1 (pid {killed[0]} " in (result.error or "")
        assert "not retried" in (result.error or "")
    assert batch.successful == 600 - len(lost)


async def test_spans_of_remote_children_nest_under_the_drivers_span(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from xzatoma.telemetry import configure
    from xzatoma.telemetry._config import configuration, restore

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    before = configuration()
    configure(tracer_provider=provider)
    spans_file = tmp_path / "worker-spans.jsonl"
    try:
        runtime = Runtime(ScriptedProvider(models.spawning))
        setup = models.TraceToFile(spans_file)
        with RayExecutor(workers=2, per_worker=2, worker_setup=setup) as executor:
            with provider.get_tracer("test").start_as_current_span("execute_tool batch") as span:
                await runtime.run_batch(tasks("spawn", "p1", "p2"), executor=executor)
            driver = span.get_span_context()
    finally:
        restore(before)
    lines = [json.loads(line) for line in spans_file.read_text().splitlines()]
    agents = [s for s in lines if s["name"].startswith("invoke_agent")]
    tops = [s for s in agents if s["parent_id"] == f"{driver.span_id:016x}"]
    assert len(tops) == 3  # the three tasks' runs, in the workers, under the driver's span
    assert {s["trace_id"] for s in lines} == {f"{driver.trace_id:032x}"}
    assert {s["session"] for s in lines} == {runtime.session_id}  # the driver's session
    assert {s["pid"] for s in lines} <= {i.pid for i in executor.workers_info} | {
        s["pid"] for s in lines if s["pid"] != os.getpid()
    }
    assert os.getpid() not in {s["pid"] for s in lines}
    # The grandchild's invoke_agent nests under its parent's execute_tool subagent.
    tool_spans = {s["span_id"] for s in lines if s["name"] == "execute_tool subagent"}
    assert any(s["parent_id"] in tool_spans for s in agents)


async def test_the_api_key_reaches_workers_only_through_their_environment(
    server: ScriptedHTTPServer,
) -> None:
    answer = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    server.add(*(Reply(200, answer) for _ in range(4)))  # two tasks, each answer and summary
    provider = OpenAIProvider(server.url + "/v1", "m", api_key_env=models.KEY_VARIABLE)
    assert models.KEY.encode() not in pickle.dumps(provider)
    runtime = Runtime(provider, telemetry=False)
    try:
        with RayExecutor(workers=1, per_worker=2) as executor:
            batch = await runtime.run_batch(tasks("a", "b"), executor=executor)
    finally:
        await provider.aclose()
    assert batch.status == "complete", [r.error for r in batch.results]
    headers = [r.headers.get("authorization") for r in server.requests]
    # Nor in what Ray wrote down: its object store spills and every log of the session.
    await anyio.to_thread.run_sync(assert_nowhere_in, Path(ray_session_dir()), models.KEY)
    assert headers
    assert set(headers) == {f"Bearer {models.KEY}"}


async def test_what_cannot_reach_the_workers_is_refused_before_anything_runs() -> None:
    scripted = ScriptedProvider(models.echo)
    limited = Runtime(scripted, quota=QuotaLimits(max_executions=3), telemetry=False)
    with RayExecutor(workers=1, per_worker=1) as executor:
        with pytest.raises(ConfigError, match=r"quota=RedisQuota\(url"):
            await limited.run_batch(tasks("a"), executor=executor)
        keyed = OpenAIProvider("http://127.0.0.1:9/v1", "m", api_key="sk-literal-key")
        with pytest.raises(ConfigError, match="api_key_env='NAME'"):
            await Runtime(keyed, telemetry=False).run_batch(tasks("a"), executor=executor)
        await keyed.aclose()
        assert executor.workers_info == ()  # refused before a worker was started
    assert scripted.requests == []


async def test_a_subagent_config_reaches_the_workers() -> None:
    runtime = Runtime(
        ScriptedProvider(models.spawning),
        subagents=SubagentConfig(max_depth=1),
        telemetry=False,
    )
    with RayExecutor(workers=1, per_worker=2) as executor:
        batch = await runtime.run_batch(tasks("spawn"), executor=executor)
    (only,) = batch.results
    # At depth 1 with max_depth=1, the child's spawn is refused in the worker.
    (refused,) = only.children
    assert refused.error_type == "max_depth_reached"


@pytest.mark.prometheus
async def test_a_real_prometheus_sees_every_task_once_across_driver_and_workers(
    tmp_path: Path,
) -> None:
    """2,000 tasks on 3 workers, one killed half-way: every task is accounted for, and a
    real Prometheus scraping the driver and the workers (file_sd) sees the invariants."""
    from xzatoma.telemetry import start_metrics_server

    targets = tmp_path / "xzatoma-targets.json"
    scrape = f"""
        - job_name: xzatoma
          file_sd_configs:
            - files: ["{targets}"]
        """
    killed: list[int] = []
    with start_metrics_server(port=0) as driver_metrics, prometheus_server(tmp_path, scrape) as url:
        executor = RayExecutor(
            workers=3,
            per_worker=8,
            file_sd=targets,
            driver_target=f"127.0.0.1:{driver_metrics.port}",
        )

        def kill_half_way(ended: int) -> None:
            if ended == 1000 and not killed:
                victim = executor.workers_info[2].pid
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        runtime = Runtime(ScriptedProvider(models.brief, usage=USAGE), hooks=[Ends(kill_half_way)])
        prompts = ["spawn" if i % 50 == 0 else "p" for i in range(2000)]
        with executor:
            batch = await runtime.run_batch(tasks(*prompts), executor=executor)
            groups = json.loads(targets.read_text())
            assert [g["labels"] for g in groups] == [
                {"role": "driver"},
                {"role": "worker", "worker": "0"},
                {"role": "worker", "worker": "1"},
            ]  # the lost worker is no longer listed
            assert len(batch.results) == 2000
            lost = [r for r in batch.results if r.status == "failed"]
            assert 1 <= len(lost) <= 8
            assert all(f"Ray worker 2 (pid {killed[0]} " in (r.error or "") for r in lost)
            assert batch.successful == 2000 - len(lost)
            errors_by_type = {"execution_failed": float(len(lost))}
            sums = await anyio.to_thread.run_sync(scrape_until_settled, url, 2000)
    executions, completions, errors, active, depth1_errors = sums
    assert executions["1"] == 2000  # the batch's tasks, counted once, by the driver
    for depth, count in executions.items():
        assert completions.get(depth, 0) + errors.get(depth, 0) == count
    assert set(active.values()) == {0.0}
    assert depth1_errors == errors_by_type


def scrape_until_settled(url: str, tasks: int) -> tuple[dict[str, float], ...]:
    """Query Prometheus until it has scraped the ended batch (bounded polling of an external
    process, not an ordering of our own events)."""
    import time

    import httpx

    deadline = time.monotonic() + 90
    last: tuple[dict[str, float], ...] = ()
    while time.monotonic() < deadline:
        try:
            executions = by_depth(query(url, "sum by (depth) (subagent_executions_total)"))
            completions = by_depth(query(url, "sum by (depth) (subagent_completions_total)"))
            errors = by_depth(query(url, "sum by (depth) (subagent_errors_total)"))
            active = by_depth(query(url, "sum by (depth) (subagent_active_count)"))
            failed = query(url, 'sum by (error_type) (subagent_errors_total{depth="1"})')
        except (httpx.TransportError, AssertionError):  # not ready yet
            time.sleep(0.25)
            continue
        by_type = {r["metric"]["error_type"]: float(r["value"][1]) for r in failed}
        last = (executions, completions, errors, active, by_type)
        if (
            executions.get("1") == tasks
            and "2" in executions
            and all(completions.get(d, 0) + errors.get(d, 0) == c for d, c in executions.items())
        ):
            return last
        time.sleep(0.25)
    raise AssertionError(f"Prometheus never settled on the batch; last read: {last}")


def test_xzatoma_batch_on_ray_with_a_redis_quota(
    redis_server: RedisServer, server: ScriptedHTTPServer, tmp_path: Path
) -> None:
    """The command line: ``xzatoma batch FILE --ray auto --workers 2 --redis-url URL``, the
    tasks run in Ray workers (joining the session's cluster), the quota held in Redis, the
    workers' and the driver's ``/metrics`` listed in the file_sd file."""
    import subprocess
    import sys

    from test_cli import chat, child_env, free_port, tasks_file

    server.add(*[chat("done") for _ in range(5)])
    targets = tmp_path / "targets.json"
    config = tmp_path / "xzatoma.yaml"
    config.write_text("agent:\n  subagent:\n    summary_prompt: null\n")
    argv = [
        sys.executable, "-m", "xzatoma.cli", "batch", str(tasks_file(tmp_path, "abcdefg")),
        "--config", str(config), "--ray", "auto", "--workers", "2", "--per-worker", "2",
        "--redis-url", redis_server.url, "--quota-tree", "cli-on-ray", "--max-executions", "5",
        "--metrics-port", str(free_port()), "--file-sd", str(targets),
        "--base-url", server.url + "/v1", "--model", "m", "--json",
    ]  # fmt: skip
    done = subprocess.run(argv, env=child_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 1, done.stderr  # two tasks refused by the quota: failed
    results = json.loads(done.stdout)["results"]
    outcomes = sorted((r["status"], r["error_type"]) for r in results)
    assert outcomes == [("complete", None)] * 5 + [("failed", "quota_exceeded")] * 2
    assert len(server.requests) == 5
    groups = json.loads(targets.read_text())
    assert [g["labels"]["role"] for g in groups] == ["driver", "worker", "worker"]


async def test_when_every_worker_is_lost_the_rest_never_start_and_say_why() -> None:
    killed: list[int] = []
    executor = RayExecutor(workers=1, per_worker=2)

    def kill_the_only_worker(ended: int) -> None:
        if ended == 4 and not killed:
            killed.append(executor.workers_info[0].pid)
            os.kill(killed[0], signal.SIGKILL)

    runtime = Runtime(ScriptedProvider(models.brief), telemetry=False)
    runtime.hooks.add(Ends(kill_the_only_worker))
    with executor:
        batch = await runtime.run_batch(tasks(*["p"] * 40), executor=executor)
    assert len(batch.results) == 40
    assert batch.successful >= 4
    errors = [r.error or "" for r in batch.results if r.status == "failed"]
    in_flight = [e for e in errors if f"Ray worker 0 (pid {killed[0]} " in e]
    never = [e for e in errors if e.startswith("never started: every Ray worker")]
    assert 1 <= len(in_flight) <= 2
    assert len(never) == 40 - batch.successful - len(in_flight) > 0
    assert batch.cancelled == 0


def ray_session_dir() -> str:
    """The directory of this Ray session: its logs, sockets and spilled objects."""
    import ray

    context = ray.get_runtime_context()
    return f"{context.get_temp_dir()}/{context.get_session_name()}"


def assert_nowhere_in(folder: Path, secret: str) -> None:
    for written in folder.rglob("*"):
        if written.is_file() and not written.is_symlink():
            with contextlib.suppress(OSError):  # a socket, or a file Ray removed meanwhile
                assert secret.encode() not in written.read_bytes(), written
