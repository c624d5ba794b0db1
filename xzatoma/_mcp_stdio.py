"""The stdio transport to an MCP server: its process, its pipes, and its end.

The SDK's ``stdio_client`` hides the process, and xzatoma needs it: its exit code and the last
lines of its stderr are what a failed start or a crash is reported with. So the process is
started here (in a session of its own, so a Ctrl-C at the terminal reaches this process, which
then stops the server itself) and the SDK's :class:`~mcp.ClientSession` speaks over its pipes.
The end follows the spec's sequence, as ``stdio_client``'s does: close stdin, wait, then
SIGTERM and SIGKILL the whole process group, shielded from cancellation and bounded in time,
so neither a cancelled caller nor a stuck server can leave a process behind.
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
from anyio.streams.text import TextReceiveStream
from mcp.os.posix.utilities import terminate_posix_process_tree
from mcp.shared.message import SessionMessage

__all__ = ("StdioProcess", "open_stdio")

logger = logging.getLogger("xzatoma.mcp")

STDERR_LINES = 20
"""Lines of a server's stderr kept for the message of a failed start."""
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
    async with anyio.create_task_group() as tg:
        tg.start_soon(_read_stdout, process, to_session)
        tg.start_soon(_write_stdin, process, from_session, to_session)
        tg.start_soon(_read_stderr, process, server.stderr)
        try:
            yield server, (from_server, to_server)
        finally:
            with anyio.CancelScope(shield=True):
                await _stop(process)
                for stream in (from_server, to_server, to_session, from_session):
                    await stream.aclose()
            tg.cancel_scope.cancel()


async def _read_stdout(
    process: anyio.abc.Process, to_session: MemoryObjectSendStream[SessionMessage | Exception]
) -> None:
    """One JSON-RPC message per line of stdout, to the session, until stdout ends."""
    assert process.stdout is not None
    async with to_session:
        buffer = ""
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            async for chunk in TextReceiveStream(process.stdout, errors="replace"):
                *lines, buffer = (buffer + chunk).split("\n")
                for line in lines:
                    if line.strip():
                        await to_session.send(_message(line))


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
) -> None:
    """The session's messages to stdin; a server that stopped reading ends the connection
    (the session's waiting calls are then told it closed, rather than waiting forever)."""
    assert process.stdin is not None
    try:
        async with from_session:
            async for message in from_session:
                text = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                await process.stdin.send((text + "\n").encode())
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        await to_session.aclose()


async def _read_stderr(process: anyio.abc.Process, lines: collections.deque[str]) -> None:
    """Keep the last lines of stderr (and log them at debug level)."""
    assert process.stderr is not None
    buffer = ""
    with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        async for chunk in TextReceiveStream(process.stderr, errors="replace"):
            *complete, buffer = (buffer + chunk).split("\n")
            for line in complete:
                if line.strip():
                    lines.append(line[:500])
                    logger.debug("MCP server (pid %d): %s", process.pid, line)
    if buffer.strip():
        lines.append(buffer[:500])


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
