"""How a run ends when the model's reply was cut short (``length``, ``content_filter``), how
the parent model hears of it, and what the model is shown and may send for the subagent
tools (the forms small local models manage)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from xzatoma import (
    Agent,
    Completion,
    ConfigError,
    Message,
    ModelSettings,
    OpenAIProvider,
    Runtime,
    SubagentConfig,
    ToolSpec,
    tool,
)
from xzatoma._model_schema import schema_for_models
from xzatoma.testing import ScriptedProvider, call, reply, tool_calls

pytestmark = pytest.mark.anyio


async def test_a_reply_cut_at_the_length_limit_ends_the_run_incomplete_with_its_text() -> None:
    provider = ScriptedProvider([Completion(content="Once upon a", finish_reason="length")])
    result = await Agent(provider).run("tell a story")
    assert (result.status, result.output, result.turns) == ("incomplete", "Once upon a", 1)
    assert result.error_type is None
    assert result.error == (
        "the model's reply was cut at its length limit, finish_reason 'length'; "
        "the answer is not complete"
    )


async def test_the_length_message_names_max_tokens_when_the_provider_sets_it() -> None:
    provider = OpenAIProvider("http://127.0.0.1:9/v1", "m", max_tokens=8)

    async def complete(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        return Completion(content="Once", finish_reason="length")

    provider.complete = complete  # type: ignore[method-assign]  # no endpoint needed here
    result = await Agent(provider).run("tell a story")
    assert result.status == "incomplete"
    assert "(max_tokens=8)" in (result.error or "")


async def test_tool_calls_in_a_cut_reply_are_not_run() -> None:
    ran: list[str] = []

    async def echo(text: str) -> str:
        ran.append(text)
        return text

    cut_calls = Completion(
        content="calling", tool_calls=(call("echo", text="hi"),), finish_reason="length"
    )
    result = await Agent(ScriptedProvider([cut_calls]), tools=[tool(echo)]).run("go")
    assert (result.status, result.output, ran) == ("incomplete", "calling", [])


async def test_a_content_filter_stop_is_a_failure_with_a_clear_message() -> None:
    provider = ScriptedProvider([Completion(content="I can", finish_reason="content_filter")])
    result = await Agent(provider).run("x")
    assert (result.status, result.error_type) == ("failed", "execution_failed")
    assert result.error == (
        "the provider's content filter stopped the model's reply (finish_reason 'content_filter')"
    )


@pytest.mark.parametrize("finish", ["stop", "tool_calls", None, "eos", ""])
async def test_other_finish_reasons_are_a_complete_answer(finish: str | None) -> None:
    provider = ScriptedProvider([Completion(content="done", finish_reason=finish)])
    result = await Agent(provider).run("x")
    assert (result.status, result.output) == ("complete", "done")


async def test_the_parent_model_is_told_its_child_was_cut_short() -> None:
    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if messages[0].content == "root":
            if messages[-1].role == "user":
                return tool_calls(call("subagent", label="story", task_prompt="child"))
            return reply("the child's story was cut")
        return Completion(content="Once upon a", finish_reason="length")

    provider = ScriptedProvider(model)
    runtime = Runtime(provider, subagents=SubagentConfig(summary_prompt=None))
    result = await runtime.run("root")
    assert result.status == "complete"
    (child,) = result.children
    assert (child.status, child.output, child.depth) == ("incomplete", "Once upon a", 1)
    told = provider.requests[-1].last.content or ""
    assert told.startswith("[subagent 'story' ended incomplete: the model's reply was cut")
    assert told.endswith("Once upon a")


async def test_a_cut_summary_is_incomplete_and_keeps_the_whole_task_answer() -> None:
    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if messages[0].content == "root":
            if messages[-1].role == "user":
                return tool_calls(call("subagent", label="s", task_prompt="child"))
            return reply("done")
        if len(messages) == 1:
            return reply("the task answer")
        return Completion(content="Summary: the ta", finish_reason="length")

    result = await Runtime(ScriptedProvider(model)).run("root")
    (child,) = result.children
    assert (child.status, child.output, child.turns) == ("incomplete", "the task answer", 2)
    assert "finish_reason 'length'" in (child.error or "")


# -- what the model is shown and may send for the subagent tools ------------------------------
def subagent_specs() -> dict[str, dict[str, object]]:
    agent = Runtime(ScriptedProvider(["x"])).agent()
    return {spec.name: dict(spec.parameters) for spec in agent.specs}


def test_the_subagent_schemas_have_no_titles_refs_or_null_choices() -> None:
    text = json.dumps(subagent_specs())
    assert '"title"' not in text
    assert "$ref" not in text
    assert "$defs" not in text
    assert '"null"' not in text
    task = subagent_specs()["parallel_subagent"]["properties"]["tasks"]["items"]  # type: ignore[index]
    assert task["required"] == ["label", "task_prompt"]
    assert task["properties"]["max_turns"] == {
        "maximum": 50,
        "minimum": 1,
        "type": "integer",
        "description": "Model calls the subagent may make (1-50).",
    }


def test_schema_for_models_keeps_a_property_called_title_and_data_values() -> None:
    schema = {
        "title": "Book",
        "type": "object",
        "properties": {
            "title": {"title": "Title", "type": "string", "default": None},
            "meta": {"anyOf": [{"$ref": "#/$defs/Meta"}, {"type": "null"}], "default": None},
            "tree": {"$ref": "#/$defs/Tree"},
        },
        "$defs": {
            "Meta": {"title": "Meta", "type": "object", "examples": [{"title": "kept"}]},
            "Tree": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Tree"}}},
        },
    }
    assert schema_for_models(schema) == {
        "type": "object",
        "properties": {
            "title": {"type": "string", "default": None},
            "meta": {"type": "object", "examples": [{"title": "kept"}]},
            "tree": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Tree"}}},
        },
        "$defs": {"Tree": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Tree"}}}},
    }


async def test_schema_words_a_model_copies_into_a_subagent_call_are_ignored() -> None:
    sent = [
        call("subagent", label="a", task_prompt="leaf", fail_fast=True, required=["label"]),
        call(
            "parallel_subagent",
            {"tasks": [{"label": "p", "task_prompt": "leaf", "type": "object"}], "title": "x"},
        ),
    ]

    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if messages[0].content == "root":
            return tool_calls(*sent) if messages[-1].role == "user" else reply("done")
        return reply("leaf done")

    runtime = Runtime(ScriptedProvider(model), subagents=SubagentConfig(summary_prompt=None))
    result = await runtime.run("root")
    assert [(c.label, c.status) for c in result.children] == [("a", "complete"), ("p", "complete")]
    assert runtime.tracker.statistics().executions == 2


async def test_known_keys_with_bad_values_are_still_refused() -> None:
    sent = call("subagent", label="a", task_prompt="leaf", max_turns=0, required=["label"])
    provider = ScriptedProvider([tool_calls(sent), reply("done")])
    result = await Runtime(provider).run("root")
    (child,) = result.children
    assert (child.status, child.error_type) == ("failed", "invalid_input")
    assert "max_turns: Input should be greater than or equal to 1" in (child.error or "")
    assert "required" not in (child.error or "")


def test_tasks_from_python_stay_strict() -> None:
    from xzatoma import ConfigError, SubagentTask

    with pytest.raises((ConfigError, ValueError), match="Extra inputs are not permitted"):
        SubagentTask.model_validate({"label": "a", "task_prompt": "x", "mood": "good"})


def test_model_settings_are_a_public_frozen_value() -> None:
    settings = ModelSettings(temperature=0.0, seed=7)
    assert settings.merged(ModelSettings(seed=8)) == ModelSettings(temperature=0.0, seed=8)


async def test_a_child_inherits_the_parents_settings_with_the_configs_on_top() -> None:
    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if messages[0].content == "root" and messages[-1].role == "user":
            return tool_calls(call("subagent", label="c", task_prompt="child"))
        return reply("done")

    parent = ScriptedProvider(model, settings=ModelSettings(temperature=0.0, seed=7))
    config = SubagentConfig(summary_prompt=None, model_settings=ModelSettings(temperature=0.9))
    await Runtime(parent, subagents=config).run("root")
    seen = [(r.messages[0].content, r.settings) for r in parent.requests]
    assert seen == [
        ("root", ModelSettings(temperature=0.0, seed=7)),
        ("child", ModelSettings(temperature=0.9, seed=7)),
        ("root", ModelSettings(temperature=0.0, seed=7)),
    ]


async def test_a_tool_choice_none_reply_is_never_read_as_tool_calls() -> None:
    import logging

    from xzatoma.providers._tool_replies import ToolReplies

    replies = ToolReplies(logging.getLogger("t"), "http://x", recover=True)
    spec = ToolSpec("search", "", {"type": "object"})
    text = Completion(content='{"name": "search", "arguments": {"q": "x"}}')
    assert replies.check(text, [spec], "m", ModelSettings(tool_choice="none")) == text
    one = Completion(
        content='{"name": "search", "arguments": {}} {"name": "search", "arguments": {}}'
    )
    single = replies.check(one, [spec], "m", ModelSettings(parallel_tool_calls=False))
    assert [c.name for c in single.tool_calls] == ["search"]
    both = replies.check(one, [spec], "m")
    assert len(both.tool_calls) == 2


async def test_a_subagent_provider_without_with_settings_still_serves_the_children() -> None:
    class Plain:
        name, model = "plain", "plain-model"

        async def complete(
            self, messages: Sequence[Message], tools: Sequence[ToolSpec]
        ) -> Completion:
            return reply("child answer")

    parent = ScriptedProvider(
        [tool_calls(call("subagent", label="c", task_prompt="x")), reply("done")],
        settings=ModelSettings(temperature=0.0),
    )
    config = SubagentConfig(summary_prompt=None, provider=Plain())
    result = await Runtime(parent, subagents=config).run("root")
    assert [(c.status, c.output) for c in result.children] == [("complete", "child answer")]
    with pytest.raises(ConfigError, match="has no with_settings"):
        Runtime(
            parent, subagents=SubagentConfig(provider=Plain(), model_settings=ModelSettings(seed=1))
        )
