"""The agent loop: every branch of Agent.run, against the scripted model."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import anyio
import pydantic
import pytest
from _clock import on_virtual_time

from xzatoma import (
    Agent,
    Completion,
    ConfigError,
    Message,
    ProviderError,
    Tool,
    ToolContext,
    ToolResult,
    Usage,
    tool,
)
from xzatoma._loop import EMPTY_ANSWER_PROMPT
from xzatoma.events import (
    Hooks,
    ModelCallEnded,
    ModelCallStarted,
    RunEnded,
    RunStarted,
    ToolCallEnded,
    ToolCallStarted,
)
from xzatoma.testing import EventCapture, ScriptedProvider, call, reply, tool_calls

pytestmark = pytest.mark.anyio

U = Usage(1, 10, 2, 12)


@tool
async def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


@tool
async def explode(reason: str) -> str:
    """Always raises."""
    raise RuntimeError(reason)


async def test_plain_answer_with_system_prompt() -> None:
    provider = ScriptedProvider([reply("hello", usage=U)])
    result = await Agent(provider, system_prompt="be brief").run("hi")
    assert (result.status, result.output, result.turns) == ("complete", "hello", 1)
    assert result.usage == U
    assert result.total_usage == U
    assert result.error_type is None
    assert [m.role for m in result.messages] == ["system", "user", "assistant"]
    sent = provider.requests[0]
    assert sent.messages == (Message.system("be brief"), Message.user("hi"))
    assert sent.tools == ()


async def test_tool_call_result_goes_back_and_usage_is_summed() -> None:
    provider = ScriptedProvider(
        [tool_calls(call("add", a=2, b=3), usage=U), reply("it is 5", usage=U)]
    )
    result = await Agent(provider, tools=[add]).run("2+3?")
    assert result.output == "it is 5"
    assert result.turns == 2
    assert result.usage == U + U
    assert provider.requests[0].tool_names == ("add",)
    tool_message = provider.requests[1].last
    assert (tool_message.role, tool_message.content, tool_message.name) == ("tool", "5", "add")
    assert tool_message.tool_call_id == provider.requests[1].messages[-2].tool_calls[0].id


async def test_concurrent_tool_calls_keep_the_model_order() -> None:
    first_may_finish = anyio.Event()
    finished: list[str] = []

    @tool
    async def slow(name: str) -> str:
        """Finishes only after the fast one."""
        await first_may_finish.wait()
        finished.append(name)
        return f"slow {name}"

    @tool
    async def fast(name: str) -> str:
        """Finishes first and lets the slow one go."""
        finished.append(name)
        first_may_finish.set()
        return f"fast {name}"

    provider = ScriptedProvider(
        [tool_calls(call("slow", name="a"), call("fast", name="b")), reply("done")]
    )
    result = await Agent(provider, tools=[slow, fast]).run("go")
    assert finished == ["b", "a"]  # they really ran at the same time
    contents = [m.content for m in provider.requests[1].messages if m.role == "tool"]
    assert contents == ["slow a", "fast b"]
    assert result.status == "complete"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ("{not json", "arguments are not valid JSON"),
        ('{"a": "x", "b": 1}', "a: Input should be a valid integer"),
        ('{"a": 1}', "b: Field required"),
        ('{"a": 1, "b": 2, "c": 3}', "c: Extra inputs are not permitted"),
    ],
)
async def test_bad_arguments_become_an_error_the_model_can_correct(
    arguments: str, expected: str
) -> None:
    provider = ScriptedProvider(
        [tool_calls(call("add", arguments)), tool_calls(call("add", a=1, b=1)), reply("2")]
    )
    result = await Agent(provider, tools=[add]).run("add")
    error = provider.requests[1].last.content or ""
    assert error.startswith("Error: Invalid arguments for tool 'add': ")
    assert expected in error
    assert provider.requests[2].last.content == "2"
    assert (result.status, result.output) == ("complete", "2")


async def test_unknown_tool_is_an_error_listing_the_available_ones() -> None:
    provider = ScriptedProvider([tool_calls(call("mul", a=1)), reply("sorry")])
    result = await Agent(provider, tools=[add]).run("x")
    assert provider.requests[1].last.content == ("Error: Unknown tool 'mul'. Available tools: add.")
    assert result.status == "complete"


async def test_a_tool_that_raises_becomes_an_error_message() -> None:
    provider = ScriptedProvider([tool_calls(call("explode", reason="boom")), reply("ok")])
    result = await Agent(provider, tools=[explode]).run("x")
    assert provider.requests[1].last.content == ("Error: tool 'explode' raised RuntimeError: boom")
    assert result.status == "complete"


async def test_out_of_turns_is_incomplete_with_the_last_text_and_no_extra_tool_run() -> None:
    ran: list[int] = []

    @tool
    async def count() -> str:
        """Counts its runs."""
        ran.append(1)
        return "counted"

    provider = ScriptedProvider([tool_calls(call("count"), text=f"thinking {i}") for i in range(5)])
    result = await Agent(provider, tools=[count], max_turns=3).run("loop")
    assert result.status == "incomplete"
    assert result.error_type is None
    assert result.output == "thinking 2"
    assert result.turns == 3
    assert len(provider.requests) == 3
    assert len(ran) == 2  # the tools of the last allowed turn are not run


async def test_provider_failure_ends_failed_and_keeps_the_message() -> None:
    provider = ScriptedProvider(
        [tool_calls(call("add", a=1, b=2), text="partial", usage=U), ProviderError("HTTP 500")]
    )
    result = await Agent(provider, tools=[add]).run("x")
    assert result.status == "failed"
    assert result.error_type == "execution_failed"
    assert result.error is not None
    assert "HTTP 500" in result.error
    assert result.output == "partial"
    assert result.usage == U
    assert result.turns == 1


async def test_a_provider_bug_is_reported_as_failed_not_raised() -> None:
    def broken(messages: object, tools: object) -> str:
        raise KeyError("choices")

    result = await Agent(ScriptedProvider(broken)).run("x")
    assert (result.status, result.error_type) == ("failed", "execution_failed")
    assert "KeyError" in (result.error or "")


async def test_cancellation_propagates_and_ends_every_event() -> None:
    capture = EventCapture()
    entered = anyio.Event()

    async def hang(messages: object, tools: object) -> str:
        entered.set()
        await anyio.sleep_forever()
        return "never"

    agent = Agent(ScriptedProvider(hang), hooks=[capture])
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent.run, "x")
            await entered.wait()
            scope.cancel()
    assert scope.cancelled_caught
    ends = capture.of(RunEnded)
    assert len(ends) == 1
    assert ends[0].status == "cancelled"
    model_end = capture.of(ModelCallEnded)
    assert [e.error_type for e in model_end] == ["cancelled"]


@on_virtual_time
async def test_timeout_ends_failed_with_timeout_and_partial_output() -> None:
    async def answer_then_hang(messages: Sequence[Message], tools: object) -> Completion:
        if len(messages) == 1:
            return tool_calls(call("add", a=1, b=1), text="started", usage=U)
        await anyio.sleep_forever()
        raise AssertionError

    result = await Agent(ScriptedProvider(answer_then_hang), tools=[add], timeout=5).run("x")
    assert (result.status, result.error_type, result.duration) == ("failed", "timeout", 5.0)
    assert result.output == "started"
    assert result.usage == U


async def test_events_pair_up_and_nest() -> None:
    capture = EventCapture()
    provider = ScriptedProvider([tool_calls(call("add", a=1, b=1)), reply("2")])
    await Agent(provider, tools=[add], hooks=[capture], name="calc").run("x")
    kinds = [type(e).__name__ for e in capture.events]
    assert kinds == [
        "RunStarted",
        "ModelCallStarted",
        "ModelCallEnded",
        "ToolCallStarted",
        "ToolCallEnded",
        "ModelCallStarted",
        "ModelCallEnded",
        "RunEnded",
    ]
    run = capture.of(RunStarted)[0]
    assert isinstance(run, RunStarted)
    assert (run.name, run.label, run.depth, run.parent_id) == ("calc", "calc", 0, None)
    for kind in (ModelCallStarted, ToolCallStarted):
        assert all(e.run_id == run.id for e in capture.of(kind))  # type: ignore[union-attr]
    tool_end = capture.of(ToolCallEnded)[0]
    assert isinstance(tool_end, ToolCallEnded)
    assert (tool_end.tool, tool_end.is_error, tool_end.cancelled) == ("add", False, False)


async def test_a_hook_that_raises_is_dropped_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[object] = []

    def bad_hook(event: object) -> None:
        calls.append(event)
        raise ValueError("hook bug")

    caplog.set_level(logging.ERROR, logger="xzatoma.hooks")
    provider = ScriptedProvider([tool_calls(call("add", a=1, b=1)), reply("2")])
    result = await Agent(provider, tools=[add], hooks=[bad_hook]).run("x")
    assert result.status == "complete"
    assert len(calls) == 1
    assert len([r for r in caplog.records if "has been disabled" in r.getMessage()]) == 1


class _Wants:
    """A hook that asks for some event types only, and keeps what it is handed."""

    def __init__(self, *wanted: type) -> None:
        self.wanted = frozenset(wanted)
        self.asked = 0
        self.seen: list[type] = []

    def wanted_events(self) -> frozenset[type]:
        self.asked += 1
        return self.wanted

    def __call__(self, event: object) -> None:
        self.seen.append(type(event))


async def test_a_run_makes_only_the_events_its_subscribers_want() -> None:
    hook = _Wants(ModelCallEnded, ToolCallEnded)
    provider = ScriptedProvider([tool_calls(call("add", a=1, b=1)), reply("2")])
    result = await Agent(provider, tools=[add], hooks=[hook]).run("x")

    assert result.status == "complete"
    assert hook.seen == [ModelCallEnded, ToolCallEnded, ModelCallEnded]
    assert hook.asked == 1  # once, when it was added


async def test_a_wanted_start_brings_its_end_and_each_subscriber_gets_only_its_own() -> None:
    starts_only, ends_only = _Wants(RunStarted, ToolCallStarted), _Wants(ModelCallEnded)
    provider = ScriptedProvider([tool_calls(call("add", a=1, b=1)), reply("2")])
    await Agent(provider, tools=[add], hooks=[starts_only, ends_only]).run("x")

    assert starts_only.seen == [RunStarted, ToolCallStarted, ToolCallEnded, RunEnded]
    assert ends_only.seen == [ModelCallEnded, ModelCallEnded]


@pytest.mark.parametrize(
    "answer", [ValueError("bug"), None, frozenset({int})], ids=["raises", "None", "not events"]
)
async def test_a_wanted_events_that_fails_drops_its_hook_and_the_run_goes_on(
    answer: object, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(_Wants):
        def wanted_events(self) -> frozenset[type]:
            if isinstance(answer, Exception):
                raise answer
            return answer  # type: ignore[return-value]  # the wrong answers under test

    broken, fine = Broken(), _Wants(RunEnded)
    caplog.set_level(logging.ERROR, logger="xzatoma.hooks")
    agent = Agent(ScriptedProvider([reply("a"), reply("b")]), hooks=[broken, fine])
    first = await agent.run("1")
    second = await agent.run("2")

    assert (first.status, second.status) == ("complete", "complete")
    assert broken.seen == []
    assert fine.seen == [RunEnded, RunEnded]
    assert len([r for r in caplog.records if "wanted_events() failed" in r.getMessage()]) == 1


async def test_a_subscriber_without_wanted_events_gets_every_event_and_the_others_theirs() -> None:
    picky = _Wants(RunEnded)
    capture = EventCapture()
    provider = ScriptedProvider([tool_calls(call("add", a=1, b=1)), reply("2")])
    await Agent(provider, tools=[add], hooks=[picky, capture]).run("x")

    everything = [type(event) for event in capture.events]
    assert everything == [
        RunStarted,
        ModelCallStarted,
        ModelCallEnded,
        ToolCallStarted,
        ToolCallEnded,
        ModelCallStarted,
        ModelCallEnded,
        RunEnded,
    ]
    assert picky.seen == [RunEnded]


async def test_what_a_subscriber_wants_is_asked_once_when_it_is_added() -> None:
    hook = _Wants(RunEnded)
    agent = Agent(ScriptedProvider([reply("a"), reply("b")]), hooks=[hook])
    await agent.run("1")
    hook.wanted = frozenset({RunStarted, RunEnded})  # too late: worked out when it was added
    await agent.run("2")

    assert hook.seen == [RunEnded, RunEnded]
    assert hook.asked == 1


async def test_tool_decorator_schema_context_and_json_return() -> None:
    seen: list[ToolContext] = []

    @tool(name="lookup", description="Find things.")
    async def lookup_impl(ctx: ToolContext, query: str, limit: int = 3) -> dict[str, object]:
        seen.append(ctx)
        return {"query": query, "limit": limit}

    schema = lookup_impl.spec.parameters
    assert lookup_impl.spec.name == "lookup"
    assert lookup_impl.spec.description == "Find things."
    assert set(schema["properties"]) == {"query", "limit"}
    assert schema["required"] == ["query"]
    provider = ScriptedProvider([tool_calls(call("lookup", query="q")), reply("done")])
    await Agent(provider, tools=[lookup_impl], name="a").run("x")
    assert json.loads(provider.requests[1].last.content or "") == {"query": "q", "limit": 3}
    assert (seen[0].depth, seen[0].label, seen[0].agent.name) == (0, "a", "a")


async def test_tool_subclass_with_a_parameters_model() -> None:
    class Args(pydantic.BaseModel):
        text: str

    class Upper(Tool[Args]):
        name = "upper"
        description = "Upper-case a text."
        parameters = Args

        async def run(self, args: Args, ctx: ToolContext) -> ToolResult:
            return ToolResult(args.text.upper())

    provider = ScriptedProvider([tool_calls(call("upper", text="hi")), reply("HI")])
    await Agent(provider, tools=[Upper()]).run("x")
    assert provider.requests[0].tools[0].parameters["properties"]["text"]["type"] == "string"
    assert provider.requests[1].last.content == "HI"


def test_tool_decorator_refuses_a_sync_function() -> None:
    def sync(a: int) -> str:
        return str(a)

    with pytest.raises(TypeError, match="async function"):
        tool(sync)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_turns", [0, -1, True, 1.5])
def test_invalid_max_turns_is_a_config_error(max_turns: object) -> None:
    with pytest.raises(ConfigError, match="max_turns"):
        Agent(ScriptedProvider(), max_turns=max_turns)  # type: ignore[arg-type]


def test_duplicate_tool_names_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="two tools are named 'add'"):
        Agent(ScriptedProvider(), tools=[add, add])


def test_invalid_timeout_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="timeout"):
        Agent(ScriptedProvider(), timeout=0)


async def test_scripted_provider_out_of_replies_fails_the_run() -> None:
    result = await Agent(ScriptedProvider(["one"])).run("x")
    assert result.status == "complete"
    again = await Agent(ScriptedProvider([])).run("x")
    assert again.status == "failed"
    assert "ran out of replies" in (again.error or "")


async def test_an_empty_final_answer_is_asked_for_once_more() -> None:
    provider = ScriptedProvider([tool_calls(call("add", a=1, b=1), text="let me check"), "", "2"])
    result = await Agent(provider, tools=[add]).run("x")
    assert (result.status, result.output, result.turns) == ("complete", "2", 3)
    asked = provider.requests[2].messages[-1]
    assert (asked.role, asked.content) == ("user", EMPTY_ANSWER_PROMPT)


@pytest.mark.parametrize("second", ["", " \n\t "])
async def test_an_answer_empty_twice_ends_incomplete_keeping_earlier_text(second: str) -> None:
    provider = ScriptedProvider(
        [tool_calls(call("add", a=1, b=1), text="let me check"), "", second]
    )
    result = await Agent(provider, tools=[add]).run("x")
    assert (result.status, result.output, result.turns) == ("incomplete", "let me check", 3)
    assert result.error == "the model's answer was empty"


async def test_an_empty_answer_on_the_last_turn_ends_incomplete_without_asking() -> None:
    provider = ScriptedProvider([tool_calls(call("add", a=1, b=1)), ""])
    result = await Agent(provider, tools=[add], max_turns=2).run("x")
    assert (result.status, result.turns, len(provider.requests)) == ("incomplete", 2, 2)
    assert result.error == "the model's answer was empty"


async def test_a_bad_answer_is_refused_every_time_it_is_given(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = frozenset({int})
    good, first_bad = _Wants(RunEnded), _Wants()
    first_bad.wanted = bad
    hooks = Hooks([good, first_bad])
    caplog.set_level(logging.ERROR, logger="xzatoma.hooks")
    agent = Agent(ScriptedProvider([reply("a"), reply("b")]), hooks=hooks)
    await agent.run("1")
    second_bad = _Wants()
    second_bad.wanted = bad  # the same answer again, from a hook added later
    hooks.add(second_bad)
    await agent.run("2")

    assert good.seen == [RunEnded, RunEnded]
    assert first_bad.seen == second_bad.seen == []
    assert len([r for r in caplog.records if "wanted_events() failed" in r.getMessage()]) == 2
