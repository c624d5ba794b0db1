"""The ``xzatoma`` command line: run, batch, demo and config validate, their exit codes and
error lines, the batch progress display, Ctrl-C, and the docs covering every option.

Commands run in-process through ``main([...])``; a real OpenAI-compatible server on loopback
(``_http_server``) stands in for the model. Ctrl-C, the terminal display and the console
entry point run in a subprocess.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _http_server import Reply, ScriptedHTTPServer

from xzatoma import (
    Batch,
    Completion,
    ErrorType,
    Hooks,
    Instrument,
    ModelCall,
    OpenAIProvider,
    Run,
    RunStatus,
    Usage,
)
from xzatoma._progress import BatchProgress
from xzatoma._render import print_interrupted
from xzatoma.cli import build_parser, main
from xzatoma.providers._aiohttp_transport import AiohttpTransport
from xzatoma.providers._httpx_transport import HttpxTransport
from xzatoma.providers._transport import Transport
from xzatoma.testing import ScriptedProvider

ROOT = Path(__file__).resolve().parent.parent
DOCS_CLI = ROOT / "docs" / "cli.md"

SECTION_6 = [
    ("max_depth: 0", "agent.subagent.max_depth must be greater than 0"),
    ("max_depth: 11", "agent.subagent.max_depth cannot exceed 10 (stack overflow risk)"),
    ("default_max_turns: 0", "agent.subagent.default_max_turns must be greater than 0"),
    ("default_max_turns: 101", "agent.subagent.default_max_turns cannot exceed 100"),
    ("output_max_size: 100", "agent.subagent.output_max_size must be at least 1024 bytes"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server() -> Iterator[ScriptedHTTPServer]:
    with ScriptedHTTPServer() as srv:
        yield srv


def chat(
    content: str | None = "ok", *, calls: list[tuple[str, dict[str, Any]]] | None = None
) -> Reply:
    """One chat completion, optionally asking for tool calls."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": f"c{i}", "type": "function",
             "function": {"name": name, "arguments": json.dumps(args)}}
            for i, (name, args) in enumerate(calls)
        ]  # fmt: skip
    return Reply(
        body={
            "id": "x",
            "object": "chat.completion",
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 300, "completion_tokens": 5, "total_tokens": 305},
        }
    )


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def endpoint(srv: ScriptedHTTPServer) -> list[str]:
    return ["--base-url", srv.url + "/v1", "--model", "m"]


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("xzatoma: error: ")
    assert "Traceback" not in err
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- help and docs -------------------------------------------------------------------------

COMMANDS = [["run"], ["batch"], ["demo"], ["config"], ["config", "validate"], []]


def help_text(capsys: pytest.CaptureFixture[str], command: list[str]) -> str:
    code, out, _ = cli(capsys, *command, "--help")
    assert code == 0
    return out


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "xzatoma")
def test_every_option_in_help_is_documented(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", help_text(capsys, command)))
    assert options, "no options found in --help"
    doc = DOCS_CLI.read_text(encoding="utf-8")
    missing = sorted(o for o in options if f"`{o}" not in doc)
    assert not missing, f"options in `xzatoma {' '.join(command)} --help` not in docs/cli.md"


def test_every_command_has_a_section_in_the_docs() -> None:
    doc = DOCS_CLI.read_text(encoding="utf-8")
    for command in ("run", "batch", "demo", "config validate"):
        assert f"## `xzatoma {command}" in doc


def test_top_level_help_names_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    out = help_text(capsys, [])
    for command in ("run", "batch", "demo", "config"):
        assert re.search(rf"^\s+{command}\s", out, re.MULTILINE)
    assert "xzatoma demo" in out  # where a new user should start
    assert "exit codes" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--version")
    assert code == 0
    assert out.startswith("xzatoma ")


def test_parser_is_buildable_for_docs_tools() -> None:
    assert build_parser().prog == "xzatoma"


# -- usage errors: one line, exit 2 --------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "hi", "--bogus"], "unrecognized arguments: --bogus"),
        (["run"], "required: PROMPT"),
        (["run", "hi", "--max-depth", "two"], "invalid int value: 'two'"),
        ([], "required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["run", "hi"], "no model endpoint: give --base-url"),
        (["batch", "t.jsonl", "--provider", "ollama"], "t.jsonl: no such tasks file"),
        (["run", "hi", "--config", "missing.yaml"], "missing.yaml: no such configuration file"),
        (["run", "hi", "--base-url", "http://x/v1", "--model", "m", "--max-depth", "0"],
         "agent.subagent.max_depth must be greater than 0 (from --max-depth 0)"),
        (["run", "hi", "--base-url", "http://x/v1", "--model", "m", "--max-turns", "0"],
         "agent.max_turns must be greater than 0 (from --max-turns 0)"),
        (["run", "hi", "--base-url", "ftp://x", "--model", "m"],
         "provider.base_url must start with http:// or https://"),
        (["run", "hi", "--base-url", "http://x/v1"], "no model given for http://x/v1"),
        (["run", " ", "--base-url", "http://x/v1", "--model", "m"], "PROMPT is empty"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert expected in one_error_line(err)


def test_no_endpoint_points_to_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    _, _, err = cli(capsys, "run", "hi")
    line = one_error_line(err)
    assert "provider.base_url" in line
    assert "xzatoma demo" in line


def test_an_unset_api_key_variable_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XZ_UNSET_KEY", raising=False)
    code, _, err = cli(
        capsys, "run", "hi", "--base-url", "http://x/v1", "--model", "m",
        "--api-key-env", "XZ_UNSET_KEY",
    )  # fmt: skip
    assert code == 2
    assert "XZ_UNSET_KEY" in one_error_line(err)


def test_an_unreachable_endpoint_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    code, out, err = cli(capsys, "run", "hi", "--base-url", url, "--model", "m")
    assert code == 2
    assert out == ""
    line = one_error_line(err)  # retries are not logged without --verbose
    assert "the model endpoint is not usable" in line
    assert "could not connect" in line


def test_an_endpoint_refusing_the_first_call_is_exit_2(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer
) -> None:
    server.add(Reply(404, {"error": {"message": "model 'm' not found"}}))
    code, _, err = cli(capsys, "run", "hi", *endpoint(server))
    assert code == 2
    assert "HTTP 404" in one_error_line(err)


# -- config validate -----------------------------------------------------------------------


def test_config_validate_ok(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("provider: {type: ollama, model: llama3.2}\n")
    code, out, err = cli(capsys, "config", "validate", str(path))
    assert (code, err) == (0, "")
    assert out == f"OK: {path} is valid\n"


@pytest.mark.parametrize(("line", "message"), SECTION_6)
def test_config_validate_prints_the_exact_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"agent:\n  subagent:\n    {line}\n")
    code, out, err = cli(capsys, "config", "validate", str(path))
    assert (code, out) == (2, "")
    assert err == f"xzatoma: error: {path}: {message}\n"


def test_config_validate_refuses_an_api_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "key.yaml"
    path.write_text("provider:\n  api_key: sk-do-not-print\n")
    code, _, err = cli(capsys, "config", "validate", str(path))
    assert code == 2
    line = one_error_line(err)
    assert "unknown key 'provider.api_key'" in line
    assert "api_key_env" in line
    assert "sk-do-not-print" not in line


# -- run -----------------------------------------------------------------------------------


def test_run_prints_the_answer(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer
) -> None:
    server.add(chat("Hello from the model"))
    code, out, err = cli(capsys, "run", "Say hello", *endpoint(server))
    assert (code, out, err) == (0, "Hello from the model\n", "")
    body = server.requests[0].json()
    assert body["model"] == "m"
    assert body["messages"] == [{"role": "user", "content": "Say hello"}]
    assert {t["function"]["name"] for t in body["tools"]} == {"subagent", "parallel_subagent"}


def test_run_reads_the_prompt_from_stdin(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin"))
    server.add(chat("ok"))
    code, _, _ = cli(capsys, "run", "-", *endpoint(server), "--system-prompt", "Be brief.")
    assert code == 0
    assert server.requests[0].json()["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "from stdin"},
    ]


def test_run_sends_the_key_from_the_named_variable(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XZ_TEST_KEY", "sk-test-123")
    server.add(chat("ok"))
    code, out, err = cli(capsys, "run", "hi", *endpoint(server), "--api-key-env", "XZ_TEST_KEY")
    assert code == 0
    assert server.requests[0].headers["authorization"] == "Bearer sk-test-123"
    assert "sk-test-123" not in out + err


def test_run_with_a_subagent_json_and_tree(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer
) -> None:
    server.add(
        chat(None, calls=[("subagent", {"label": "helper", "task_prompt": "find x"})]),
        chat("x is 42"),  # the child's answer
        chat("x=42"),  # the child's summary
        chat("The answer is 42."),
    )
    code, out, err = cli(capsys, "run", "what is x?", *endpoint(server), "--json", "--tree")
    assert code == 0
    data = json.loads(out)
    assert data["status"] == "complete"
    assert data["output"] == "The answer is 42."
    [child] = data["children"]
    assert (child["label"], child["depth"], child["output"]) == ("helper", 1, "x=42")
    assert data["total_usage"]["total_tokens"] == 1220
    assert re.search(r"└─ helper\s+complete\s+depth 1", err)


def test_run_failed_is_exit_1(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer
) -> None:
    server.add(chat(None, calls=[("nope", {})]), Reply(400, {"error": "bad request"}))
    code, _, err = cli(capsys, "run", "hi", *endpoint(server))
    assert code == 1
    assert "xzatoma: run failed (execution_failed)" in err
    assert "Traceback" not in err


def test_run_incomplete_is_exit_3(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer
) -> None:
    server.add(chat("thinking", calls=[("nope", {})]))
    code, out, err = cli(capsys, "run", "hi", *endpoint(server), "--max-turns", "1")
    assert code == 3
    assert out == "thinking\n"
    assert "run incomplete" in err


def test_run_limits_reach_the_runtime(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer
) -> None:
    # --max-executions 0: the spawn is refused and the model is told why, by the quota.
    server.add(chat(None, calls=[("subagent", {"label": "a", "task_prompt": "t"})]), chat("done"))
    code, _, _ = cli(capsys, "run", "hi", *endpoint(server), "--max-executions", "0")
    assert code == 0
    tool_message = server.requests[1].json()["messages"][-1]
    assert tool_message["content"] == (
        "Error: Resource quota exceeded: execution limit reached (0/0)"
    )


def test_run_serves_metrics_when_asked(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer
) -> None:
    server.add(chat("ok"))
    code, _, err = cli(capsys, "run", "hi", *endpoint(server), "--metrics-port", "0")
    assert code == 0
    assert re.search(r"serving metrics at http://127\.0\.0\.1:\d+/metrics", err)


def test_run_metrics_port_in_use_is_exit_2(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = cli(capsys, "run", "hi", *endpoint(server), "--metrics-port", str(port))
    assert code == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in one_error_line(err)
    assert server.requests == []  # nothing ran


def test_the_config_file_and_the_command_line_combine(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer, tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"provider:\n  base_url: {server.url}/v1\n  model: from-file\n")
    server.add(chat("a"), chat("b"))
    assert cli(capsys, "run", "hi", "--config", str(path))[0] == 0
    assert cli(capsys, "run", "hi", "--config", str(path), "--model", "from-cli")[0] == 0
    assert [r.json()["model"] for r in server.requests] == ["from-file", "from-cli"]


# -- batch ---------------------------------------------------------------------------------


def tasks_file(tmp_path: Path, labels: str = "abc", suffix: str = ".jsonl") -> Path:
    path = tmp_path / f"tasks{suffix}"
    if suffix == ".jsonl":
        lines = [json.dumps({"label": x, "task_prompt": f"do {x}"}) for x in labels]
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text("".join(f"- label: {x}\n  task_prompt: do {x}\n" for x in labels))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".yaml"])
def test_batch_plain_progress_and_results(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer, tmp_path: Path, suffix: str
) -> None:
    server.add(*[chat("answer") for _ in range(6)])  # task + summary, three tasks
    code, out, err = cli(
        capsys, "batch", str(tasks_file(tmp_path, suffix=suffix)), *endpoint(server)
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "batch: 3 tasks"
    progress = [line for line in lines if line.startswith("[")]
    assert [p.split()[0] for p in progress] == ["[1/3]", "[2/3]", "[3/3]"]
    assert all(
        re.fullmatch(r"\[\d/3\] done [abc] \(complete, 2 turns, 610 tokens\)", p) for p in progress
    )
    for label in "abc":
        assert f"== {label}: complete, 2 turns, 610 tokens" in out
    assert "batch complete: 3 succeeded, 0 failed, 0 cancelled; 1830 tokens" in out


def test_batch_json_keeps_stdout_clean(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer, tmp_path: Path
) -> None:
    server.add(*[chat("answer") for _ in range(4)])
    code, out, err = cli(
        capsys, "batch", str(tasks_file(tmp_path, "ab")), *endpoint(server), "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert (data["status"], data["successful"], data["total_tokens"]) == ("complete", 2, 1220)
    assert [r["label"] for r in data["results"]] == ["a", "b"]  # input order
    assert data["results"][0]["output"] == "answer"
    assert "[2/2] done" in err  # progress went to stderr


def test_batch_with_a_failed_task_is_exit_1(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer, tmp_path: Path
) -> None:
    # One task at a time, so the replies meet the tasks in order: a ok, b refused, c ok.
    server.add(chat("a1"), chat("a2"), Reply(400, {"error": "no"}), chat("c1"), chat("c2"))
    path = tasks_file(tmp_path)
    code, out, _ = cli(capsys, "batch", str(path), *endpoint(server), "--max-concurrent", "1")
    assert code == 1
    assert "[2/3] failed b (failed (execution_failed), 0 turns, 0 tokens)" in out
    assert "batch partial: 2 succeeded, 1 failed, 0 cancelled" in out


def test_batch_incomplete_is_exit_3(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer, tmp_path: Path
) -> None:
    server.add(chat("partial answer"))  # no turn left for the summary
    code, out, _ = cli(capsys, "batch", str(tasks_file(tmp_path, "a")), *endpoint(server),
                       "--max-turns", "1")  # fmt: skip
    assert code == 3
    assert "== a: incomplete, 1 turns" in out


def test_batch_against_an_unreachable_endpoint_is_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    code, _, err = cli(capsys, "batch", str(tasks_file(tmp_path, "a")), "--base-url", url,
                       "--model", "m", "--json")  # fmt: skip
    assert code == 2
    assert "could not connect" in err.splitlines()[-1]
    assert "Traceback" not in err


def test_batch_file_errors_name_the_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"label": "a", "task_prompt": "x"}\n{"label": "b"}\n')
    code, _, err = cli(capsys, "batch", str(path), "--base-url", "http://x/v1", "--model", "m")
    assert code == 2
    assert one_error_line(err) == (f"xzatoma: error: {path}, line 2: task_prompt: field required")


# -- issue 18: --max-connections and --http-transport -----------------------------------------


@pytest.mark.parametrize("command", ["run", "batch"])
def test_help_lists_the_connection_flags(capsys: pytest.CaptureFixture[str], command: str) -> None:
    text = " ".join(help_text(capsys, [command]).split())
    assert (
        "--max-connections N model calls in flight at once, on connections kept alive "
        "(default 1000, or half the open-file limit)"
    ) in text
    assert (
        "--http-transport NAME auto (aiohttp on asyncio, httpx on trio), aiohttp or httpx"
    ) in text
    assert "[--max-connections N] [--http-transport NAME]" in text


def record_sends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, type]]:
    """Each model call's pool size and the transport it really went through."""
    seen: list[tuple[int, type]] = []
    send = OpenAIProvider._send

    async def spy(self: OpenAIProvider, transport: Transport, body: bytes) -> bytearray:
        seen.append((self.max_connections, type(transport)))
        return await send(self, transport, body)

    monkeypatch.setattr(OpenAIProvider, "_send", spy)
    return seen


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], (3, HttpxTransport)),
        (["--max-connections", "7"], (7, HttpxTransport)),
        (["--http-transport", "aiohttp"], (3, AiohttpTransport)),
        (["--http-transport", "auto", "--max-connections", "1"], (1, AiohttpTransport)),
    ],
)
def test_connection_flags_override_the_file(
    capsys: pytest.CaptureFixture[str],
    server: ScriptedHTTPServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    expected: tuple[int, type],
) -> None:
    seen = record_sends(monkeypatch)
    server.add(chat("done"))
    path = tmp_path / "c.yaml"
    path.write_text(
        f"provider: {{base_url: '{server.url}/v1', model: m, max_connections: 3, "
        "transport: httpx}\n"
    )
    code, out, _ = cli(capsys, "run", "hi", "--config", str(path), *flags)
    assert (code, out) == (0, "done\n")
    assert seen == [expected]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], (2, AiohttpTransport)),
     (["--max-connections", "9", "--http-transport", "httpx"], (9, HttpxTransport))],
)  # fmt: skip
def test_connection_flags_reach_the_subagents_provider_too(
    capsys: pytest.CaptureFixture[str],
    server: ScriptedHTTPServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    expected: tuple[int, type],
) -> None:
    # The tasks of a batch are subagents: they call agent.subagent.provider's endpoint.
    seen = record_sends(monkeypatch)
    server.add(chat("answer"), chat("summary"))
    path = tmp_path / "c.yaml"
    path.write_text(
        f"provider: {{base_url: '{server.url}/v1', model: m, transport: httpx}}\n"
        "agent: {subagent: {provider: {max_connections: 2, transport: aiohttp}}}\n"
    )
    tasks = str(tasks_file(tmp_path, "a"))
    code, _, _ = cli(capsys, "batch", tasks, "--config", str(path), *flags)
    assert code == 0
    assert seen == [expected, expected]


# -- the progress display, fed events directly ----------------------------------------------


class Feed:
    """Drives a progress instrument the way the spawner does, with real ``Run`` objects."""

    def __init__(self, instrument: Instrument) -> None:
        self.instrument = instrument
        self.root = Run(
            label="batch", hooks=Hooks(), quota=None, provider=ScriptedProvider(), now=lambda: 0.0
        )

    def batch(self, size: int) -> None:
        self.instrument.batch_started(self.root, Batch(self.root, None, size))

    def started(self, label: str, parent: Run | None = None) -> Run:
        run = (parent or self.root).child(label)
        self.instrument.subagent_started(run)
        return run

    def model_call(self, run: Run, usage: Usage) -> None:
        call = ModelCall(run)
        call.completion = Completion("x", usage=usage)
        self.instrument.model_call_ended(run, call)

    def ended(
        self,
        run: Run,
        status: RunStatus,
        error_type: ErrorType | None,
        turns: int,
        usage: Usage,
        output: str = "",
    ) -> None:
        run.turns, run.usage, run.output = turns, usage, output
        run.finish(status, error_type, None)
        self.instrument.subagent_ended(run)


def feed(progress: BatchProgress) -> Feed:
    f = Feed(progress)
    f.batch(2)
    a, b = f.started("a"), f.started("b")
    f.model_call(a, Usage(1, 7, 3, 10))
    f.ended(a, "complete", None, 1, Usage(1, 7, 3, 10), "answer of a")
    nested = f.started("nested", parent=a)  # a grandchild: not one of the batch's tasks
    f.ended(nested, "complete", None, 1, Usage())
    f.ended(b, "failed", "timeout", 0, Usage())
    return f


def test_plain_progress_lines() -> None:
    out = io.StringIO()
    progress = BatchProgress(out, live=False)
    feed(progress)
    progress.close()
    assert out.getvalue().splitlines() == [
        "batch: 2 tasks",
        "[1/2] done a (complete, 1 turns, 10 tokens)",
        "[2/2] failed b (failed (timeout), 0 turns, 0 tokens)",
    ]
    assert (progress.done, progress.failed, progress.running, progress.tokens) == (1, 1, 0, 10)


def test_live_progress_draws_with_rich() -> None:
    out = io.StringIO()
    progress = BatchProgress(out, live=True)
    feed(progress)
    progress.close()
    text = out.getvalue()
    assert "✓ a" in text
    assert "✗ b" in text
    assert "2/2" in text
    assert "done 1  failed 1  running 0  tokens 10" in text


def test_interrupted_report_lists_what_finished(capsys: pytest.CaptureFixture[str]) -> None:
    progress = BatchProgress(io.StringIO(), live=False)
    f = feed(progress)
    c = f.started("c")
    # c was running when Ctrl-C came: cancelled by the interruption, so not "finished".
    f.ended(c, "cancelled", "cancelled", 0, Usage())
    print_interrupted(progress.finished, "SIGINT", as_json=False, total=5)
    out = capsys.readouterr().out
    assert "interrupted: 2 of 5 tasks had finished" in out
    assert "  a: complete, 1 turns, 10 tokens\n    answer of a\n" in out
    print_interrupted(progress.finished, "SIGINT", as_json=True, total=5)
    data = json.loads(capsys.readouterr().out)
    assert [row["label"] for row in data["finished"]] == ["a", "b"]
    assert data["finished"][0]["output"] == "answer of a"


# -- demo ----------------------------------------------------------------------------------


def test_demo_prints_tree_metrics_and_endpoints(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "demo", "--latency", "0")
    assert (code, err) == (0, "")
    tree, _, rest = out.partition("Metrics scraped from")
    assert re.search(r"coordinator\s+complete\s+depth 0", tree)
    assert re.search(r"│  └─ fact-checker\s+complete\s+depth 2", tree)
    assert re.search(r"second-opinion\s+failed \(max_depth_reached\)\s+depth 3", tree)
    assert "↳ Maximum subagent recursion depth (2) exceeded. Current depth: 2." in tree
    assert re.search(r"check-billing\s+failed \(execution_failed\)\s+depth 1", tree)
    assert len(re.findall(r"check-\w+\s+complete\s+depth 1", tree)) == 7
    assert "↳ Resource quota exceeded: execution limit reached (10/10)" in tree
    assert "Services: 7 of 8 ready; billing could not be checked" in tree
    metrics, _, endpoints = rest.partition("Point the same run at a real endpoint")
    assert re.search(r'subagent_executions_total\{depth="1"\}\s+10\n', metrics)
    assert re.search(
        r'subagent_errors_total\{depth="3",error_type="max_depth_reached"\}\s+1', metrics
    )
    assert re.search(r'subagent_errors_total\{depth="1",error_type="quota_exceeded"\}\s+1', metrics)
    assert re.search(r'subagent_batches_total\{depth="1",status="partial"\}\s+1', metrics)
    assert "active = 0): holds" in metrics
    for name in ("Ollama:", "vLLM:", "OpenAI:"):
        assert name in endpoints
    assert "--api-key-env OPENAI_API_KEY" in endpoints


def test_demo_output_is_the_same_every_run_but_durations_and_port(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def normalised() -> list[str]:
        code, out, _ = cli(capsys, "demo", "--latency", "0")
        assert code == 0
        out = re.sub(r"127\.0\.0\.1:\d+", "HOST:PORT", out)
        return [line for line in out.splitlines() if "duration_seconds_sum" not in line]

    assert normalised() == normalised()


def test_demo_metrics_port_in_use_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, out, err = cli(capsys, "demo", "--metrics-port", str(busy.getsockname()[1]))
    assert (code, out) == (2, "")
    assert "cannot serve metrics" in one_error_line(err)


# -- subprocesses: the entry point, a terminal, Ctrl-C ---------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_the_module_entry_point_exits_with_main_s_code() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "xzatoma.cli", "run", "hi"],
        env=child_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("xzatoma: error: no model endpoint")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_batch_on_a_terminal_draws_live_progress(
    server: ScriptedHTTPServer, tmp_path: Path
) -> None:
    import pty

    server.add(*[chat("answer") for _ in range(4)])
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "xzatoma.cli", "batch", str(tasks_file(tmp_path, "ab")),
         *endpoint(server)],
        stdout=follower, stderr=subprocess.PIPE, env={**child_env(), "COLUMNS": "120"},
    )  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    assert proc.stderr is not None
    assert b"Traceback" not in proc.stderr.read()
    proc.stderr.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode())  # no colours
    assert "2/2" in text
    assert "✓ a" in text
    assert "batch complete: 2 succeeded" in text


def interrupt_after_the_first_task(
    server: ScriptedHTTPServer, tmp_path: Path, env: dict[str, str], timeout: float = 60
) -> tuple[subprocess.Popen[str], str, str]:
    """``xzatoma batch`` of three tasks one at a time, Ctrl-C once the first (a) is done,
    while b's model call hangs; the process, its stdout and stderr once it has exited."""
    release = threading.Event()
    # One task at a time: a answers (task and summary); b's model call hangs until released.
    server.add(chat("a1"), chat("a2"), Reply(body=chat("b1").body, hold=release))
    proc = subprocess.Popen(
        [sys.executable, "-m", "xzatoma.cli", "batch", str(tasks_file(tmp_path)),
         *endpoint(server), "--max-concurrent", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("[1/3] done a"):
            break
    else:
        pytest.fail(f"the batch never reported its first task: {seen!r}")
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        release.set()
    return proc, out, err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child is POSIX")
def test_ctrl_c_cancels_the_batch_and_reports_what_finished(
    server: ScriptedHTTPServer, tmp_path: Path
) -> None:
    proc, out, err = interrupt_after_the_first_task(server, tmp_path, child_env())
    assert proc.returncode == 130
    assert "interrupted: 1 of 3 tasks had finished" in out
    assert "  a: complete, 2 turns, 610 tokens" in out
    assert "batch complete" not in out
    assert err.strip() == "xzatoma: interrupted; the batch was cancelled"
