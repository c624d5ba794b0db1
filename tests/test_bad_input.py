"""A catalogue of bad input: every defect gets a clear, documented error and loses nothing.

Tool arguments reach the model as ``Error: ...`` tool messages and the run goes on; a defective
provider reply ends the run ``failed`` with a readable ``error`` (never an exception); bad
configuration and command-line misuse are covered in test_config.py and test_cli.py and counted
here through ``CASES``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from _http_server import Reply, ScriptedHTTPServer

from xzatoma import Agent, Completion, Message, OpenAIProvider, Runtime, SubagentConfig, ToolSpec
from xzatoma import tool as make_tool
from xzatoma.cli import main
from xzatoma.testing import ScriptedProvider, call, reply, tool_calls

pytestmark = pytest.mark.anyio


@make_tool
async def echo(text: str, times: int = 1) -> str:
    """Repeat a text."""
    return text * times


def deep(n: int) -> str:
    return "[" * n + "]" * n


# (tool, raw arguments, what the error must say); every case must leave the run complete.
TOOL_ARGUMENT_CASES: dict[str, tuple[str, str, str]] = {
    "missing field": ("echo", "{}", "text: Field required"),
    "wrong type": ("echo", '{"text": 5}', "text: Input should be a valid string"),
    "wrong type int": ("echo", '{"text": "a", "times": "many"}', "times: Input should be a valid"),
    "extra field": ("echo", '{"text": "a", "loud": true}', "loud: Extra inputs are not permitted"),
    "not json": ("echo", "{text: a}", "arguments are not valid JSON"),
    "json array": ("echo", "[1, 2]", "Input should be an object"),
    "empty string": ("echo", "", "text: Field required"),
    "deeply nested": ("echo", '{"text": ' + deep(100_000) + "}", "arguments are not valid JSON"),
    "lone surrogate": ("echo", '{"text": "\\ud800"}', "arguments are not valid JSON"),
    "subagent missing task": ("subagent", '{"label": "a"}', "task_prompt: Field required"),
    "subagent blank label": (
        "subagent",
        '{"label": " \\t", "task_prompt": "x"}',
        "label: Value error, must not be blank",
    ),
    "subagent blank prompt": (
        "subagent",
        '{"label": "a", "task_prompt": ""}',
        "task_prompt: Value error, must not be blank",
    ),
    "subagent max_turns 0": (
        "subagent",
        '{"label": "a", "task_prompt": "x", "max_turns": 0}',
        "max_turns: Input should be greater than or equal to 1",
    ),
    "subagent max_turns 51": (
        "subagent",
        '{"label": "a", "task_prompt": "x", "max_turns": 51}',
        "max_turns: Input should be less than or equal to 50",
    ),
    "subagent allowed_tools not a list": (
        "subagent",
        '{"label": "a", "task_prompt": "x", "allowed_tools": "echo"}',
        "allowed_tools: Input should be a valid array",
    ),
    "subagent extra field": (
        "subagent",
        '{"label": "a", "task_prompt": "x", "model": "gpt"}',
        "model: Extra inputs are not permitted",
    ),
    "subagent misspelt restriction": (
        "subagent",
        '{"label": "a", "task_prompt": "x", "allowedTools": ["echo"]}',
        "allowedTools: Extra inputs are not permitted",
    ),
    "parallel misspelt option": (
        "parallel_subagent",
        '{"tasks": [{"label": "a", "task_prompt": "x"}], "failFast": true}',
        "failFast: Extra inputs are not permitted",
    ),
    "subagent 10 MB label": (
        "subagent",
        json.dumps({"label": "x" * 10_000_000, "task_prompt": "x"}),
        "label: String should have at most 200 characters",
    ),
    "parallel empty": ("parallel_subagent", '{"tasks": []}', "tasks: List should have at least 1"),
    "parallel not a list": (
        "parallel_subagent",
        '{"tasks": {"label": "a"}}',
        "tasks: Input should be a valid array",
    ),
    "parallel bad task": (
        "parallel_subagent",
        '{"tasks": [{"label": "a", "task_prompt": "x"}, {"label": "b"}]}',
        "tasks.1.task_prompt: Field required",
    ),
    "parallel max_concurrent 0": (
        "parallel_subagent",
        '{"tasks": [{"label": "a", "task_prompt": "x"}], "max_concurrent": 0}',
        "max_concurrent: Input should be greater than or equal to 1",
    ),
    "parallel fail_fast not bool": (
        "parallel_subagent",
        '{"tasks": [{"label": "a", "task_prompt": "x"}], "fail_fast": "sometimes"}',
        "fail_fast: Input should be a valid boolean",
    ),
}


@pytest.mark.parametrize("case", list(TOOL_ARGUMENT_CASES))
async def test_tool_argument_defects(case: str) -> None:
    name, raw, expected = TOOL_ARGUMENT_CASES[case]
    provider = ScriptedProvider([tool_calls(call(name, raw)), reply("recovered")])
    runtime = Runtime(provider, telemetry=False)
    result = await runtime.agent(tools=[echo]).run("go")
    assert (result.status, result.output) == ("complete", "recovered")
    error = provider.requests[1].last.content or ""
    assert error.startswith(f"Error: Invalid arguments for tool '{name}': ")
    assert expected in error
    assert "Traceback" not in error
    assert len(error) < 2000  # one readable line per defect, never the whole input back
    assert runtime.tracker.statistics().executions == 0


async def test_nul_and_a_ten_megabyte_prompt_are_accepted_and_the_output_bounded() -> None:
    big = "x" * 10_000_000

    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if messages[0].content == "root":
            if messages[-1].role == "user":
                return tool_calls(call("subagent", label="nul\x00label", task_prompt=big))
            return reply("done")
        return reply(messages[0].content or "")  # echoes the 10 MB prompt back

    config = SubagentConfig(summary_prompt=None, output_max_size=4096)
    result = await Runtime(ScriptedProvider(model), subagents=config, telemetry=False).run("root")
    child = result.children[0]
    assert (child.status, child.label, child.truncated) == ("complete", "nul\x00label", True)
    assert len((result.messages[2].content or "").encode()) <= 4096


# -- provider reply defects, through the whole agent loop over real HTTP -------------------

PROVIDER_REPLY_CASES: dict[str, tuple[Reply, str]] = {
    "html body": (Reply(200, "<html>oops</html>"), "not JSON"),
    "empty body": (Reply(200, b""), "not JSON"),
    "json list": (Reply(200, [1, 2]), "not a JSON object"),
    "no choices": (Reply(200, {}), "no choices"),
    "empty choices": (Reply(200, {"choices": []}), "no choices"),
    "no message": (Reply(200, {"choices": [{}]}), "no message"),
    "tool_calls not a list": (
        Reply(200, {"choices": [{"message": {"role": "assistant", "tool_calls": 5}}]}),
        "tool_calls",
    ),
    "tool call without name": (
        Reply(
            200,
            {"choices": [{"message": {"tool_calls": [{"id": "a", "function": {}}]}}]},
        ),
        "missing function name",
    ),
    "content not a string": (
        Reply(200, {"choices": [{"message": {"content": 7}}]}),
        "content",
    ),
    "http 400": (Reply(400, {"error": {"message": "bad request"}}), "HTTP 400"),
    "http 401": (Reply(401, {"error": {"message": "no key"}}), "HTTP 401"),
    "http 404": (Reply(404, "not found"), "HTTP 404"),
}


@pytest.fixture
def server() -> Iterator[ScriptedHTTPServer]:
    with ScriptedHTTPServer() as srv:
        yield srv


@pytest.mark.parametrize("case", list(PROVIDER_REPLY_CASES))
async def test_provider_reply_defects_fail_the_run_with_a_clear_error(
    case: str, server: ScriptedHTTPServer
) -> None:
    bad, expected = PROVIDER_REPLY_CASES[case]
    server.add(bad)
    provider = OpenAIProvider(server.url, "m", api_key="sk-canary-1234", max_retries=0)
    async with provider:
        result = await Agent(provider).run("hi")
    assert (result.status, result.error_type) == ("failed", "execution_failed")
    assert expected in (result.error or "")
    assert "sk-canary-1234" not in (result.error or "")
    assert "Traceback" not in (result.error or "")


# -- configuration files, through `xzatoma config validate` -------------------------------

CONFIG_CASES: dict[str, tuple[str, str]] = {
    "unknown top-level key": ("agnt: {}\n", "unknown key 'agnt' (did you mean 'agent'?)"),
    "unknown nested key": (
        "agent:\n  subagent:\n    max_dept: 3\n",
        "unknown key 'agent.subagent.max_dept' (did you mean 'max_depth'?)",
    ),
    "api key in the file": (
        "provider:\n  api_key: sk-x\n",
        "an API key is never read from a file or a flag",
    ),
    "max_depth 0": (
        "agent:\n  subagent:\n    max_depth: 0\n",
        "agent.subagent.max_depth must be greater than 0",
    ),
    "max_depth 11": (
        "agent:\n  subagent:\n    max_depth: 11\n",
        "agent.subagent.max_depth cannot exceed 10 (stack overflow risk)",
    ),
    "default_max_turns 0": (
        "agent:\n  subagent:\n    default_max_turns: 0\n",
        "agent.subagent.default_max_turns must be greater than 0",
    ),
    "default_max_turns 101": (
        "agent:\n  subagent:\n    default_max_turns: 101\n",
        "agent.subagent.default_max_turns cannot exceed 100",
    ),
    "output_max_size 1023": (
        "agent:\n  subagent:\n    output_max_size: 1023\n",
        "agent.subagent.output_max_size must be at least 1024 bytes",
    ),
    "wrong type": ("agent:\n  max_turns: ten\n", "agent.max_turns: input should be a valid"),
    "number as a string": (
        "agent:\n  subagent:\n    max_depth: '3'\n",
        "agent.subagent.max_depth: input should be a valid integer, got '3'",
    ),
    "negative timeout": ("agent:\n  timeout_seconds: -1\n", "must be greater than 0"),
    "unknown provider type": (
        "provider:\n  type: anthropic\n",
        "provider.type: input should be 'openai', 'ollama'",
    ),
    "port out of range": (
        "telemetry:\n  prometheus:\n    port: 70000\n",
        "telemetry.prometheus.port must be between 0 and 65535",
    ),
    "section not a mapping": ("agent: [1, 2]\n", "agent must be a mapping of keys"),
    "negative token limit": (
        "agent:\n  subagent:\n    max_total_tokens: -1\n",
        "agent.subagent.max_total_tokens must be at least 0",
    ),
    "base_url not http": (
        "provider:\n  base_url: ftp://x\n",
        "provider.base_url must start with http:// or https://",
    ),
    "YAML syntax error": ("agent: {max_turns: [\n", ""),
    "not a mapping at all": ("- 1\n- 2\n", ""),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_defects(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = CONFIG_CASES[case]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    code = main(["config", "validate", str(path)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert_one_error_line(err)
    assert expected in err


# -- command-line misuse ---------------------------------------------------------------------

CLI_CASES: dict[str, tuple[list[str], str]] = {
    "no command": ([], "xzatoma: error:"),
    "unknown command": (["fly"], "invalid choice: 'fly'"),
    "unknown flag": (["run", "--frobnicate", "x"], "unrecognized arguments: --frobnicate"),
    "run without a prompt or endpoint": (["run"], "xzatoma: error:"),
    "max-depth not a number": (["run", "--max-depth", "deep", "x"], "--max-depth"),
    "max-depth 0": (
        ["run", "--max-depth", "0", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "x"],
        "max_depth must be greater than 0",
    ),
    "max-concurrent 0": (
        [
            "run",
            "--max-concurrent",
            "0",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
            "x",
        ],
        "max_concurrent must be greater than 0",
    ),
    "no endpoint": (["run", "hello"], "xzatoma demo"),
    "unset api key variable": (
        [
            "run",
            "--api-key-env",
            "XZ_SURELY_UNSET_VAR",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
            "x",
        ],
        "XZ_SURELY_UNSET_VAR",
    ),
    "missing config file": (["run", "--config", "/nonexistent/x.yaml", "x"], "/nonexistent/x.yaml"),
    "missing batch file": (
        [
            "batch",
            "/nonexistent/tasks.jsonl",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
        ],
        "/nonexistent/tasks.jsonl",
    ),
    "validate without a file": (["config", "validate"], "xzatoma: error:"),
    "unreachable endpoint": (
        ["run", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "x"],
        "could not connect",
    ),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_command_line_misuse(
    case: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XZ_SURELY_UNSET_VAR", raising=False)
    argv, expected = CLI_CASES[case]
    code: int | str | None
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert_one_error_line(err)
    assert expected in err


def assert_one_error_line(err: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("xzatoma: error: ")]
    assert len(errors) == 1, err


def count_cases() -> dict[str, int]:
    """How many bad-input cases the suite holds (quoted in the closing note)."""
    return {
        "tool arguments": len(TOOL_ARGUMENT_CASES) + 1,
        "provider replies": len(PROVIDER_REPLY_CASES),
        "configuration": len(CONFIG_CASES),
        "command line": len(CLI_CASES),
    }


def test_the_catalogue_is_not_empty() -> None:
    assert all(n > 5 for n in count_cases().values())
