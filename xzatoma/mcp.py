"""Tools from Model Context Protocol servers, shared by a whole agent tree (extra ``mcp``).

::

    async with open_servers(StdioServer("time", "mcp-server-time")) as tools:
        result = await Runtime(provider, tools=tools).run("What time is it in Tokyo?")

Each tool a server lists becomes an ordinary xzatoma tool (:class:`MCPTool`): the model sees
the server's own description and ``inputSchema``; a subagent's ``allowed_tools`` names it
like any other, and a child never gains one its parent lacks. Names: a tool keeps its own
name unless two servers offer it (or it is ``subagent`` / ``parallel_subagent``): then
both are ``{server}_{tool}``; characters outside ``[a-zA-Z0-9_-]`` become ``_`` and names
are cut to 64 characters. Every failure of a call (the tool's own error, a timeout, a
crash, a refusal) is an ``Error:`` message to the model; a server that stopped is started
again on the next call (up to :data:`MAX_RESTARTS` times). See ``docs/mcp.md``.
"""

from __future__ import annotations

from ._mcp_open import open_servers as open_servers
from ._mcp_servers import DEFAULT_STARTUP_TIMEOUT as DEFAULT_STARTUP_TIMEOUT
from ._mcp_servers import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from ._mcp_servers import MAX_RESTARTS as MAX_RESTARTS
from ._mcp_servers import HTTPServer as HTTPServer
from ._mcp_servers import StdioServer as StdioServer
from ._mcp_tools import MCPTool as MCPTool

__all__ = (
    "DEFAULT_STARTUP_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MAX_RESTARTS",
    "HTTPServer",
    "MCPTool",
    "StdioServer",
    "open_servers",
)

for _value in (HTTPServer, MCPTool, StdioServer, open_servers):
    _value.__module__ = __name__
del _value
