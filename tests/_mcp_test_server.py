"""An MCP server built with the SDK's ``MCPServer`` (FastMCP in mcp 1.x), for the MCP tests.

Run as ``python tests/_mcp_test_server.py``: it binds a free port on 127.0.0.1 itself (no
race for the port), prints ``PORT <n>`` on stdout once it listens, and serves streamable
HTTP at ``/mcp`` until it is terminated (:func:`start` runs it so). With ``--stdio`` it is
a stdio server instead (:func:`stdio_command`); ``--fifo PATH`` makes ``wait_forever`` write
``waiting <pid>`` to that FIFO first, so a test knows, without sleeping, that a call is in
flight. Its tools are the failures the tests need: one that errors, one that waits for
something that never happens, one that ends the server's process mid-call, and one named
like mcp-server-time's so that two servers offer the same name.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

__all__ = ("HTTPServerProcess", "start", "stdio_command")

SCRIPT = str(Path(__file__).resolve())


def _serve(stdio: bool, fifo: str | None) -> None:
    import anyio
    import uvicorn
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("xzatoma-test", log_level="CRITICAL")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def fail(reason: str) -> str:
        """Always fails, with the reason given."""
        raise ToolError(f"failed on purpose: {reason}")

    @server.tool()
    async def wait_forever() -> str:
        """Waits for an event that is never set."""
        if fifo is not None:
            with open(fifo, "w") as out:  # noqa: ASYNC230 - blocks until the test reads it
                out.write(f"waiting {os.getpid()}\n")
        await anyio.Event().wait()
        return "unreachable"

    @server.tool()
    def env_var(name: str) -> str:
        """The value of one of the server's environment variables."""
        return os.environ.get(name, "<unset>")

    @server.tool()
    def pid() -> int:
        """The server's process id."""
        return os.getpid()

    @server.tool()
    def crash() -> str:
        """Ends the server's process at once, mid-call."""
        os._exit(3)

    @server.tool()
    def get_current_time(timezone: str) -> str:
        """Not a clock: a tool named like mcp-server-time's, to make the names clash."""
        return f"no clock here ({timezone})"

    @server.tool(name="files.read")
    def files_read(path: str) -> str:
        """A name with a dot, which is no OpenAI function name."""
        return f"read {path}"

    @server.tool()
    def big(size: int) -> str:
        """A result of ``size`` characters (``x``), for the limits on what is read."""
        return "x" * size

    @server.tool()
    def flood_stderr(size: int) -> str:
        """Writes ``size`` bytes to stderr with no newline, then answers."""
        os.write(2, b"e" * size)
        return "flooded"

    if stdio:
        server.run("stdio")
        return
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    app = server.streamable_http_app()
    config = uvicorn.Config(app, log_level="warning")
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    anyio.run(uvicorn.Server(config).serve, [sock])


class HTTPServerProcess:
    """The server's process: its ``url``; :meth:`stop` ends it (and waits for that)."""

    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.pid = process.pid
        self.url = f"http://127.0.0.1:{port}/mcp"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def stdio_command(*more: str) -> list[str]:
    """The command that runs this server over stdio (for ``StdioServer`` or ``--mcp``)."""
    return [sys.executable, SCRIPT, "--stdio", *more]


def start() -> HTTPServerProcess:
    """Start the server and wait (reading its stdout, no polling) until it listens."""
    process = subprocess.Popen(
        [sys.executable, SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until the port is printed, or the process ends
    if not line.startswith("PORT "):
        process.kill()
        process.wait(timeout=10)
        raise RuntimeError(f"the MCP test server did not start (printed {line!r})")
    return HTTPServerProcess(process, int(line.split()[1]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--stdio", action="store_true")
    parser.add_argument("--fifo")
    options = parser.parse_args()
    _serve(options.stdio, options.fifo)
