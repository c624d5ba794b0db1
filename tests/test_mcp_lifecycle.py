"""An MCP server's life within ``open_servers``: a restart cut short, a handshake that fails,
a call after the block, an answer that is no valid result, the last restart used up.

The servers are ``tests/_mcp_raw_server.py``, which writes its JSON-RPC by hand so it can
misbehave as an SDK-built server cannot. Events are ordered through a FIFO the server writes
to, never by sleeping; after every test no process it started is left.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
from _http_server import Reply, ScriptedHTTPServer
from _processes import children
from test_mcp import no_process_left  # noqa: F401 - the autouse fixture, for these tests too

from xzatoma import Completion, MCPServerError, Message, Runtime, ToolSpec
from xzatoma._mcp_servers import MAX_RESTARTS
from xzatoma._mcp_tools import CallFailed
from xzatoma.mcp import HTTPServer, MCPTool, StdioServer, open_servers
from xzatoma.testing import ScriptedProvider, call, reply, tool_calls

pytestmark = pytest.mark.anyio

RAW = str(Path(__file__).with_name("_mcp_raw_server.py"))


def raw_server(mode: str, *more: str, startup_timeout: float = 30) -> StdioServer:
    return StdioServer("raw", sys.executable, [RAW, mode, *more], startup_timeout=startup_timeout)


def calls_echo_once() -> ScriptedProvider:
    """A root that calls ``echo`` once, then answers with what it read."""

    def answer(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion | str:
        if messages[-1].role == "tool":
            return reply(messages[-1].content or "")
        return tool_calls(call("echo", text="x"))

    return ScriptedProvider(answer)


async def test_a_restart_cut_by_a_cancellation_ends_with_the_block(tmp_path: Path) -> None:
    fifo = tmp_path / "starting"
    os.mkfifo(fifo)
    # The restart would stall until its startup_timeout: leaving the block must not wait.
    server = raw_server("crash_then_stall", str(tmp_path / "s"), str(fifo), startup_timeout=600)
    before = children()
    with anyio.fail_after(30):
        async with open_servers(server) as (echo,):
            connection = echo.connection
            with pytest.raises(CallFailed, match="exited with code 7"):
                await connection.call("echo", {})
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(connection.call, "echo", {})  # starts the server again
                    async with await anyio.open_file(fifo) as starting:  # it is starting
                        restarted = int((await starting.readline()).split()[1])
                    scope.cancel()
            assert scope.cancelled_caught
            assert restarted in children()
    assert restarted not in children()
    assert not children() - before


async def test_an_initialize_error_is_the_reason_a_stdio_server_cannot_start() -> None:
    with pytest.raises(MCPServerError) as raised:
        async with open_servers(raw_server("init_error")):
            pass
    assert raised.value.reason == (
        "the MCP handshake failed: Unsupported protocol version: try 1999-01-01"
    )


async def test_an_invalid_tools_list_is_the_reason_a_stdio_server_cannot_start() -> None:
    with pytest.raises(MCPServerError) as raised:
        async with open_servers(raw_server("bad_schema")):
            pass
    assert raised.value.reason == (
        "its tools/list answer is invalid: tools.1.inputSchema.type: Input should be 'object'"
    )


async def test_a_call_after_the_block_is_refused_and_restarts_nothing() -> None:
    async with open_servers(raw_server("ok")) as tools:
        pass
    result = await Runtime(calls_echo_once(), tools=tools).run("root")
    assert result.output == (
        "Error: MCP tool 'echo' of server 'raw': the server is closed: its open_servers block "
        "has ended"
    )
    (echo,) = tools
    assert isinstance(echo, MCPTool)
    assert echo.connection.restarts == 0


async def test_an_invalid_result_is_one_line_naming_the_mistake() -> None:
    async with open_servers(raw_server("bad_result")) as tools:
        result = await Runtime(calls_echo_once(), tools=tools).run("root")
        assert tools[0].connection.restarts == 0
    assert result.output == (
        "Error: MCP tool 'echo' of server 'raw': the server sent an invalid result: content: "
        "Input should be a valid list"
    )


async def test_the_crash_that_uses_the_last_restart_says_the_server_is_down() -> None:
    async with open_servers(raw_server("crash_always")) as (echo,):
        messages = []
        for _ in range(MAX_RESTARTS + 2):
            with pytest.raises(CallFailed) as failed:
                await echo.connection.call("echo", {})
            messages.append(str(failed.value))
    again = "stopped during the call (exited with code 7); it is started again on the next call"
    down = (
        "stopped during the call (exited with code 7); it is down: it was restarted "
        f"{MAX_RESTARTS} times already, and is not restarted again"
    )
    refused = (
        f"is down: it stopped and was restarted {MAX_RESTARTS} times already, and is not "
        "restarted again"
    )
    assert messages == [again] * MAX_RESTARTS + [down, refused]


async def test_an_http_error_status_is_the_reason_a_server_cannot_start() -> None:
    with ScriptedHTTPServer() as web:
        web.add(Reply(401, "no"))
        with pytest.raises(MCPServerError) as raised:
            async with open_servers(HTTPServer("web", web.url + "/mcp")):
                pass
    assert raised.value.reason == (
        f"{web.url}/mcp answered HTTP 401 Unauthorized: check its headers / headers_from"
    )
