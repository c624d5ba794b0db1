"""The batch journal's file: what marks an SQLite file as a journal, reading it without
changing it, and the lock that keeps one batch at a time on it.

Only SQLite ever opens the database, never a plain ``open()``: closing any descriptor of the
database drops the POSIX locks SQLite holds on it in that process (sqlite.org/howtocorrupt.html,
2.2), so a glance at the file's header while a batch of the same process writes to it would let
another process's connection checkpoint and delete the write-ahead log under the writer, and
the tasks it records next would be lost. SQLite's own connections in one process share their
locks and keep such descriptors open until the last lock goes.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on ``PATH-lock``, a small file beside the journal that
holds the holder's pid, not on the database: where ``flock`` is emulated with ``fcntl`` locks
(NFS) a lock on the database would collide with SQLite's own. The kernel lets go of it when its
holder dies, so a resume after kill -9 just works.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from .errors import JournalError

__all__ = (
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "check",
    "corrupt",
    "identity",
    "in_use",
    "lock",
    "probe",
    "reading",
    "size_of",
    "storable",
    "why",
)

SCHEMA_VERSION: Final = 1
"""The journal layout this xzatoma writes, kept in ``PRAGMA user_version``."""
APPLICATION_ID: Final = 0x787A7461
"""``PRAGMA application_id`` of every journal ("xzta"): what marks a file as one."""

TABLES: Final = frozenset({"meta", "tasks", "results"})
_LOCK_TRIES: Final = 20  # x 10 ms: outlasts a `journal show` glancing at the lock


def size_of(path: Path) -> int | None:
    """The file's size in bytes; ``None``: there is no file."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None
    except OSError as error:
        raise JournalError(f"{path} cannot be read ({why(error)})") from error


def probe(path: Path) -> int | None:
    """:func:`size_of`, and a refusal unless the file is empty or an SQLite database, before
    anything (a lock file) is made beside it."""
    size = size_of(path)
    if size:
        with reading(path) as conn:
            conn.execute("PRAGMA application_id")  # SQLite reads the header: not a database?
    return size


@contextlib.contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection; SQLite's failures as JournalErrors that say what to do."""
    try:
        with contextlib.closing(
            sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True, isolation_level=None)
        ) as conn:
            yield conn
    except sqlite3.Error as error:
        name = getattr(error, "sqlite_errorname", None) or ""
        if name == "SQLITE_NOTADB":
            raise JournalError(
                f"{path} is not an xzatoma journal (not an SQLite database): was another file"
                " given as the journal? It was left as it is"
            ) from error
        if name.startswith("SQLITE_CORRUPT") or "decode" in str(error):
            raise corrupt(path, str(error)) from error  # decode: a text column not UTF-8
        raise JournalError(
            f"{path} cannot be read ({why(error)}): check that it and its directory can be"
            " read (and, after a crash, written, for SQLite to finish what it left)"
        ) from error


def check(conn: sqlite3.Connection, path: Path, *, thorough: bool) -> bool:
    """Raise unless the database is a journal this xzatoma reads; ``False`` if it is empty.
    ``thorough`` also reads every page (before a batch writes to it)."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    names = {name for (name,) in conn.execute("SELECT name FROM sqlite_schema")}
    if not (app_id or version or names):
        return False  # made by SQLite and nothing else yet: a journal's creation that died
    if app_id == APPLICATION_ID and version > SCHEMA_VERSION:
        raise JournalError(
            f"{path} was written by a newer xzatoma (journal schema {version}; this one reads"
            f" up to {SCHEMA_VERSION}): upgrade xzatoma to resume it"
        )
    if app_id != APPLICATION_ID or version < 1 or not names >= TABLES:
        raise JournalError(f"{path} is an SQLite database but not an xzatoma journal")
    if thorough:
        problems = [line for (line,) in conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise corrupt(path, "; ".join(problems))
    return True


def corrupt(path: Path, detail: str) -> JournalError:
    return JournalError(
        f"{path} is corrupt ({detail}): it was left as it is; move it away to start the batch"
        " afresh"
    )


def storable(text: str) -> str:
    """JSON that SQLite can hold: a lone surrogate (model text cut mid-pair), which UTF-8
    cannot encode, is written as its ``\\u`` escape, which ``json.loads`` reads back."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return json.dumps(json.loads(text))
    return text


def identity(path: Path) -> tuple[int, int] | None:
    """Which file ``path`` names now (``None``: none this process can see)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def why(error: BaseException) -> str:
    if isinstance(error, OSError):
        return error.strerror or str(error)
    name = getattr(error, "sqlite_errorname", None)
    return f"{error}, {name}" if name else str(error)


def lock(path: Path) -> int:
    """The descriptor holding the journal's exclusive lock, with this process's pid written
    in it, so that a process refused the lock can say who holds it. A lock held for a moment
    (:func:`in_use`) is waited for; one held by a batch is refused at once after that."""
    try:
        fd = os.open(f"{path}-lock", os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError as error:
        raise JournalError(f"{path} cannot be made: its directory does not exist") from error
    except OSError as error:
        raise JournalError(
            f"{path} cannot be locked ({why(error)}): its directory must be writable"
        ) from error
    try:
        for attempt in range(_LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == _LOCK_TRIES - 1:
                    raise
                _pause(0.01)
    except OSError as error:
        holder = os.pread(fd, 32, 0).split()
        os.close(fd)
        if isinstance(error, BlockingIOError):
            pid = holder[0].decode() if holder else "unknown"
            raise JournalError(
                f"{path} is in use by another batch (pid {pid}): wait for it to end, or stop"
                " it; resuming after that needs nothing cleared"
            ) from None
        raise JournalError(f"{path} cannot be locked ({why(error)})") from error
    os.pwrite(fd, f"{os.getpid():<20}\n".encode(), 0)  # one fixed-width write: never torn
    return fd


def _pause(seconds: float) -> None:
    time.sleep(seconds)  # before the lock is tried again; a test takes its place


def in_use(path: Path) -> bool:
    """Whether a batch holds the journal's lock (tried, shared, and let go at once)."""
    try:
        fd = os.open(f"{path}-lock", os.O_RDONLY)
    except FileNotFoundError:
        return False  # no batch ever opened it here
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
