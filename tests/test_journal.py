"""The batch journal's storage (``xzatoma/_journal.py``, ``xzatoma/_journal_file.py``): real
SQLite files in ``tmp_path``, and real processes holding, and dying with, its lock."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from xzatoma import RunResult, RunStatus, SubagentTask, Usage, _journal_file
from xzatoma._journal import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    BatchJournal,
    read_journal,
    task_keys,
    will_rerun,
)
from xzatoma._result import ErrorType
from xzatoma._types import Message, ToolCall
from xzatoma.errors import JournalError, JournalWriteError

ROOT = Path(__file__).resolve().parents[1]


def tasks(*labels: str) -> list[SubagentTask]:
    return [SubagentTask(label=label, task_prompt=f"do {label}") for label in labels]


def result(
    label: str,
    status: RunStatus = "complete",
    error_type: ErrorType | None = None,
    *,
    output: str = "the answer",
    cost: Decimal | None = Decimal("0.03"),
) -> RunResult:
    """A task's result as a batch makes it: a child, and both conversations."""
    call = ToolCall("call-1", "subagent", '{"label": "look", "task_prompt": "look"}')
    child = RunResult(
        output="seen", status="complete", turns=1, usage=Usage(1, 10, 5, 15),
        messages=(Message.user("look"), Message.assistant("seen")),
        label="look", depth=2, duration=0.25, cost=Decimal("0.0012"),
    )  # fmt: skip
    return RunResult(
        output=output, status=status, turns=2, usage=Usage(2, 100, 20, 120),
        children=(child,), error_type=error_type,
        error=None if status == "complete" else f"{label} went wrong",
        messages=(
            Message.system("be brief"), Message.user(f"do {label}"),
            Message.assistant(None, (call,)), Message.tool(call, "seen"),
            Message.assistant(output),
        ),
        label=label, depth=1, duration=1.5, cost=cost,
    )  # fmt: skip


def journal_with(path: Path, labels: str, ends: dict[int, RunResult]) -> None:
    with BatchJournal.open(path, tasks(*labels)) as journal:
        for index, end in ends.items():
            journal.record(index, end)


# -- a round trip --------------------------------------------------------------------------


def test_a_resume_gets_back_the_finished_results_and_runs_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "batch.journal"
    ends = {0: result("a"), 1: result("b", "failed", "execution_failed"),
            3: result("d", "cancelled", "cancelled")}  # fmt: skip
    with BatchJournal.open(path, tasks(*"abcd")) as journal:
        assert (journal.done, journal.to_run) == ({}, [0, 1, 2, 3])
        assert journal.keys == task_keys(tasks(*"abcd"))
        for index, end in ends.items():
            journal.record(index, end)

    with BatchJournal.open(path, tasks(*"abcd")) as journal:
        assert journal.done == {0: ends[0], 1: ends[1]}  # equal trees, messages and all
        assert journal.done[0].total_cost == Decimal("0.0312")
        assert journal.to_run == [2, 3]


def test_reordered_tasks_still_match(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal_with(path, "abc", {0: result("a"), 2: result("c")})
    with BatchJournal.open(path, tasks(*"cba")) as journal:
        assert {i: r.label for i, r in journal.done.items()} == {0: "c", 2: "a"}
        assert journal.to_run == [1]


def test_keys_are_the_canonical_json_s_sha256_and_identical_tasks_count_up() -> None:
    task = SubagentTask(label="é", task_prompt="go", allowed_tools=["x"], max_turns=3)
    # The fields left at their defaults (summary_prompt) are not in it, so a field added to
    # tasks later keeps the keys of existing journals; this digest must never change.
    canonical = '{"allowed_tools":["x"],"label":"é","max_turns":3,"task_prompt":"go"}'
    key = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    assert key == "d2c0dd4f01e586ef4695891e04bd14b4"
    other = task_keys(tasks("b"))[0]
    assert task_keys([task, task, tasks("b")[0], task]) == [key, f"{key}#2", other, f"{key}#3"]
    assert task_keys([task.model_copy(update={"max_turns": 4})]) != [key]


def test_a_default_given_explicitly_keeps_the_key() -> None:
    bare = SubagentTask(label="a", task_prompt="do a")
    explicit = SubagentTask.model_validate(
        {"label": "a", "task_prompt": "do a", **{
            name: field.default for name, field in SubagentTask.model_fields.items()
            if not field.is_required()
        }}
    )  # fmt: skip
    assert task_keys([explicit]) == task_keys([bare])


def test_identical_tasks_are_journaled_apart(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal_with(path, "aaba", {1: result("a", output="second")})
    with BatchJournal.open(path, tasks(*"aaba")) as journal:
        assert {i: r.output for i, r in journal.done.items()} == {1: "second"}
        assert journal.to_run == [0, 2, 3]
    assert [e.key for e in read_journal(path).entries] == task_keys(tasks(*"aaba"))


# -- what a resume runs again --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "rerun_failed", "runs"),
    [
        ("pending", None, False, True),
        ("complete", None, False, False),
        ("complete", None, True, False),
        ("incomplete", None, True, False),
        ("failed", "execution_failed", False, False),
        ("failed", "execution_failed", True, True),
        ("failed", "timeout", False, True),  # a deadline stopped it, not the task
        ("failed", "invalid_input", True, True),
        ("failed", "quota_exceeded", False, True),
        ("cancelled", "cancelled", False, True),
        ("cancelled", "timeout", False, True),
        ("cancelled", "cancelled", True, True),
    ],
)
def test_will_rerun(status: str, error_type: str | None, rerun_failed: bool, runs: bool) -> None:
    assert will_rerun(status, error_type, rerun_failed=rerun_failed) is runs


def test_open_and_the_view_follow_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal_with(path, "abcdef", {
        0: result("a"), 1: result("b", "incomplete"),
        2: result("c", "failed", "execution_failed"), 3: result("d", "failed", "quota_exceeded"),
        4: result("e", "cancelled", "cancelled"),
    })  # fmt: skip
    with BatchJournal.open(path, tasks(*"abcdef")) as journal:
        assert (sorted(journal.done), journal.to_run) == ([0, 1, 2], [3, 4, 5])
    with BatchJournal.open(path, tasks(*"abcdef"), rerun_failed=True) as journal:
        assert (sorted(journal.done), journal.to_run) == ([0, 1], [2, 3, 4, 5])
    view = read_journal(path)
    assert [e.will_run for e in view.entries] == [False, False, False, True, True, True]
    assert view.counts() == {"pending": 1, "complete": 1, "incomplete": 1, "failed": 2,
                             "cancelled": 1}  # fmt: skip


def test_a_rerun_replaces_the_row_and_counts_the_runs(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal_with(path, "ab", {0: result("a", "cancelled", "cancelled")})
    with BatchJournal.open(path, tasks(*"ab")) as journal:
        assert journal.to_run == [0, 1]
        journal.record(0, result("a", cost=None))
    view = read_journal(path)
    first, second = view.entries
    assert (first.index, first.label, first.status, first.error_type) == (0, "a", "complete", None)
    assert (first.turns, first.total_tokens, first.total_cost, first.runs) == (2, 135, None, 2)
    assert first.ended_at is not None
    assert first.ended_at.endswith("Z")
    assert (second.status, second.total_cost, second.ended_at, second.runs) == (
        "pending",
        None,
        None,
        0,
    )
    assert (view.schema_version, view.in_use) == (SCHEMA_VERSION, False)
    assert view.created_at.endswith("Z")
    assert view.xzatoma_version


def test_any_text_the_model_wrote_comes_back(tmp_path: Path) -> None:
    path = tmp_path / "j"
    text = "lone \ud800 surrogate, \u2028, \x00 and 漢字"
    journal_with(path, "a", {0: result("a", output=text)})
    with BatchJournal.open(path, tasks("a")) as journal:
        assert journal.done[0] == result("a", output=text)


# -- another set of tasks ------------------------------------------------------------------


def test_another_set_of_tasks_is_refused_unless_extended(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal_with(path, "abc", {0: result("a")})
    before = path.read_bytes()
    with pytest.raises(JournalError) as caught:
        BatchJournal.open(path, tasks(*"bade"))
    assert str(caught.value) == (
        f"{path} was made from a different set of tasks: 1 of its 3 tasks are not in this batch"
        " and 2 of this batch's 4 tasks are not in it; pass extend=True (--extend-journal) to"
        " add this batch's new tasks to it (its other tasks are kept, and not run), or use a"
        " new journal"
    )
    with pytest.raises(JournalError, match="1 of its 3 tasks are not in this batch; pass"):
        BatchJournal.open(path, tasks(*"ab"))
    assert path.read_bytes() == before

    with BatchJournal.open(path, tasks(*"bade"), extend=True) as journal:
        assert (list(journal.done), journal.to_run) == ([1], [0, 2, 3])
    entries = read_journal(path).entries
    assert [(e.index, e.label, e.status) for e in entries] == [
        (0, "a", "complete"), (1, "b", "pending"), (2, "c", "pending"),
        (3, "d", "pending"), (4, "e", "pending"),
    ]  # fmt: skip
    with BatchJournal.open(path, tasks(*"abcde")) as journal:  # now the same set
        assert journal.to_run == [1, 2, 3, 4]


# -- files that are not a journal to resume, left as they are ------------------------------


def test_a_tasks_file_given_by_mistake_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"label": "a", "task_prompt": "do a"}\n')
    before = path.read_bytes()
    message = (
        f"{path} is not an xzatoma journal (not an SQLite database): was another file given as"
        " the journal? It was left as it is"
    )
    with pytest.raises(JournalError, match=re.escape(message)):
        BatchJournal.open(path, tasks("a"))
    with pytest.raises(JournalError, match=re.escape(message)):
        read_journal(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["tasks.jsonl"]  # no lock file either


def test_another_application_s_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
    before = path.read_bytes()
    message = "is an SQLite database but not an xzatoma journal"
    with pytest.raises(JournalError, match=re.escape(message)):
        BatchJournal.open(path, tasks("a"))
    with pytest.raises(JournalError, match=re.escape(message)):
        read_journal(path)
    assert path.read_bytes() == before


def test_a_journal_from_a_newer_xzatoma_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal_with(path, "ab", {0: result("a")})
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = path.read_bytes()
    message = (
        f"{path} was written by a newer xzatoma (journal schema 2; this one reads up to 1):"
        " upgrade xzatoma to resume it"
    )
    with pytest.raises(JournalError, match=re.escape(message)):
        BatchJournal.open(path, tasks(*"ab"))
    with pytest.raises(JournalError, match=re.escape(message)):
        read_journal(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_corrupt_journal_is_refused_and_left_alone(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "j"
    labels = [f"task {i}" for i in range(300)]
    with BatchJournal.open(path, [tasks(label)[0] for label in labels]) as journal:
        for i, label in enumerate(labels):
            journal.record(i, result(label, output=f"{i} " * 700))
    size = path.stat().st_size
    middle = size // 2 // 4096 * 4096  # a page in the middle
    if damage == "truncated":
        os.truncate(path, middle)
    else:
        with path.open("r+b") as file:
            file.seek(middle)
            file.write(random.Random(0).randbytes(4096))
    before = path.read_bytes()
    with pytest.raises(
        JournalError, match=r"is corrupt \(.*\): it was left as it is; move it away"
    ):
        BatchJournal.open(path, [tasks(label)[0] for label in labels])
    with pytest.raises(JournalError, match="is corrupt"):
        read_journal(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("made", ["0 bytes", "an empty database"])
def test_a_file_with_nothing_in_it_is_a_new_journal(tmp_path: Path, made: str) -> None:
    path = tmp_path / "j"
    if made == "0 bytes":
        path.touch()
        message = f"{path} is empty"
    else:  # as a journal's creation that died after SQLite's first write leaves it
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
        message = f"{path} is an empty SQLite database, not an xzatoma journal"
    with pytest.raises(JournalError, match=re.escape(message)):
        read_journal(path)
    journal_with(path, "a", {0: result("a")})
    assert read_journal(path).counts()["complete"] == 1


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match=f"{tmp_path / 'nope'} does not exist"):
        read_journal(tmp_path / "nope")
    path = tmp_path / "no" / "such" / "dir" / "j"
    with pytest.raises(JournalError, match=f"{path} cannot be made: its directory does not"):
        BatchJournal.open(path, tasks("a"))
    assert os.listdir(tmp_path) == []


def test_reading_a_journal_writes_and_makes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal_with(path, "ab", {0: result("a")})
    files = sorted(os.listdir(tmp_path))
    assert files == ["j", "j-lock"]  # closed: one self-contained file (and the lock's)
    before = path.read_bytes()
    assert len(read_journal(path).entries) == 2
    assert sorted(os.listdir(tmp_path)) == files
    assert path.read_bytes() == before


# -- the lock ------------------------------------------------------------------------------

HOLDER = """
import sys
from xzatoma import RunResult, SubagentTask
from xzatoma._journal import BatchJournal

path, *labels = sys.argv[1:]
tasks = [SubagentTask(label=label, task_prompt=f"do {label}") for label in labels]
with BatchJournal.open(path, tasks) as journal:
    journal.record(0, RunResult(output="from the holder", status="complete", label=labels[0]))
    print("holding", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def python(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
           os.environ.get("PYTHONPATH")]))}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


@contextlib.contextmanager
def holder(path: Path, labels: str) -> Iterator[subprocess.Popen[str]]:
    """Another process with the journal open, once it says so; killed at the end."""
    with python(HOLDER, str(path), *labels) as proc:
        assert proc.stdout is not None
        try:
            line = proc.stdout.readline()
            assert line == "holding\n", proc.stderr.read() if proc.stderr else ""
            yield proc
        finally:
            proc.kill()
            proc.communicate(timeout=60)


def test_a_journal_held_by_a_live_process_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with holder(path, "ab") as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        with pytest.raises(JournalError) as caught:
            BatchJournal.open(path, tasks(*"ab"))
        assert str(caught.value) == (
            f"{path} is in use by another batch (pid {proc.pid}): wait for it to end, or stop"
            " it; resuming after that needs nothing cleared"
        )
        view = read_journal(path)  # while it runs
        assert view.in_use
        assert [e.status for e in view.entries] == ["complete", "pending"]
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "released\n"
        assert proc.wait(timeout=60) == 0
    assert not read_journal(path).in_use
    with BatchJournal.open(path, tasks(*"ab")) as journal:
        assert journal.done[0].output == "from the holder"
        assert journal.to_run == [1]


def test_kill_9_releases_the_lock_and_keeps_what_was_committed(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with holder(path, "ab") as proc:
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    view = read_journal(path)
    assert not view.in_use
    assert [e.status for e in view.entries] == ["complete", "pending"]
    with BatchJournal.open(path, tasks(*"ab")) as journal:
        assert journal.done[0].output == "from the holder"
        assert journal.to_run == [1]


def test_a_second_open_in_the_same_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with BatchJournal.open(path, tasks("a")) as journal:
        with pytest.raises(JournalError, match=rf"in use by another batch \(pid {os.getpid()}\)"):
            BatchJournal.open(path, tasks("a"))
        assert read_journal(path).in_use
        journal.record(0, result("a"))  # the refused open took nothing away
    journal.close()  # again: nothing
    with BatchJournal.open(path, tasks("a")) as journal:
        assert list(journal.done) == [0]


READ_BY_THE_WRITER = """
import os, signal, subprocess, sys
from xzatoma import RunResult, SubagentTask
from xzatoma._journal import BatchJournal, read_journal

path = sys.argv[1]
journal = BatchJournal.open(path, [SubagentTask(label=l, task_prompt=f"do {l}") for l in "abc"])
journal.record(0, RunResult(output="a", status="complete", label="a"))
assert read_journal(path).counts()["complete"] == 1  # read in the writer's own process
# Another process opens the journal read-write and closes it. Had the read dropped the
# writer's locks, that close would checkpoint and delete the write-ahead log under the writer.
other = (
    "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
    " c.execute('SELECT 1 FROM results').fetchall(); c.close()"
)
subprocess.run([sys.executable, "-c", other, path], check=True)
journal.record(1, RunResult(output="b", status="complete", label="b"))
journal.record(2, RunResult(output="c", status="complete", label="c"))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_reading_the_journal_in_the_writer_s_process_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with python(READ_BY_THE_WRITER, str(path)) as proc:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    assert [(e.label, e.status) for e in read_journal(path).entries] == [
        ("a", "complete"), ("b", "complete"), ("c", "complete"),
    ]  # fmt: skip


def test_a_lock_held_for_a_moment_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j"
    journal_with(path, "a", {})
    glance = os.open(f"{path}-lock", os.O_RDONLY)  # as `journal show` holds it, for a moment
    fcntl.flock(glance, fcntl.LOCK_SH)
    waits: list[float] = []

    def let_go(seconds: float) -> None:  # the glance ends while the batch waits
        waits.append(seconds)
        os.close(glance)

    monkeypatch.setattr(_journal_file, "_pause", let_go)
    with BatchJournal.open(path, tasks("a")) as journal:
        assert journal.to_run == [0]
    assert len(waits) == 1


def test_a_journal_left_in_wal_mode_by_a_crash_is_read_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with holder(path, "ab") as proc:
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    before = {name: (tmp_path / name).read_bytes() for name in ("j", "j-wal")}
    assert before["j-wal"]  # the commit is in the write-ahead log, not yet in the file
    assert [e.status for e in read_journal(path).entries] == ["complete", "pending"]
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


# -- writes that fail ----------------------------------------------------------------------


def test_recording_into_a_removed_directory_fails(tmp_path: Path) -> None:
    path = tmp_path / "gone" / "j"
    path.parent.mkdir()
    with BatchJournal.open(path, tasks(*"ab")) as journal:
        journal.record(0, result("a"))
        shutil.rmtree(path.parent)
        with pytest.raises(JournalWriteError) as caught:
            journal.record(1, result("b"))
    assert str(caught.value) == (
        f"{path} was moved or removed during the batch, so the end of task 1 ('b') could not be"
        " recorded: put it back to resume the batch with it, or run the batch again with a new"
        " journal"
    )


REFUSED = """
import os, resource, signal, sys
from xzatoma import RunResult, SubagentTask
from xzatoma._journal import BatchJournal
from xzatoma.errors import JournalWriteError

path = sys.argv[1]
with BatchJournal.open(path, [SubagentTask(label=l, task_prompt=f"do {l}") for l in "ab"]) as j:
    j.record(0, RunResult(output="kept", status="complete", label="a"))
    # The file system refuses to let the journal grow (as when the disk is full).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    size = max(os.path.getsize(path + end) for end in ("", "-wal"))
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        j.record(1, RunResult(output="x" * 100_000, status="complete", label="b"))
    except JournalWriteError as error:
        print(error, flush=True)
"""


def test_a_write_the_system_refuses_fails_and_the_batch_resumes(tmp_path: Path) -> None:
    path = tmp_path / "j"
    with python(REFUSED, str(path)) as proc:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.startswith(f"{path} could not be written (")
    assert "when task 1 ('b') ended: the tasks recorded before it are kept" in out
    with BatchJournal.open(path, tasks(*"ab")) as journal:
        assert journal.done[0].output == "kept"
        assert journal.to_run == [1]
