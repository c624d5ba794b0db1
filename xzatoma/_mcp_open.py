"""``open_servers``: MCP servers started together, their tools shared by a whole tree.

The servers start at once (each in its own task: a slow one does not hold up the others),
and the first that cannot start fails the whole ``open_servers`` before any run, naming
itself and why (:class:`~xzatoma.MCPServerError`). Leaving the block, by any way (an
exception, a cancellation, Ctrl-C at the command line), ends every server and waits for it:
no process is left behind.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from ._extras import install_hint
from ._mcp_servers import Server
from ._mcp_tools import MCPTool, tool_names
from .errors import ConfigError, MCPServerError

if TYPE_CHECKING:
    import mcp_types

    from ._mcp_connection import Connection

__all__ = ("open_servers",)


@asynccontextmanager
async def open_servers(
    *servers: Server, env: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[MCPTool, ...]]:
    """Start ``servers`` and yield their tools, for ``Runtime(provider, tools=...)``.

    Every agent of the tree that has a tool calls it over the one connection to its
    server, concurrent calls included. ``env`` is where ``env_from`` and ``headers_from``
    are read (default: this process's environment).

    Raises:
        ConfigError: Two servers with one name, or the ``mcp`` extra is not installed.
        MCPServerError: A server could not be started or reached, or its tools cannot be
            named (see :mod:`xzatoma.mcp`); the servers already started are stopped first.
    """
    _check_names(servers)
    if not servers:  # nothing to start: no SDK needed (the command line without --mcp)
        yield ()
        return
    try:
        from ._mcp_connection import Connection
    except ImportError as exc:
        raise ConfigError(
            f"MCP servers need the mcp extra ({exc.name} is missing): {install_hint('mcp')}"
        ) from None
    source = os.environ if env is None else env
    try:
        async with anyio.create_task_group() as task_group:
            connections = [Connection(server, task_group, source) for server in servers]
            try:
                listed = await _start_all(connections)
                pairs = zip(connections, listed, strict=True)
                names = tool_names(
                    [(c.server.name, [t.name for t in ts]) for c, ts in pairs],
                    {c.server.name: c.server.where for c in connections},
                )
                yield tuple(
                    MCPTool(connection, remote, name)
                    for connection, tools, chosen in zip(connections, listed, names, strict=True)
                    for remote, name in zip(tools, chosen, strict=True)
                )
            finally:
                for connection in connections:
                    connection.close()
    except BaseExceptionGroup as group:
        # The sessions' tasks never raise, so what the group holds came from this block's
        # own body (a failed start, or the caller's code): raised as it was, not wrapped.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def _check_names(servers: Sequence[Server]) -> None:
    seen: set[str] = set()
    for server in servers:
        if not isinstance(server, Server):
            raise ConfigError(
                "open_servers takes StdioServer and HTTPServer objects, got "
                f"{type(server).__name__}"
            )
        if server.name in seen:
            raise ConfigError(f"two MCP servers are named '{server.name}'; names must be unique")
        seen.add(server.name)


async def _start_all(connections: Sequence[Connection]) -> list[list[mcp_types.Tool]]:
    """Every server's tools; the first failure (in the order given) once all have tried."""
    outcomes: list[list[mcp_types.Tool] | MCPServerError] = [[] for _ in connections]

    async def start(index: int) -> None:
        try:
            outcomes[index] = await connections[index].start()
        except MCPServerError as exc:
            outcomes[index] = exc

    async with anyio.create_task_group() as starters:
        for index in range(len(connections)):
            starters.start_soon(start, index)
    failed = [o for o in outcomes if isinstance(o, MCPServerError)]
    if failed:
        first = failed[0]
        if len(failed) > 1:
            others = ", ".join(f"'{o.server}'" for o in failed[1:])
            noun = "server" if len(failed) == 2 else "servers"
            more = f"{first.reason} (and the MCP {noun} {others} could not be started either)"
            raise MCPServerError(first.server, first.where, more)
        raise first
    return [o for o in outcomes if not isinstance(o, MCPServerError)]
