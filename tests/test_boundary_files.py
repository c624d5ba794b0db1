"""Hardening at the boundary, the user's files (issue 11, items 5, 11, 12 and 13): the
configuration and tasks files are parsed with bounded alias expansion, refuse duplicate keys,
hold strict types, quote only short excerpts of bad values, split JSONL on ``\\n`` only, and
refuse a base URL whose port is out of range; the three provider keys are validated with the
exact messages."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_cli import child_env

from xzatoma import ConfigError
from xzatoma.cli import main
from xzatoma.config import XzatomaConfig, apply_overrides, load_config, load_tasks

# ~300 bytes that PyYAML expands to 10**9 strings ("billion laughs").
BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{b}: &{b} [{','.join(['*' + a] * 10)}]"
            for a, b in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def validate(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str, str]:
    code = main(["config", "validate", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


# -- item 11: alias bombs, in a subprocess bounded in memory and time ------------------------

_BOUNDED_LOAD = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB: the old parser blew past it
from xzatoma import ConfigError
from xzatoma.config import load_config, load_tasks
load = load_tasks if sys.argv[1].endswith(".yaml") and "tasks" in sys.argv[1] else load_config
began = time.monotonic()
try:
    load(sys.argv[1])
except ConfigError as exc:
    print(f"{time.monotonic() - began:.3f}", exc, sep="\\n")
else:
    print("loaded")
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS bounds the child's memory")
@pytest.mark.parametrize(
    ("name", "document"),
    [
        ("config.yaml", BOMB + "\nagent:\n  subagent:\n    summary_prompt: *i\n"),
        ("tasks.yaml", BOMB + "\ntasks:\n  - {label: x, task_prompt: y, allowed_tools: *i}\n"),
    ],
)
def test_an_alias_bomb_is_a_clear_error_at_once(tmp_path: Path, name: str, document: str) -> None:
    assert len(BOMB) < 400
    path = write(tmp_path, name, document)
    done = subprocess.run(
        [sys.executable, "-c", _BOUNDED_LOAD, str(path)],
        env=child_env(), capture_output=True, text=True, timeout=50, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, message = done.stdout.splitlines()
    assert float(seconds) < 5  # "well under a second" on a quiet machine; this one is noisy
    assert message.startswith(f"{path}: YAML aliases (*name) would repeat more than 10000 nodes")


def test_moderate_aliases_are_fine(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "tasks.yaml",
        "common: &p Summarise in one line\n"
        "tasks:\n"
        "  - {label: a, task_prompt: do a, summary_prompt: *p}\n"
        "  - {label: b, task_prompt: do b, summary_prompt: *p}\n",
    )
    with pytest.raises(ConfigError, match="expected a list of tasks"):
        load_tasks(path)  # a mapping holding more than 'tasks' is not a tasks file
    path.write_text("- &t {label: a, task_prompt: do a}\n- {label: b, task_prompt: do b}\n")
    assert [t.label for t in load_tasks(path)] == ["a", "b"]


def test_a_self_referencing_alias_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "agent: &a\n  subagent: *a\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: line \d+: a YAML alias refers to its own"):
        load_config(path)


# -- item 11: duplicate keys ---------------------------------------------------------------


def test_a_duplicate_key_in_the_config_is_named_with_its_lines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, "c.yaml", "agent:\n  max_turns: 5\n  max_turns: 7\n")
    code, out, err = validate(capsys, path)
    assert (code, out) == (2, "")
    assert err == (
        f"xzatoma: error: {path}: line 3: duplicate key 'max_turns' (first at line 2); "
        "give each key once\n"
    )


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("t.yaml", "- label: a\n  task_prompt: x\n  label: b\n",
         "line 3: duplicate key 'label' (first at line 1)"),
        ("t.yaml", "tasks: []\ntasks:\n  - {label: a, task_prompt: x}\n",
         "line 2: duplicate key 'tasks' (first at line 1)"),
        ("t.jsonl", '{"label": "a", "task_prompt": "x"}\n{"label": "a", "label": "b"}\n',
         "line 2: duplicate key 'label'"),
    ],
)  # fmt: skip
def test_a_duplicate_key_in_a_tasks_file_is_named(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_tasks(write(tmp_path, name, text))
    assert message in str(info.value)


# -- item 11: strict types in the tasks file too -------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("t.jsonl", '{"label": "a", "task_prompt": "x", "max_turns": "5"}\n'),
        ("t.jsonl", '{"label": "a", "task_prompt": "x", "max_turns": true}\n'),
        ("t.yaml", "- {label: a, task_prompt: x, max_turns: '5'}\n"),
        ("t.yaml", "- {label: a, task_prompt: x, max_turns: true}\n"),
        ("t.yaml", "- {label: a, task_prompt: x, allowed_tools: [1]}\n"),
        ("t.yaml", "- {label: 7, task_prompt: x}\n"),
    ],
)
def test_tasks_files_hold_strict_types(tmp_path: Path, name: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_tasks(write(tmp_path, name, text))
    message = str(info.value)
    assert "line 1: " in message
    key = "max_turns" if "max_turns" in text else "allowed_tools" if "tools" in text else "label"
    assert f"{key}" in message
    assert "input should be a valid" in message


def test_the_model_facing_tool_arguments_stay_lenient() -> None:
    from xzatoma._subagent_models import SubagentTask

    assert SubagentTask.model_validate(
        {"label": "a", "task_prompt": "x", "max_turns": "5"}
    ).max_turns == 5  # fmt: skip


# -- item 11: no message repeats an unbounded value ----------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.yaml", f"provider:\n  model: [{', '.join(['xxxxxxxxxx'] * 5000)}]\n"),
        ("c.yaml", f"agent:\n  max_turns: '{'y' * 100_000}'\n"),
        ("c.yaml", f"provider:\n  ? {'k' * 100_000}\n  : 1\n"),
        ("c.yaml", f"agent: {'z' * 100_000}\n"),
    ],
)
def test_config_errors_quote_at_most_an_excerpt(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, text: str
) -> None:
    path = write(tmp_path, name, text)
    code, _, err = validate(capsys, path)
    assert code == 2
    assert len(err) < len(str(path)) + 400, err[:600]
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "line",
    [
        json.dumps(["x" * 100_000]),
        json.dumps({"label": "a", "task_prompt": "x", "max_turns": "9" * 100_000}),
        json.dumps({"label": "a", "task_prompt": "x", "k" * 100_000: 1}),
    ],
)
def test_task_errors_quote_at_most_an_excerpt(tmp_path: Path, line: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_tasks(write(tmp_path, "t.jsonl", line + "\n"))
    assert len(str(info.value)) < len(str(tmp_path)) + 400, str(info.value)[:600]


# -- item 12: JSONL is split on \n only -----------------------------------------------------


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path: Path, separator: str) -> None:
    prompt = f"first{separator}second"
    rows = [{"label": "a", "task_prompt": prompt}, {"label": "b", "task_prompt": "plain"}]
    path = tmp_path / "t.jsonl"
    path.write_bytes(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode("utf-8") + b"\n"
    )
    tasks = load_tasks(path)
    assert [t.task_prompt for t in tasks] == [prompt, "plain"]


def test_jsonl_with_crlf_line_ends_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"label": "a", "task_prompt": "x\xe2\x80\xa8y"}\r\n\r\n{"label": "b"}\r\n')
    with pytest.raises(ConfigError, match=r"t\.jsonl, line 3: task_prompt: field required$"):
        load_tasks(path)
    path.write_bytes(b'{"label": "a", "task_prompt": "x"}\r\n{"label": "b", "task_prompt": "y"}')
    assert [t.label for t in load_tasks(path)] == ["a", "b"]


# -- item 13: base URL ports, in the file and on `config validate` --------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("provider:\n  base_url: http://127.0.0.1:99999/v1\n",
         "provider.base_url has port 99999, outside 1..65535"),
        ("agent:\n  subagent:\n    provider: {base_url: 'http://127.0.0.1:0/v1'}\n",
         "agent.subagent.provider.base_url has port 0, outside 1..65535"),
        ("agent:\n  subagent:\n    provider: {base_url: 'ftp://x'}\n",
         "agent.subagent.provider.base_url must start with http:// or https://"),
    ],
)  # fmt: skip
def test_config_validate_refuses_a_port_out_of_range(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, "c.yaml", text)
    code, out, err = validate(capsys, path)
    assert (code, out) == (2, "")
    assert err == f"xzatoma: error: {path}: {message}\n"


# -- item 5: the provider's timeout, retries and reply cap in the file -----------------------

PROVIDER_CASES = [
    ("timeout_seconds: 0", "provider.timeout_seconds must be greater than 0"),
    ("timeout_seconds: -1.5", "provider.timeout_seconds must be greater than 0"),
    ("timeout_seconds: .nan", "provider.timeout_seconds must be greater than 0"),
    ("max_retries: -1", "provider.max_retries must be at least 0"),
    ("max_response_bytes: 1023", "provider.max_response_bytes must be at least 1024 bytes"),
]


@pytest.mark.parametrize(("line", "message"), PROVIDER_CASES)
@pytest.mark.parametrize("where", ["provider", "agent.subagent.provider"])
def test_provider_keys_have_the_exact_messages(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, line: str, message: str, where: str
) -> None:
    if where == "provider":
        text = f"provider:\n  {line}\n"
    else:
        text = f"agent:\n  subagent:\n    provider:\n      type: vllm\n      {line}\n"
        message = f"agent.subagent.{message}"
    path = write(tmp_path, "c.yaml", text)
    code, _, err = validate(capsys, path)
    assert code == 2
    assert err == f"xzatoma: error: {path}: {message}\n"


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("timeout_seconds: '5'", "provider.timeout_seconds"),
        ("timeout_seconds: true", "provider.timeout_seconds"),
        ("max_retries: 1.0", "provider.max_retries"),
        ("max_retries: '2'", "provider.max_retries"),
        ("max_response_bytes: true", "provider.max_response_bytes"),
    ],
)
def test_provider_keys_are_strictly_typed(tmp_path: Path, line: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^.*: {key}: input should be a valid"):
        load_config(write(tmp_path, "c.yaml", f"provider:\n  {line}\n"))


def test_provider_keys_defaults_and_overrides() -> None:
    config = XzatomaConfig.from_dict(
        {"provider": {"timeout_seconds": 5, "max_retries": 0, "max_response_bytes": 4096}}
    )
    assert (config.provider.timeout_seconds, config.provider.max_retries) == (5, 0)
    assert XzatomaConfig().provider.timeout_seconds is None  # not set: 60 s when running
    for name, value, message in [
        ("request_timeout", 0.0, "provider.timeout_seconds must be greater than 0"),
        ("max_retries", -1, "provider.max_retries must be at least 0"),
        ("max_response_bytes", 10, "provider.max_response_bytes must be at least 1024 bytes"),
    ]:
        with pytest.raises(ConfigError) as info:
            apply_overrides(config, **{name: value})
        assert str(info.value) == message


def test_a_flag_sets_the_subagent_provider_too() -> None:
    text = textwrap.dedent("""\
        provider: {type: vllm, model: m, timeout_seconds: 30}
        agent: {subagent: {provider: {type: ollama, model: small, max_retries: 5}}}
    """)
    import yaml

    config = apply_overrides(XzatomaConfig.from_dict(yaml.safe_load(text)), max_retries=1)
    sub = config.agent.subagent.provider
    assert sub is not None
    assert (config.provider.max_retries, sub.max_retries) == (1, 1)
    assert (config.provider.timeout_seconds, sub.timeout_seconds) == (30, None)


# -- round 2: what a hostile tester found in the committed work -----------------------------


def refused(capsys: pytest.CaptureFixture[str], path: Path) -> str:
    """The one error line ``config validate`` or ``batch`` prints for ``path``."""
    if path.suffix == ".jsonl" or path.name.startswith("tasks"):
        code = main(["batch", str(path), "--base-url", "http://127.0.0.1:9/v1", "--model", "m"])
    else:
        code = main(["config", "validate", str(path)])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.rstrip("\n")


@pytest.mark.parametrize("name", ["config.yaml", "tasks.yaml"])
@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f", "\x9b"], ids=["NUL", "ESC", "DEL", "CSI"])
def test_a_raw_control_character_in_yaml_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, char: str
) -> None:
    text = f"# fine\nprovider: {{model: a{char}b}}\n"
    if name.startswith("tasks"):
        text = f"# fine\n- {{label: a{char}b, task_prompt: x}}\n"
    path = write(tmp_path, name, text)
    code = f"U+{ord(char):04X}"
    assert refused(capsys, path) == (
        f"xzatoma: error: {path}: invalid YAML at line 2: control character {code} is not "
        "allowed (in a double-quoted string write it as an escape, e.g. \\x1b)"
    )


@pytest.mark.parametrize("name", ["config.yaml", "tasks.yaml"])
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("9" * 5000, "Exceeds the limit (4300 digits) for integer string conversion: value has "
                     "5000 digits"),
        ("2024-13-45", "month must be in 1..12"),
    ],
    ids=["huge-int", "bad-date"],
)  # fmt: skip
def test_a_value_pyyaml_cannot_build_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, value: str, problem: str
) -> None:
    text = f"agent:\n  max_turns: {value}\n"
    if name.startswith("tasks"):
        text = f"- label: a\n  task_prompt: x\n  max_turns: {value}\n"
    path = write(tmp_path, name, text)
    line = 2 if name.startswith("config") else 3
    assert refused(capsys, path) == (
        f"xzatoma: error: {path}: invalid YAML at line {line}: {problem}"
    )


_BOUNDED_READ = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB: the old reader blew past it
from xzatoma import ConfigError
from xzatoma.config import load_config, load_tasks
load = load_tasks if sys.argv[1].endswith(".jsonl") else load_config
try:
    load(sys.argv[1])
except ConfigError as exc:
    print(exc)
except MemoryError:
    print("MemoryError")
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.platform != "linux", reason="/dev/zero, RLIMIT_AS")
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("config.yaml", "a configuration file may hold at most 1048576 bytes (1 MiB)"),
        ("tasks.jsonl", "a tasks file may hold at most 67108864 bytes (64 MiB)"),
    ],
)
def test_an_endless_file_is_refused_at_its_cap(tmp_path: Path, name: str, message: str) -> None:
    path = tmp_path / name
    path.symlink_to("/dev/zero")
    done = subprocess.run(
        [sys.executable, "-c", _BOUNDED_READ, str(path)],
        capture_output=True, text=True, env=child_env(), timeout=50, check=False,
    )  # fmt: skip
    assert done.stdout == f"{path}: {message}; this one is bigger\n", done.stderr


def test_a_config_file_just_over_the_cap_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = "#" * 1023 + "\n"
    path = write(tmp_path, "config.yaml", line * 1024)  # exactly 1 MiB: fine
    assert validate(capsys, path)[0] == 0
    path = write(tmp_path, "config.yaml", line * 1024 + "\n")
    assert refused(capsys, path).endswith("(1 MiB); this one is bigger")


def test_a_jsonl_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", '\ufeff{"label": "a", "task_prompt": "x"}\n')
    assert [task.label for task in load_tasks(path)] == ["a"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("provider: {timeout_seconds: .inf}", "provider.timeout_seconds must be a finite number"),
        ("agent: {timeout_seconds: .inf}", "agent.timeout_seconds must be a finite number"),
        ("agent: {subagent: {timeout_seconds: .inf}}",
         "agent.subagent.timeout_seconds must be a finite number"),
        ("agent: {subagent: {max_total_time: -.inf}}",
         "agent.subagent.max_total_time must be a finite number"),
        ("agent: {subagent: {provider: {timeout_seconds: .inf}}}",
         "agent.subagent.provider.timeout_seconds must be a finite number"),
        ("provider: {max_retries: 101}", "provider.max_retries cannot exceed 100"),
        ("agent: {subagent: {provider: {max_retries: 1000}}}",
         "agent.subagent.provider.max_retries cannot exceed 100"),
        ("provider: {api_key_env: ''}",
         "provider.api_key_env must name an environment variable; it is empty"),
    ],
)  # fmt: skip
def test_infinite_numbers_and_empty_names_are_refused_by_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, "c.yaml", text + "\n")
    assert refused(capsys, path) == f"xzatoma: error: {path}: {message}"
