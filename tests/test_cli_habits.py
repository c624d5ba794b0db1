"""The command line's habits (issue 16, items 9 and 10): ``-q`` and ``-v``, no abbreviated
options, usage errors that name the command's own ``--help``, ``--messages``, the OpenAI and
``XZATOMA_CONFIG`` environment variables, completion documented as absent, progress labels
drawn as written, and the built-in offline model (``--provider scripted``).

Commands run in-process through ``main([...])``; a real HTTP server on loopback stands in
for an OpenAI-compatible endpoint where one is needed.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _http_server import Reply, ScriptedHTTPServer
from rich.console import Console
from rich.segment import Segment

from xzatoma import Batch, Completion, Hooks, Run, Usage
from xzatoma._cli_output import logging_for
from xzatoma._cli_parser import settle
from xzatoma._progress import BatchProgress, finished_line
from xzatoma._scripted_model import scripted_model
from xzatoma.cli import build_parser, main
from xzatoma.config import XzatomaConfig, load_given_config
from xzatoma.errors import ConfigError
from xzatoma.testing import ScriptedProvider

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "examples" / "tasks.jsonl"
DOCS_CLI = ROOT / "docs" / "cli.md"
DOCS_BATCHES = ROOT / "docs" / "batches.md"
KEY = "sk-habits-secret-0123456789"
OPENAI_VARIABLES = ("OPENAI_BASE_URL", "OPENAI_API_KEY", "XZATOMA_CONFIG")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own OPENAI_* or XZATOMA_CONFIG must not decide a test."""
    for name in OPENAI_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[ScriptedHTTPServer]:
    with ScriptedHTTPServer() as srv:
        yield srv


def chat(content: str = "ok") -> Reply:
    return Reply(
        body={
            "id": "x",
            "object": "chat.completion",
            "model": "m",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content},
                 "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    )  # fmt: skip


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("xzatoma: error: ")
    return lines[0]


def parsed(*argv: str) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    settle(args, parser)
    return args


def scripted_batch(*flags: str) -> list[str]:
    return ["batch", str(TASKS), "--provider", "scripted", *flags]


# -- -q and -v ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "verbosity"),
    [
        (["run", "x"], 0),
        (["run", "x", "-v"], 1),
        (["run", "x", "--verbose"], 1),  # the old switch: retries and warnings, as before
        (["-v", "run", "x"], 1),
        (["run", "x", "-vv"], 2),
        (["-v", "run", "x", "-v"], 2),
        (["run", "x", "-vvv"], 2),
        (["run", "x", "-q"], -1),
        (["-q", "batch", "f.jsonl"], -1),
        (["batch", "f.jsonl", "--quiet"], -1),
        (["demo", "-v"], 1),
        (["journal", "show", "j.sqlite", "-q"], -1),
        (["config", "validate", "c.yaml", "-vv"], 2),
    ],
)
def test_quiet_and_verbose_before_or_after_the_command(argv: list[str], verbosity: int) -> None:
    assert parsed(*argv).verbosity == verbosity


@pytest.mark.parametrize("argv", [["run", "x", "-q", "-v"], ["-v", "run", "x", "-q"]])
def test_quiet_and_verbose_together_are_a_usage_error(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = cli(capsys, *argv)
    assert code == 2
    assert out == ""
    line = one_error_line(err)
    assert "-q/--quiet and -v/--verbose" in line
    assert line.endswith("(see 'xzatoma run --help')")


def emit_every_level() -> None:
    log = logging.getLogger("xzatoma.habits")
    log.debug("debug record")
    log.info("info record")
    log.warning("warning record")
    log.error("error record")
    try:
        raise RuntimeError("inside a tool")
    except RuntimeError:
        log.info("tool raised", exc_info=True)


@pytest.mark.parametrize(
    ("verbosity", "shown"),
    [
        (-1, ["error"]),
        (0, ["error"]),
        (1, ["info", "warning", "error", "tool raised"]),
        (2, ["debug", "info", "warning", "error", "tool raised"]),
    ],
)
def test_verbosity_picks_the_log_records_shown(
    capsys: pytest.CaptureFixture[str], verbosity: int, shown: list[str]
) -> None:
    before = logging.getLogger("xzatoma").level
    with logging_for(verbosity):
        emit_every_level()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("xzatoma: ")]
    said = [re.sub(r"^xzatoma: \w+: | record$", "", line) for line in lines]
    assert said == shown
    assert ("Traceback" in err) is (verbosity >= 2)  # one line per record below -vv
    assert logging.getLogger("xzatoma").level == before  # the level comes back


def test_a_shown_warning_is_quieted_by_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    from xzatoma.providers._tool_replies import SHOWN

    for verbosity, expected in ((0, True), (-1, False)):
        with logging_for(verbosity):
            logging.getLogger("xzatoma.habits").warning("tools dropped", extra={SHOWN: True})
        assert ("tools dropped" in capsys.readouterr().err) is expected


def test_verbose_logs_the_retries_and_default_does_not(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer
) -> None:
    endpoint = ["--base-url", server.url + "/v1", "--model", "m", "--max-retries", "1"]
    for flags, logged in (([], False), (["-v"], True), (["--verbose"], True)):
        server.add(Reply(503, "busy", headers={"Retry-After": "0"}), chat("fine"))
        code, out, err = cli(capsys, "run", "hi", *endpoint, *flags)
        assert (code, out) == (0, "fine\n")
        assert ("xzatoma: WARNING: retrying" in err) is logged, err


def test_quiet_batch_prints_no_progress_and_no_notes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, *scripted_batch("--metrics-port", "0"))
    assert code == 0
    assert "batch: 3 tasks" in out
    assert "serving metrics at http://127.0.0.1:" in err
    code, out, err = cli(capsys, *scripted_batch("--metrics-port", "0", "-q"))
    assert code == 0
    assert err == ""
    assert "batch: 3 tasks" not in out
    assert "[1/3]" not in out
    assert "== quicksort: complete" in out  # the results themselves are not progress
    assert "batch complete: 3 succeeded" in out


def test_quiet_config_validate_drops_the_note(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("agent:\n  max_turns: 5\n")
    assert cli(capsys, "config", "validate", str(path))[1].count("note:") == 1
    assert cli(capsys, "config", "validate", str(path), "-q")[1] == f"OK: {path} is valid\n"


# -- no abbreviations; a usage error names its command's --help -------------------------------


def every_parser(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from every_parser(child)


def test_no_parser_accepts_abbreviations() -> None:
    parsers = list(every_parser(build_parser()))
    assert len(parsers) == 8  # xzatoma, run, batch, demo, journal, show, config, validate
    assert all(p.allow_abbrev is False for p in parsers)


@pytest.mark.parametrize(
    ("argv", "said", "command"),
    [
        (["batch", "t.jsonl", "--max-dept", "3"], "unrecognized arguments: --max-dept 3", "batch"),
        (["run", "x", "--verb"], "unrecognized arguments: --verb", "run"),
        (["run", "x", "--json", "--max-dept=2"], "unrecognized arguments: --max-dept=2", "run"),
        (["run"], "the following arguments are required: PROMPT", "run"),
        (["batch", "t.jsonl", "--max-depth", "x"], "argument --max-depth: invalid int", "batch"),
        (["demo", "--latenc", "0"], "unrecognized arguments: --latenc 0", "demo"),
        (["journal", "show", "j", "--jso"], "unrecognized arguments: --jso", "journal show"),
        (["config", "validate", "a", "b"], "unrecognized arguments: b", "config validate"),
        (["--verb", "run", "x"], "unrecognized arguments: --verb", ""),
        (["runn", "x"], "invalid choice: 'runn'", ""),
    ],
)
def test_usage_errors_name_the_help_of_their_command(
    capsys: pytest.CaptureFixture[str], argv: list[str], said: str, command: str
) -> None:
    code, out, err = cli(capsys, *argv)
    assert (code, out) == (2, "")
    line = one_error_line(err)
    assert said in line
    help_of = f"xzatoma {command}".strip()
    assert line.endswith(f"(see '{help_of} --help')"), line


def test_whole_option_names_still_work() -> None:
    args = parsed("batch", "t.jsonl", "--max-depth", "2", "--max-depth=3", "--ray=auto")
    assert (args.max_depth, args.ray_address) == (3, "auto")


# -- --messages -----------------------------------------------------------------------------


def test_run_json_messages_adds_the_transcript(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "run", "--provider", "scripted", "--json", "--messages", "Hi there")
    assert code == 0
    document = json.loads(out)
    roles = [m["role"] for m in document["messages"]]
    assert roles == ["user", "assistant"]
    assert document["messages"][0]["content"] == "Hi there"
    assert document["messages"][1]["content"] == document["output"]
    code, out, _ = cli(capsys, "run", "--provider", "scripted", "--json", "Hi there")
    assert "messages" not in json.loads(out)


def test_batch_json_messages_adds_each_task_s_transcript(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    journal = str(tmp_path / "j.sqlite")
    for resumed in (False, True):  # read back from the journal, the messages come too
        code, out, _ = cli(capsys, *scripted_batch("--journal", journal, "--json", "--messages"))
        assert code == 0
        results = json.loads(out)["results"]
        assert [r["resumed"] for r in results] == [resumed] * 3
        for result, task in zip(results, TASKS.read_text().splitlines(), strict=True):
            first = result["messages"][0]
            assert (first["role"], first["content"]) == ("user", json.loads(task)["task_prompt"])
            assert result["messages"][-1]["content"] == result["output"]
    code, out, _ = cli(capsys, *scripted_batch("--json"))
    assert all("messages" not in r for r in json.loads(out)["results"])


@pytest.mark.parametrize("command", [["run", "x"], ["batch", str(TASKS)]])
def test_messages_without_json_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    code, out, err = cli(capsys, *command, "--provider", "scripted", "--messages")
    assert (code, out) == (2, "")
    line = one_error_line(err)
    assert "--messages adds the transcripts to the --json document: add --json" in line
    assert line.endswith(f"(see 'xzatoma {command[0]} --help')")


# -- OPENAI_BASE_URL, OPENAI_API_KEY --------------------------------------------------------


def test_openai_type_calls_openai_base_url_with_openai_api_key(
    capsys: pytest.CaptureFixture[str],
    server: ScriptedHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server.add(chat("from the env"))
    code, out, err = cli(capsys, "run", "--provider", "openai", "--model", "m", "-vv", "hi")
    assert (code, out) == (0, "from the env\n")
    assert server.requests[0].path == "/v1/chat/completions"
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in out + err


def test_the_command_line_and_the_file_beat_the_openai_variables(
    capsys: pytest.CaptureFixture[str],
    server: ScriptedHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("XZ_OTHER_KEY", "sk-other")
    server.add(chat("a"), chat("b"))
    argv = ["run", "--provider", "openai", "--model", "m", "--base-url", server.url + "/v1"]
    assert cli(capsys, *argv, "hi")[:2] == (0, "a\n")
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert cli(capsys, *argv, "--api-key-env", "XZ_OTHER_KEY", "hi")[:2] == (0, "b\n")
    assert server.requests[1].headers["authorization"] == "Bearer sk-other"


def test_other_types_read_no_openai_variable(
    capsys: pytest.CaptureFixture[str],
    server: ScriptedHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    config = XzatomaConfig.from_dict({"provider": {"type": "vllm", "model": "m"}})
    provider = config.build_provider()
    assert provider is not None
    assert provider.base_url == "http://127.0.0.1:8000/v1"
    server.add(chat("no key"))
    code, out, _ = cli(capsys, "run", "--base-url", server.url + "/v1", "--model", "m", "hi")
    assert (code, out) == (0, "no key\n")
    assert "authorization" not in server.requests[0].headers


def test_openai_s_own_api_without_a_key_is_one_line_before_any_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = cli(capsys, "run", "--provider", "openai", "--model", "gpt-4o-mini", "hi")
    assert (code, out) == (2, "")
    line = one_error_line(err)
    assert "provider.type openai calls https://api.openai.com/v1, which needs an API key" in line
    assert "set OPENAI_API_KEY" in line


def test_another_server_named_by_openai_base_url_needs_no_key(
    capsys: pytest.CaptureFixture[str],
    server: ScriptedHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    server.add(chat("local"))
    assert cli(capsys, "run", "--provider", "openai", "--model", "m", "hi")[:2] == (0, "local\n")
    assert "authorization" not in server.requests[0].headers


def test_a_bad_openai_base_url_is_refused_by_the_variable_s_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "ftp://example.com/v1")
    code, _, err = cli(capsys, "run", "--provider", "openai", "--model", "m", "hi")
    assert code == 2
    assert "environment variable OPENAI_BASE_URL must start with http://" in one_error_line(err)


def test_a_key_with_a_control_character_in_openai_api_key_is_refused_unprinted(
    capsys: pytest.CaptureFixture[str],
    server: ScriptedHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abc\x07def")
    code, out, err = cli(capsys, "run", "--provider", "openai", "--model", "m", "hi")
    assert code == 2
    assert "environment variable OPENAI_API_KEY" in one_error_line(err)
    assert "abc" not in out + err
    assert server.requests == []


# -- XZATOMA_CONFIG -------------------------------------------------------------------------


def test_xzatoma_config_names_the_file_when_config_is_not_given(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_env = tmp_path / "env.yaml"
    from_env.write_text("provider:\n  type: scripted\n  model: from-env\n")
    given = tmp_path / "given.yaml"
    given.write_text("provider:\n  type: scripted\n  model: from-flag\n")
    monkeypatch.setenv("XZATOMA_CONFIG", str(from_env))
    code, out, _ = cli(capsys, "run", "--json", "hi")
    assert code == 0
    assert json.loads(out)["label"] == "agent"
    assert load_given_config(None).provider.model == "from-env"
    assert load_given_config(str(given)).provider.model == "from-flag"  # --config wins
    monkeypatch.setenv("XZATOMA_CONFIG", "  ")
    assert load_given_config(None) == XzatomaConfig()  # blank: no file


def test_a_missing_file_named_by_xzatoma_config_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.yaml"
    monkeypatch.setenv("XZATOMA_CONFIG", str(missing))
    code, out, err = cli(capsys, *scripted_batch())
    assert (code, out) == (2, "")
    line = one_error_line(err)
    assert f"{missing}: no such configuration file" in line
    assert "XZATOMA_CONFIG" in line
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent:\n  subagent:\n    max_dept: 2\n")
    with pytest.raises(ConfigError, match=r"unknown key .*max_dept.* XZATOMA_CONFIG"):
        load_given_config(None, {"XZATOMA_CONFIG": str(bad)})
    given = tmp_path / "given.yaml"
    given.write_text("{}\n")
    code, _, _ = cli(capsys, *scripted_batch("--config", str(given)))  # --config wins
    assert code == 0


# -- completion: documented as absent -------------------------------------------------------


def test_shell_completion_is_documented_as_absent() -> None:
    doc = DOCS_CLI.read_text(encoding="utf-8")
    assert "**Shell completion** is not provided" in doc
    parser = build_parser()
    assert not hasattr(parser, "_argcomplete_namespace")


# -- progress labels are drawn as written ---------------------------------------------------


def recording_console() -> Console:
    return Console(
        record=True, force_terminal=True, color_system="truecolor", file=io.StringIO(), width=200
    )


def styled_digits(segments: list[Segment], text: str) -> list[str]:
    """The digits of ``text`` that some segment draws with a colour or an emphasis."""
    styled = []
    for segment in segments:
        style = segment.style
        if segment.text and text.find(segment.text) >= 0 and style:  # a null Style is falsy
            styled += [ch for ch in segment.text if ch.isdigit()]
    return styled


LABELS = ["task [red]42[/]", "v2.0 42 items", "0x1f 3.14 2024-01-02 [bold]"]


@pytest.mark.parametrize("label", LABELS)
def test_a_finished_line_draws_the_label_literally(label: str) -> None:
    console = recording_console()
    console.print(finished_line(True, label, "complete, 2 turns, 56 tokens"))
    segments = list(console._record_buffer)
    assert label in console.export_text()
    assert styled_digits(segments, label) == []
    # The check can fail: the same text as a plain string is highlighted by rich.
    plain = recording_console()
    plain.print(label.replace("[", r"\["))
    assert styled_digits(list(plain._record_buffer), label) != []


def test_the_live_display_draws_labels_literally() -> None:
    console = recording_console()
    progress = BatchProgress(io.StringIO(), live=True, console=console)
    root = Run(label="b", hooks=Hooks(), quota=None, provider=ScriptedProvider(), now=lambda: 0.0)
    progress.batch_started(root, Batch(root, None, len(LABELS)))
    for label in LABELS:
        run = root.child(label)
        progress.subagent_started(run)
        run.turns, run.usage, run.output = 1, Usage(1, 1, 1, 2), "out"
        run.finish("complete", None, None)
        progress.subagent_ended(run)
    progress.close()
    text = console.export_text()
    segments = list(console._record_buffer)
    for label in LABELS:
        assert f"✓ {label}  (complete, 1 turns, 2 tokens)" in text
        assert styled_digits(segments, label) == []


# -- the offline scripted model -------------------------------------------------------------


def test_batch_runs_offline_on_the_scripted_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, *scripted_batch())
    assert code == 0
    assert err == ""
    assert "[1/3] done quicksort (complete, 2 turns, 67 tokens)" in out
    assert "== quicksort: complete, 2 turns, 67 tokens, $0" in out
    assert 'Summary: the task "In two sentences, explain quicksort."' in out
    assert "batch complete: 3 succeeded, 0 failed, 0 cancelled; 200 tokens ($0)" in out
    again = cli(capsys, *scripted_batch())[1]
    assert re.sub(r"in \d+\.\d s", "", again) == re.sub(r"in \d+\.\d s", "", out)


def test_batch_json_and_metrics_on_the_scripted_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, *scripted_batch("--json", "--metrics-port", "0"))
    assert code == 0
    document = json.loads(out)
    assert (document["status"], document["successful"], document["total_cost"]) == (
        "complete",
        3,
        0.0,
    )
    assert "serving metrics at" in err


def test_run_on_the_scripted_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(
        capsys, "run", "--provider", "scripted", "Compare three sorting algorithms"
    )
    assert (code, err) == (0, "")
    assert out == (
        'Scripted answer to "Compare three sorting algorithms": no model was called, so this '
        "echoes the task (4 words).\n"
    )


def test_the_scripted_type_in_a_config_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "offline.yaml"
    path.write_text(
        "provider:\n  type: scripted\n  base_url: http://127.0.0.1:9/v1\n"  # not called
        "agent:\n  subagent:\n    max_executions: 2\n"
    )
    assert cli(capsys, "config", "validate", str(path))[1] == f"OK: {path} is valid\n"
    code, out, _ = cli(capsys, "batch", str(TASKS), "--config", str(path), "--json")
    document = json.loads(out)
    assert code == 1  # the quota lets two of the three tasks run
    assert [r["status"] for r in document["results"]].count("complete") == 2


@pytest.mark.anyio
async def test_the_scripted_model_is_deterministic_and_counts_words() -> None:
    model = scripted_model()
    assert (model.name, model.model) == ("scripted", "scripted")
    from xzatoma import Message

    first = await model.complete([Message.user("one two three")], [])
    assert first.content == (
        'Scripted answer to "one two three": no model was called, so this echoes the task '
        "(3 words)."
    )
    assert first.usage == Usage(1, 3, 17, 20)
    assert first.tool_calls == ()
    long = " ".join(f"w{i}" for i in range(20))
    later = await model.complete(
        [Message.user(long), Message("assistant", "x"), Message.user("Summarise")], []
    )
    assert later.content == (
        'Summary: the task "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 ..." was answered offline '
        "by the scripted model."
    )
    assert isinstance(first, Completion)


def shell_lines(doc: Path, heading: str) -> list[str]:
    """The ``sh`` block right under ``heading`` in ``doc``."""
    text = doc.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("doc", "heading"),
    [(DOCS_CLI, "### Offline: the scripted model"), (DOCS_BATCHES, "## Try it offline")],
)
def test_the_documented_offline_commands_run_as_written(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    doc: Path,
    heading: str,
) -> None:
    (tmp_path / "examples").mkdir()
    shutil.copy(TASKS, tmp_path / "examples" / "tasks.jsonl")
    monkeypatch.chdir(tmp_path)
    lines = shell_lines(doc, heading)
    assert lines
    for line in lines:
        command, _, redirect = line.split("#")[0].partition(">")
        argv = shlex.split(command)
        assert argv[0] == "xzatoma", line
        code, out, err = cli(capsys, *argv[1:])
        assert code == 0, (line, err)
        if redirect.strip():
            (tmp_path / redirect.strip()).write_text(out)
            document: dict[str, Any] = json.loads(out)
            assert document["status"] == "complete"


def test_build_provider_says_to_use_build_model_for_the_scripted_type() -> None:
    from xzatoma import ConfigError
    from xzatoma.config import XzatomaConfig

    config = XzatomaConfig.from_dict({"provider": {"type": "scripted"}})
    with pytest.raises(ConfigError, match=r"provider\.type scripted .* build_model\(\)"):
        config.build_provider(env={})
    assert config.build_model(env={}) is not None
