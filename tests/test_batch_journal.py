"""The batch journal as a user meets it (issue 14): ``Runtime.run_batch(journal=...)`` and
``xzatoma batch --journal`` / ``xzatoma journal show``, killed, interrupted, resumed.

The storage itself (keys, the rule, locking, corrupt files) is ``tests/test_journal.py``'s;
here the batch runs for real: in-process on a scripted model, or as a real subprocess of
``python -m xzatoma.cli`` against a real HTTP server on 127.0.0.1 (``_journal_server``) that
answers each task by its prompt and can hold the requests of the tasks in flight, so a test
knows exactly which tasks had ended when it kills the batch.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from _clock import on_virtual_time
from _journal_server import TaskServer, prompt_of
from test_boundary_cli import CLI, run_cli
from test_cli import child_env, cli, endpoint, free_port, one_error_line

from xzatoma import (
    BatchResult,
    Event,
    JournalError,
    JournalWriteError,
    Message,
    Price,
    QuotaLimits,
    RunResult,
    Runtime,
    SubagentConfig,
    ToolSpec,
    Usage,
)
from xzatoma._journal import BatchJournal, JournalView, read_journal
from xzatoma._render import print_interrupted
from xzatoma.events import SubagentEnded
from xzatoma.testing import ScriptedProvider

NOT_SQLITE = (
    " (not an SQLite database): was another file given as the journal? It was left as it is"
)

# One model call per task (no summary turn), priced: 300 tokens in at $1/M, 5 out at $2/M.
USAGE = Usage(1, 300, 5, 305)
COST = 0.00031
QUIET = (
    "agent:\n  subagent:\n    summary_prompt: null\n"
    "pricing:\n  m: {input_per_mtok: 1, output_per_mtok: 2}\n"
)


def task_dicts(count: int) -> list[dict[str, str]]:
    return [{"label": f"t{i}", "task_prompt": prompt_of(i)} for i in range(count)]


def labels(indexes: Iterable[int]) -> set[str]:
    return {f"t{i}" for i in indexes}


# -- the Python API: a scripted model --------------------------------------------------------


class Model:
    """A scripted model that answers ``answer {i}`` to task ``i`` and records which task each
    call was for; ``before[i]`` is awaited before task ``i`` is answered (to hold or fail it)."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.before: dict[int, Callable[[], Awaitable[None]]] = {}
        self.provider = ScriptedProvider(self.answer, usage=USAGE)

    async def answer(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> str:
        task = int(str(messages[0].content).removeprefix("task "))
        self.calls.append(task)
        act = self.before.get(task)
        if act is not None:
            await act()
        return f"answer {task}"


def runtime(model: Model, **options: Any) -> Runtime:
    return Runtime(
        model.provider,
        subagents=SubagentConfig(summary_prompt=None),
        telemetry=False,
        pricing={"scripted": Price(1, 2)},
        **options,
    )


async def breaks() -> None:
    raise RuntimeError("this task breaks")


def statuses(path: Path) -> list[tuple[str, str | None, int]]:
    """Each journaled task's (status, error_type, runs), in the journal's order."""
    return [(e.status, e.error_type, e.runs) for e in read_journal(path).entries]


@pytest.mark.anyio
@on_virtual_time
async def test_a_resume_reads_back_equal_results_and_calls_no_model(tmp_path: Path) -> None:
    model, path = Model(), tmp_path / "j.sqlite"
    ended: list[str] = []

    def hook(event: Event) -> None:
        if isinstance(event, SubagentEnded):
            ended.append(event.label)

    rt = runtime(model, hooks=[hook])
    first = await rt.run_batch(task_dicts(6), journal=path, max_concurrent=3)
    assert (first.resumed, sorted(model.calls), first.status) == ((), list(range(6)), "complete")
    again = await rt.run_batch(task_dicts(6), journal=path, max_concurrent=3)
    assert again.resumed == (0, 1, 2, 3, 4, 5)
    assert again.results == first.results  # RunResult equality: messages, usage, cost and all
    assert (again.status, again.successful, again.total_usage) == ("complete", 6, first.total_usage)
    assert again.total_cost == first.total_cost
    assert first.total_cost is not None
    assert float(first.total_cost) == pytest.approx(6 * COST)
    assert len(model.calls) == 6  # nothing to run: no model call...
    assert len(ended) == 6  # ...and no execution: a read-back task is none
    assert statuses(path) == [("complete", None, 1)] * 6


@pytest.mark.anyio
@on_virtual_time
async def test_a_read_back_result_keeps_its_exact_duration(tmp_path: Path) -> None:
    model, path = Model(), tmp_path / "j.sqlite"

    async def a_third_of_a_second() -> None:
        await anyio.sleep(1 / 3)  # virtual time: exactly 1/3 s, at once

    model.before[0] = a_third_of_a_second
    rt = runtime(model)
    first = await rt.run_batch(task_dicts(1), journal=path)
    assert first.results[0].duration == pytest.approx(1 / 3)
    again = await rt.run_batch(task_dicts(1), journal=path)
    assert again.results[0].duration == first.results[0].duration


@pytest.mark.anyio
@on_virtual_time
async def test_a_reordered_batch_resumes_by_task_not_by_position(tmp_path: Path) -> None:
    model, path = Model(), tmp_path / "j.sqlite"
    rt = runtime(model, quota=QuotaLimits(max_executions=3))
    first = await rt.run_batch(task_dicts(6), journal=path, max_concurrent=1)
    assert [r.error_type for r in first.results] == [None] * 3 + ["quota_exceeded"] * 3
    model.calls.clear()
    backwards = task_dicts(6)[::-1]  # t5 .. t0: the journaled t0..t2 are now positions 3..5
    again = await runtime(model).run_batch(backwards, journal=path, max_concurrent=1)
    assert again.resumed == (3, 4, 5)
    assert sorted(model.calls) == [3, 4, 5]
    assert [r.label for r in again.results] == [f"t{i}" for i in range(5, -1, -1)]
    assert [r.output for r in again.results] == [f"answer {i}" for i in range(5, -1, -1)]
    assert again.results[3:] == first.results[2::-1]


@pytest.mark.anyio
@on_virtual_time
async def test_failed_tasks_are_finished_unless_rerun_failed(tmp_path: Path) -> None:
    model, path = Model(), tmp_path / "j.sqlite"
    model.before[1] = breaks
    first = await runtime(model).run_batch(task_dicts(3), journal=path)
    assert [(r.status, r.error_type) for r in first.results] == [
        ("complete", None), ("failed", "execution_failed"), ("complete", None)
    ]  # fmt: skip
    del model.before[1]
    model.calls.clear()
    again = await runtime(model).run_batch(task_dicts(3), journal=path)  # a plain resume
    assert (again.resumed, model.calls, again.results) == ((0, 1, 2), [], first.results)
    rerun = await runtime(model).run_batch(task_dicts(3), journal=path, rerun_failed=True)
    assert (rerun.resumed, model.calls) == ((0, 2), [1])
    assert [r.status for r in rerun.results] == ["complete"] * 3
    assert statuses(path) == [("complete", None, 1), ("complete", None, 2), ("complete", None, 1)]


@pytest.mark.anyio
@on_virtual_time
async def test_tasks_cancelled_by_fail_fast_run_again_by_default(tmp_path: Path) -> None:
    model, path = Model(), tmp_path / "j.sqlite"
    t0_asked = anyio.Event()

    async def hang() -> None:
        t0_asked.set()
        await anyio.sleep_forever()  # in flight when t1 fails: cancelled by fail_fast

    async def fail_once_t0_is_in_flight() -> None:
        await t0_asked.wait()
        raise RuntimeError("this task breaks")

    model.before.update({0: hang, 1: fail_once_t0_is_in_flight})
    first = await runtime(model).run_batch(
        task_dicts(4), journal=path, max_concurrent=2, fail_fast=True
    )
    assert [r.status for r in first.results] == ["cancelled", "failed", "cancelled", "cancelled"]
    assert statuses(path) == [
        ("cancelled", "cancelled", 1), ("failed", "execution_failed", 1),
        ("pending", None, 0), ("pending", None, 0),
    ]  # fmt: skip
    model.before.clear()
    model.calls.clear()
    again = await runtime(model).run_batch(task_dicts(4), journal=path, max_concurrent=2)
    assert (again.resumed, sorted(model.calls)) == ((1,), [0, 2, 3])
    assert again.results[1] == first.results[1]
    assert [r.status for r in again.results] == ["complete", "failed", "complete", "complete"]


@pytest.mark.anyio
@on_virtual_time
async def test_tasks_cut_by_the_batch_timeout_run_again_by_default(tmp_path: Path) -> None:
    model, path = Model(), tmp_path / "j.sqlite"
    model.before[0] = anyio.sleep_forever  # still running when the batch's 10 s are up
    first = await runtime(model).run_batch(
        task_dicts(3), journal=path, max_concurrent=3, timeout=10
    )
    assert [(r.status, r.error_type) for r in first.results] == [
        ("failed", "timeout"), ("complete", None), ("complete", None),
    ]  # fmt: skip
    assert statuses(path)[0] == ("failed", "timeout", 1)
    assert [e.will_run for e in read_journal(path).entries] == [True, False, False]
    model.before.clear()
    model.calls.clear()
    again = await runtime(model).run_batch(task_dicts(3), journal=path, max_concurrent=3)
    assert (again.resumed, model.calls, again.status) == ((1, 2), [0], "complete")
    assert statuses(path)[0] == ("complete", None, 2)


@pytest.mark.anyio
@on_virtual_time
async def test_quota_refusals_run_again_and_the_quota_counts_only_new_executions(
    tmp_path: Path,
) -> None:
    model, path = Model(), tmp_path / "j.sqlite"
    first = await runtime(model, quota=QuotaLimits(max_executions=2)).run_batch(
        task_dicts(4), journal=path, max_concurrent=1
    )
    assert [r.error_type for r in first.results] == [None, None, "quota_exceeded", "quota_exceeded"]
    # One execution allowed: t2 runs (the journaled t0 and t1 are not counted), t3 is refused.
    model.calls.clear()
    rt = runtime(model, quota=QuotaLimits(max_executions=1))
    second = await rt.run_batch(task_dicts(4), journal=path, max_concurrent=1)
    assert (second.resumed, model.calls) == ((0, 1), [2])
    assert second.results[3].error_type == "quota_exceeded"
    assert rt.tracker.statistics().executions == 1
    rt = runtime(model, quota=QuotaLimits(max_executions=1))
    third = await rt.run_batch(task_dicts(4), journal=path, max_concurrent=1)
    assert (third.resumed, model.calls, third.status) == ((0, 1, 2), [2, 3], "complete")
    assert [s[2] for s in statuses(path)] == [1, 1, 2, 3]  # t3: refused twice, then ran


@pytest.mark.anyio
@on_virtual_time
async def test_another_set_of_tasks_is_refused_before_any_model_call_unless_extended(
    tmp_path: Path,
) -> None:
    model, path = Model(), tmp_path / "j.sqlite"
    await runtime(model).run_batch(task_dicts(2), journal=path)  # t0, t1
    before = path.read_bytes()
    other = task_dicts(3)[1:]  # t1, t2
    fresh = Model()
    with pytest.raises(JournalError, match=r"made from a different set of tasks: 1 of its 2"):
        await runtime(fresh).run_batch(other, journal=path)
    assert (fresh.provider.requests, path.read_bytes()) == ([], before)
    extended = await runtime(fresh).run_batch(other, journal=path, extend_journal=True)
    assert (extended.resumed, fresh.calls) == ((0,), [2])
    assert [r.label for r in extended.results] == ["t1", "t2"]  # t0 stays in the journal only
    view = read_journal(path)
    assert [(e.label, e.status) for e in view.entries] == [
        ("t0", "complete"), ("t1", "complete"), ("t2", "complete")
    ]  # fmt: skip


@pytest.mark.anyio
@on_virtual_time
async def test_a_second_batch_on_a_journal_in_use_is_refused_naming_the_pid(
    tmp_path: Path,
) -> None:
    model, path = Model(), tmp_path / "j.sqlite"
    asked, go_on = anyio.Event(), anyio.Event()

    async def wait() -> None:
        asked.set()
        await go_on.wait()

    model.before[0] = wait
    other = Model()
    async with anyio.create_task_group() as tg:
        results = []

        async def first() -> None:
            results.append(await runtime(model).run_batch(task_dicts(2), journal=path))

        tg.start_soon(first)
        await asked.wait()  # the first batch holds the journal, mid-batch
        with pytest.raises(JournalError) as caught:
            await runtime(other).run_batch(task_dicts(2), journal=path)
        assert str(caught.value) == (
            f"{path} is in use by another batch (pid {os.getpid()}): wait for it to end, or"
            " stop it; resuming after that needs nothing cleared"
        )
        assert other.provider.requests == []
        go_on.set()
    [batch] = results
    assert batch.status == "complete"
    assert [s[0] for s in statuses(path)] == ["complete", "complete"]


# -- a write that fails mid-batch -------------------------------------------------------------


@pytest.mark.anyio
@on_virtual_time
async def test_a_journal_moved_away_mid_batch_stops_it_and_what_ended_is_kept(
    tmp_path: Path,
) -> None:
    folder, away = tmp_path / "journal", tmp_path / "away"
    folder.mkdir()
    path = folder / "j.sqlite"
    model = Model()

    async def move_the_journal() -> None:
        folder.rename(away)  # while t3 runs: its end cannot be recorded

    model.before[3] = move_the_journal
    with pytest.raises(JournalWriteError) as caught:
        await runtime(model).run_batch(task_dicts(8), journal=path, max_concurrent=1)
    assert str(caught.value).startswith(
        f"the batch stopped: {path} was moved or removed during the batch, so the end of task 3"
        " ('t3') could not"
    )
    batch = caught.value.result
    assert isinstance(batch, BatchResult)
    assert [r.status for r in batch.results] == ["complete"] * 4 + ["cancelled"] * 4
    assert {r.error for r in batch.results[4:]} == {"cancelled before it started"}
    assert model.calls == [0, 1, 2, 3]  # nothing after the failure
    away.rename(folder)  # put back, as the message says: it resumes
    assert [s[0] for s in statuses(path)] == ["complete"] * 3 + ["pending"] * 5
    model.before.clear()
    model.calls.clear()
    again = await runtime(model).run_batch(task_dicts(8), journal=path, max_concurrent=1)
    assert (again.resumed, model.calls) == ((0, 1, 2), [3, 4, 5, 6, 7])
    assert sorted(os.listdir(folder)) == ["j.sqlite", "j.sqlite-lock"]


@pytest.mark.anyio
@on_virtual_time
async def test_a_journal_removed_mid_batch_cancels_the_tasks_in_flight(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    folder.mkdir()
    model, timeline = Model(), list[tuple[str, int]]()
    in_flight, calling = anyio.Event(), set[int]()

    def hook(event: Event) -> None:
        if isinstance(event, SubagentEnded):
            timeline.append(("ended", int(event.label[1:])))

    async def record_call(task: int) -> None:
        timeline.append(("call", task))
        if task in (5, 6, 7):
            calling.add(task)
            if len(calling) == 3:
                in_flight.set()
            await anyio.sleep_forever()

    async def remove_the_journal() -> None:
        timeline.append(("call", 4))
        await in_flight.wait()  # t5, t6, t7 are in flight (max_concurrent=4)
        for name in os.listdir(folder):
            os.unlink(folder / name)
        folder.rmdir()

    for task in range(12):
        model.before[task] = functools.partial(record_call, task)
    model.before[4] = remove_the_journal
    with pytest.raises(JournalWriteError) as caught:
        await runtime(model, hooks=[hook]).run_batch(
            task_dicts(12), journal=folder / "j.sqlite", max_concurrent=4
        )
    assert "the end of task 4 ('t4') could not be recorded" in str(caught.value)
    batch = caught.value.result
    assert isinstance(batch, BatchResult)
    assert [r.status for r in batch.results] == ["complete"] * 5 + ["cancelled"] * 7
    assert {r.error for r in batch.results[5:8]} == {"cancelled before it finished"}
    assert {r.error for r in batch.results[8:]} == {"cancelled before it started"}
    failed_at = timeline.index(("ended", 4))
    assert [e for e in timeline[failed_at:] if e[0] == "call"] == []  # none after it
    assert sorted(model.calls) == list(range(8))


# -- the command line: a real subprocess, killed and resumed ----------------------------------


def write_tasks(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in task_dicts(count)))
    return path


def quiet_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(QUIET)
    return path


def batch_argv(server: TaskServer, tmp_path: Path, count: int, *more: str) -> list[str]:
    """``xzatoma batch`` on ``count`` tasks with the journal ``j.sqlite``, one model call a
    task; a held request never times out while the test runs."""
    tasks = write_tasks(tmp_path, count)
    return [
        "batch", str(tasks), "--journal", str(tmp_path / "j.sqlite"),
        "--config", str(quiet_config(tmp_path)), *endpoint(server),
        "--request-timeout", "600", *more,
    ]  # fmt: skip


@contextlib.contextmanager
def started(tmp_path: Path, argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """The command as a subprocess, its output to files (no pipe to fill); killed at the end
    if the test left it running."""
    with (tmp_path / "out").open("wb") as out, (tmp_path / "err").open("wb") as err:
        proc = subprocess.Popen([*CLI, *argv], stdout=out, stderr=err, env=child_env())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


def wait_for_ends(path: Path, count: int, proc: subprocess.Popen[Any]) -> JournalView:
    """Poll the journal (read-only, as ``journal show`` does) until ``count`` tasks ended."""
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the batch exited ({proc.returncode}) before {count} tasks ended")
        with contextlib.suppress(JournalError):  # not made yet
            view = read_journal(path)
            if sum(e.status != "pending" for e in view.entries) >= count:
                return view
        assert time.monotonic() < deadline, f"{count} tasks never ended"
        time.sleep(0.01)  # the pace of the polling only: the condition is the journal's


def output_of(tmp_path: Path) -> str:
    return (tmp_path / "err").read_text(errors="replace")


TASKS, ENDED, WORKERS = 300, 120, 8


@pytest.mark.timeout(180)
@pytest.mark.skipif(sys.platform == "win32", reason="kill -9")
def test_a_batch_killed_with_sigkill_resumes_with_only_what_was_left(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with TaskServer(answer_first=ENDED) as server:
        argv = batch_argv(server, tmp_path, TASKS, "--max-concurrent", str(WORKERS))
        with started(tmp_path, argv) as proc:
            wait_for_ends(path, ENDED, proc)
            server.wait_held(WORKERS)  # every worker is in a model call that never returns
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=60) == -signal.SIGKILL, output_of(tmp_path)
        answered, held = set(server.answered), set(server.held)
        assert (len(answered), len(held), answered & held) == (ENDED, WORKERS, set())

        view = read_journal(path)
        assert not view.in_use  # the kernel let go of the dead batch's lock
        assert [e.label for e in view.entries] == [f"t{i}" for i in range(TASKS)]  # once each
        ended = [e for e in view.entries if e.status != "pending"]
        assert {e.label for e in ended} == labels(answered)  # exactly the answered ones...
        assert {(e.status, e.runs) for e in ended} == {("complete", 1)}
        assert not labels(held) & {e.label for e in ended}  # ...and none in flight

        server.release()
        mark = len(server.seen)
        done = run_cli(*argv, "--max-executions", str(TASKS - ENDED), "--json", text=True)
        assert done.returncode == 0, done.stderr
        rest = set(range(TASKS)) - answered
        assert server.requests_per_task(since=mark) == collections.Counter(rest)  # once each
    data = json.loads(done.stdout)
    assert (data["status"], data["successful"], data["resumed"]) == ("complete", TASKS, ENDED)
    assert [r["label"] for r in data["results"]] == [f"t{i}" for i in range(TASKS)]
    assert [r["output"] for r in data["results"]] == [f"answer {i}" for i in range(TASKS)]
    assert [r["resumed"] for r in data["results"]] == [i in answered for i in range(TASKS)]
    assert data["total_cost"] == pytest.approx(TASKS * COST)
    view = read_journal(path)
    assert [(e.label, e.status, e.runs) for e in view.entries] == [
        (f"t{i}", "complete", 1) for i in range(TASKS)
    ]
    assert sorted(os.listdir(tmp_path)) == [
        "config.yaml", "err", "j.sqlite", "j.sqlite-lock", "out", "tasks.jsonl"
    ]  # fmt: skip


@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_mid_batch_says_the_journal_resumes_it_and_it_does(
    tmp_path: Path, signum: signal.Signals
) -> None:
    path, count, ended, workers = tmp_path / "j.sqlite", 30, 10, 4
    with TaskServer(answer_first=ended) as server:
        argv = batch_argv(server, tmp_path, count, "--max-concurrent", str(workers))
        with started(tmp_path, argv) as proc:
            wait_for_ends(path, ended, proc)
            server.wait_held(workers)
            proc.send_signal(signum)
            assert proc.wait(timeout=60) == 128 + signum
        err = output_of(tmp_path)
        assert "Traceback" not in err
        assert (
            f"xzatoma: what had ended is in the journal {path}; the same command resumes the "
            "batch\n"
        ) in err
        answered, held = set(server.answered), set(server.held)
        view = read_journal(path)
        assert {e.label for e in view.entries if e.status == "complete"} == labels(answered)
        assert {e.label for e in view.entries if e.status == "cancelled"} == labels(held)
        assert sum(e.will_run for e in view.entries) == count - ended

        server.release()
        mark = len(server.seen)
        done = run_cli(*argv, "--json", text=True)
        assert done.returncode == 0, done.stderr
        rest = set(range(count)) - answered
        assert server.requests_per_task(since=mark) == collections.Counter(rest)
    data = json.loads(done.stdout)
    assert [r["resumed"] for r in data["results"]] == [i in answered for i in range(count)]
    runs = {e.label: e.runs for e in read_journal(path).entries}
    assert {label for label, n in runs.items() if n == 2} == labels(held)  # cancelled, then ran


# -- the command line in-process ----------------------------------------------------------------


@pytest.fixture
def tasks_server() -> Iterator[TaskServer]:
    with TaskServer() as srv:
        yield srv


def test_the_report_and_the_json_say_what_came_from_the_journal(
    capsys: pytest.CaptureFixture[str], tasks_server: TaskServer, tmp_path: Path
) -> None:
    tasks_server.fail = {1}
    argv = batch_argv(tasks_server, tmp_path, 4, "--max-concurrent", "1")
    code, out, err = cli(capsys, *argv)
    assert (code, err) == (1, "")
    assert "from the journal" not in out
    assert out.startswith("batch: 4 tasks\n")
    assert "== t1: failed (execution_failed), 0 turns, 0 tokens\n" in out

    tasks_server.fail = set()
    code, out, err = cli(capsys, *argv, "--rerun-failed")
    assert (code, err) == (0, "")
    assert out.startswith("batch: 1 tasks to run (3 more read from the journal)\n[1/1] done t1")
    assert tasks_server.requests_per_task() == collections.Counter([0, 1, 1, 2, 3])
    for i in (0, 2, 3):
        assert f"== t{i}: complete, 1 turns, 305 tokens, $0.00031 (from the journal)\n" in out
    assert "== t1: complete, 1 turns, 305 tokens, $0.00031\n" in out
    assert out.splitlines()[-1].startswith(
        "batch complete: 4 succeeded, 0 failed, 0 cancelled; 3 from the journal; 1220 tokens"
        " ($0.0012) in "
    )

    code, out, err = cli(capsys, *argv, "--json")
    assert code == 0
    assert len(tasks_server.seen) == 5  # all four read back: no request
    data = json.loads(out)
    assert (data["status"], data["resumed"], data["total_tokens"]) == ("complete", 4, 1220)
    assert data["total_cost"] == pytest.approx(4 * COST)
    assert [(r["label"], r["resumed"]) for r in data["results"]] == [
        (f"t{i}", True) for i in range(4)
    ]
    assert [r["output"] for r in data["results"]] == [f"answer {i}" for i in range(4)]


@pytest.mark.parametrize("as_json", [False, True], ids=["report", "json"])
def test_a_journal_that_can_no_longer_be_written_stops_the_batch_and_reports_what_ended(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tasks_server: TaskServer,
    tmp_path: Path,
    as_json: bool,
) -> None:
    folder = tmp_path / "journal"
    folder.mkdir()
    argv = batch_argv(tasks_server, tmp_path, 4, "--max-concurrent", "1")
    argv[argv.index("--journal") + 1] = str(folder / "j.sqlite")
    record = BatchJournal.record

    def moved_before_t2(journal: BatchJournal, index: int, result: RunResult) -> None:
        if index == 2:
            folder.rename(tmp_path / "away")  # a real failure: the file is gone
        record(journal, index, result)

    monkeypatch.setattr(BatchJournal, "record", moved_before_t2)
    code, out, err = cli(capsys, *argv, *(["--json"] if as_json else []))
    assert code == 1  # a failure of the run, not a usage error (2)
    assert err.splitlines()[-1] == (  # after the progress lines, under --json
        f"xzatoma: error: the batch stopped: {folder / 'j.sqlite'} was moved or removed during"
        " the batch, so the end of task 2 ('t2') could not be recorded: put it back to resume"
        " the batch with it, or run the batch again with a new journal"
    )
    if as_json:
        data = json.loads(out)
        assert [r["status"] for r in data["results"]] == ["complete"] * 3 + ["cancelled"]
    else:
        assert "== t2: complete, 1 turns, 305 tokens" in out
        assert "\nbatch partial: 3 succeeded, 0 failed, 1 cancelled; 915 tokens" in out
    (tmp_path / "away").rename(folder)
    monkeypatch.undo()
    code, out, _ = cli(capsys, *argv, "--json")
    assert code == 0
    assert json.loads(out)["resumed"] == 2  # t0, t1; t2 ended unrecorded: it runs again


@pytest.mark.parametrize("as_json", [False, True], ids=["report", "json"])
def test_an_interrupted_resume_counts_what_it_ran_apart_from_the_journal(
    capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    done = RunResult(output="answer 3", status="complete", label="t3", turns=1)
    print_interrupted([done], "SIGINT", as_json=as_json, total=100, journaled=90)
    out = capsys.readouterr().out
    if as_json:
        data = json.loads(out)
        assert (data["total"], data["resumed"], len(data["finished"])) == (100, 90, 1)
    else:
        assert out.startswith(
            "\ninterrupted: 1 of the 10 tasks run had finished (90 more were read from the"
            " journal)\n  t3: complete, 1 turns"
        )


@pytest.mark.parametrize("flag", ["--rerun-failed", "--extend-journal"])
def test_the_journal_flags_without_a_journal_are_a_usage_error(
    capsys: pytest.CaptureFixture[str], tasks_server: TaskServer, tmp_path: Path, flag: str
) -> None:
    argv = batch_argv(tasks_server, tmp_path, 2)
    without = [a for a in argv if a not in ("--journal", str(tmp_path / "j.sqlite"))]
    code, out, err = cli(capsys, *without, flag)
    assert (code, out) == (2, "")
    assert one_error_line(err) == (
        f"xzatoma: error: {flag} works with --journal PATH, which was not given"
    )
    assert tasks_server.seen == []


def test_journal_show_lists_the_tasks_and_what_a_resume_runs(
    capsys: pytest.CaptureFixture[str], tasks_server: TaskServer, tmp_path: Path
) -> None:
    tasks_server.fail = {1}
    argv = batch_argv(tasks_server, tmp_path, 4, "--max-concurrent", "1", "--fail-fast")
    assert cli(capsys, *argv)[0] == 1
    path = tmp_path / "j.sqlite"
    code, out, err = cli(capsys, "journal", "show", str(path))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "    0  t0  complete                     turns  1  tokens     305  $0.00031",
        "    1  t1  failed (execution_failed)    turns  0  tokens       0",
        "    2  t2  pending                      turns  0  tokens       0  (runs again)",
        "    3  t3  pending                      turns  0  tokens       0  (runs again)",
        "",
        f"{path}: 4 tasks (2 pending, 1 complete, 1 failed); 2 would run again on resume",
    ]
    code, out, err = cli(capsys, "journal", "show", str(path), "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert (data["path"], data["in_use"], data["will_run"]) == (str(path), False, 2)
    assert data["counts"] == {"pending": 2, "complete": 1, "incomplete": 0, "failed": 1,
                              "cancelled": 0}  # fmt: skip
    assert [(t["label"], t["status"], t["runs"], t["will_run"]) for t in data["tasks"]] == [
        ("t0", "complete", 1, False), ("t1", "failed", 1, False),
        ("t2", "pending", 0, True), ("t3", "pending", 0, True),
    ]  # fmt: skip
    assert data["tasks"][0]["total_cost"] == pytest.approx(COST)
    assert data["tasks"][2]["ended_at"] is None


@pytest.mark.parametrize("what", ["missing", "the tasks file"])
def test_journal_show_on_a_file_that_is_no_journal_is_one_line_and_touches_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, what: str
) -> None:
    tasks = write_tasks(tmp_path, 2)
    before = tasks.read_bytes()
    path = tmp_path / "j.sqlite" if what == "missing" else tasks
    code, out, err = cli(capsys, "journal", "show", str(path))
    assert (code, out) == (2, "")
    said = "does not exist" if what == "missing" else "is not an xzatoma journal"
    assert one_error_line(err) == (
        f"xzatoma: error: {path} {said}" + ("" if what == "missing" else NOT_SQLITE)
    )
    assert (sorted(os.listdir(tmp_path)), tasks.read_bytes()) == (["tasks.jsonl"], before)


@contextlib.contextmanager
def batch_mid_run(tmp_path: Path) -> Iterator[tuple[list[str], subprocess.Popen[bytes]]]:
    """``xzatoma batch`` on 3 tasks as a subprocess, held in t1's model call (t0 ended): it
    holds the journal ``j.sqlite``. Yields its argv and the process."""
    with TaskServer(answer_first=1) as server:
        argv = batch_argv(server, tmp_path, 3, "--max-concurrent", "1")
        with started(tmp_path, argv) as proc:
            wait_for_ends(tmp_path / "j.sqlite", 1, proc)
            server.wait_held(1)
            yield argv, proc
            assert server.seen == [0, 1]  # nothing asked for by the test's own commands


@pytest.mark.timeout(120)
def test_journal_show_works_while_a_batch_runs_and_says_it_is_in_use(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "j.sqlite"
    with batch_mid_run(tmp_path):
        code, out, _ = cli(capsys, "journal", "show", str(path))
        assert code == 0
        assert out.splitlines()[-1] == (
            f"{path}: 3 tasks (2 pending, 1 complete); 2 would run again on resume; "
            "in use by a running batch"
        )
        code, out, _ = cli(capsys, "journal", "show", str(path), "--json")
        assert (code, json.loads(out)["in_use"]) == (0, True)
    assert not read_journal(path).in_use


@pytest.mark.timeout(120)
def test_a_batch_on_a_journal_held_by_a_running_batch_is_one_line_naming_its_pid(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with batch_mid_run(tmp_path) as (argv, proc):
        code, out, err = cli(capsys, *argv)
        assert (code, out) == (2, "")
        assert one_error_line(err) == (
            f"xzatoma: error: {tmp_path / 'j.sqlite'} is in use by another batch (pid {proc.pid})"
            ": wait for it to end, or stop it; resuming after that needs nothing cleared"
        )


@pytest.mark.parametrize("journal", ["the tasks file", "made from other tasks"])
def test_a_journal_the_batch_cannot_use_is_one_line_and_left_as_it_is(
    capsys: pytest.CaptureFixture[str], tasks_server: TaskServer, tmp_path: Path, journal: str
) -> None:
    argv = batch_argv(tasks_server, tmp_path, 2)
    path = tmp_path / "j.sqlite"
    if journal == "the tasks file":
        path = Path(argv[1])
        argv[argv.index("--journal") + 1] = str(path)
        said = f"{path} is not an xzatoma journal (not an SQLite database)"
    else:
        assert cli(capsys, *argv)[0] == 0
        write_tasks(tmp_path, 3)
        said = f"{path} was made from a different set of tasks: 1 of this batch's 3 tasks"
    before = path.read_bytes(), sorted(os.listdir(tmp_path)), len(tasks_server.seen)
    code, out, err = cli(capsys, *argv)
    assert (code, out) == (2, "")
    assert one_error_line(err).startswith(f"xzatoma: error: {said}")
    assert (path.read_bytes(), sorted(os.listdir(tmp_path)), len(tasks_server.seen)) == before


def test_a_resume_that_calls_no_model_does_not_blame_the_endpoint(
    capsys: pytest.CaptureFixture[str], tasks_server: TaskServer, tmp_path: Path
) -> None:
    argv = batch_argv(tasks_server, tmp_path, 2, "--max-retries", "0")
    down = list(argv)
    down[down.index("--base-url") + 1] = f"http://127.0.0.1:{free_port()}/v1"
    code, _, err = cli(capsys, *down)  # the endpoint was down: both tasks failed
    assert code == 2
    assert "the model endpoint is not usable" in err
    code, _, err = cli(capsys, *argv)  # it is up now; both failures are read back
    assert tasks_server.seen == []
    assert "not usable" not in err
    assert code == 1
