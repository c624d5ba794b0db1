"""The configuration's ``tools`` section: the MCP servers whose tools the whole tree shares.

``tools.mcp_servers`` is a list of servers, each with ``command`` (a stdio server this process
starts) or ``url`` (a streamable-HTTP server already running), never both. Secrets are never
written in the file: ``env_from`` and ``headers_from`` name the environment variables that
hold them, and a key in ``env`` or ``headers`` that looks like a secret (``Authorization``,
``*TOKEN*``, ...) is refused with that rule. :mod:`xzatoma._config_models` makes it a section.
"""

from __future__ import annotations

import math

import pydantic

from ._files import shown
from ._mcp_servers import (
    DEFAULT_STARTUP_TIMEOUT,
    DEFAULT_TIMEOUT,
    HTTPServer,
    Server,
    StdioServer,
    check_server_name,
)
from .errors import ConfigError

__all__ = ("MCPServerSettings", "ToolsSettings")

_SECRET_WORDS = (
    "authorization",
    "cookie",
    "token",
    "secret",
    "password",
    "passwd",
    "api_key",
    "api-key",
    "apikey",
    "credential",
)


class _Section(pydantic.BaseModel):
    # The rules of every section (_config_models._Section), which imports this module.
    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)


class MCPServerSettings(_Section):
    """``tools.mcp_servers[]``: one MCP server (``command`` or ``url``)."""

    name: str
    """1 to 32 letters, digits, ``_`` or ``-``; unique; prefixes its tools' names on a clash."""
    command: str | None = None
    """A stdio server: the program to start (looked up on ``PATH``)."""
    args: list[str] = []
    """The command's arguments."""
    env: dict[str, str] = {}
    """Variables for the command, on top of a minimal environment; no secrets (``env_from``)."""
    env_from: dict[str, str] = {}
    """Variables for the command read from this process's environment: ``{TOKEN: MY_VAR}``."""
    cwd: str | None = None
    """The command's working directory."""
    url: str | None = None
    """A streamable-HTTP server: its MCP endpoint, e.g. ``http://127.0.0.1:8000/mcp``."""
    headers: dict[str, str] = {}
    """Headers sent to the URL; no secrets (``headers_from``)."""
    headers_from: dict[str, str] = {}
    """Headers read from this process's environment: ``{Authorization: MY_AUTH_VAR}``."""
    timeout_seconds: float = DEFAULT_TIMEOUT
    """Seconds one tool call may take; past it the model is told the server did not answer."""
    startup_timeout_seconds: float = DEFAULT_STARTUP_TIMEOUT
    """Seconds the server has to start and finish the MCP handshake."""

    def server(self, where: str) -> Server:
        """The :class:`StdioServer` or :class:`HTTPServer` it describes; messages start
        with ``where`` (``tools.mcp_servers.0``)."""
        check_server_name(self.name, f"{where}.name")
        if (self.command is None) == (self.url is None):
            raise ConfigError(
                f"{where} ({self.name}) needs exactly one of command (a stdio server to start) "
                "and url (a streamable-HTTP server)"
            )
        stdio_keys = {"args": self.args, "env": self.env, "env_from": self.env_from}
        http_keys = {"headers": self.headers, "headers_from": self.headers_from}
        for key, value in (http_keys if self.command is not None else stdio_keys).items():
            if value:
                kind = "command" if self.command is not None else "url"
                raise ConfigError(f"{where}.{key} does not go with {kind}: remove it")
        for key, values in (("env", self.env), ("headers", self.headers)):
            for name in values:
                if any(word in name.lower() for word in _SECRET_WORDS):
                    raise ConfigError(
                        f"{where}.{key}: {shown(name)} looks like a secret, and a secret is "
                        f"never written in a file: name the environment variable that holds it "
                        f"in {key}_from ({{{name}: MY_VARIABLE}})"
                    )
        for key, values in (("env_from", self.env_from), ("headers_from", self.headers_from)):
            for name, variable in values.items():
                if not variable.strip() or "=" in variable or not variable.isprintable():
                    raise ConfigError(
                        f"{where}.{key}: {shown(name)} must name an environment variable, "
                        f"got {shown(variable)}"
                    )
        for key in ("timeout_seconds", "startup_timeout_seconds"):
            if not 0 < getattr(self, key) < math.inf:
                raise ConfigError(f"{where}.{key} must be a finite number greater than 0")
        try:
            if self.command is not None:
                return StdioServer(
                    self.name,
                    self.command,
                    self.args,
                    env=self.env,
                    env_from=self.env_from,
                    cwd=self.cwd,
                    timeout=self.timeout_seconds,
                    startup_timeout=self.startup_timeout_seconds,
                )
            assert self.url is not None
            return HTTPServer(
                self.name,
                self.url,
                headers=self.headers,
                headers_from=self.headers_from,
                timeout=self.timeout_seconds,
                startup_timeout=self.startup_timeout_seconds,
            )
        except ConfigError as exc:
            raise ConfigError(f"{where} ({self.name}): {exc}") from None


class ToolsSettings(_Section):
    """``tools``: tools every agent of the tree has, beyond the subagent tools."""

    mcp_servers: list[MCPServerSettings] = []
    """MCP servers started (or connected to) for the run; see ``docs/mcp.md``."""

    def servers(self) -> list[Server]:
        """The servers, checked (unique names; the rules of :class:`MCPServerSettings`)."""
        made: list[Server] = []
        seen: set[str] = set()
        for index, settings in enumerate(self.mcp_servers):
            where = f"tools.mcp_servers.{index}"
            server = settings.server(where)
            if server.name in seen:
                raise ConfigError(
                    f"{where}.name '{server.name}' is used by another server; names must be unique"
                )
            seen.add(server.name)
            made.append(server)
        return made
