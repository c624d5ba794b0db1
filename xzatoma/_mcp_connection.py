"""One MCP server, live: started once, shared by every call of the tree, restarted once it broke.

A :class:`Connection` holds the server's ``ClientSession`` in a task of its own (the SDK's
sessions and transports are task groups, entered and left in one task), so any number of
callers, parallel subagents included, send their calls over the one session at once. What
can go wrong comes out as one of two errors: :class:`~xzatoma.errors.MCPServerError` for a
server that could not be started (a :class:`ConfigError`: before the run) and
:class:`CallFailed` for one call (its text becomes the model's ``Error:`` message).

A server that stops (a crash, a closed connection) fails the calls in flight; the next call
starts it again (restart-on-next-call), at most ``MAX_RESTARTS`` times per
``open_servers``; past that, each call is told it is down.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc
import httpx2
import mcp_types
import pydantic
from mcp import ClientSession
from mcp.client.stdio import get_default_environment
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from ._mcp_servers import MAX_RESTARTS, HTTPServer, Server, StdioServer
from ._mcp_stdio import StdioProcess, open_stdio
from ._mcp_tools import CallFailed
from .errors import MCPServerError

__all__ = ("Connection",)

logger = logging.getLogger("xzatoma.mcp")

_EXIT_WAIT = 2.0
"""Seconds to wait for a stopped server's exit code before reporting it without one."""
_MAX_PAGES = 100
"""Pages of ``tools/list`` read at most: a server whose cursor never ends cannot hang a start."""


class _Session:
    """One start of the server: its session once ready, and how to end it."""

    __slots__ = (
        "broken",
        "closed",
        "closing",
        "error",
        "http_status",
        "process",
        "ready",
        "session",
        "starting",
        "tools",
    )

    def __init__(self) -> None:
        self.ready = anyio.Event()
        self.closing = anyio.Event()
        self.closed = anyio.Event()
        self.starting = anyio.CancelScope()
        """Around the handshake: cancelled by :meth:`end`, so no start outlives its block."""
        self.session: ClientSession | None = None
        self.process: StdioProcess | None = None
        self.tools: list[mcp_types.Tool] = []
        self.error: MCPServerError | None = None
        self.http_status: str | None = None
        """The last HTTP error status of an HTTP server, say ``401 Unauthorized``: the SDK
        turns it into a JSON-RPC error that no longer says it."""
        self.broken = False

    def end(self) -> None:
        """Ask the session's task to end, whether the server is ready or still starting."""
        self.closing.set()
        self.starting.cancel()


class Connection:
    """The live connection to ``server``, held by a task of ``task_group``.

    Args:
        server: The server's settings.
        task_group: Where the session's task runs (``open_servers``' own): it outlives
            every call and ends when the tools are closed.
        env: The environment secrets are read from (``env_from``, ``headers_from``).
    """

    def __init__(
        self, server: Server, task_group: anyio.abc.TaskGroup, env: Mapping[str, str]
    ) -> None:
        self.server = server
        self._task_group = task_group
        self._env = env
        self._current: _Session | None = None
        self._started: list[_Session] = []
        """Every start, the ready and the still starting: :meth:`close` ends them all."""
        self._lock = anyio.Lock()
        self._context = contextvars.copy_context()
        """The context ``open_servers`` was entered in, which every session's task runs in:
        a server restarted during a tool call is not held in that call's context (its span,
        its tree's session), which every later caller's requests would then go through."""
        self.restarts = 0
        self.closed = False
        """Set once the ``open_servers`` block has ended: calls are refused from then on."""

    @property
    def pid(self) -> int | None:
        """The process id of a stdio server while it runs (None for HTTP, or when stopped)."""
        current = self._current
        process = None if current is None else current.process
        return None if process is None or process.returncode is not None else process.pid

    async def start(self) -> list[mcp_types.Tool]:
        """Start the server and list its tools; :class:`MCPServerError` says why it could not."""
        return (await self._open()).tools

    def close(self) -> None:
        """Ask every session's task to end, a restart still under way included (the task
        group waits for them, and their processes); later calls are refused."""
        self.closed = True
        for started in self._started:
            started.end()
        self._started.clear()

    async def call(self, tool: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        """Call ``tool`` with ``arguments`` within the server's per-call timeout."""
        if self.closed:
            raise CallFailed("is closed: its open_servers block has ended")
        current = await self._live()
        assert current.session is not None
        try:
            return await current.session.call_tool(
                tool, arguments, read_timeout_seconds=self.server.timeout
            )
        except MCPError as exc:
            if exc.code == mcp_types.REQUEST_TIMEOUT:
                raise CallFailed(
                    f"did not answer within {self.server.timeout:g} s (the server's timeout "
                    "per call); the call was cancelled"
                ) from None
            if exc.code == mcp_types.CONNECTION_CLOSED:
                raise CallFailed(await self._stopped(current)) from None
            raise CallFailed(f"refused the call: {_first_line(exc.message)}") from None
        except (httpx2.TransportError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise CallFailed(await self._stopped(current)) from None
        except pydantic.ValidationError as exc:
            raise CallFailed(f"sent an invalid result: {_invalid(exc)}") from None
        except Exception as exc:  # the SDK's own surprises: one failed call, not a crashed run
            logger.debug("MCP call to %r failed", self.server.name, exc_info=True)
            raise CallFailed(f"could not be called: {_describe(exc)}") from None

    # -- the session's task ----------------------------------------------------------------
    async def _open(self) -> _Session:
        current = _Session()
        self._started = [s for s in self._started if not s.closed.is_set()]
        self._started.append(current)
        self._context.run(self._task_group.start_soon, self._hold, current)
        try:
            await current.ready.wait()
        except BaseException:  # cancelled while it starts: no one will take it over
            current.end()
            raise
        if current.error is not None:
            raise current.error
        self._current = current
        return current

    async def _hold(self, current: _Session) -> None:
        """Start, hand the session over, wait until asked to end; never raises (it runs in
        the task group around the whole tree: an error here must not cancel the run)."""
        try:
            async with contextlib.AsyncExitStack() as stack:
                streams = await self._transport(stack, current)
                session = await stack.enter_async_context(ClientSession(*streams))
                step = "initialize"
                try:
                    with current.starting, anyio.fail_after(self.server.startup_timeout):
                        await session.initialize()
                        step = "tools/list"
                        current.tools = await _list_tools(session)
                except Exception as exc:
                    # Said now, while the server still runs: once its stdin is closed it
                    # exits (code 0), and that would hide why the handshake failed.
                    current.error = await self._start_failure(current, exc, step)
                    return
                if current.starting.cancelled_caught:
                    return  # ended while it started (its block left, its caller cancelled)
                current.session = session
                current.ready.set()
                await current.closing.wait()
        except Exception as exc:
            if current.ready.is_set():
                logger.debug("MCP server %r ended: %r", self.server.name, exc)
            elif current.error is None:
                current.error = await self._start_failure(current, exc)
        finally:
            current.broken = True
            current.ready.set()
            current.closed.set()

    async def _transport(self, stack: contextlib.AsyncExitStack, current: _Session) -> Any:
        server = self.server
        if isinstance(server, StdioServer):
            env = server.environment(get_default_environment(), self._env)
            process, streams = await stack.enter_async_context(
                open_stdio(server.command, server.args, env, server.cwd)
            )
            current.process = process
            return streams
        assert isinstance(server, HTTPServer)

        async def status(response: httpx2.Response) -> None:
            if response.status_code >= 400:
                current.http_status = f"{response.status_code} {response.reason_phrase}".strip()

        client = httpx2.AsyncClient(
            headers=server.all_headers(self._env),
            timeout=httpx2.Timeout(30, read=300),
            event_hooks={"response": [status]},
        )
        await stack.enter_async_context(client)
        read, write = await stack.enter_async_context(
            streamable_http_client(server.url, http_client=client)
        )
        return read, write

    # -- what went wrong -------------------------------------------------------------------
    async def _live(self) -> _Session:
        """The running session; a stopped server is started again first (once, for every
        caller waiting on it)."""
        current = self._current
        if current is not None and not current.broken:
            return current
        async with self._lock:
            current = self._current
            if current is not None and not current.broken:
                return current
            if self.restarts >= MAX_RESTARTS:
                raise CallFailed(
                    f"is down: it stopped and was restarted {MAX_RESTARTS} times already, "
                    "and is not restarted again"
                )
            self.restarts += 1
            try:
                return await self._open()
            except MCPServerError as exc:
                raise CallFailed(f"had stopped and could not be restarted: {exc.reason}") from None

    async def _stopped(self, current: _Session) -> str:
        """Mark ``current`` broken (its task ends it) and say what happened to the call."""
        current.broken = True
        current.closing.set()
        how = "closed the connection"
        if current.process is not None:
            how = _exit_words(await current.process.wait_ended(_EXIT_WAIT))
        if self.restarts >= MAX_RESTARTS:
            return (
                f"stopped during the call ({how}); it is down: it was restarted "
                f"{MAX_RESTARTS} times already, and is not restarted again"
            )
        return f"stopped during the call ({how}); it is started again on the next call"

    async def _start_failure(
        self, current: _Session, exc: Exception, step: str = "initialize"
    ) -> MCPServerError:
        server = self.server
        cause = _leaf(exc)
        if isinstance(cause, MCPServerError):
            return cause
        process = current.process
        if isinstance(cause, FileNotFoundError) and isinstance(server, StdioServer):
            if server.cwd is not None and not await anyio.Path(server.cwd).is_dir():
                reason = f"its working directory {server.cwd!r} does not exist"
            else:
                reason = f"command {server.command!r} was not found (is it installed, on PATH?)"
        elif isinstance(cause, PermissionError) and process is None:
            reason = f"{server.where} cannot be run: permission denied"
        elif isinstance(cause, TimeoutError):
            reason = (
                f"it did not finish the MCP handshake within {server.startup_timeout:g} s "
                "(startup_timeout)"
            )
        elif isinstance(cause, pydantic.ValidationError):
            reason = f"its {step} answer is invalid: {_invalid(cause)}"
        elif (
            isinstance(cause, MCPError)
            and cause.code != mcp_types.CONNECTION_CLOSED
            and isinstance(server, StdioServer)
        ):
            reason = f"the MCP handshake failed: {_first_line(cause.message)}"
        elif process is not None and (code := await process.wait_ended(_EXIT_WAIT)) is not None:
            reason = f"it {_exit_words(code)} before finishing the MCP handshake"
        elif isinstance(cause, httpx2.ConnectError):
            reason = f"connection refused at {server.where} (is the server running?)"
        elif isinstance(cause, httpx2.HTTPStatusError):
            reason = f"{server.where} answered HTTP {cause.response.status_code}"
        elif isinstance(cause, MCPError) and current.http_status is not None:
            reason = f"{server.where} answered HTTP {current.http_status}"
            if current.http_status[:3] in ("401", "403"):
                reason += ": check its headers / headers_from"
        elif isinstance(cause, MCPError) and isinstance(server, HTTPServer):
            reason = (
                f"the MCP handshake failed: {_first_line(cause.message)} (is the URL an MCP "
                "endpoint, and are its headers, say Authorization, right?)"
            )
        elif isinstance(cause, MCPError):
            reason = f"the MCP handshake failed: {_first_line(cause.message)}"
        else:
            reason = f"{type(cause).__name__}: {_first_line(str(cause)) or 'no detail'}"
        if process is not None and process.stderr_tail():
            reason += "; the last lines of its stderr:\n" + process.stderr_tail()
        return MCPServerError(server.name, server.where, reason)


async def _list_tools(session: ClientSession) -> list[mcp_types.Tool]:
    """Every page of ``tools/list``."""
    listed = await session.list_tools()
    tools = list(listed.tools)
    for _ in range(_MAX_PAGES):
        if not listed.next_cursor:
            break
        params = mcp_types.PaginatedRequestParams(cursor=listed.next_cursor)
        listed = await session.list_tools(params=params)
        tools.extend(listed.tools)
    return tools


def _leaf(exc: BaseException) -> BaseException:
    """The first exception that is not a group (the SDK's task groups wrap what they raise)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _exit_words(code: int | None) -> str:
    if code is None:
        return "closed its output, still running"
    if code < 0:
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _invalid(exc: pydantic.ValidationError) -> str:
    """Where and what the first mistake of an invalid message is (pydantic's own text runs
    over many lines, with a URL)."""
    errors = exc.errors()
    if not errors:
        return _first_line(str(exc))
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {_first_line(first['msg'])}{more}" if where else first["msg"] + more


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_first_line(str(exc)) or 'no detail'}"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:500] if text.strip() else ""
