"""What an MCP server is before it runs: :class:`StdioServer` and :class:`HTTPServer`.

Plain, checked settings with no event loop: a name, how to reach the server, its per-call
and start-up timeouts, and where its secrets come from. A secret is never held in a file: the
settings name the environment variables to read (``env_from``, ``headers_from``), read when
the server starts; values given directly (``env``, ``headers``) are for Python callers. No
value of either kind is ever shown: ``repr`` and messages name the keys only.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence

from .errors import ConfigError
from .providers._urls import shown_url, validate_base_url

__all__ = (
    "DEFAULT_STARTUP_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MAX_RESTARTS",
    "SERVER_NAME",
    "HTTPServer",
    "Server",
    "StdioServer",
    "check_server_name",
)

DEFAULT_TIMEOUT = 60.0
"""Seconds one tool call may take before the model is told the server did not answer."""
DEFAULT_STARTUP_TIMEOUT = 30.0
"""Seconds a server has to start and finish the MCP handshake (and list its tools)."""
MAX_RESTARTS = 3
"""Times one server is started again, after it stopped, within one ``open_servers``."""
SERVER_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
"""A server's name: it may prefix its tools' names, which must stay OpenAI function names."""


def check_server_name(name: object, where: str = "MCP server name") -> str:
    """``name`` if it is a valid server name; else a :class:`ConfigError` saying the rule."""
    if not isinstance(name, str) or not SERVER_NAME.fullmatch(name):
        shown = repr(name)[:40]
        raise ConfigError(
            f"{where} {shown} is not valid: use 1 to 32 letters, digits, '_' or '-' "
            "(it may prefix the names of its tools)"
        )
    return name


def _seconds(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError(f"{what} must be a finite number of seconds greater than 0")
    return float(value)


def _mapping(value: Mapping[str, str] | None, what: str) -> dict[str, str]:
    """A copy of ``value``, every key and value a string (values are never quoted back)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping of names to strings")
    for key, item in value.items():
        if not isinstance(key, str) or not key or not isinstance(item, str):
            raise ConfigError(f"{what} must map non-empty names to strings (see {key!r})")
    return dict(value)


def _read_from(names: Mapping[str, str], what: str, env: Mapping[str, str]) -> dict[str, str]:
    """The values of the environment variables ``names`` maps to (read now, never shown)."""
    found: dict[str, str] = {}
    for key, variable in names.items():
        value = env.get(variable)
        if not value:
            raise ConfigError(
                f"environment variable {variable} (named by {what} for {key}) is not set; "
                "export it before starting, or remove the entry"
            )
        found[key] = value
    return found


class Server:
    """What both kinds of server have: a name and two timeouts."""

    __slots__ = ("name", "startup_timeout", "timeout")

    def __init__(self, name: str, timeout: float, startup_timeout: float) -> None:
        self.name = check_server_name(name)
        self.timeout = _seconds(timeout, f"the timeout of MCP server '{name}'")
        self.startup_timeout = _seconds(
            startup_timeout, f"the startup_timeout of MCP server '{name}'"
        )

    @property
    def where(self) -> str:
        """How the server is reached, for messages (no secret in it)."""
        raise NotImplementedError


class StdioServer(Server):
    """An MCP server this process starts and speaks to over its stdin and stdout.

    Args:
        name: How the server is named in tool names (on a clash), messages and telemetry:
            1 to 32 letters, digits, ``_`` or ``-``.
        command: The program to run (looked up on ``PATH``), e.g. ``mcp-server-time``.
        args: Its arguments.
        env: Variables set for it, on top of a minimal environment (``HOME``, ``LOGNAME``,
            ``PATH``, ``SHELL``, ``TERM``, ``USER``): this process's own variables, API
            keys included, are not passed on.
        env_from: Variables set for it from this process's environment, by name:
            ``{"TOKEN": "MY_TOKEN_VAR"}`` sets ``TOKEN`` to the value of ``MY_TOKEN_VAR``,
            read when the server starts. The way to give it a secret.
        cwd: Its working directory (default: this process's).
        timeout: Seconds one tool call may take (default 60); past it the model is told.
        startup_timeout: Seconds it has to start and answer the MCP handshake (default 30).
    """

    __slots__ = ("args", "command", "cwd", "env", "env_from")

    def __init__(
        self,
        name: str,
        command: str,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        env_from: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
    ) -> None:
        super().__init__(name, timeout, startup_timeout)
        if not isinstance(command, str) or not command.strip():
            raise ConfigError(f"MCP server '{name}' needs a command to run; it is empty")
        if isinstance(args, str) or not all(isinstance(a, str) for a in args):
            raise ConfigError(f"the args of MCP server '{name}' must be a list of strings")
        self.command = command
        self.args = tuple(args)
        self.env = _mapping(env, f"the env of MCP server '{name}'")
        self.env_from = _mapping(env_from, f"the env_from of MCP server '{name}'")
        self.cwd = None if cwd is None else os.fspath(cwd)

    def __repr__(self) -> str:
        return (
            f"StdioServer({self.name!r}, {self.command!r}, {list(self.args)!r}, "
            f"env={sorted(self.env)}, env_from={self.env_from!r}, timeout={self.timeout})"
        )

    @property
    def where(self) -> str:
        return f"command {self.command!r}"

    def environment(self, base: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
        """The server's environment: ``base``, then ``env``, then ``env_from`` read from
        ``env`` (a variable it names that is unset: a :class:`ConfigError`)."""
        read = _read_from(self.env_from, f"env_from of MCP server '{self.name}'", env)
        return {**base, **self.env, **read}


class HTTPServer(Server):
    """An MCP server already running, reached over streamable HTTP at ``url``.

    Args:
        name: As for :class:`StdioServer`.
        url: Its MCP endpoint, e.g. ``http://127.0.0.1:8000/mcp``.
        headers: HTTP headers sent with every request.
        headers_from: Headers read from this process's environment, by name:
            ``{"Authorization": "MY_AUTH_VAR"}`` sends the value of ``MY_AUTH_VAR`` (say,
            ``Bearer ...``), read when the connection opens. The way to give it a secret.
        timeout: Seconds one tool call may take (default 60).
        startup_timeout: Seconds the connection and the MCP handshake may take (default 30).
    """

    __slots__ = ("headers", "headers_from", "url")

    def __init__(
        self,
        name: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        headers_from: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
    ) -> None:
        super().__init__(name, timeout, startup_timeout)
        validate_base_url(url, what=f"the url of MCP server '{name}'")
        self.url = url
        self.headers = _mapping(headers, f"the headers of MCP server '{name}'")
        self.headers_from = _mapping(headers_from, f"the headers_from of MCP server '{name}'")

    def __repr__(self) -> str:
        return (
            f"HTTPServer({self.name!r}, {shown_url(self.url)!r}, headers={sorted(self.headers)}, "
            f"headers_from={self.headers_from!r}, timeout={self.timeout})"
        )

    @property
    def where(self) -> str:
        return shown_url(self.url)

    def all_headers(self, env: Mapping[str, str]) -> dict[str, str]:
        """``headers``, then ``headers_from`` read from ``env``."""
        read = _read_from(self.headers_from, f"headers_from of MCP server '{self.name}'", env)
        return {**self.headers, **read}
