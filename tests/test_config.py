"""The configuration file: the exact messages of docs/configuration.md, unknown keys, the API key
rule, precedence (command line > file > defaults), the provider's connections and transport,
and the batch task files."""

from __future__ import annotations

from pathlib import Path

import pytest

from xzatoma import ConfigError, OpenAIProvider, QuotaLimits, SubagentConfig
from xzatoma.config import (
    DEFAULT_BASE_URLS,
    XzatomaConfig,
    apply_overrides,
    load_config,
    load_tasks,
)
from xzatoma.providers._aiohttp_transport import AiohttpTransport
from xzatoma.providers._httpx_transport import HttpxTransport
from xzatoma.providers._loop_transport import default_max_connections

# Every validation message of docs/configuration.md, with a value that triggers it.
SECTION_6 = [
    ("max_depth", 0, "agent.subagent.max_depth must be greater than 0"),
    ("max_depth", -3, "agent.subagent.max_depth must be greater than 0"),
    ("max_depth", 11, "agent.subagent.max_depth cannot exceed 10 (stack overflow risk)"),
    ("default_max_turns", 0, "agent.subagent.default_max_turns must be greater than 0"),
    ("default_max_turns", 101, "agent.subagent.default_max_turns cannot exceed 100"),
    ("output_max_size", 1023, "agent.subagent.output_max_size must be at least 1024 bytes"),
]


def subagent(**values: object) -> dict[str, object]:
    return {"agent": {"subagent": values}}


@pytest.mark.parametrize(("key", "value", "message"), SECTION_6)
def test_section_6_message_from_dict(key: str, value: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        XzatomaConfig.from_dict(subagent(**{key: value}))
    assert str(info.value) == message


@pytest.mark.parametrize(("key", "value", "message"), SECTION_6)
def test_section_6_message_from_file_names_the_file(
    tmp_path: Path, key: str, value: int, message: str
) -> None:
    path = tmp_path / "xzatoma.yaml"
    path.write_text(f"agent:\n  subagent:\n    {key}: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {message}"


# output_max_size has no command-line option: the file is the only way to set it.
@pytest.mark.parametrize(("key", "value", "message"), SECTION_6[:-1])
def test_section_6_message_from_an_override(key: str, value: int, message: str) -> None:
    name = {"default_max_turns": "subagent_max_turns"}.get(key, key)
    with pytest.raises(ConfigError) as info:
        apply_overrides(XzatomaConfig(), **{name: value})
    assert str(info.value) == message


def test_the_core_spells_the_same_messages() -> None:
    # The config reuses SubagentConfig, so the messages exist in one place only.
    with pytest.raises(ConfigError, match=r"^agent\.subagent\.max_depth cannot exceed 10"):
        SubagentConfig(max_depth=11)


@pytest.mark.parametrize(("key", "value"), [("max_depth", 1), ("max_depth", 10),
                                            ("default_max_turns", 1), ("default_max_turns", 100),
                                            ("output_max_size", 1024)])  # fmt: skip
def test_boundaries_are_accepted(key: str, value: int) -> None:
    config = XzatomaConfig.from_dict(subagent(**{key: value}))
    assert getattr(config.subagent_config(), key) == value


def test_defaults_match_the_core() -> None:
    config = XzatomaConfig.from_dict({})
    assert config.subagent_config() == SubagentConfig()
    assert config.quota_limits() == QuotaLimits()
    assert config.agent.max_turns == 50
    assert config.telemetry.enabled is False
    assert config.telemetry.prometheus.host == "127.0.0.1"
    assert config.telemetry.prometheus.port == 9464
    assert config.build_provider() is None  # no endpoint unless one is given


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"providers": {}}, "providers"),
        ({"provider": {"url": "http://x"}}, "provider.url"),
        (subagent(max_dept=2), "agent.subagent.max_dept"),
        ({"telemetry": {"prometheus": {"path": "/m"}}}, "telemetry.prometheus.path"),
        (subagent(provider={"type": "ollama", "extra": 1}), "agent.subagent.provider.extra"),
    ],
)
def test_unknown_keys_are_refused_by_dotted_name(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^unknown key '{key}'"):
        XzatomaConfig.from_dict(data)


def test_a_typo_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="did you mean 'max_depth'"):
        XzatomaConfig.from_dict(subagent(max_dept=2))


def test_an_api_key_in_the_file_is_refused_with_the_hint() -> None:
    with pytest.raises(ConfigError) as info:
        XzatomaConfig.from_dict({"provider": {"api_key": "sk-secret"}})
    message = str(info.value)
    assert message.startswith("unknown key 'provider.api_key'")
    assert "api_key_env" in message
    assert "sk-secret" not in message


def test_the_api_key_comes_from_the_named_variable_only() -> None:
    config = XzatomaConfig.from_dict(
        {"provider": {"base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key_env": "K"}}
    )
    provider = config.build_provider({"K": "sk-from-env"})
    assert isinstance(provider, OpenAIProvider)
    assert provider._api_key == "sk-from-env"
    with pytest.raises(ConfigError, match=r"environment variable K .* is not set"):
        config.build_provider({})


def test_wrong_types_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^agent\.subagent\.max_depth: .*integer.*'3'"):
        XzatomaConfig.from_dict(subagent(max_depth="3"))
    with pytest.raises(ConfigError, match=r"^telemetry\.enabled: .*boolean"):
        XzatomaConfig.from_dict({"telemetry": {"enabled": "yes"}})
    with pytest.raises(ConfigError, match=r"^agent must be a mapping"):
        XzatomaConfig.from_dict({"agent": 5})
    with pytest.raises(ConfigError, match=r"^provider\.type: .*'ollama'"):
        XzatomaConfig.from_dict({"provider": {"type": "ollamma"}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"agent": {"max_turns": 0}}, "agent.max_turns must be greater than 0"),
        ({"agent": {"timeout_seconds": 0}}, "agent.timeout_seconds must be greater than 0"),
        (subagent(max_concurrent=0), "agent.subagent.max_concurrent must be greater than 0"),
        (subagent(timeout_seconds=-1), "agent.subagent.timeout_seconds must be greater than 0"),
        (subagent(max_executions=-1), "agent.subagent.max_executions must be at least 0"),
        (subagent(max_total_tokens=-1), "agent.subagent.max_total_tokens must be at least 0"),
        (subagent(max_total_time=0), "agent.subagent.max_total_time must be greater than 0"),
        ({"telemetry": {"prometheus": {"port": 70000}}},
         "telemetry.prometheus.port must be between 0 and 65535"),
        ({"provider": {"base_url": "ftp://x"}},
         "provider.base_url must start with http:// or https://"),
    ],
)  # fmt: skip
def test_other_limits_name_their_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        XzatomaConfig.from_dict(data)
    assert str(info.value) == message


def test_precedence_command_line_over_file_over_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "provider: {base_url: 'http://file:1/v1', model: file-model}\n"
        "agent: {subagent: {max_depth: 5, max_concurrent: 7}}\n"
    )
    from_file = load_config(path)
    merged = apply_overrides(from_file, model="cli-model", max_depth=2, base_url=None)
    assert merged.provider.model == "cli-model"  # command line wins
    assert merged.provider.base_url == "http://file:1/v1"  # None means "not given"
    assert merged.agent.subagent.max_depth == 2
    assert merged.agent.subagent.max_concurrent == 7  # from the file
    assert merged.agent.subagent.default_max_turns == 10  # the default
    assert from_file.agent.subagent.max_depth == 5  # the loaded config is not changed


def test_a_metrics_port_override_turns_telemetry_on() -> None:
    config = apply_overrides(XzatomaConfig(), metrics_port=0, metrics_host="::1")
    assert config.telemetry.enabled is True
    assert (config.telemetry.prometheus.host, config.telemetry.prometheus.port) == ("::1", 0)


def test_an_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="api_key"):
        apply_overrides(XzatomaConfig(), api_key="sk")


@pytest.mark.parametrize("kind", sorted(DEFAULT_BASE_URLS))
def test_provider_types_pick_their_default_url(kind: str) -> None:
    config = XzatomaConfig.from_dict({"provider": {"type": kind, "model": "m"}})
    provider = config.build_provider({"OPENAI_API_KEY": "sk-test"})  # OpenAI's own API needs it
    assert provider is not None
    assert provider.base_url == DEFAULT_BASE_URLS[kind]


def test_a_base_url_beats_the_type_default() -> None:
    config = XzatomaConfig.from_dict(
        {"provider": {"type": "ollama", "base_url": "http://gpu:11434/v1", "model": "m"}}
    )
    assert config.provider.endpoint == "http://gpu:11434/v1"


def test_an_endpoint_without_a_model_is_an_error() -> None:
    config = XzatomaConfig.from_dict({"provider": {"type": "ollama"}})
    with pytest.raises(ConfigError, match=r"no model .* provider\.model"):
        config.build_provider({})


def test_subagents_may_use_another_endpoint_or_model() -> None:
    config = XzatomaConfig.from_dict(
        {
            "provider": {"base_url": "http://big:1/v1", "model": "big"},
            "agent": {"subagent": {"provider": "vllm", "model": "small"}},
        }
    )
    child = config.build_provider({}, subagents=True)
    assert child is not None
    assert (child.base_url, child.model) == (DEFAULT_BASE_URLS["vllm"], "small")
    same_endpoint = XzatomaConfig.from_dict(
        {"provider": {"base_url": "http://big:1/v1", "model": "big"}, **subagent(model="small")}
    ).build_provider({}, subagents=True)
    assert same_endpoint is not None
    assert (same_endpoint.base_url, same_endpoint.model) == ("http://big:1/v1", "small")
    assert XzatomaConfig().build_provider({}, subagents=True) is None


def test_summary_prompt_null_turns_the_summary_off() -> None:
    config = XzatomaConfig.from_dict(subagent(summary_prompt=None))
    assert config.subagent_config().summary_prompt is None


def test_load_config_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent:\n  max_turns: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML at line \d+"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing but a comment\n")
    assert load_config(empty) == XzatomaConfig()


# -- issue 18: provider.max_connections and provider.transport --------------------------------


async def built(config: XzatomaConfig, *, subagents: bool = False) -> tuple[int, type]:
    """The size of the pool the built provider has, and the transport it really uses here."""
    provider = config.build_provider({}, subagents=subagents)
    assert isinstance(provider, OpenAIProvider)
    try:
        return provider.max_connections, type(await provider._transports.get())
    finally:
        await provider.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", AiohttpTransport),  # unset: auto, and the tests run on asyncio
        ("transport: null", AiohttpTransport),
        ("transport: auto", AiohttpTransport),
        ("transport: aiohttp", AiohttpTransport),
        ("transport: httpx", HttpxTransport),
    ],
)
async def test_the_file_picks_the_pool_size_and_the_transport(
    tmp_path: Path, line: str, expected: type
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"provider:\n  type: vllm\n  model: m\n  max_connections: 7\n  {line}\n")
    assert await built(load_config(path)) == (7, expected)


@pytest.mark.anyio
async def test_unset_max_connections_is_the_provider_default() -> None:
    for value in ({}, {"max_connections": None}):
        config = XzatomaConfig.from_dict({"provider": {"type": "vllm", "model": "m", **value}})
        assert config.provider.max_connections is None
        assert await built(config) == (default_max_connections(), AiohttpTransport)


@pytest.mark.anyio
async def test_subagents_inherit_connections_and_transport_key_by_key() -> None:
    root = {"type": "vllm", "model": "m", "max_connections": 7, "transport": "httpx"}
    own_endpoint = XzatomaConfig.from_dict(
        {"provider": root, **subagent(provider={"type": "ollama", "model": "small"})}
    )
    assert await built(own_endpoint, subagents=True) == (7, HttpxTransport)
    changed = XzatomaConfig.from_dict(
        {"provider": root,
         **subagent(provider={"max_connections": 3, "transport": "aiohttp"})}
    )  # fmt: skip
    assert await built(changed, subagents=True) == (3, AiohttpTransport)
    assert await built(changed) == (7, HttpxTransport)


CONNECTION_CASES = [
    ("max_connections: 0", "max_connections must be at least 1"),
    ("max_connections: -1", "max_connections must be at least 1"),
    ("max_connections: x", "max_connections: input should be a valid integer, got 'x'"),
    ("max_connections: '8'", "max_connections: input should be a valid integer, got '8'"),
    ("max_connections: true", "max_connections: input should be a valid integer, got True"),
    ("max_connections: 2.5", "max_connections: input should be a valid integer, got 2.5"),
    ("transport: quic", "transport: input should be 'auto', 'aiohttp' or 'httpx', got 'quic'"),
    ("transport: HTTPX", "transport: input should be 'auto', 'aiohttp' or 'httpx', got 'HTTPX'"),
    ("transport: 1", "transport: input should be 'auto', 'aiohttp' or 'httpx', got 1"),
]


@pytest.mark.parametrize(("line", "message"), CONNECTION_CASES)
@pytest.mark.parametrize("where", ["provider", "agent.subagent.provider"])
def test_bad_connections_or_transport_name_the_key(
    tmp_path: Path, line: str, message: str, where: str
) -> None:
    path = tmp_path / "c.yaml"
    if where == "provider":
        path.write_text(f"provider:\n  {line}\n")
    else:
        path.write_text(f"agent:\n  subagent:\n    provider:\n      type: vllm\n      {line}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {where}.{message}"


def test_overrides_set_connections_and_transport_everywhere() -> None:
    config = XzatomaConfig.from_dict(
        {"provider": {"type": "vllm", "model": "m", "max_connections": 7, "transport": "httpx"},
         **subagent(provider={"type": "ollama", "max_connections": 3})}
    )  # fmt: skip
    merged = apply_overrides(config, max_connections=50, http_transport="aiohttp")
    child = merged.agent.subagent.provider
    assert child is not None
    assert (merged.provider.max_connections, merged.provider.transport) == (50, "aiohttp")
    assert (child.max_connections, child.transport) == (50, "aiohttp")
    assert apply_overrides(config, max_connections=None).provider.max_connections == 7
    for name, value, message in [
        ("max_connections", 0, "provider.max_connections must be at least 1"),
        ("max_connections", True,
         "provider.max_connections: input should be a valid integer, got True"),
        ("http_transport", "quic",
         "provider.transport: input should be 'auto', 'aiohttp' or 'httpx', got 'quic'"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError) as info:
            apply_overrides(config, **{name: value})
        assert str(info.value) == message


# -- batch task files ----------------------------------------------------------------------


def test_tasks_from_jsonl_skip_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"label": "a", "task_prompt": "do a"}\n\n'
        '{"label": "b", "task_prompt": "do b", "max_turns": 3, "allowed_tools": []}\n'
    )
    tasks = load_tasks(path)
    assert [t.label for t in tasks] == ["a", "b"]
    assert tasks[1].max_turns == 3


@pytest.mark.parametrize(
    "text",
    [
        "- {label: a, task_prompt: do a}\n- {label: b, task_prompt: do b}\n",
        "tasks:\n  - {label: a, task_prompt: do a}\n  - {label: b, task_prompt: do b}\n",
    ],
)
def test_tasks_from_yaml_list_or_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    assert [t.label for t in load_tasks(path)] == ["a", "b"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("t.jsonl", '{"label": "a", "task_prompt": "x"}\n{"label": "b"}\n',
         r"t\.jsonl, line 2: task_prompt: field required"),
        ("t.jsonl", '{"label": "a", "task_prompt": "x"}\n\n{oops\n',
         r"t\.jsonl, line 3: invalid JSON"),
        ("t.jsonl", '["a"]\n', r"t\.jsonl, line 1: a task must be a mapping"),
        ("t.jsonl", '{"label": "a", "task_prompt": "x", "tools": []}\n',
         r"t\.jsonl, line 1: unknown key 'tools'; a task has: label, task_prompt"),
        ("t.yml", "- label: a\n  task_prompt: x\n- label: ' '\n  task_prompt: y\n",
         r"t\.yml, line 3: label: value error, must not be blank"),
        ("t.yaml", "tasks:\n  - label: a\n    task_prompt: x\n    max_turns: 99\n",
         r"t\.yaml, line 2: max_turns: input should be less than or equal to 50"),
        ("t.yaml", "label: a\n", r"t\.yaml: expected a list of tasks"),
        ("t.jsonl", "\n", r"t\.jsonl: no tasks"),
        ("t.txt", "x", r"t\.txt: a tasks file must end in \.jsonl, \.yaml or \.yml"),
    ],
)  # fmt: skip
def test_task_file_errors_name_the_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_tasks(path)
