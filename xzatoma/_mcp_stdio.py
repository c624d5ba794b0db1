"""The stdio transport to an MCP server: its process, its pipes, and its end.

The SDK's ``stdio_client`` hides the process, and xzatoma needs it: its exit code and the last
lines of its stderr are what a failed start or a crash is reported with. So the process is
started here (in a session of its own, so a Ctrl-C at the terminal reaches this process, which
then stops the server itself) and the SDK's :class:`~mcp.ClientSession` speaks over its pipes.
The end follows the spec's sequence, as ``stdio_client``'s does: close stdin, wait, then
SIGTERM and SIGKILL the whole process group, shielded from cancellation and bounded in time,
so neither a cancelled caller nor a stuck server can leave a process behind.

What is read from a server is bounded: one line of stdout (one JSON-RPC message) holds at
most :data:`MAX_LINE_BYTES`; a longer one breaks the session (the calls waiting on it are
told why, and the server is started again on a later call). Of stderr, only the last lines
are kept, none of them longer than :data:`STDERR_LINE_BYTES`.
"""

from __future__ import annotations

import collections
import logging
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress

import anyio
import anyio.abc
import mcp_types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.os.posix.utilities import terminate_posix_process_tree
from mcp.shared.message import SessionMessage

__all__ = ("StdioProcess", "open_stdio")

logger = logging.getLogger("xzatoma.mcp")

MAX_LINE_BYTES = 16 * 1024 * 1024
"""The longest line a stdio server may send on stdout (16 MiB): one JSON-RPC message, a
tool's whole result included. Past it the session is broken: a server that streams without
a newline cannot make this process buffer (or parse) without end."""
STDERR_LINES = 20
"""Lines of a server's stderr kept for the message of a failed start."""
STDERR_LINE_BYTES = 64 * 1024
"""The most of one stderr line held while it is read (its last bytes; a line is shown cut
to 500 characters): a server that writes megabytes to stderr without a newline costs this."""
_EXIT_GRACE = 2.0
"""Seconds a server has to exit by itself once its stdin is closed (the SDK's figure)."""
_KILL_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL of its process group."""

_Streams = tuple[
    MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]
]


class StdioProcess:
    """A server process as its connection sees it: alive or not, how it ended, what it said."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self.broken: str | None = None
        """Why the session over its pipes was broken by this side (a line too long), if it was."""

    @property
    def pid(self) -> int:
        """The server's process id (also its process group's)."""
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """Its exit code once it has ended (negative: the signal that ended it)."""
        return self.process.returncode

    async def wait_ended(self, seconds: float) -> int | None:
        """Its exit code, waiting up to ``seconds`` for it to end (None: still running)."""
        await _ended(self.process, seconds)
        return self.process.returncode

    def stderr_tail(self) -> str:
        """The last lines it wrote to stderr, as one string (empty: it wrote nothing)."""
        return "\n".join(self.stderr)


@asynccontextmanager
async def open_stdio(
    command: str, args: Sequence[str], env: Mapping[str, str], cwd: str | None
) -> AsyncIterator[tuple[StdioProcess, _Streams]]:
    """Start ``command`` and yield it with the message streams a ``ClientSession`` takes.

    Raises ``OSError`` when the command cannot be started (not found, not executable).
    """
    process = await anyio.open_process(
        [command, *args],
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    # No await until the task group is entered: a cancellation in between would leak it.
    server = StdioProcess(process)
    to_session, from_server = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    to_server, from_session = anyio.create_memory_object_stream[SessionMessage](0)
    pending: set[str | int] = set()  # ids of the requests sent and not answered yet
    async with anyio.create_task_group() as tg:
        tg.start_soon(_read_stdout, server, to_session, from_session, pending)
        tg.start_soon(_write_stdin, process, from_session, to_session, pending)
        tg.start_soon(_read_stderr, process, server.stderr)
        try:
            yield server, (from_server, to_server)
        finally:
            with anyio.CancelScope(shield=True):
                await _stop(process)
                for stream in (from_server, to_server, to_session, from_session):
                    await stream.aclose()
            tg.cancel_scope.cancel()


class LineTooLong(Exception):
    """A line grew past the limit of :class:`Lines` before its newline came."""


class Lines:
    """Splits a byte stream into lines, in time linear in its length (each chunk is searched
    once for newlines; the pieces of a line are joined once, when it ends).

    A line longer than ``limit`` bytes raises :class:`LineTooLong`, or, with ``keep_tail``,
    keeps only its last ``limit`` bytes: never more than ``limit`` bytes are held.
    """

    def __init__(self, limit: int, *, keep_tail: bool = False) -> None:
        self.limit = limit
        self.keep_tail = keep_tail
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines ``chunk`` ends (without their newline), in order."""
        lines: list[bytes] = []
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            self._add(chunk[start:end])
            lines.append(b"".join(self._parts))
            self._parts.clear()
            self._size = 0
            start = end + 1
        self._add(chunk[start:])
        return lines

    def rest(self) -> bytes:
        """What came after the last newline."""
        return b"".join(self._parts)

    def _add(self, piece: bytes) -> None:
        if not piece:
            return
        self._parts.append(piece)
        self._size += len(piece)
        if self._size <= self.limit:
            return
        if not self.keep_tail:
            raise LineTooLong
        tail = b"".join(self._parts)[-self.limit :]
        self._parts[:] = [tail]
        self._size = len(tail)


def _too_long_words() -> str:
    return (
        f"sent a line longer than {MAX_LINE_BYTES // 2**20} MiB on stdout (one message, "
        "the most read from a stdio server); the session is broken"
    )


async def _read_stdout(
    server: StdioProcess,
    to_session: MemoryObjectSendStream[SessionMessage | Exception],
    from_session: MemoryObjectReceiveStream[SessionMessage],
    pending: set[str | int],
) -> None:
    """One JSON-RPC message per line of stdout, to the session, until stdout ends.

    A line past :data:`MAX_LINE_BYTES` ends the stream (reading stops, the server's stdin
    is no longer written): the requests still waiting are answered with an error saying
    why, so their callers read it rather than wait for their timeout.
    """
    process = server.process
    assert process.stdout is not None
    async with to_session:
        lines = Lines(MAX_LINE_BYTES)
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            try:
                async for chunk in process.stdout:
                    for line in lines.feed(chunk):
                        if line.strip():
                            message = _message(line.decode("utf-8", "replace"))
                            if isinstance(message, SessionMessage):
                                _answered(message, pending)
                            await to_session.send(message)
            except LineTooLong:
                server.broken = _too_long_words()
                logger.warning("MCP server (pid %d) %s", process.pid, server.broken)
                error = mcp_types.ErrorData(code=mcp_types.INTERNAL_ERROR, message=server.broken)
                while pending:
                    answer = mcp_types.JSONRPCError(jsonrpc="2.0", id=pending.pop(), error=error)
                    await to_session.send(SessionMessage(answer))
                # Then what the session sends fails at once (the writer ends, and so does the
                # stream to the session), rather than waiting for an answer that cannot come.
                from_session.close()


def _answered(message: SessionMessage, pending: set[str | int]) -> None:
    """Forget a request once its answer came."""
    if isinstance(message.message, mcp_types.JSONRPCResponse | mcp_types.JSONRPCError):
        pending.discard(message.message.id)


def _message(line: str) -> SessionMessage | Exception:
    """A line as a message, or the parse error the session reports for it."""
    try:
        return SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:
        return exc


async def _write_stdin(
    process: anyio.abc.Process,
    from_session: MemoryObjectReceiveStream[SessionMessage],
    to_session: MemoryObjectSendStream[SessionMessage | Exception],
    pending: set[str | int],
) -> None:
    """The session's messages to stdin; a server that stopped reading ends the connection
    (the session's waiting calls are then told it closed, rather than waiting forever)."""
    assert process.stdin is not None
    try:
        async with from_session:
            async for message in from_session:
                if isinstance(message.message, mcp_types.JSONRPCRequest):
                    pending.add(message.message.id)
                text = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                await process.stdin.send((text + "\n").encode())
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        await to_session.aclose()


async def _read_stderr(process: anyio.abc.Process, kept: collections.deque[str]) -> None:
    """Keep the last lines of stderr (and log them at debug level), holding at most
    :data:`STDERR_LINE_BYTES` of a line not ended yet."""
    assert process.stderr is not None
    lines = Lines(STDERR_LINE_BYTES, keep_tail=True)
    with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        async for chunk in process.stderr:
            for raw in lines.feed(chunk):
                line = raw.decode("utf-8", "replace")
                if line.strip():
                    kept.append(line[:500])
                    logger.debug("MCP server (pid %d): %s", process.pid, line[:500])
    rest = lines.rest().decode("utf-8", "replace")
    if rest.strip():
        kept.append(rest[:500])


async def _stop(process: anyio.abc.Process) -> None:
    """Close stdin, give it time to exit, then end its process group (bounded, never raises)."""
    if process.stdin is not None:
        with suppress(OSError, anyio.ClosedResourceError, anyio.BrokenResourceError):
            await process.stdin.aclose()
    if not await _ended(process, _EXIT_GRACE):
        await terminate_posix_process_tree(process, _KILL_GRACE)
        if not await _ended(process, _KILL_GRACE):
            logger.warning("MCP server process %d survived SIGKILL; abandoning it", process.pid)
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            with suppress(OSError, anyio.ClosedResourceError, anyio.BrokenResourceError):
                await pipe.aclose()
    with suppress(Exception), anyio.move_on_after(_KILL_GRACE):
        await process.aclose()


async def _ended(process: anyio.abc.Process, seconds: float) -> bool:
    """Whether it ended within ``seconds`` (polled: ``wait()`` also waits for the pipes, which
    a grandchild may hold open)."""
    with anyio.move_on_after(seconds):
        while process.returncode is None:  # noqa: ASYNC110 - no event tells a process ended
            await anyio.sleep(0.01)
    return process.returncode is not None
