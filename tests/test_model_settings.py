"""Model settings and ``text_tool_calls`` from Python, the configuration file and the command
line: every setting's validation with its exact message on each surface, precedence (command
line > file > defaults), and inheritance by subagents, read off the request bodies a real
server on loopback receives from parent and child in one ``xzatoma run``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from _http_server import RecordedRequest, Reply, ScriptedHTTPServer

from xzatoma import ConfigError, ModelSettings, OpenAIProvider, Runtime
from xzatoma.cli import main
from xzatoma.config import OVERRIDE_KEYS, XzatomaConfig, apply_overrides, load_config
from xzatoma.providers._settings import SETTING_NAMES

DOCS = Path(__file__).resolve().parent.parent / "docs"
BIG = 2**63

# (setting, value, message): in range for ModelSettings, so for the file and the flags too.
IN_RANGE = [
    ("temperature", 0.0), ("temperature", 2.0), ("temperature", 0.7), ("top_p", 0.0),
    ("top_p", 1.0), ("seed", -BIG), ("seed", BIG - 1), ("seed", 0), ("max_tokens", 1),
    ("max_tokens", 1_000_000_000), ("tool_choice", "auto"), ("tool_choice", "none"),
    ("tool_choice", "required"), ("parallel_tool_calls", True), ("parallel_tool_calls", False),
]  # fmt: skip
# Out of range: the same words on every surface, the surface's key in front.
OUT_OF_RANGE: list[tuple[str, Any, str]] = [
    ("temperature", 3.5, "temperature must be between 0 and 2, got 3.5"),
    ("temperature", -0.1, "temperature must be between 0 and 2, got -0.1"),
    ("temperature", math.nan, "temperature must be a number between 0 and 2, got nan"),
    ("temperature", math.inf, "temperature must be a number between 0 and 2, got inf"),
    ("top_p", 1.5, "top_p must be between 0 and 1, got 1.5"),
    ("top_p", -math.inf, "top_p must be a number between 0 and 1, got -inf"),
    ("seed", BIG, f"seed must be at most {BIG - 1}, got {BIG}"),
    ("seed", -BIG - 1, f"seed must be at least {-BIG}, got {-BIG - 1}"),
    ("max_tokens", 0, "max_tokens must be at least 1, got 0"),
    ("max_tokens", 10**9 + 1, "max_tokens must be at most 1000000000, got 1000000001"),
    ("tool_choice", "search", "tool_choice must be 'auto', 'none' or 'required', got 'search'; "
     "one named tool cannot be forced on every turn (the agent could never answer)"),
]  # fmt: skip
FLAGS = {"temperature": "--temperature", "top_p": "--top-p", "seed": "--seed",
         "max_tokens": "--max-tokens", "tool_choice": "--tool-choice"}  # fmt: skip


def chat(content: str | None = "ok", *, call: dict[str, Any] | None = None) -> Reply:
    """One chat completion, optionally one ``subagent`` call; a plausible prompt count."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if call is not None:
        function = {"name": "subagent", "arguments": json.dumps(call)}
        message["tool_calls"] = [{"id": "c0", "type": "function", "function": function}]
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    usage = {"prompt_tokens": 2000, "completion_tokens": 5, "total_tokens": 2005}
    return Reply(body={"id": "x", "object": "chat.completion", "choices": [choice], "usage": usage})


def sent(request: RecordedRequest) -> dict[str, Any]:
    """What a request body holds besides the conversation and the tools."""
    body: dict[str, Any] = request.json()
    return {k: v for k, v in body.items() if k not in ("messages", "tools")}


def first_user_text(request: RecordedRequest) -> str:
    text: str = next(m["content"] for m in request.json()["messages"] if m["role"] == "user")
    return text


def write_config(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "xzatoma.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def one_setting(name: str, value: Any) -> ModelSettings:
    """``ModelSettings`` with one field given by name (any value: the checks are the test)."""
    return ModelSettings(**{name: value})


def error_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    return line


# -- Python: ModelSettings ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), IN_RANGE)
def test_in_range_is_kept_as_given(name: str, value: object) -> None:
    assert getattr(one_setting(name, value), name) == value


@pytest.mark.parametrize(("name", "value", "message"), OUT_OF_RANGE)
def test_out_of_range_in_python(name: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        one_setting(name, value)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("temperature", True, "temperature must be a number between 0 and 2, got True"),
        ("temperature", "0.5", "temperature must be a number between 0 and 2, got '0.5'"),
        ("top_p", False, "top_p must be a number between 0 and 1, got False"),
        ("seed", True, "seed must be a whole number, got True"),
        ("seed", 1.5, "seed must be a whole number, got 1.5"),
        ("max_tokens", "5", "max_tokens must be a whole number, got '5'"),
        ("max_tokens", 5.0, "max_tokens must be a whole number, got 5.0"),
        ("tool_choice", 1, "tool_choice must be 'auto', 'none' or 'required', got 1; one named "
         "tool cannot be forced on every turn (the agent could never answer)"),
        ("parallel_tool_calls", 1, "parallel_tool_calls must be true or false, got 1"),
        ("parallel_tool_calls", "yes", "parallel_tool_calls must be true or false, got 'yes'"),
    ],
)  # fmt: skip
def test_wrong_type_in_python(name: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        one_setting(name, value)
    assert str(info.value) == message


def test_the_provider_refuses_them_too() -> None:
    with pytest.raises(ConfigError, match=r"^top_p must be between 0 and 1, got 2$"):
        OpenAIProvider("http://127.0.0.1:1/v1", "m", top_p=2)
    with pytest.raises(ConfigError, match=r"^text_tool_calls must be True or False, got 1$"):
        OpenAIProvider("http://127.0.0.1:1/v1", "m", text_tool_calls=1)  # type: ignore[arg-type]


# -- the configuration file ------------------------------------------------------------------


def test_every_setting_is_a_key_an_override_and_documented() -> None:
    doc = (DOCS / "configuration.md").read_text(encoding="utf-8")
    for name in (*SETTING_NAMES, "text_tool_calls"):
        assert OVERRIDE_KEYS[name] == f"provider.{name}"
        assert f"`provider.{name}`" in doc
        assert (
            XzatomaConfig.from_dict({"provider": {name: None}}).provider == XzatomaConfig().provider
        )


@pytest.mark.parametrize(("name", "value"), IN_RANGE)
def test_in_range_in_the_file(tmp_path: Path, name: str, value: object) -> None:
    config = load_config(write_config(tmp_path, {"provider": {name: value}}))
    assert config.provider.model_settings() == one_setting(name, value)


@pytest.mark.parametrize("where", ["provider", "agent.subagent.provider"])
@pytest.mark.parametrize(("name", "value", "message"), OUT_OF_RANGE)
def test_out_of_range_in_the_file(
    tmp_path: Path, where: str, name: str, value: object, message: str
) -> None:
    data: dict[str, Any] = {name: value}
    for part in reversed(where.split(".")):
        data = {part: data}
    path = write_config(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {where}.{message}"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("temperature: true", "provider.temperature: input should be a valid number, got True"),
        ("temperature: '0.5'", "provider.temperature: input should be a valid number, got '0.5'"),
        ("top_p: high", "provider.top_p: input should be a valid number, got 'high'"),
        ("seed: 1.5", "provider.seed: input should be a valid integer, got 1.5"),
        ("seed: false", "provider.seed: input should be a valid integer, got False"),
        ("max_tokens: '64'", "provider.max_tokens: input should be a valid integer, got '64'"),
        ("tool_choice: 1", "provider.tool_choice: input should be a valid string, got 1"),
        ("parallel_tool_calls: 1",
         "provider.parallel_tool_calls: input should be a valid boolean, got 1"),
        ("text_tool_calls: sometimes",
         "provider.text_tool_calls: input should be a valid boolean, got 'sometimes'"),
    ],
)  # fmt: skip
def test_wrong_type_in_the_file(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"provider:\n  {line}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {message}"


def test_an_unknown_key_stays_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        XzatomaConfig.from_dict({"agent": {"subagent": {"provider": {"temprature": 1.0}}}})
    assert str(info.value).startswith(
        "unknown key 'agent.subagent.provider.temprature' (did you mean 'temperature'?); "
    )


# -- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "message"), OUT_OF_RANGE[:-1])
def test_out_of_range_on_the_command_line(
    capsys: pytest.CaptureFixture[str], name: str, value: object, message: str
) -> None:
    given = str(value)
    line = error_line(capsys, "run", "hi", f"{FLAGS[name]}={given}")  # = lets "-inf" in
    assert line == f"xzatoma: error: provider.{message} (from {FLAGS[name]} {given})"


def test_the_briefs_example_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert error_line(capsys, "batch", "tasks.jsonl", "--temperature", "3") == (
        "xzatoma: error: provider.temperature must be between 0 and 2, got 3.0 "
        "(from --temperature 3)"
    )


def test_the_flag_is_echoed_with_every_digit(capsys: pytest.CaptureFixture[str]) -> None:
    assert error_line(capsys, "run", "hi", "--temperature", "2.0000001") == (
        "xzatoma: error: provider.temperature must be between 0 and 2, got 2.0000001 "
        "(from --temperature 2.0000001)"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--temperature", "warm"], "argument --temperature: invalid float value: 'warm'"),
        (["--top-p", ""], "argument --top-p: invalid float value: ''"),
        (["--seed", "1.5"], "argument --seed: invalid int value: '1.5'"),
        (["--max-tokens", "true"], "argument --max-tokens: invalid int value: 'true'"),
        (["--tool-choice", "search"], "argument --tool-choice: invalid choice: 'search' "
         "(choose from 'auto', 'none', 'required')"),
        (["--parallel-tool-calls=yes"],
         "argument --parallel-tool-calls/--no-parallel-tool-calls: ignored explicit argument "
         "'yes'"),
    ],
)  # fmt: skip
def test_wrong_type_on_the_command_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    line = error_line(capsys, "run", "hi", *argv)
    assert line == f"xzatoma: error: {message} (see 'xzatoma run --help')"


# -- precedence: command line > file > defaults ----------------------------------------------


def test_nothing_set_sends_nothing(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer
) -> None:
    server.add(chat("fine"))
    assert main(["run", "hi", "--base-url", server.url + "/v1", "--model", "m"]) == 0
    assert capsys.readouterr().out == "fine\n"
    [request] = server.requests
    assert sent(request) == {"model": "m"}
    assert "tools" in request.json()


def test_a_dropped_tools_warning_is_shown_without_verbose(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer
) -> None:
    body = chat("fine").body
    assert isinstance(body, dict)
    body["usage"] = {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}
    server.add(Reply(body=body))
    assert main(["run", "hi", "--base-url", server.url + "/v1", "--model", "m"]) == 0
    err = capsys.readouterr().err
    assert "xzatoma: WARNING: " in err
    assert "the server probably dropped the tools from the prompt" in err


def test_the_command_line_beats_the_file_which_beats_the_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer
) -> None:
    provider = {"base_url": server.url + "/v1", "model": "m", "temperature": 0.2, "seed": 1,
                "top_p": 0.9, "tool_choice": "none", "parallel_tool_calls": True}  # fmt: skip
    path = write_config(tmp_path, {"provider": provider})
    server.add(chat("fine"))
    argv = ["run", "hi", "--config", path, "--temperature", "0.5", "--max-tokens", "64",
            "--tool-choice", "auto", "--no-parallel-tool-calls"]  # fmt: skip
    assert main(argv) == 0
    assert sent(server.requests[0]) == {
        "model": "m", "temperature": 0.5, "top_p": 0.9, "seed": 1, "max_tokens": 64,
        "tool_choice": "auto", "parallel_tool_calls": False,
    }  # fmt: skip


def test_text_tool_calls_precedence() -> None:
    off = XzatomaConfig.from_dict({"provider": {"type": "ollama", "model": "m",
                                                "text_tool_calls": False}})  # fmt: skip
    on = apply_overrides(off, text_tool_calls=True)
    default = XzatomaConfig.from_dict({"provider": {"type": "ollama", "model": "m"}})
    built = [c.build_provider({}) for c in (off, on, default)]
    assert [p.text_tool_calls for p in built if p is not None] == [False, True, True]


# -- inheritance by subagents ----------------------------------------------------------------


def test_a_child_provider_with_only_a_temperature_is_the_parents_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("XZ_SETTINGS_KEY", "sk-settings")
    provider = {"base_url": server.url + "/v1", "model": "big", "api_key_env": "XZ_SETTINGS_KEY",
                "temperature": 0.1, "seed": 7}  # fmt: skip
    sub = {"provider": {"temperature": 0.9}, "max_depth": 1}
    path = write_config(tmp_path, {"provider": provider, "agent": {"subagent": sub}})
    server.add(
        chat(None, call={"label": "helper", "task_prompt": "find x"}),
        chat("x is 42"),  # the child's answer
        chat("x=42"),  # the child's summary
        chat("The answer is 42."),
    )
    assert main(["run", "what is x?", "--config", path, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [c["output"] for c in result["children"]] == ["x=42"]
    assert [first_user_text(r) for r in server.requests] == ["what is x?", "find x", "find x",
                                                             "what is x?"]  # fmt: skip
    parent = {"model": "big", "temperature": 0.1, "seed": 7}
    child = {"model": "big", "temperature": 0.9, "seed": 7}
    assert [sent(r) for r in server.requests] == [parent, child, child, parent]
    assert {r.headers["authorization"] for r in server.requests} == {"Bearer sk-settings"}
    assert {r.path for r in server.requests} == {"/v1/chat/completions"}


def test_tool_settings_go_only_with_tools_and_flags_reach_the_children(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer
) -> None:
    provider = {"base_url": server.url + "/v1", "model": "m", "temperature": 0.1}
    path = write_config(
        tmp_path, {"provider": provider, "agent": {"subagent": {"provider": {"temperature": 0.9}}}}
    )
    server.add(chat(None, call={"label": "a", "task_prompt": "t"}), chat("a"), chat("s"),
               chat("done"))  # fmt: skip
    argv = ["run", "q", "--config", path, "--max-depth", "1", "--seed", "3",
            "--temperature", "0.4", "--tool-choice", "auto", "--parallel-tool-calls"]  # fmt: skip
    assert main(argv) == 0
    assert capsys.readouterr().out == "done\n"
    with_tools = {"model": "m", "temperature": 0.4, "seed": 3, "tool_choice": "auto",
                  "parallel_tool_calls": True}  # fmt: skip
    # The child runs at depth 1 = max_depth: no subagent tools, so no tool settings either.
    without = {"model": "m", "temperature": 0.4, "seed": 3}
    assert [sent(r) for r in server.requests] == [with_tools, without, without, with_tools]
    assert ["tools" in r.json() for r in server.requests] == [True, False, False, True]


def test_a_child_endpoint_of_its_own_keeps_its_key_but_inherits_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("XZ_SETTINGS_KEY", "sk-root-only")
    with ScriptedHTTPServer() as other:
        provider = {"base_url": server.url + "/v1", "model": "big", "temperature": 0.1,
                    "seed": 7, "api_key_env": "XZ_SETTINGS_KEY"}  # fmt: skip
        sub = {"provider": {"base_url": other.url + "/v1", "max_tokens": 99}, "model": "small"}
        path = write_config(tmp_path, {"provider": provider, "agent": {"subagent": sub}})
        server.add(chat(None, call={"label": "a", "task_prompt": "t"}), chat("done"))
        other.add(chat("a"), chat("s"))
        assert main(["run", "q", "--config", path, "--max-depth", "1"]) == 0
        assert capsys.readouterr().out == "done\n"
        assert [sent(r) for r in other.requests] == [
            {"model": "small", "temperature": 0.1, "seed": 7, "max_tokens": 99}
        ] * 2
        assert ["authorization" in r.headers for r in other.requests] == [False, False]
    assert [sent(r) for r in server.requests] == [{"model": "big", "temperature": 0.1,
                                                   "seed": 7}] * 2  # fmt: skip
    assert {r.headers["authorization"] for r in server.requests} == {"Bearer sk-root-only"}


def test_the_spawner_gives_children_the_merged_settings() -> None:
    config = XzatomaConfig.from_dict({
        "provider": {"type": "ollama", "model": "m", "seed": 7, "top_p": 0.5,
                     "text_tool_calls": False},
        "agent": {"subagent": {"provider": {"temperature": 0.9, "top_p": 0.8}}},
    })  # fmt: skip
    parent = config.build_provider({})
    assert parent is not None
    runtime = Runtime(
        parent, subagents=config.subagent_config(config.build_provider({}, subagents=True))
    )
    child = runtime.spawner.child_provider(parent)
    assert isinstance(child, OpenAIProvider)
    assert parent.settings == ModelSettings(seed=7, top_p=0.5)
    assert child.settings == ModelSettings(temperature=0.9, top_p=0.8, seed=7)
    assert (child.base_url, child.model, child.text_tool_calls) == (parent.base_url, "m", False)
    assert runtime.spawner.child_provider(child) is child  # grandchildren: the same


def test_agent_subagent_model_alone_keeps_the_parents_settings() -> None:
    config = XzatomaConfig.from_dict({
        "provider": {"type": "vllm", "model": "big", "temperature": 0, "max_tokens": 10},
        "agent": {"subagent": {"model": "small"}},
    })  # fmt: skip
    child = config.build_provider({}, subagents=True)
    assert child is not None
    assert (child.model, child.settings) == ("small", ModelSettings(temperature=0, max_tokens=10))


def test_flags_set_the_child_provider_only_when_the_file_has_one() -> None:
    base = {"provider": {"type": "ollama", "model": "m", "temperature": 0.2}}
    bare = apply_overrides(XzatomaConfig.from_dict(base), temperature=1.0, text_tool_calls=False)
    assert bare.agent.subagent.provider is None
    assert bare.provider.model_settings() == ModelSettings(temperature=1.0)
    with_child = XzatomaConfig.from_dict(
        {**base, "agent": {"subagent": {"provider": {"temperature": 0.9, "seed": 4}}}}
    )
    over = apply_overrides(with_child, temperature=1.0, tool_choice="required", model="x")
    sub = over.agent.subagent.provider
    assert sub is not None
    assert sub.model_settings() == ModelSettings(temperature=1.0, seed=4, tool_choice="required")
    assert sub.model is None  # --model is the root's; children fall back to it
    child = over.build_provider({}, subagents=True)
    assert child is not None
    assert (child.model, child.settings.temperature) == ("x", 1.0)


def test_batch_tasks_carry_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer
) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"label": "a", "task_prompt": "t"}\n', encoding="utf-8")
    server.add(chat("answer"), chat("summary"))
    argv = ["batch", str(tasks), "--base-url", server.url + "/v1", "--model", "m",
            "--temperature", "0.4", "--seed", "5", "--json"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "complete"
    assert [sent(r) for r in server.requests] == [{"model": "m", "temperature": 0.4,
                                                   "seed": 5}] * 2  # fmt: skip


# -- text_tool_calls on the command line -----------------------------------------------------


@pytest.mark.parametrize("flag", [[], ["--no-text-tool-calls"]])
def test_no_text_tool_calls_keeps_the_text(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer, flag: list[str]
) -> None:
    text = '{"name": "subagent", "arguments": {"label": "a", "task_prompt": "t"}}'
    server.add(chat(text), chat("a"), chat("s"), chat("done"))
    argv = ["run", "q", "--base-url", server.url + "/v1", "--model", "m", "--max-depth", "1"]
    assert main([*argv, *flag]) == 0
    if flag:
        assert capsys.readouterr().out == text + "\n"
        assert len(server.requests) == 1
    else:  # on by default: the text is read as the subagent call it spells
        assert capsys.readouterr().out == "done\n"
        assert [first_user_text(r) for r in server.requests] == ["q", "t", "t", "q"]
