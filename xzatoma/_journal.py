"""The batch journal: an SQLite file that keeps the end of each task of a batch, so a batch
that died (kill -9, OOM, reboot) is run again with it and runs only what is left.

What a resume runs again (:func:`will_rerun`, the one place this rule is written):
``complete`` and ``incomplete`` are finished, never run again; ``failed`` is finished and not
run again unless ``rerun_failed=True``. Never finished, always run again: ``cancelled`` (by
``fail_fast``, Ctrl-C, SIGTERM, or never started), and ``failed`` with ``error_type``
``quota_exceeded`` or ``timeout`` (stopped by the last run's limits, the quota or a deadline,
not by the task); and a task never recorded (``pending``) runs. Tasks are matched by a key made
of their fields alone (:func:`task_keys`), so a reordered tasks file still matches; another
set of tasks is refused unless ``extend=True``, which adds the new ones and keeps, unrun,
those the batch lacks.

Durability: one transaction per task end, in WAL mode with ``synchronous=NORMAL``: a commit
survives a crash, kill -9, OOM and a clean reboot; a power cut may lose the last commits but
never corrupts the file. On close the file goes back to rollback mode: one self-contained file
(no ``-wal``/``-shm``). The file's safety (reading without changing it, the lock):
:mod:`xzatoma._journal_file`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Final

from ._journal_file import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    check,
    corrupt,
    identity,
    in_use,
    lock,
    probe,
    reading,
    size_of,
    storable,
    why,
)
from ._result import RunResult
from ._subagent_models import SubagentTask
from ._version import package_version
from ._views import run_dict, run_from_dict
from .errors import JournalError, JournalWriteError

__all__ = (
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "BatchJournal",
    "JournalEntry",
    "JournalView",
    "read_journal",
    "task_keys",
    "will_rerun",
)

_STATUSES: Final = ("pending", "complete", "incomplete", "failed", "cancelled")
_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_NOW: Final = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
_SCHEMA: Final = (  # results: one row per task key, for its last end
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE tasks (key TEXT PRIMARY KEY, position INTEGER NOT NULL UNIQUE,"
    " label TEXT NOT NULL, task TEXT NOT NULL)",
    "CREATE TABLE results (key TEXT PRIMARY KEY REFERENCES tasks (key), status TEXT NOT NULL,"
    " error_type TEXT, turns INTEGER NOT NULL, total_tokens INTEGER NOT NULL, total_cost TEXT,"
    " ended_at TEXT NOT NULL, runs INTEGER NOT NULL, result TEXT NOT NULL)",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
_RECORD: Final = (
    f"INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, {_NOW}, 1, ?) ON CONFLICT (key) DO UPDATE"
    " SET (status, error_type, turns, total_tokens, total_cost, ended_at, runs, result) ="
    " (excluded.status, excluded.error_type, excluded.turns, excluded.total_tokens,"
    " excluded.total_cost, excluded.ended_at, runs + 1, excluded.result)"
)
_ENTRIES: Final = (
    "SELECT position, key, label, coalesce(status, 'pending'), error_type, coalesce(turns, 0),"
    " coalesce(total_tokens, 0), total_cost, ended_at, coalesce(runs, 0)"
    " FROM tasks LEFT JOIN results USING (key) ORDER BY position"
)


def will_rerun(status: str, error_type: str | None, *, rerun_failed: bool) -> bool:
    """Whether a resume runs a task again, from how it last ended (or ``pending``)."""
    if status in ("complete", "incomplete"):
        return False
    if status == "failed":
        return rerun_failed or error_type in ("quota_exceeded", "timeout")
    return True  # cancelled, pending


def task_keys(tasks: Sequence[SubagentTask]) -> list[str]:
    """A stable key per task, from its fields only, so a reordered tasks file still matches:
    the first 32 hex digits of the sha256 of its canonical JSON, without the fields left at
    their defaults (so a field added to tasks later keeps every key). The 2nd identical task
    gets the suffix ``#2``, the 3rd ``#3``: identical tasks are told apart by occurrence."""
    return [key for key, _, _ in _keyed(tasks)]


def _keyed(tasks: Sequence[SubagentTask]) -> list[tuple[str, str, str]]:
    """``(key, label, canonical JSON)`` of each task."""
    seen: dict[str, int] = {}
    keyed = []
    for task in tasks:
        data = task.model_dump(mode="json", exclude_defaults=True)
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        n = seen[digest] = seen.get(digest, 0) + 1
        keyed.append((digest if n == 1 else f"{digest}#{n}", task.label, text))
    return keyed


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One task of a journal, as :func:`read_journal` found it."""

    index: int
    """Its position in the journal's task list (the order tasks were first added)."""
    key: str
    """Its :func:`task_keys` key."""
    label: str
    """The task's label."""
    status: str
    """``pending`` (never ended), else its last end: ``complete``, ``incomplete``, ``failed``
    or ``cancelled``."""
    error_type: str | None
    """Why it did not complete, when it did not."""
    turns: int
    """Model calls of its last run."""
    total_tokens: int
    """Tokens of its last run's whole tree; 0 if pending."""
    total_cost: Decimal | None
    """US dollars of its last run's whole tree; ``None`` if unknown or pending."""
    ended_at: str | None
    """When its end was committed (ISO-8601, UTC); ``None`` if pending."""
    runs: int
    """How many times its end was recorded (1 after one run, 2 after a re-run...)."""
    will_run: bool
    """Whether a resume (without ``rerun_failed``) runs it again."""


@dataclass(frozen=True, slots=True)
class JournalView:
    """A snapshot of a journal (``xzatoma journal show``)."""

    path: Path
    """The journal file."""
    created_at: str
    """When it was made (ISO-8601, UTC)."""
    xzatoma_version: str
    """The version of xzatoma that made it."""
    schema_version: int
    """Its layout (``PRAGMA user_version``)."""
    entries: tuple[JournalEntry, ...]
    """Its tasks, in the order they were first added."""
    in_use: bool
    """Whether another process holds its lock right now (a batch is running)."""

    def counts(self) -> dict[str, int]:
        """How many tasks are in each status, ``pending`` first, zeros included."""
        counts = dict.fromkeys(_STATUSES, 0)
        for entry in self.entries:
            counts[entry.status] = counts.get(entry.status, 0) + 1
        return counts


class BatchJournal:
    """An open journal: what a batch need not run, and where it records each task's end.
    It holds the journal's lock for its whole life; use it as a context manager."""

    path: Path
    """The journal file."""
    keys: list[str]
    """:func:`task_keys` of the batch's tasks, in input order."""
    done: dict[int, RunResult]
    """Input index -> the result read from the journal, for the tasks not to run."""
    to_run: list[int]
    """The input indexes to run now, ascending."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock: int, keys: list[str]) -> None:
        self.path, self.keys, self.done, self.to_run = path, keys, {}, []
        self._conn: sqlite3.Connection | None = conn
        self._lock, self._file = lock, identity(path)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        tasks: Sequence[SubagentTask],
        *,
        extend: bool = False,
        rerun_failed: bool = False,
    ) -> BatchJournal:
        """Open the journal at ``path`` for these tasks, or make it if there is no file.

        An existing file is checked (a journal, not newer, not corrupt, the same tasks) under
        the lock and before anything is written to it; on any error it is left as it is.
        Raises :class:`JournalError` when it cannot be used or another batch holds it.
        """
        path = Path(path)
        probe(path)  # a tasks file given by mistake is refused before a lock file is made
        held = lock(path)  # before the checks: two resumes of one journal must not both run
        try:
            keyed = _keyed(tasks)
            keys = [key for key, _, _ in keyed]
            stored = _read_for_open(path, keys, extend=extend, rerun_failed=rerun_failed)
            journal = cls(path, _open_for_writing(path, keyed, stored), held, keys)
        except BaseException:
            os.close(held)
            raise
        journal.done = stored[1] if stored is not None else {}
        journal.to_run = [i for i in range(len(keys)) if i not in journal.done]
        return journal

    def record(self, index: int, result: RunResult) -> None:
        """Commit the end of input task ``index`` in one transaction (a re-run replaces the
        task's row, and counts one more run). Raises :class:`JournalWriteError` if the journal
        cannot be written (disk full, a read-only file system, the file moved or removed)."""
        if self._conn is None:
            raise JournalWriteError(f"{self.path} is closed: task {index} could not be recorded")
        if identity(self.path) != self._file:  # SQLite would write on, to a file now lost
            raise JournalWriteError(
                f"{self.path} was moved or removed during the batch, so the end of task {index}"
                f" ({result.label!r}) could not be recorded: put it back to resume the batch"
                " with it, or run the batch again with a new journal"
            )
        cost = result.total_cost
        try:
            self._conn.execute(_RECORD, (
                self.keys[index], result.status, result.error_type, result.turns,
                result.total_usage.total_tokens, None if cost is None else str(cost),
                storable(_JSON.encode(run_dict(result, messages=True, exact=True))),
            ))  # fmt: skip
        except sqlite3.Error as error:
            raise JournalWriteError(
                f"{self.path} could not be written ({why(error)}) when task {index}"
                f" ({result.label!r}) ended: the tasks recorded before it are kept, so running"
                " the batch again with this journal, once the cause is fixed, resumes it"
            ) from error

    def close(self) -> None:
        """Close the journal and release its lock; closing again does nothing."""
        conn, self._conn = self._conn, None
        if conn is not None:
            # Back to one self-contained file; if a reader is in the way, it stays in WAL
            # mode, which the next open takes as it is.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA journal_mode = DELETE")
            conn.close()
        lock, self._lock = self._lock, -1
        if lock >= 0:
            os.close(lock)  # releases the flock

    def __enter__(self) -> BatchJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_journal(path: str | os.PathLike[str]) -> JournalView:
    """What the journal at ``path`` holds, read without its lock (so it works while a batch
    runs); it never changes the journal (SQLite may make the ``-shm`` index of a journal
    left in WAL mode by a crash). Raises :class:`JournalError` when there is no file, or it
    is not a journal, is corrupt, or was written by a newer xzatoma."""
    path = Path(path)
    size = size_of(path)  # not a database: check() says so, on the connection it reads with
    if not size:
        raise JournalError(f"{path} does not exist" if size is None else f"{path} is empty")
    running = in_use(path)
    with reading(path) as conn:
        if not check(conn, path, thorough=False):
            raise JournalError(f"{path} is an empty SQLite database, not an xzatoma journal")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        entries = tuple(
            JournalEntry(
                i, key, label, status, error, turns, tokens,
                _stored_cost(path, key, cost), ended, runs,
                will_rerun(status, error, rerun_failed=False),
            )
            for i, key, label, status, error, turns, tokens, cost, ended, runs
            in conn.execute(_ENTRIES)
        )  # fmt: skip
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    if not {"created_at", "xzatoma_version"} <= meta.keys():
        raise corrupt(path, "its meta table lacks created_at or xzatoma_version")
    return JournalView(path, meta["created_at"], meta["xzatoma_version"], version, entries, running)


# -- reading: every check before anything is written ---------------------------------------

_Stored = tuple[dict[str, int], dict[int, RunResult]]
"""The journal's task keys (-> position), and the input index -> result of finished tasks."""


def _read_for_open(
    path: Path, keys: list[str], *, extend: bool, rerun_failed: bool
) -> _Stored | None:
    """What the journal holds for these keys; ``None`` when there is nothing yet (no file,
    0 bytes, an empty database). Raises if the journal cannot be used as it is."""
    if not size_of(path):  # open() probed it; now, under the lock, it may have been made
        return None
    with reading(path) as conn:
        if not check(conn, path, thorough=True):
            return None
        positions = dict(conn.execute("SELECT key, position FROM tasks").fetchall())
        missing, new = len(positions.keys() - keys), len(set(keys) - positions.keys())
        if (missing or new) and not extend:
            raise JournalError(_different(path, missing, len(positions), new, len(keys)))
        index = {key: i for i, key in enumerate(keys)}
        done = {}
        for key, status, error_type, text in conn.execute(
            "SELECT key, status, error_type, result FROM results"
        ):
            if key in index and not will_rerun(status, error_type, rerun_failed=rerun_failed):
                done[index[key]] = _stored_result(path, key, text)
    return positions, done


def _stored_result(path: Path, key: str, text: str) -> RunResult:
    try:
        return run_from_dict(json.loads(text))
    except (ValueError, LookupError, TypeError) as error:  # not as this xzatoma writes it
        raise corrupt(path, f"the result of task {key} cannot be read: {error!r}") from error


def _stored_cost(path: Path, key: str, cost: str | None) -> Decimal | None:
    try:
        return None if cost is None else Decimal(cost)
    except ArithmeticError as error:  # decimal.InvalidOperation
        raise corrupt(path, f"the cost of task {key} is not a number: {cost!r}") from error


def _different(path: Path, missing: int, stored: int, new: int, given: int) -> str:
    parts = [f"{missing} of its {stored} tasks are not in this batch"] if missing else []
    if new:
        parts.append(f"{new} of this batch's {given} tasks are not in it")
    return (
        f"{path} was made from a different set of tasks: {' and '.join(parts)}; pass"
        " extend=True (--extend-journal) to add this batch's new tasks to it (its other tasks"
        " are kept, and not run), or use a new journal"
    )


# -- writing -------------------------------------------------------------------------------


def _open_for_writing(
    path: Path, keyed: list[tuple[str, str, str]], stored: _Stored | None
) -> sqlite3.Connection:
    """The journal's connection, after adding the tasks it does not have yet."""
    positions = stored[0] if stored is not None else {}
    start = max(positions.values(), default=-1) + 1
    added = [task for task in keyed if task[0] not in positions]
    rows = [(key, start + i, label, storable(text)) for i, (key, label, text) in enumerate(added)]
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        if stored is None or rows:
            conn.execute("BEGIN IMMEDIATE")
            if stored is None:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(
                    f"INSERT INTO meta VALUES ('created_at', {_NOW}), ('xzatoma_version', ?)",
                    (package_version(),),
                )
            conn.executemany("INSERT INTO tasks VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
    except sqlite3.Error as error:
        conn.close()
        raise JournalError(
            f"{path} could not be written ({why(error)}): it and its directory must be"
            " writable, with room on the disk"
        ) from error
    return conn
