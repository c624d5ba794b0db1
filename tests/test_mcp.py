"""MCP servers as tool sources, met for real: mcp-server-time (stdio, from PyPI) and a server
built with the SDK's ``MCPServer`` (``tests/_mcp_test_server.py``), over streamable HTTP on
127.0.0.1 and over stdio.

A scripted model calls the tools through subagents with ``allowed_tools``. After every test
no process it started is left (:func:`no_process_left`); ``tests/conftest.py`` checks the
same for the whole suite.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from _http_server import Reply, ScriptedHTTPServer
from _mcp_test_server import HTTPServerProcess, start, stdio_command
from _processes import children

from xzatoma import (
    Completion,
    ConfigError,
    MCPServerError,
    Message,
    RunResult,
    Runtime,
    SubagentConfig,
    ToolSpec,
)
from xzatoma._mcp_tools import tool_names
from xzatoma.config import XzatomaConfig
from xzatoma.mcp import HTTPServer, MCPTool, StdioServer, open_servers
from xzatoma.telemetry import TelemetrySubscriber, capture_telemetry
from xzatoma.testing import ScriptedProvider, call, reply, tool_calls

pytestmark = pytest.mark.anyio

TIME_COMMAND = str(Path(sys.executable).with_name("mcp-server-time"))
"""mcp-server-time's console script, in this virtualenv."""
NO_SUMMARY = SubagentConfig(summary_prompt=None)


def time_server(**options: Any) -> StdioServer:
    return StdioServer("time", TIME_COMMAND, ["--local-timezone", "UTC"], **options)


def stdio_server(name: str = "test", *more: str, **options: Any) -> StdioServer:
    """The MCPServer test server over stdio."""
    command = stdio_command(*more)
    return StdioServer(name, command[0], command[1:], **options)


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    """Every process a test started (servers, CLIs) has ended when it ends."""
    before = children()
    yield
    left = children() - before
    assert not left, f"processes left behind: {left}"


@pytest.fixture(scope="module")
def http_server() -> Iterator[HTTPServerProcess]:
    """The MCPServer test server over streamable HTTP, shared by the module's tests."""
    server = start()
    try:
        yield server
    finally:
        server.stop()


def child_does(
    *turns: Completion | str, allowed: Sequence[str] | None, label: str = "worker"
) -> ScriptedProvider:
    """A root that spawns one subagent with ``allowed_tools`` and answers with its result;
    the subagent plays ``turns``, one per model call."""

    def answer(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion | str:
        turn = sum(1 for m in messages if m.role == "assistant")
        if messages[0].content == "root":
            if turn == 0:
                more = {} if allowed is None else {"allowed_tools": list(allowed)}
                return tool_calls(call("subagent", label=label, task_prompt="work", **more))
            return reply(f"root heard: {messages[-1].content}")
        return turns[turn] if turn < len(turns) else "done"

    return ScriptedProvider(answer)


def tool_messages(result: RunResult) -> list[str]:
    """The tool messages of a run, in order."""
    return [m.content or "" for m in result.messages if m.role == "tool"]


def offered(provider: ScriptedProvider, first: str) -> list[str]:
    """The tool names offered with the first request of the conversation started by ``first``."""
    for request in provider.requests:
        if request.messages[0].content == first:
            return [t.name for t in request.tools]
    raise AssertionError(f"no request began with {first!r}")


# -- the tools as the model sees them ------------------------------------------------------------
async def test_a_subagent_calls_mcp_server_time_through_allowed_tools() -> None:
    provider = child_does(
        tool_calls(call("get_current_time", timezone="Asia/Tokyo")),
        "Tokyo time found",
        allowed=["get_current_time"],
    )
    async with open_servers(time_server()) as tools:
        assert [t.name for t in tools] == ["get_current_time", "convert_time"]
        result = await Runtime(provider, tools=tools, subagents=NO_SUMMARY).run("root")
    assert result.status == "complete", result.error
    (child,) = result.children
    assert child.status == "complete"
    (message,) = tool_messages(child)
    answer = json.loads(message)
    assert answer["timezone"] == "Asia/Tokyo"
    assert answer["datetime"].endswith("+09:00")
    assert offered(provider, "work") == ["get_current_time", "subagent", "parallel_subagent"]
    # The model sees the server's own schema and description.
    spec = next(t for t in provider.requests[0].tools if t.name == "get_current_time")
    assert spec.description == "Get current time in a specific timezone"
    assert spec.parameters["required"] == ["timezone"]
    assert "IANA timezone name" in spec.parameters["properties"]["timezone"]["description"]


async def test_a_child_never_gains_an_mcp_tool_its_parent_lacks() -> None:
    def answer(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion | str:
        turn = sum(1 for m in messages if m.role == "assistant")
        first = messages[0].content
        if first == "root" and turn == 0:
            spawn = call("subagent", label="a", task_prompt="a", allowed_tools=["get_current_time"])
            return tool_calls(spawn)
        if first == "a" and turn == 0:
            return tool_calls(
                call("subagent", label="b", task_prompt="b", allowed_tools=["convert_time"]),
                call("subagent", label="c", task_prompt="c"),
            )
        if first == "c" and turn == 0:
            return tool_calls(call("convert_time", source_timezone="UTC", time="12:00",
                                   target_timezone="Asia/Tokyo"))  # fmt: skip
        return "done"

    provider = ScriptedProvider(answer)
    async with open_servers(time_server()) as tools:
        result = await Runtime(provider, tools=tools, subagents=NO_SUMMARY).run("root")
    (a,) = result.children
    refused, c = a.children
    assert refused.error_type == "invalid_input"
    assert "allowed_tools names 'convert_time', which this agent does not have" in (
        refused.error or ""
    )
    assert "get_current_time" in offered(provider, "c")
    assert "convert_time" not in offered(provider, "c")
    assert "convert_time" not in offered(provider, "a")
    # c, with every tool of a, still has no convert_time: calling it is an unknown tool.
    (unknown,) = tool_messages(c)
    assert unknown.startswith("Error: Unknown tool 'convert_time'. Available tools: ")
    assert "get_current_time" in unknown


async def test_two_servers_offering_one_name_are_both_prefixed(
    http_server: HTTPServerProcess,
) -> None:
    provider = child_does(
        tool_calls(
            call("time_get_current_time", timezone="Europe/Paris"),
            call("test_get_current_time", timezone="Europe/Paris"),
            call("files_read", path="/etc/hosts"),
        ),
        allowed=["time_get_current_time", "test_get_current_time", "files_read"],
    )
    async with open_servers(time_server(), HTTPServer("test", http_server.url)) as tools:
        names = {t.name: (t.mcp_server, t.remote_name) for t in tools}
        assert names["time_get_current_time"] == ("time", "get_current_time")
        assert names["test_get_current_time"] == ("test", "get_current_time")
        assert names["files_read"] == ("test", "files.read")
        assert names["convert_time"] == ("time", "convert_time")  # no clash: its own name
        result = await Runtime(provider, tools=tools, subagents=NO_SUMMARY).run("root")
    real, fake, read = tool_messages(result.children[0])
    assert json.loads(real)["timezone"] == "Europe/Paris"
    assert fake == "no clock here (Europe/Paris)"
    assert read == "read /etc/hosts"


def test_the_naming_rule() -> None:
    assert tool_names([("a", ["x", "y"]), ("b", ["y", "subagent"])]) == [
        ["x", "a_y"],
        ["b_y", "b_subagent"],
    ]
    assert tool_names([("s", ["files.read", "é" * 70])]) == [["files_read", "_" * 64]]
    # One server's a.b and a_b: the renamed one takes a stable hash suffix, both usable.
    assert tool_names([("s", ["a.b", "a_b"])]) == [["a_b_e6865f", "a_b"]]
    with pytest.raises(MCPServerError, match="lists the tool 'x' twice"):
        tool_names([("s", ["x", "x"])])


# -- failures are tool results ---------------------------------------------------------------------
async def test_failures_come_back_to_the_model_as_error_messages(
    http_server: HTTPServerProcess,
) -> None:
    provider = child_does(
        tool_calls(
            call("fail", reason="disk full"),
            call("add", a="one", b=2),
            call("add", "not json"),
            call("add", "[1, 2]"),
            call("echo", text="still here"),
        ),
        allowed=["fail", "add", "echo"],
    )
    async with open_servers(HTTPServer("test", http_server.url)) as tools:
        result = await Runtime(provider, tools=tools, subagents=NO_SUMMARY).run("root")
    assert result.status == "complete"
    failed, wrong, not_json, not_object, fine = tool_messages(result.children[0])
    assert failed == (
        "Error: MCP tool 'fail' of server 'test' failed: Error executing tool fail: failed on "
        "purpose: disk full"
    )
    assert wrong.startswith("Error: MCP tool 'add' of server 'test' failed: ")
    assert "a" in wrong
    assert not_json.startswith("Error: Invalid arguments for tool 'add': arguments are not valid")
    assert not_object == (
        "Error: Invalid arguments for tool 'add': arguments must be a JSON object, got list"
    )
    assert fine == "still here"
    assert all("Traceback" not in m for m in tool_messages(result.children[0]))


async def test_a_call_that_hangs_is_cut_by_the_servers_timeout(
    http_server: HTTPServerProcess,
) -> None:
    provider = child_does(
        tool_calls(call("wait_forever")), tool_calls(call("echo", text="alive")), allowed=None
    )
    server = HTTPServer("test", http_server.url, timeout=0.5)
    async with open_servers(server) as tools:
        result = await Runtime(provider, tools=tools, subagents=NO_SUMMARY).run("root")
    assert tool_messages(result.children[0]) == [
        "Error: MCP tool 'wait_forever' of server 'test': the server did not answer within "
        "0.5 s (the server's timeout per call); the call was cancelled",
        "alive",
    ]


async def test_a_crashed_stdio_server_is_started_again_on_the_next_call() -> None:
    provider = child_does(
        tool_calls(call("pid")),
        tool_calls(call("crash")),
        tool_calls(call("pid")),
        allowed=["pid", "crash"],
    )
    async with open_servers(stdio_server()) as tools:
        connection = tools[0].connection
        first_pid = connection.pid
        result = await Runtime(provider, tools=tools, subagents=NO_SUMMARY).run("root")
        second_pid = connection.pid
    before, crashed, after = tool_messages(result.children[0])
    assert int(before) == first_pid
    assert crashed == (
        "Error: MCP tool 'crash' of server 'test': the server stopped during the call (exited "
        "with code 3); it is started again on the next call"
    )
    assert int(after) == second_pid != first_pid
    assert result.status == "complete"


async def test_a_crashed_http_server_is_reported_on_the_next_call() -> None:
    own = start()  # this test kills it
    try:
        provider = child_does(
            tool_calls(call("crash")), tool_calls(call("echo", text="x")), allowed=None
        )
        async with open_servers(HTTPServer("web", own.url)) as tools:
            result = await Runtime(provider, tools=tools, subagents=NO_SUMMARY).run("root")
    finally:
        own.stop()
    crashed, after = tool_messages(result.children[0])
    assert crashed == (
        "Error: MCP tool 'crash' of server 'web': the server stopped during the call (closed "
        "the connection); it is started again on the next call"
    )
    assert after.startswith(
        "Error: MCP tool 'echo' of server 'web': the server had stopped and could not be "
        f"restarted: connection refused at {own.url}"
    )
    assert result.status == "complete"


async def test_parallel_subagents_share_one_server() -> None:
    def answer(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion | str:
        turn = sum(1 for m in messages if m.role == "assistant")
        first = messages[0].content or ""
        if first == "root" and turn == 0:
            tasks = [
                {"label": f"t{i}", "task_prompt": f"echo {i}", "allowed_tools": ["echo", "pid"]}
                for i in range(4)
            ]
            return tool_calls(call("parallel_subagent", tasks=tasks))
        if first.startswith("echo ") and turn == 0:
            return tool_calls(call("echo", text=first), call("pid"))
        return "done"

    async with open_servers(stdio_server()) as tools:
        pid = tools[0].connection.pid
        provider = ScriptedProvider(answer)
        result = await Runtime(provider, tools=tools, subagents=NO_SUMMARY).run("root")
    assert [tool_messages(c) for c in result.children] == [
        [f"echo {i}", str(pid)] for i in range(4)
    ]


# -- servers that cannot start ----------------------------------------------------------------
async def test_a_server_that_cannot_start_is_an_error_before_the_run(tmp_path: Path) -> None:
    script = tmp_path / "dies.sh"
    script.write_text("#!/bin/sh\necho 'loading config' >&2\necho 'no such file: x.toml' >&2\n"
                      "exit 4\n")  # fmt: skip
    script.chmod(0o755)
    cases = [
        (
            StdioServer("gone", "no-such-mcp-server"),
            "command 'no-such-mcp-server' was not found (is it installed, on PATH?)",
        ),
        (
            StdioServer("dies", str(script)),
            "it exited with code 4 before finishing the MCP handshake; the last lines of its "
            "stderr:\nloading config\nno such file: x.toml",
        ),
        (
            StdioServer("mute", "sleep", ["600"], startup_timeout=0.5),
            "it did not finish the MCP handshake within 0.5 s (startup_timeout)",
        ),
        (
            HTTPServer("down", "http://127.0.0.1:9/mcp"),
            "connection refused at http://127.0.0.1:9/mcp (is the server running?)",
        ),
    ]
    for index, (server, reason) in enumerate(cases):
        # With a server that starts fine, once: it is stopped before the error is raised.
        together = (time_server(), server) if index == 1 else (server,)
        with pytest.raises(MCPServerError) as raised:
            async with open_servers(*together):
                pytest.fail("the block must not run")
        assert str(raised.value) == (
            f"MCP server '{server.name}' ({server.where}) could not be started: {reason}"
        )
        assert isinstance(raised.value, ConfigError)


async def test_cancelling_the_block_mid_call_ends_every_server(tmp_path: Path) -> None:
    fifo = tmp_path / "waiting"
    os.mkfifo(fifo)
    provider = child_does(tool_calls(call("wait_forever")), allowed=None)
    before = children()
    with anyio.CancelScope() as scope:
        async with open_servers(time_server(), stdio_server("test", "--fifo", str(fifo))) as tools:
            servers = children() - before
            assert len(servers) == 2
            async with anyio.create_task_group() as tg:
                tg.start_soon(Runtime(provider, tools=tools).run, "root")
                async with await anyio.open_file(fifo) as waiting:  # the call is in flight
                    assert (await waiting.readline()).startswith("waiting ")
                scope.cancel()
    assert scope.cancelled_caught
    assert not children() & servers


def test_ctrl_c_on_the_command_line_ends_every_server(tmp_path: Path) -> None:
    fifo = tmp_path / "waiting"
    os.mkfifo(fifo)
    body = {
        "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, "tool_calls": [{"id": "c0", "type": "function",
            "function": {"name": "wait_forever", "arguments": "{}"}}]}}],
    }  # fmt: skip
    with ScriptedHTTPServer() as model:
        model.add(Reply(200, body))
        command = " ".join(stdio_command("--fifo", str(fifo)))
        cli = subprocess.Popen(
            [sys.executable, "-m", "xzatoma.cli", "run", "--base-url", model.url + "/v1",
             "--model", "m", "--mcp", f"time={TIME_COMMAND}", "--mcp", f"test={command}",
             "what time is it?"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        with open(fifo) as waiting:  # blocks until the MCP call is in flight
            assert waiting.readline().startswith("waiting ")
        servers = children(cli.pid)
        assert len(servers) == 2
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=60)
    assert cli.returncode == 130, err
    assert "Traceback" not in err
    assert not {p for p in servers if Path(f"/proc/{p}").exists()}


# -- telemetry -----------------------------------------------------------------------------------
async def test_spans_name_the_server_and_metrics_count_mcp_calls() -> None:
    provider = child_does(
        tool_calls(call("get_current_time", timezone="UTC")),
        tool_calls(call("get_current_time", timezone="Mars/Olympus")),
        allowed=["get_current_time"],
    )
    async with open_servers(time_server()) as tools:
        with capture_telemetry() as captured:
            runtime = Runtime(
                provider, tools=tools, subagents=NO_SUMMARY, telemetry=TelemetrySubscriber()
            )
            await runtime.run("root")
    spans = captured.spans_named("execute_tool get_current_time")
    assert len(spans) == 2
    for span in spans:
        assert span.attributes is not None
        assert span.attributes["xzatoma.mcp.server"] == "time"
        assert span.attributes["gen_ai.tool.name"] == "get_current_time"
        assert span.attributes["xzatoma.depth"] == 1
    (subagent_span,) = captured.spans_named("execute_tool subagent")
    assert subagent_span.attributes is not None
    assert "xzatoma.mcp.server" not in subagent_span.attributes
    duration = "gen_ai.execute_tool.duration"
    assert captured.histogram(duration, **{"gen_ai.tool.name": "get_current_time"}).count == 2
    errors = captured.histogram(
        duration, **{"gen_ai.tool.name": "get_current_time", "error.type": "tool_error"}
    )
    assert errors.count == 1


# -- secrets ---------------------------------------------------------------------------------------
CANARY = "mcp-canary-3f9b1c7e"


async def test_secrets_come_from_named_variables_and_are_never_shown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    env = {"MY_TOKEN_VAR": CANARY}
    server = stdio_server("test", env={"PLAIN": "x"}, env_from={"TOKEN": "MY_TOKEN_VAR"})
    provider = child_does(tool_calls(call("env_var", name="TOKEN")), allowed=None)
    async with open_servers(server, env=env) as tools:
        result = await Runtime(provider, tools=tools, subagents=NO_SUMMARY).run("root")
    assert tool_messages(result.children[0]) == [CANARY]  # it reached the server
    http = HTTPServer("web", "http://127.0.0.1:9/mcp", headers={"Authorization": CANARY},
                      headers_from={"X-Key": "MY_TOKEN_VAR"})  # fmt: skip
    for shown in (repr(server), repr(http)):
        assert CANARY not in shown
    with pytest.raises(MCPServerError) as raised:
        async with open_servers(http, env=env):
            pass
    assert CANARY not in str(raised.value)
    with pytest.raises(ConfigError, match=r"environment variable MY_TOKEN_VAR .* is not set"):
        async with open_servers(server, env={}):
            pass
    assert caplog.records, "nothing was logged: the check below would prove nothing"
    assert CANARY not in caplog.text


async def test_headers_from_are_sent_to_an_http_server() -> None:
    with ScriptedHTTPServer() as web:
        web.add(Reply(401, {"error": "no"}))
        server = HTTPServer("web", web.url + "/mcp", headers_from={"Authorization": "AUTH"})
        with pytest.raises(MCPServerError) as raised:
            async with open_servers(server, env={"AUTH": f"Bearer {CANARY}"}):
                pass
        assert web.requests[0].headers["authorization"] == f"Bearer {CANARY}"
    assert CANARY not in str(raised.value)


# -- configuration and command line ----------------------------------------------------------------
def test_the_config_file_describes_servers() -> None:
    config = XzatomaConfig.from_dict({"tools": {"mcp_servers": [
        {"name": "time", "command": "mcp-server-time", "args": ["--local-timezone", "UTC"],
         "env_from": {"TOKEN": "MY_TOKEN_VAR"}, "timeout_seconds": 5},
        {"name": "docs", "url": "http://127.0.0.1:8000/mcp",
         "headers_from": {"Authorization": "DOCS_AUTH"}},
    ]}})  # fmt: skip
    time, docs = config.tools.servers()
    assert isinstance(time, StdioServer)
    assert (time.command, time.args, time.timeout) == (
        "mcp-server-time",
        ("--local-timezone", "UTC"),
        5,
    )
    assert isinstance(docs, HTTPServer)
    assert docs.headers_from == {"Authorization": "DOCS_AUTH"}


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"name": "t"}, "tools.mcp_servers.0 (t) needs exactly one of command (a stdio server "
         "to start) and url (a streamable-HTTP server)"),
        ({"name": "t", "command": "x", "url": "http://a"}, "needs exactly one of command"),
        ({"name": "t.x", "command": "x"}, "tools.mcp_servers.0.name 't.x' is not valid: use 1 "
         "to 32 letters, digits, '_' or '-'"),
        ({"name": "t", "commnd": "x"}, "unknown key 'tools.mcp_servers.0.commnd' (did you mean "
         "'command'?)"),
        ({"name": "t", "url": "http://a", "headers": {"Authorization": "Bearer x"}},
         "tools.mcp_servers.0.headers: 'Authorization' looks like a secret"),
        ({"name": "t", "command": "x", "env": {"GITHUB_TOKEN": "x"}}, "in env_from"),
        ({"name": "t", "command": "x", "headers": {"A": "b"}},
         "tools.mcp_servers.0.headers does not go with command"),
        ({"name": "t", "command": "x", "timeout_seconds": 0},
         "tools.mcp_servers.0.timeout_seconds must be a finite number greater than 0"),
        ({"name": "t", "url": "ftp://a"}, "the url of MCP server 't' must start with http://"),
    ],
)  # fmt: skip
def test_config_mistakes_are_named(server: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        XzatomaConfig.from_dict({"tools": {"mcp_servers": [server]}})
    assert message in str(raised.value)


def test_config_server_names_are_unique() -> None:
    servers = [{"name": "t", "command": "x"}, {"name": "t", "command": "y"}]
    with pytest.raises(ConfigError, match=r"tools.mcp_servers.1.name 't' is used by another"):
        XzatomaConfig.from_dict({"tools": {"mcp_servers": servers}})


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("time", "expected NAME=COMMAND, e.g. time=mcp-server-time"),
        ("time=", "expected NAME=COMMAND"),
        ("a.b=mcp-server-time", "MCP server name 'a.b' is not valid"),
        ("t=mcp-server-time 'unclosed", "No closing quotation"),
    ],
)
def test_bad_mcp_flags_are_usage_errors(
    given: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from xzatoma.cli import main

    assert main(["run", "--provider", "scripted", "--mcp", given, "hi"]) == 2
    assert said in capsys.readouterr().err


def test_the_mcp_flag_starts_a_server_for_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    from xzatoma.cli import main

    flag = f"time={TIME_COMMAND} --local-timezone UTC"
    assert main(["run", "--provider", "scripted", "--mcp", flag, "hi"]) == 0
    assert main(["run", "--provider", "scripted", "--mcp", "t=no-such-mcp-server", "hi"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        "xzatoma: error: MCP server 't' (command 'no-such-mcp-server') could not be started"
    )


def test_a_batch_task_names_an_mcp_tool_in_allowed_tools(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from xzatoma.cli import main

    tasks = tmp_path / "tasks.jsonl"
    task = {"label": "clock", "task_prompt": "time?", "allowed_tools": ["get_current_time"]}
    tasks.write_text(json.dumps(task) + "\n")
    command = ["batch", str(tasks), "--provider", "scripted", "--json"]
    assert main([*command, "--mcp", f"time={TIME_COMMAND}"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["status"] == "complete"
    assert main(command) == 1  # without the server, the task names a tool nobody has
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["error_type"] == "invalid_input"


async def test_mcp_tools_are_tools() -> None:
    async with open_servers(time_server()) as tools:
        assert all(isinstance(t, MCPTool) for t in tools)
        assert repr(tools[0]) == (
            "MCPTool('get_current_time', server='time', tool='get_current_time')"
        )
