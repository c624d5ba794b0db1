"""An MCP server's tools as xzatoma tools: :class:`MCPTool`, and the rule that names them.

The model sees each tool with the server's own description and ``inputSchema``, and at most
:data:`MAX_RESULT_BYTES` of its result. The name rule (:func:`tool_names`): a name that is
not an OpenAI function name (``^[a-zA-Z0-9_-]{1,64}$``) has every other character replaced
by ``_`` and is cut to 64 characters; a tool keeps that name unless a tool of another server
opened with it ends up with the same one (or it is ``subagent`` / ``parallel_subagent``);
then both are ``{server}_{tool}``, made valid the same way. Tools that still share a name
(``a.b`` and ``a_b`` of one server, two long names cut to the same 64 characters) are told
apart by ``_`` and 6 hex digits of a hash of server and tool, within the 64: each one that
was renamed gets it, so a tool whose name was valid as it was keeps it. The server is always
called with the tool's own name.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pydantic

from ._limits import truncate_utf8
from ._tools import Tool, ToolContext, ToolResult
from .errors import MCPServerError

if TYPE_CHECKING:  # the SDK is imported by the connection, which needs the mcp extra
    import mcp_types

    from ._mcp_connection import Connection

__all__ = ("MAX_RESULT_BYTES", "CallFailed", "MCPTool", "tool_names")

MAX_RESULT_BYTES = 100_000
"""The most of one MCP tool result (or its error) the model reads, in bytes of UTF-8, the
usual truncation marker (``[... output truncated to N bytes]``) included: a server's result
goes into the context of every turn after it, and a tool that returns a file or a query's
rows can return megabytes."""

RESERVED = frozenset({"subagent", "parallel_subagent"})
"""Names an MCP tool never takes as they are: the subagent tools have them."""
_INVALID = re.compile(r"[^a-zA-Z0-9_-]")
_MAX_NAME = 64


class CallFailed(Exception):
    """One tool call that failed on the way to or from its server (not the tool's own
    error); the text says what happened, after "the server"."""


class _NoParameters(pydantic.BaseModel):
    """Stands in for the parameters model: an MCP tool's schema is the server's own."""


class MCPTool(Tool[Any]):
    """One tool of an MCP server, offered to the model like any other tool.

    A child's ``allowed_tools`` names it by :attr:`name` (the name the model sees); it is
    shared by the whole tree, as the server's connection is. Made by
    :func:`xzatoma.mcp.open_servers`, not by hand.
    """

    parameters = _NoParameters

    def __init__(self, connection: Connection, remote: mcp_types.Tool, name: str) -> None:
        self.connection = connection
        self.name = name
        self.remote_name: str = remote.name
        """The tool's name on its server (what it is called with)."""
        self.mcp_server: str = connection.server.name
        """The server's name (on the tool's ``execute_tool`` spans, as ``xzatoma.mcp.server``)."""
        self.description = remote.description or remote.title or ""
        self.input_schema: dict[str, Any] = dict(remote.input_schema)

    def __repr__(self) -> str:
        return f"MCPTool({self.name!r}, server={self.mcp_server!r}, tool={self.remote_name!r})"

    def parameters_schema(self) -> dict[str, Any]:
        """The server's ``inputSchema``, as it sent it."""
        return self.input_schema

    def _what(self) -> str:
        return f"MCP tool '{self.remote_name}' of server '{self.mcp_server}'"

    async def invoke(self, ctx: ToolContext) -> ToolResult:
        """Call the server; whatever fails comes back as an ``Error:`` naming server and tool.

        The arguments must be a JSON object; checking them against the schema is the
        server's job (its refusal is what the model reads, as for any failed call).
        """
        try:
            arguments = json.loads(ctx.call.arguments or "{}")
        except (ValueError, RecursionError) as exc:
            return ToolResult.error(
                f"Invalid arguments for tool '{self.name}': arguments are not valid JSON ({exc})"
            )
        if not isinstance(arguments, dict):
            return ToolResult.error(
                f"Invalid arguments for tool '{self.name}': arguments must be a JSON object, "
                f"got {type(arguments).__name__}"
            )
        try:
            result = await self.connection.call(self.remote_name, arguments)
        except CallFailed as exc:
            return ToolResult.error(f"{self._what()}: the server {exc}")
        text = result_text(result)
        if result.is_error:
            message = f"Error: {self._what()} failed: {text or 'no detail given'}"
            return ToolResult(truncate_utf8(message, MAX_RESULT_BYTES)[0], True)
        return ToolResult(truncate_utf8(text, MAX_RESULT_BYTES)[0])


def result_text(result: mcp_types.CallToolResult) -> str:
    """What the model reads of a result: its text, a note for each non-text part, or the
    structured content as JSON when there is no content."""
    import mcp_types

    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            parts.append(f"[{block.type} content, {block.mime_type}, not shown]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource {block.uri}]")
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            text = getattr(resource, "text", None)
            parts.append(text if isinstance(text, str) else f"[resource {resource.uri}]")
        else:
            parts.append(f"[{getattr(block, 'type', 'unknown')} content, not shown]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)


def tool_names(
    listed: Sequence[tuple[str, Sequence[str]]], where: Mapping[str, str] | None = None
) -> list[list[str]]:
    """The names the model sees for each server's tools (``listed``: server name and the
    names of its tools, in order), by the module's rule; ``where`` says how each server is
    reached, for the error.

    Raises:
        MCPServerError: A server lists one name twice (or, against all odds, two names
            still clash after the hash suffix).
    """
    servers_of: dict[str, set[str]] = {}
    for server, names in listed:
        if len(set(names)) != len(names):
            twice = next(n for n, c in Counter(names).items() if c > 1)
            reached = (where or {}).get(server, "tools/list")
            raise MCPServerError(server, reached, f"it lists the tool '{twice}' twice")
        for name in names:
            servers_of.setdefault(_valid(name), set()).add(server)

    def first(server: str, name: str) -> str:
        valid = _valid(name)
        clash = len(servers_of[valid]) > 1 or valid in RESERVED or name in RESERVED
        return _valid(f"{server}_{name}") if clash else valid

    chosen = [[first(server, n) for n in names] for server, names in listed]
    count = Counter(name for names in chosen for name in names)
    chosen = [
        [
            _hashed(server, original, name) if count[name] > 1 and name != original else name
            for original, name in zip(names, final, strict=True)
        ]
        for (server, names), final in zip(listed, chosen, strict=True)
    ]
    seen: dict[str, str] = {}
    for (server, names), final in zip(listed, chosen, strict=True):
        for original, name in zip(names, final, strict=True):
            if name in seen:
                raise MCPServerError(
                    server,
                    (where or {}).get(server, "tools/list"),
                    f"its tool '{original}' would be named '{name}', like {seen[name]}, "
                    "even with a hash suffix; rename one of the tools on its server",
                )
            seen[name] = f"the tool '{original}' of server '{server}'"
    return chosen


def _valid(name: str) -> str:
    """``name`` as an OpenAI function name: other characters become ``_``, cut to 64."""
    return _INVALID.sub("_", name)[:_MAX_NAME] or "_"


def _hashed(server: str, original: str, name: str) -> str:
    """``name`` told apart from its namesakes: ``_`` and 6 hex digits of a hash of server
    and tool (stable from run to run), within the 64 characters."""
    digest = hashlib.sha1(f"{server}/{original}".encode(errors="replace")).hexdigest()[:6]
    return f"{name[: _MAX_NAME - 7]}_{digest}"
