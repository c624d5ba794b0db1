"""``RedisQuota`` (issue 15): one tree's quota kept in a real ``redis-server``, shared by
separate quota objects, event loops and processes.

Everything here runs against a real server: the session's (``redis_server`` in
``conftest.py``), each test on a tree of its own, or, for a test that stops or hangs Redis,
one started for that test. The model is always ``ScriptedProvider``. Races are real (50 quota
objects, each with its own connection pool, as 50 processes have; 8 processes of 250
concurrent spawns) and are started together by Redis itself (``BLPOP``), never ordered by
sleeps; timing-dependent outcomes are bounded, not assumed. The time limit is moved by
rewriting the tree's start in Redis, never by waiting.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from _redis_server import RedisServer, redis_server_or_skip

from xzatoma import (
    BatchResult,
    Message,
    Price,
    QuotaExceeded,
    QuotaLimits,
    QuotaUnavailable,
    RedisQuota,
    Runtime,
    SubagentConfig,
    ToolSpec,
    Usage,
)
from xzatoma.telemetry import TelemetrySubscriber, capture_telemetry
from xzatoma.telemetry import _names as n
from xzatoma.testing import ScriptedProvider

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_quota_worker.py"
NO_SUMMARY = SubagentConfig(summary_prompt=None)
READY_SECONDS = 120.0
"""How long the workers may take to start (imports on a loaded machine) before a test fails."""
WORKER_SECONDS = 240.0
"""How long the workers may take to run their batches once started."""


# -- helpers ---------------------------------------------------------------------------------
class Quotas:
    """Makes ``RedisQuota`` objects on this test's tree (or another, or another server), and
    closes every one of them when the test ends."""

    def __init__(self, url: str, tree: str) -> None:
        self.url, self.tree = url, tree
        self.made: list[RedisQuota] = []

    def __call__(
        self,
        limits: QuotaLimits | None = None,
        *,
        url: str | None = None,
        tree: str | None = None,
        **options: Any,
    ) -> RedisQuota:
        quota = RedisQuota(url or self.url, tree=tree or self.tree, limits=limits, **options)
        return self.adopt(quota)

    def adopt(self, quota: RedisQuota) -> RedisQuota:
        self.made.append(quota)
        return quota

    async def close(self) -> None:
        for quota in self.made:
            await quota.aclose()


@pytest.fixture
def tree(request: pytest.FixtureRequest) -> str:
    """A quota tree of this test's own: its node id, plus a random part for reruns."""
    return f"{re.sub(r'[^A-Za-z0-9_.:-]+', '_', request.node.nodeid)}:{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def quotas(redis_server: RedisServer, tree: str) -> AsyncIterator[Quotas]:
    made = Quotas(redis_server.url, tree)
    yield made
    await made.close()


def key_of(tree: str) -> str:
    """The tree's hash, as the module documents it."""
    return f"xzatoma:quota:{tree}"


@contextlib.contextmanager
def client_for(url: str) -> Iterator[redis.Redis]:
    """A plain synchronous client, to look at (or into) the tree's hash as an operator would."""
    client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=30)
    try:
        yield client
    finally:
        client.close()


def pttl(url: str, key: str) -> int:
    with client_for(url) as client:
        return int(client.pttl(key))


def answering() -> ScriptedProvider:
    """A model whose every call answers ``done`` (one model call per subagent)."""

    def answer(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> str:
        return "done"

    return ScriptedProvider(answer)


def task_list(count: int) -> list[dict[str, str]]:
    return [{"label": f"t{i}", "task_prompt": f"task {i}"} for i in range(count)]


def by_outcome(batch: BatchResult) -> Counter[str]:
    """The batch's tasks by error type, or by status when there is none."""
    return Counter(r.error_type or r.status for r in batch.results)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_workers(url: str, specs: Sequence[dict[str, Any]], *, together: bool) -> list[Any]:
    """Run ``tests/_quota_worker.py`` once per spec, at once; what each printed, in order.

    With ``together``, every worker makes its runtime and then blocks in ``BLPOP``; once all
    of them said they are ready (a push on another list, popped here), one push per worker
    releases them all at the same moment.
    """
    keys = f"xzatoma-test:{uuid.uuid4().hex}"
    ready, go = f"{keys}:ready", f"{keys}:go"
    sync = {"url": url, "ready": ready, "go": go} if together else {}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps({**spec, **sync})],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
            cwd=ROOT,
        )
        for spec in specs
    ]
    try:
        if together:
            with client_for(url) as client:
                deadline = time.monotonic() + READY_SECONDS
                waiting = len(procs)
                while waiting:
                    if client.blpop([ready], timeout=1) is not None:
                        waiting -= 1
                        continue
                    for proc in procs:
                        if proc.poll() is not None:
                            _, err = proc.communicate()
                            why = err.decode(errors="replace")[-3000:]
                            pytest.fail(f"a worker exited ({proc.returncode}) early: {why}")
                    assert time.monotonic() < deadline, f"{waiting} workers never got ready"
                client.rpush(go, *["go"] * len(procs))
        printed = []
        for proc in procs:
            out, err = proc.communicate(timeout=WORKER_SECONDS)
            assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
            printed.append(json.loads(out.decode().strip().splitlines()[-1]))
        return printed
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=60)


# -- executions ------------------------------------------------------------------------------
async def test_a_batch_larger_than_the_execution_limit_runs_exactly_the_limit(
    quotas: Quotas,
) -> None:
    quota = quotas(QuotaLimits(max_executions=3))
    provider = answering()
    runtime = Runtime(provider, subagents=NO_SUMMARY, quota=quota, telemetry=False)
    assert runtime.tracker is quota

    batch = await runtime.run_batch(task_list(8), max_concurrent=8)

    assert by_outcome(batch) == {"complete": 3, "quota_exceeded": 5}
    refused = [r for r in batch.results if r.error_type == "quota_exceeded"]
    assert {(r.status, r.error) for r in refused} == {
        ("failed", "Resource quota exceeded: execution limit reached (3/3)")
    }
    assert all(r.turns == 0 for r in refused)
    assert len(provider.requests) == 3
    stats = quota.statistics()
    assert (stats.executions, stats.remaining_executions) == (3, 0)
    assert (await quota.astatistics()).executions == 3
    assert quotas(QuotaLimits(max_executions=3)).statistics().executions == 3  # another process


@pytest.mark.parametrize("free", [1, 10])
async def test_fifty_quota_objects_racing_for_free_slots_take_exactly_those(
    quotas: Quotas, free: int
) -> None:
    limits = QuotaLimits(max_executions=free)
    racers = [quotas(limits) for _ in range(50)]  # 50 connection pools, as 50 processes
    await asyncio.gather(*(q.astatistics() for q in racers))  # every pool connected first

    outcomes = await asyncio.gather(*(q.areserve() for q in racers), return_exceptions=True)

    won = [o for o in outcomes if o is None]
    lost = [o for o in outcomes if o is not None]
    assert len(won) == free
    assert all(isinstance(o, QuotaExceeded) for o in lost), lost
    assert {str(o) for o in lost} == {
        f"Resource quota exceeded: execution limit reached ({free}/{free})"
    }
    assert racers[0].statistics().executions == free


@pytest.mark.timeout(420)
def test_eight_processes_of_250_concurrent_spawns_start_exactly_500(
    redis_server: RedisServer, tree: str
) -> None:
    spec = {
        "url": redis_server.url,
        "tree": tree,
        "limits": {"max_executions": 500},
        # A spawn's wait for one of its process's 50 pooled connections counts against the
        # timeout too: a generous one keeps the machine's load out of the outcome.
        "timeout": 60,
        "tasks": 250,
        "concurrent": 250,
    }
    printed = run_workers(redis_server.url, [spec] * 8, together=True)

    totals: Counter[str] = Counter()
    for counts in printed:
        totals.update(counts["results"])
        assert counts["calls"] == counts["results"].get("complete", 0)
    assert totals == {"complete": 500, "quota_exceeded": 1500}
    assert {m for counts in printed for m in counts["messages"]} == {
        "Resource quota exceeded: execution limit reached (500/500)"
    }
    assert sum(c["calls"] for c in printed) == 500
    quota = RedisQuota(redis_server.url, tree=tree, limits=QuotaLimits(max_executions=500))
    try:
        assert quota.statistics().executions == 500
    finally:
        asyncio.run(quota.aclose())


# -- tokens ----------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_tokens_never_pass_the_limit_by_more_than_the_calls_in_flight(
    redis_server: RedisServer, tree: str
) -> None:
    """4 processes x 10 subagents at once, each making 6 calls of 10 tokens, on 1,000 tokens.

    A call starts only after a check that the tree is under its limit, and is charged when it
    returns; so once the limit is crossed, only the calls already in flight (at most one per
    running subagent, 40) can still add their tokens: at most L - 1 + 40 x 10 = 1,399. The
    work asked (4 x 20 x 6 x 10 = 4,800 tokens) is far past that, so the limit is hit.
    """
    limit, processes, concurrent, per_call = 1_000, 4, 10, 10
    quota = RedisQuota(redis_server.url, tree=tree, limits=QuotaLimits(max_total_tokens=limit))
    sent = base64.b64encode(pickle.dumps(quota)).decode()  # as a Ray worker receives it
    spec = {
        "url": redis_server.url,
        "pickle": sent,
        "tasks": 20,
        "concurrent": concurrent,
        "turns": 5,
        "tokens": per_call,
    }
    printed = run_workers(redis_server.url, [spec] * processes, together=True)
    try:
        stats = quota.statistics()
    finally:
        asyncio.run(quota.aclose())

    calls = sum(c["calls"] for c in printed)
    assert stats.total_tokens == calls * per_call  # every call charged, once
    bound = limit - 1 + processes * concurrent * per_call
    assert limit <= stats.total_tokens <= bound
    totals: Counter[str] = Counter()
    for counts in printed:
        totals.update(counts["results"])
    assert set(totals) <= {"complete", "quota_exceeded"}
    assert totals["quota_exceeded"] > 0
    for message in {m for counts in printed for m in counts["messages"]}:
        assert re.fullmatch(
            r"Resource quota exceeded: token limit reached \((\d+)/1000 tokens\)", message
        ), message


async def test_charges_are_seen_at_once_by_another_quota_object(quotas: Quotas) -> None:
    limits = QuotaLimits(max_total_tokens=100)
    first, second = quotas(limits), quotas(limits)
    await first.acharge(40)
    assert (await second.astatistics()).total_tokens == 40
    await second.acharge(60)
    stats = first.statistics()
    assert (stats.total_tokens, stats.remaining_tokens) == (100, 0)

    provider = answering()
    runtime = Runtime(provider, subagents=NO_SUMMARY, quota=quotas(limits), telemetry=False)
    batch = await runtime.run_batch(task_list(1))
    result = batch.results[0]
    assert (result.status, result.error_type) == ("failed", "quota_exceeded")
    assert result.error == "Resource quota exceeded: token limit reached (100/100 tokens)"
    assert provider.requests == []


async def test_concurrent_charges_from_fifty_quota_objects_all_count(quotas: Quotas) -> None:
    chargers = [quotas(QuotaLimits(max_total_tokens=10**6)) for _ in range(50)]
    await asyncio.gather(*(q.acharge(7) for q in chargers for _ in range(4)))
    assert (await chargers[0].astatistics()).total_tokens == 50 * 4 * 7


# -- limits that disagree --------------------------------------------------------------------
async def test_a_process_with_other_limits_is_told_and_its_spawn_fails(
    quotas: Quotas, tree: str
) -> None:
    first = quotas(QuotaLimits(max_executions=2))
    await first.areserve()
    other = quotas(QuotaLimits(max_executions=3))
    with pytest.raises(QuotaUnavailable) as info:
        await other.acheck()
    message = str(info.value)
    assert f"the quota tree {tree!r} at {quotas.url} was made with other limits" in message
    assert "[2, null, null, null]" in message
    assert "[3, null, null, null]" in message
    with pytest.raises(QuotaUnavailable):
        other.statistics()

    provider = answering()
    runtime = Runtime(provider, subagents=NO_SUMMARY, quota=other, telemetry=False)
    result = (await runtime.run_batch(task_list(1))).results[0]
    assert (result.status, result.error_type, result.error) == (
        "failed",
        "execution_failed",
        message,
    )
    assert provider.requests == []
    assert first.statistics().executions == 1  # the other process took nothing


@pytest.mark.timeout(180)
async def test_a_separate_process_with_other_limits_fails_its_spawns(
    quotas: Quotas, tree: str
) -> None:
    await quotas(QuotaLimits(max_executions=2)).areserve()
    spec = {"url": quotas.url, "tree": tree, "limits": {"max_executions": 3}}
    (counts,) = await asyncio.to_thread(
        run_workers, quotas.url, [{**spec, "tasks": 2, "concurrent": 2}], together=False
    )
    assert counts["results"] == {"execution_failed": 2}
    assert counts["calls"] == 0
    (message,) = counts["messages"]
    assert "[2, null, null, null]" in message
    assert "[3, null, null, null]" in message


async def test_equal_limits_written_as_int_or_float_are_the_same_limits(quotas: Quotas) -> None:
    as_int, as_float = QuotaLimits(max_total_time=60), QuotaLimits(max_total_time=60.0)
    assert as_int == as_float
    await quotas(as_int).areserve()
    await quotas(as_float).areserve()


# -- Redis down or hanging -------------------------------------------------------------------
@pytest.fixture
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port that is bound but not listening: a connection there is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def test_a_redis_that_is_down_fails_the_spawn_and_calls_no_model(
    quotas: Quotas, closed_port: int, tree: str
) -> None:
    url = f"redis://user:hunter2@127.0.0.1:{closed_port}/0"
    shown = f"redis://user:***@127.0.0.1:{closed_port}/0"
    quota = quotas(QuotaLimits(max_executions=5), url=url, timeout=2)
    provider = answering()
    runtime = Runtime(provider, subagents=NO_SUMMARY, quota=quota, telemetry=False)

    batch = await runtime.run_batch(task_list(2))

    assert by_outcome(batch) == {"execution_failed": 2}
    expected = (
        f"the shared quota (tree {tree!r}) at {shown} could not be reached "
        "(timeout 2s, one retry): "
    )
    for result in batch.results:
        assert result.status == "failed"
        assert result.error is not None
        assert result.error.startswith(expected), result.error
        assert result.error.endswith(
            "no subagent starts without it (is redis-server running there?)"
        )
        assert "hunter2" not in result.error
    assert provider.requests == []
    with pytest.raises(QuotaUnavailable, match=re.escape(expected)):
        quota.statistics()
    with pytest.raises(QuotaUnavailable, match=re.escape(expected)):
        await quota.astatistics()
    assert "hunter2" not in repr(quota)


@pytest.mark.timeout(120)
async def test_a_redis_that_hangs_fails_the_spawn_and_the_next_one_works_again(
    quotas: Quotas, tree: str
) -> None:
    with redis_server_or_skip() as own:
        quota = quotas(QuotaLimits(max_executions=10), url=own.url, timeout=0.5)
        provider = answering()
        runtime = Runtime(provider, subagents=NO_SUMMARY, quota=quota, telemetry=False)
        assert by_outcome(await runtime.run_batch(task_list(1))) == {"complete": 1}

        own.pause()
        try:
            hung = await runtime.run_batch(task_list(1))
            with pytest.raises(QuotaUnavailable) as info:
                quota.statistics()
        finally:
            own.resume()

        result = hung.results[0]
        assert (result.status, result.error_type) == ("failed", "execution_failed")
        expected = (
            f"the shared quota (tree {tree!r}) at {own.url} could not be reached "
            "(timeout 0.5s, one retry)"
        )
        assert result.error is not None
        assert result.error.startswith(expected), result.error
        assert "Timeout" in result.error
        assert str(info.value).startswith(expected)
        assert len(provider.requests) == 1  # only the first spawn's

        assert by_outcome(await runtime.run_batch(task_list(1))) == {"complete": 1}
        assert len(provider.requests) == 2
        assert (await quota.astatistics()).executions == 2  # the refused spawn took nothing
        await quota.aclose()


async def test_a_pooled_connection_the_server_dropped_is_retried_once(quotas: Quotas) -> None:
    with redis_server_or_skip() as own:
        quota = quotas(QuotaLimits(max_executions=5), url=own.url)
        await quota.areserve()  # one connection in the pool
        with client_for(own.url) as client:  # as a Redis restart or its idle `timeout` does
            assert client.client_kill_filter(_type="normal", skipme=True) >= 1
        try:
            await quota.areserve()
        finally:
            await quota.aclose()
        assert quota.statistics().executions == 2
        await quota.aclose()


# -- keys expire -----------------------------------------------------------------------------
@pytest.mark.parametrize("expire", [1, 0.2])
async def test_the_tree_expires_after_its_last_use(
    quotas: Quotas, tree: str, expire: float
) -> None:
    quota = quotas(QuotaLimits(max_executions=3), expire=expire)
    assert quota.expire == 1  # whole seconds, rounded up
    await quota.areserve()
    assert 0 < pttl(quotas.url, key_of(tree)) <= 1000


@pytest.mark.parametrize(
    "use", ["acheck", "areserve", "acheck_running", "acharge", "astatistics", "statistics"]
)
async def test_every_use_of_the_tree_renews_its_expiry(quotas: Quotas, tree: str, use: str) -> None:
    quota = quotas(QuotaLimits(max_executions=3, max_total_tokens=100), expire=3600)
    await quota.astatistics()
    with client_for(quotas.url) as client:
        assert client.pexpire(key_of(tree), 5_000)
    method = getattr(quota, use)
    outcome = method(1) if use == "acharge" else method()
    if asyncio.iscoroutine(outcome):
        await outcome
    assert 5_000 < pttl(quotas.url, key_of(tree)) <= 3_600_000


# -- the time limit --------------------------------------------------------------------------
async def test_the_time_limit_counts_from_the_trees_start_in_redis(
    quotas: Quotas, tree: str
) -> None:
    limits = QuotaLimits(max_total_time=50)
    first = quotas(limits)
    before = await first.astatistics()
    second = quotas(limits)  # made later, in "another process"
    after = second.statistics()
    assert 0 <= before.elapsed <= after.elapsed < 50
    for stats in (before, after):
        assert stats.remaining_time == max(0.0, 50 - stats.elapsed)
    remaining = second.remaining_time()
    assert remaining is not None
    assert remaining <= 50

    # The tree began 100 s ago (another process made it then): moved in Redis, not waited for.
    with client_for(quotas.url) as client:
        seconds, micros = client.time()
        client.hset(key_of(tree), "started", seconds * 1_000_000 + micros - 100_000_000)
    late = quotas(limits)  # a process that never saw the tree before
    stats = await late.astatistics()
    assert stats.elapsed >= 100
    assert stats.remaining_time == 0
    assert late.remaining_time() == 0
    assert first.statistics().elapsed >= 100

    provider = answering()
    runtime = Runtime(provider, subagents=NO_SUMMARY, quota=late, telemetry=False)
    result = (await runtime.run_batch(task_list(1))).results[0]
    assert (result.status, result.error_type) == ("failed", "quota_exceeded")
    assert result.error is not None
    assert re.fullmatch(
        r"Resource quota exceeded: time limit reached \(\d{3,}\.\ds/50\.0s\)", result.error
    ), result.error
    assert provider.requests == []


# -- cost ------------------------------------------------------------------------------------
async def test_costs_are_kept_in_whole_nano_dollars_rounded_up(quotas: Quotas) -> None:
    limits = QuotaLimits(max_total_cost=1)
    first, second = quotas(limits), quotas(limits)
    await first.acharge(0, Decimal("0.0000000011"))  # 1.1 nano-dollars: 2
    await first.acharge(0, Decimal("1E-18"))  # anything above 0: at least 1
    await first.acharge(0, Decimal("0.000000005"))  # whole: as it is
    stats = await second.astatistics()
    assert stats.total_cost == Decimal("0.000000008")
    assert stats.remaining_cost == Decimal(1) - Decimal("0.000000008")


async def test_a_tree_past_its_cost_limit_refuses_the_next_spawn(quotas: Quotas) -> None:
    """One call costs $1.5e-9, charged as 2 nano-dollars; the limit is 4: two tasks run.

    (The in-memory tracker, exact, runs three: $3e-9 is still under $4e-9.)
    """
    pricing = {"scripted": Price(input_per_mtok="0.0015", output_per_mtok=0)}
    limits = QuotaLimits(max_total_cost="0.000000004")
    usage = Usage(1, 1, 0, 1)

    def answer(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> str:
        return "done"

    quota = quotas(limits)
    provider = ScriptedProvider(answer, usage=usage)
    runtime = Runtime(provider, subagents=NO_SUMMARY, quota=quota, telemetry=False, pricing=pricing)
    batch = await runtime.run_batch(task_list(4), max_concurrent=1)

    assert [r.error_type or r.status for r in batch.results] == [
        "complete",
        "complete",
        "quota_exceeded",
        "quota_exceeded",
    ]
    assert [r.cost for r in batch.results[:2]] == [Decimal("1.5E-9")] * 2
    assert {r.error for r in batch.results[2:]} == {
        "Resource quota exceeded: cost limit reached ($0.0000000040/$0.0000000040)"
    }
    assert len(provider.requests) == 2
    stats = await quota.astatistics()
    assert (stats.total_cost, stats.remaining_cost) == (Decimal("4E-9"), Decimal(0))

    exact = Runtime(
        ScriptedProvider(answer, usage=usage),
        subagents=NO_SUMMARY,
        quota=limits,  # the in-memory tracker
        telemetry=False,
        pricing=pricing,
    )
    in_memory = await exact.run_batch(task_list(4), max_concurrent=1)
    assert by_outcome(in_memory) == {"complete": 3, "quota_exceeded": 1}


# -- pickling --------------------------------------------------------------------------------
async def test_a_pickled_quota_is_a_working_quota_on_the_same_tree(quotas: Quotas) -> None:
    limits = QuotaLimits(
        max_executions=3, max_total_tokens=1000, max_total_time=3600, max_total_cost="0.5"
    )
    quota = quotas(limits, expire=600, timeout=2.5, max_connections=7)
    await quota.areserve()  # connected: the copy must not need (or carry) the connection

    copy = quotas.adopt(pickle.loads(pickle.dumps(quota)))

    assert type(copy) is RedisQuota
    assert copy is not quota
    assert repr(copy) == repr(quota)
    assert (copy.url, copy.tree, copy.limits) == (quota.url, quota.tree, limits)
    assert (copy.expire, copy.timeout, copy.max_connections) == (600, 2.5, 7)
    await copy.areserve()
    await copy.acharge(5, Decimal("0.001"))
    stats = await quota.astatistics()
    assert (stats.executions, stats.total_tokens, stats.total_cost) == (2, 5, Decimal("0.001"))

    provider = answering()
    runtime = Runtime(
        provider,
        subagents=NO_SUMMARY,
        quota=copy,
        telemetry=False,
        pricing={"scripted": Price(0, 0)},
    )
    batch = await runtime.run_batch(task_list(2), max_concurrent=2)
    assert by_outcome(batch) == {"complete": 1, "quota_exceeded": 1}
    assert quota.statistics().executions == 3


# -- telemetry -------------------------------------------------------------------------------
@pytest.mark.parametrize("redis_is", ["up", "down"])
async def test_the_telemetry_invariants_hold_with_a_redis_quota(
    quotas: Quotas, closed_port: int, redis_is: str
) -> None:
    url = None if redis_is == "up" else f"redis://127.0.0.1:{closed_port}/0"
    quota = quotas(QuotaLimits(max_executions=3), url=url)
    subscriber = TelemetrySubscriber()
    with capture_telemetry() as captured:
        runtime = Runtime(answering(), subagents=NO_SUMMARY, quota=quota, telemetry=subscriber)
        batch = await runtime.run_batch(task_list(5), max_concurrent=5)

    expected = {"complete": 3, "quota_exceeded": 2} if redis_is == "up" else {"execution_failed": 5}
    assert by_outcome(batch) == expected
    assert {a[n.DEPTH] for a in captured.attribute_sets(n.EXECUTIONS)} == {1}
    executions = captured.value(n.EXECUTIONS, depth=1)
    completions = captured.value(n.COMPLETIONS, depth=1)
    errors = captured.value(n.ERRORS, depth=1)
    assert executions == 5
    assert executions == completions + errors
    assert completions == expected.get("complete", 0)
    for error_type in ("quota_exceeded", "execution_failed"):
        assert captured.value(n.ERRORS, depth=1, error_type=error_type) == expected.get(
            error_type, 0
        )
    assert captured.value(n.ACTIVE_COUNT, depth=1) == 0
    assert captured.histogram(n.DURATION, depth=1).count == executions
    assert subscriber.in_flight == 0


async def test_the_root_answers_when_its_calls_cannot_be_charged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The quota never stops the root (docs/concepts.md, The quota): with Redis unreachable, its
    model calls cannot be charged, and it still answers, with a warning logged."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # released: nothing listens there
    quota = RedisQuota(f"redis://127.0.0.1:{port}/0", tree="root-charge", timeout=1)
    provider = ScriptedProvider(["the root's answer"])
    runtime = Runtime(provider, quota=quota, telemetry=False)
    result = await runtime.agent().run("hi")
    await quota.aclose()
    assert (result.status, result.output) == ("complete", "the root's answer")
    assert "could not be charged" in caplog.text
