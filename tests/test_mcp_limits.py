"""What xzatoma reads from an MCP server is bounded: one stdout line (one message), the
stderr it keeps, the result the model reads; names that clash only once made valid are told
apart; MCP tools refuse a batch on Ray.
"""

from __future__ import annotations

import pytest
from test_mcp import NO_SUMMARY, child_does, no_process_left, stdio_server, tool_messages

from xzatoma import ConfigError, MCPServerError, RayExecutor, Runtime
from xzatoma._limits import TRUNCATION_MARKER
from xzatoma._mcp_stdio import MAX_LINE_BYTES, STDERR_LINE_BYTES, Lines, LineTooLong
from xzatoma._mcp_tools import MAX_RESULT_BYTES, tool_names
from xzatoma.mcp import open_servers
from xzatoma.testing import ScriptedProvider, call, tool_calls

__all__ = ("no_process_left",)  # the fixture, used by every test here

pytestmark = pytest.mark.anyio


def test_lines_are_split_in_linear_time_and_bounded() -> None:
    lines = Lines(10)
    assert lines.feed(b"ab") == []
    assert lines.feed(b"c\nde\n\nf") == [b"abc", b"de", b""]
    assert lines.rest() == b"f"
    with pytest.raises(LineTooLong):
        lines.feed(b"g" * 10)
    tail = Lines(4, keep_tail=True)
    assert tail.feed(b"123456") == []
    assert tail.rest() == b"3456"
    assert tail.feed(b"78\n9") == [b"5678"]
    many = Lines(MAX_LINE_BYTES)
    chunk = b"x" * 65536
    for _ in range(256):  # 16 MiB in 64 KiB chunks, each searched alone (speed: no timed test)
        assert many.feed(chunk) == []
    assert many.feed(b"\n") == [chunk * 256]


async def test_a_large_result_is_cut_for_the_model() -> None:
    size = 4 * 1024 * 1024  # twice in the message (text and structured content): 8 MiB
    provider = child_does(tool_calls(call("big", size=size)), "done", allowed=["big"])
    async with open_servers(stdio_server()) as tools:
        runtime = Runtime(provider, tools=tools, subagents=NO_SUMMARY)
        result = await runtime.run("root")
    [message] = tool_messages(result.children[0])
    assert len(message.encode()) == MAX_RESULT_BYTES
    assert message.endswith(TRUNCATION_MARKER.format(limit=MAX_RESULT_BYTES))
    assert message.startswith("xxx")


async def test_a_line_past_the_limit_breaks_the_session_with_a_clear_error() -> None:
    provider = child_does(
        tool_calls(call("big", size=MAX_LINE_BYTES // 2 + 1024)),  # twice in the line
        tool_calls(call("echo", text="one")),
        tool_calls(call("echo", text="two")),
        "done",
        allowed=["big", "echo"],
    )
    async with open_servers(stdio_server(timeout=30)) as tools:
        runtime = Runtime(provider, tools=tools, subagents=NO_SUMMARY)
        result = await runtime.run("root")  # the error, not the 30 s timeout's
    flood, *_, last = tool_messages(result.children[0])
    assert flood.startswith("Error: MCP tool 'big' of server 'test'")
    assert "sent a line longer than 16 MiB" in flood
    assert last == "two"  # started again


async def test_stderr_without_a_newline_is_kept_bounded() -> None:
    provider = child_does(
        tool_calls(call("flood_stderr", size=32 * 1024 * 1024)), "done", allowed=["flood_stderr"]
    )
    async with open_servers(stdio_server()) as tools:
        runtime = Runtime(provider, tools=tools, subagents=NO_SUMMARY)
        result = await runtime.run("root")
        session = tools[0].connection._current
        assert session is not None
        process = session.process
        assert process is not None
        assert sum(len(line) for line in process.stderr) <= STDERR_LINE_BYTES
    assert tool_messages(result.children[0]) == ["flooded"]


def test_names_that_clash_once_valid_are_told_apart() -> None:
    assert tool_names([("s1", ["a.b"]), ("s2", ["a_b"])]) == [["s1_a_b"], ["s2_a_b"]]
    assert tool_names([("s1", ["é"]), ("s2", ["ü"])]) == [["s1__"], ["s2__"]]
    [[dotted, plain]] = tool_names([("s", ["a.b", "a_b"])])
    assert plain == "a_b"
    assert dotted.startswith("a_b_")
    assert len(dotted) == 10
    [[e, u]] = tool_names([("s", ["é", "ü"])])
    assert e != u
    assert e.startswith("__")
    assert u.startswith("__")
    long = tool_names([("s", ["x" * 70, "x" * 64 + "y"])])[0]
    assert len(set(long)) == 2
    assert all(len(n) == 64 for n in long)
    assert tool_names([("s", ["a.b", "a_b"])]) == tool_names([("s", ["a.b", "a_b"])])  # stable
    with pytest.raises(MCPServerError, match="lists the tool 'x' twice"):
        tool_names([("s", ["x", "x"])])


async def test_mcp_tools_refuse_a_batch_on_ray() -> None:
    async with open_servers(stdio_server()) as tools:
        runtime = Runtime(ScriptedProvider(["unused"]), tools=tools)
        executor = RayExecutor("127.0.0.1:1")  # never reached: the check comes first
        with pytest.raises(ConfigError, match="run the batch without an executor"):
            await runtime.run_batch([{"label": "a", "task_prompt": "x"}], executor=executor)
        with pytest.raises(ConfigError, match="without MCP tools"):
            await Runtime(ScriptedProvider(["unused"])).run_batch(
                [{"label": "a", "task_prompt": "x"}], tools=tools, executor=executor
            )
