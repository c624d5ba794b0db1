"""Prices and the cost limit (issue 14): what a run costs, as a user reads it.

Prices are checked against genai-prices itself (a flat model by URL and by name, a tiered one
on both sides of its threshold), and against prices given for a local model. An unknown price
is ``None``, never 0, all the way up the tree and into ``--json``. Costs add up exactly over a
scripted tree with a parallel batch and a nested subagent. ``max_total_cost`` stops spawns and
running subagents like ``max_total_tokens`` does, never the root, and is refused before
anything runs when a model of the tree has no price. The config file, the command line (a real
OpenAI-compatible server on 127.0.0.1), the demo, the telemetry (in-memory OTel, then
``/metrics``) and the per-call hot path follow.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import anyio
import genai_prices
import httpx
import pytest
from _http_server import MakeProvider, Reply, ScriptedHTTPServer
from prometheus_client.parser import text_string_to_metric_families
from test_cli import chat, cli, endpoint, one_error_line, tasks_file

import xzatoma
from xzatoma import (
    Agent,
    Batch,
    Completion,
    ConfigError,
    Instrument,
    Message,
    ModelCall,
    OpenAIProvider,
    Price,
    Pricing,
    QuotaLimits,
    QuotaTracker,
    Run,
    RunResult,
    Runtime,
    SubagentConfig,
    SubagentTool,
    ToolCall,
    ToolSpec,
    Usage,
    _pricing,
    tool,
)
from xzatoma.config import XzatomaConfig, load_config
from xzatoma.errors import QuotaExceeded, usd
from xzatoma.telemetry import TelemetryCapture, capture_telemetry, configure, start_metrics_server
from xzatoma.telemetry import _names as n
from xzatoma.telemetry._config import configuration, restore
from xzatoma.testing import ScriptedProvider, call, reply, tool_calls

OPENAI = "https://api.openai.com/v1"
LOCAL = "http://127.0.0.1:8080/v1"
UNLISTED = "unlisted-local-model"
"""A model name genai-prices does not know (checked in the first test that uses it)."""
NO_SUMMARY = SubagentConfig(summary_prompt=None)


def use(prompt: int, completion: int) -> Usage:
    """The usage of one model call."""
    return Usage(1, prompt, completion, prompt + completion)


def genai_cost(prompt: int, completion: int, model: str, api_url: str | None = None) -> Decimal:
    """What genai-prices itself says ``prompt`` in and ``completion`` out cost."""
    usage = genai_prices.Usage(input_tokens=prompt, output_tokens=completion)
    total: Decimal = genai_prices.calc_price(usage, model, provider_api_url=api_url).total_price
    return total


def chat_body(content: str, prompt: int, completion: int, model: str) -> dict[str, Any]:
    """An OpenAI ``/chat/completions`` reply with its usage."""
    return {
        "id": "x",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content},
             "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
    }  # fmt: skip


def walk(result: RunResult) -> Iterator[RunResult]:
    yield result
    for child in result.children:
        yield from walk(child)


def by_label(result: RunResult) -> dict[str, RunResult]:
    return {node.label: node for node in walk(result)}


@tool
async def search(query: str) -> str:
    """Search for something."""
    return f"found {query}"


class Costs(Instrument):
    """A hook that keeps what hooks see of costs: every model call's, every run's at its end,
    every batch's result."""

    def __init__(self) -> None:
        self.calls: list[Decimal | None] = []
        self.runs: dict[str, Decimal | None] = {}
        self.batches: list[Decimal | None] = []
        self.running: list[Decimal | None] = []

    def model_call_started(self, run: Run, call: ModelCall) -> None:
        self.running.append(call.cost)

    def model_call_ended(self, run: Run, call: ModelCall) -> None:
        self.calls.append(call.cost)

    def run_ended(self, run: Run) -> None:
        self.runs[run.label] = run.cost

    def batch_ended(self, run: Run, batch: Batch) -> None:
        assert batch.result is not None
        self.batches.append(batch.result.total_cost)


# -- the tree of section 3: a nested subagent and a parallel batch -----------------------------
PRICE = Price(3, 15)
"""$3 in, $15 out per million tokens, for the model ``priced``."""
ROOT_CALL, MID_CALL, LEAF_CALL = use(1000, 100), use(2000, 50), use(500, 20)
ROOT_COST, MID_COST, LEAF_COST = Decimal("0.0045"), Decimal("0.00675"), Decimal("0.0018")


def spawn(label: str, prompt: str) -> ToolCall:
    return call("subagent", label=label, task_prompt=prompt)


def tree_model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
    """root: spawns ``a`` (which spawns ``b``) and a batch of ``p1``, ``p2``; then answers."""
    first, answered = messages[0].content, messages[-1].role == "tool"
    if first == "root":
        if answered:
            return reply("root done", usage=ROOT_CALL)
        batch = call(
            "parallel_subagent",
            tasks=[{"label": p, "task_prompt": "leaf"} for p in ("p1", "p2")],
        )
        return tool_calls(spawn("a", "mid"), batch, usage=ROOT_CALL)
    if first == "mid":
        if answered:
            return reply("mid done", usage=MID_CALL)
        return tool_calls(spawn("b", "leaf"), usage=MID_CALL)
    return reply("leaf done", usage=LEAF_CALL)


def tree_runtime(**options: Any) -> Runtime:
    options.setdefault("pricing", {"priced": PRICE})
    options.setdefault("telemetry", False)
    return Runtime(ScriptedProvider(tree_model, model="priced"), subagents=NO_SUMMARY, **options)


# == 1. prices, checked against genai-prices =================================================
def test_price_and_pricing_are_exported() -> None:
    assert {"Price", "Pricing"} <= set(xzatoma.__all__)
    assert xzatoma.Price is Price
    assert xzatoma.Pricing is Pricing


@pytest.mark.anyio
async def test_gpt_4o_at_openai_costs_what_genai_prices_says() -> None:
    """A real OpenAIProvider at OpenAI's URL, its HTTP faked at the boundary (no network)."""
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(200, json=chat_body("ok", 1234, 567, "gpt-4o-2024-08-06"))

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        provider = OpenAIProvider(OPENAI, "gpt-4o", client=client)
        assert isinstance(Pricing().price_for(provider), Price)  # a flat rate
        result = await Agent(provider).run("hi")
    assert hosts == ["api.openai.com"]
    expected = genai_cost(1234, 567, "gpt-4o", OPENAI)
    assert expected > 0
    assert result.cost == result.total_cost == expected
    assert isinstance(result.cost, Decimal)


@pytest.mark.anyio
async def test_claude_by_name_costs_what_genai_prices_says() -> None:
    model = "claude-sonnet-4-20250514"
    provider = ScriptedProvider([reply("ok", usage=use(1234, 567))] * 2, model=model)
    agent = Agent(provider)
    one, two = await agent.run("hi"), await agent.run("again")
    expected = genai_cost(1234, 567, model)
    assert expected > 0
    assert one.cost == two.cost == expected
    assert isinstance(Pricing().price_of(model), Price)


def test_the_tiered_model_is_tiered_in_genai_prices() -> None:
    """gemini-2.5-pro: a higher rate above 200,000 prompt tokens (the tests below rely on it)."""
    below, above = (
        genai_cost(200_000, 500, "gemini-2.5-pro"),
        genai_cost(200_001, 500, "gemini-2.5-pro"),
    )
    assert above - below > Decimal("0.2")  # the whole call moves to the higher rate


@pytest.mark.anyio
@pytest.mark.parametrize("prompt", [1000, 200_000, 200_001, 350_000])
async def test_a_tiered_price_below_and_above_its_threshold(prompt: int) -> None:
    provider = ScriptedProvider([reply("ok", usage=use(prompt, 500))], model="gemini-2.5-pro")
    result = await Agent(provider).run("hi")
    assert result.cost == genai_cost(prompt, 500, "gemini-2.5-pro")


@pytest.mark.anyio
async def test_a_tiered_price_applies_to_each_call_not_to_the_run_s_sum() -> None:
    # Two calls of 150,000 prompt tokens each: both below the tier, though 300,000 in all.
    calls = [tool_calls(call("search", query="x"), usage=use(150_000, 100)),
             reply("ok", usage=use(150_000, 100))]  # fmt: skip
    provider = ScriptedProvider(calls, model="gemini-2.5-pro")
    result = await Agent(provider, tools=[search]).run("hi")
    assert result.turns == 2
    assert result.cost == 2 * genai_cost(150_000, 100, "gemini-2.5-pro")
    assert result.cost != genai_cost(300_000, 200, "gemini-2.5-pro")


@pytest.mark.anyio
async def test_a_configured_price_for_a_local_model(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    assert Pricing().price_of("qwen", LOCAL) is None
    assert Pricing({"qwen": Price(0.1, 0.4)}).price_of("qwen", LOCAL) == Price("0.1", "0.4")
    server.add(Reply(body=chat_body("ok", 1000, 250, "qwen")))
    provider = make_provider(model="qwen")
    result = await Agent(provider, pricing={"qwen": Price(0.1, 0.4)}).run("hi")
    # (1000 * 0.1 + 250 * 0.4) / 1e6, exactly: 0.1 is read as written, not as a binary float.
    assert result.cost == Decimal("0.0002")
    assert result.total_cost == Decimal("0.0002")


@pytest.mark.anyio
async def test_an_explicit_zero_price_is_a_known_zero_not_unknown() -> None:
    provider = ScriptedProvider([reply("ok", usage=use(1000, 100))], model=UNLISTED)
    result = await Agent(provider, pricing={UNLISTED: Price(0, 0)}).run("hi")
    assert result.cost is not None
    assert result.cost == Decimal(0)
    assert result.total_cost == Decimal(0)
    assert result.to_dict()["cost"] == 0


def test_a_given_price_comes_before_the_bundled_one() -> None:
    pricing = Pricing({"gpt-4o": {"input_per_mtok": 1, "output_per_mtok": "2"}})
    assert pricing.price_of("gpt-4o", OPENAI) == Price(1, 2)
    assert Pricing(bundled=False).price_of("gpt-4o", OPENAI) is None
    assert Pricing(bundled=False).price_of("claude-sonnet-4-20250514") is None


def test_a_bundled_model_name_on_a_local_server_is_unknown() -> None:
    pricing = Pricing()
    assert pricing.price_of("gpt-4o", LOCAL) is None
    assert pricing.price_of("gpt-4o") is not None  # by name alone when there is no URL
    assert pricing.price_of(UNLISTED) is None


@pytest.mark.parametrize("model", ["text-embedding-3-small", "davinci"])
def test_a_bundled_price_for_tokens_one_way_only_is_unknown_not_half_free(model: str) -> None:
    # genai-prices lists these with an input price and no output price: a chat's completion
    # tokens have no price, so the call's cost is unknown (and a cost limit refuses them).
    assert Pricing().price_of(model) is None
    with pytest.raises(ConfigError, match=f"needs the price of model '{model}'"):
        Runtime(ScriptedProvider([], model=model), quota=QuotaLimits(max_total_cost=1))


def test_the_given_prices_are_read_only_so_a_lookup_cannot_go_stale() -> None:
    pricing = Pricing({"m": Price(1, 2)})
    assert pricing.price_of("m") == Price(1, 2)
    with pytest.raises(TypeError):
        pricing.prices["m"] = Price(3, 4)  # type: ignore[index]
    assert pricing.price_of("m") == Price(1, 2)


def test_a_spend_past_the_limit_never_reads_as_below_it() -> None:
    exceeded = QuotaExceeded(limit="cost", used=Decimal("0.5001"), maximum=Decimal("0.50"))
    assert str(exceeded) == "Resource quota exceeded: cost limit reached ($0.51/$0.50)"
    exceeded = QuotaExceeded(limit="cost", used=Decimal("0.50"), maximum=Decimal("0.50"))
    assert str(exceeded) == "Resource quota exceeded: cost limit reached ($0.50/$0.50)"


def test_a_price_keeps_any_number_form_as_a_decimal() -> None:
    price = Price(0.15, "0.60")
    assert (price.input_per_mtok, price.output_per_mtok) == (Decimal("0.15"), Decimal("0.60"))
    assert isinstance(price.input_per_mtok, Decimal)
    assert Price(Decimal("0.15"), 0.6) == price
    assert Price(3, 15).cost(use(1000, 100)) == Decimal("0.0045")
    assert Price(0, 0).cost(use(10**6, 10**6)) == 0


BAD_AMOUNTS: list[object] = [
    -1, Decimal("-0.01"), "-0.5", float("nan"), Decimal("NaN"), "nan", float("inf"),
    Decimal("Infinity"), "-inf", True, False, "abc", "", [1], None,
]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_AMOUNTS, ids=repr)
def test_a_price_that_is_no_amount_of_dollars_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="input_per_mtok"):
        Price(bad, 1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="output_per_mtok"):
        Price(1, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("price", "message"),
    [
        ({"input_per_mtok": 1}, "pricing.m: missing output_per_mtok"),
        ({"input_per_mtok": 1, "output_per_mtok": 2, "cache": 1}, "pricing.m: unknown key 'cache'"),
        ({"input_per_mtok": -1, "output_per_mtok": 2}, "pricing.m.input_per_mtok"),
        ({"input_per_mtok": 1, "output_per_mtok": "x"}, "pricing.m.output_per_mtok"),
        (3, "pricing.m must have input_per_mtok and output_per_mtok"),
    ],
)
def test_pricing_refuses_a_bad_mapping_naming_the_key(price: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Pricing({"m": price})  # type: ignore[dict-item]


# == 2. unknown prices =========================================================================
@pytest.mark.anyio
async def test_a_local_url_without_a_price_costs_none_never_zero(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    server.add(Reply(body=chat_body("ok", 1000, 250, "gpt-4o")))
    costs = Costs()
    # gpt-4o is in genai-prices, but not as served by this local server.
    result = await Agent(make_provider(model="gpt-4o"), hooks=[costs]).run("hi")
    assert result.status == "complete"
    assert result.usage.total_tokens == 1250
    assert result.cost is None
    assert result.total_cost is None
    assert costs.calls == [None]
    data = result.to_dict()
    assert (data["cost"], data["total_cost"]) == (None, None)
    assert '"cost": null' in json.dumps(data)


@pytest.mark.anyio
async def test_a_known_parent_with_an_unknown_child_has_an_unknown_total() -> None:
    runtime = Runtime(
        ScriptedProvider(tree_model, model="priced"),
        subagents=SubagentConfig(summary_prompt=None, model="unpriced"),
        pricing={"priced": PRICE},
        telemetry=False,
    )
    result = await runtime.run("root")
    nodes = by_label(result)
    assert result.cost == 2 * ROOT_COST  # its own calls are known
    assert result.total_cost is None  # but not what its children spent
    for label in ("a", "b", "p1", "p2"):
        assert nodes[label].cost is None, label
        assert nodes[label].total_cost is None, label
    data = result.to_dict()
    assert data["cost"] == float(2 * ROOT_COST)
    assert data["total_cost"] is None
    assert runtime.tracker.statistics().total_cost == 2 * ROOT_COST  # unknown adds nothing


@pytest.mark.anyio
async def test_a_run_with_no_model_call_costs_a_known_zero() -> None:
    runtime = Runtime(
        ScriptedProvider(tree_model, model=UNLISTED),
        quota=QuotaLimits(max_executions=0),
        telemetry=False,
    )
    batch = await runtime.run_batch([{"label": "x", "task_prompt": "leaf"}])
    (refused,) = batch.results
    assert refused.error_type == "quota_exceeded"
    assert refused.cost == refused.total_cost == Decimal(0)
    assert batch.total_cost == Decimal(0)


@pytest.mark.anyio
async def test_a_batch_with_an_unknown_task_has_an_unknown_total() -> None:
    runtime = Runtime(ScriptedProvider(tree_model, model=UNLISTED), telemetry=False)
    batch = await runtime.run_batch([{"label": "x", "task_prompt": "leaf"}])
    assert batch.results[0].cost is None
    assert batch.total_cost is None


# == 3. costs add up over a tree ===============================================================
@pytest.mark.anyio
async def test_cost_and_total_cost_over_a_tree_with_a_batch_and_a_nested_subagent() -> None:
    costs = Costs()
    runtime = tree_runtime(hooks=[costs])
    result = await runtime.run("root")
    assert result.status == "complete"
    nodes = by_label(result)
    assert set(nodes) == {"agent", "a", "b", "p1", "p2"}

    assert result.cost == 2 * ROOT_COST == Decimal("0.009")
    assert (nodes["a"].cost, nodes["a"].total_cost) == (2 * MID_COST, 2 * MID_COST + LEAF_COST)
    for leaf in ("b", "p1", "p2"):
        assert nodes[leaf].cost == nodes[leaf].total_cost == LEAF_COST
    expected_total = 2 * ROOT_COST + 2 * MID_COST + 3 * LEAF_COST
    assert result.total_cost == expected_total == Decimal("0.0279")
    assert sum((node.cost or Decimal(0) for node in walk(result)), Decimal(0)) == expected_total

    # Each call counted once: by the hooks, by the quota, by the tree.
    assert costs.running == [None] * 7  # unknown while a call runs
    assert sorted(c for c in costs.calls if c is not None) == sorted(
        [ROOT_COST] * 2 + [MID_COST] * 2 + [LEAF_COST] * 3
    )
    assert costs.runs == {"agent": 2 * ROOT_COST, "a": 2 * MID_COST, "b": LEAF_COST,
                          "p1": LEAF_COST, "p2": LEAF_COST}  # fmt: skip
    assert costs.batches == [2 * LEAF_COST]
    stats = runtime.tracker.statistics()
    assert stats.total_cost == expected_total
    assert stats.remaining_cost is None  # no cost limit

    data = json.loads(json.dumps(result.to_dict()))
    assert (data["cost"], data["total_cost"]) == (0.009, 0.0279)
    (a,) = [c for c in data["children"] if c["label"] == "a"]
    assert (a["cost"], a["total_cost"]) == (0.0135, 0.0153)


@pytest.mark.anyio
async def test_the_total_cost_of_a_batch_from_python() -> None:
    runtime = tree_runtime()
    batch = await runtime.run_batch(
        [{"label": "x", "task_prompt": "leaf"}, {"label": "y", "task_prompt": "mid"}]
    )
    assert batch.status == "complete"
    x, y = batch.results
    assert x.total_cost == LEAF_COST
    assert (y.cost, y.total_cost) == (2 * MID_COST, 2 * MID_COST + LEAF_COST)
    assert batch.total_cost == 2 * LEAF_COST + 2 * MID_COST
    assert runtime.tracker.statistics().total_cost == batch.total_cost


@pytest.mark.anyio
async def test_a_failed_model_call_costs_nothing() -> None:
    from xzatoma import ProviderError

    provider = ScriptedProvider(
        [tool_calls(spawn("w", "x"), usage=ROOT_CALL), ProviderError("down"),
         reply("ok", usage=ROOT_CALL)],
        model="priced",
    )  # fmt: skip
    costs = Costs()
    runtime = Runtime(
        provider, subagents=NO_SUMMARY, pricing={"priced": PRICE}, hooks=[costs], telemetry=False
    )
    result = await runtime.run("root")
    (child,) = result.children
    assert child.error_type == "execution_failed"
    assert child.cost == Decimal(0)
    assert result.total_cost == 2 * ROOT_COST
    assert costs.calls.count(None) == 1  # the failed call's


# == 4. the cost limit ==========================================================================
COST_PRICE = Price(1000, 1500)
COST_CALL = use(100, 20)
"""$0.13 a call at ``COST_PRICE``."""


def limit_model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
    """root: spawns a worker; once it is back, spawns more (one, and a batch of two); then
    answers. The worker searches forever, saying how far it got."""
    if messages[0].content == "root":
        turn = sum(1 for m in messages if m.role == "assistant")
        if turn == 0:
            return tool_calls(spawn("worker", "work"), usage=COST_CALL)
        if turn == 1:
            batch = call(
                "parallel_subagent", tasks=[{"label": p, "task_prompt": "x"} for p in "pq"]
            )
            return tool_calls(spawn("late", "x"), batch, usage=COST_CALL)
        return reply("root answer", usage=COST_CALL)
    turn = sum(1 for m in messages if m.role == "assistant")
    return tool_calls(call("search", query="q"), text=f"worked {turn + 1}", usage=COST_CALL)


@pytest.mark.anyio
async def test_the_cost_limit_stops_spawns_and_running_subagents_but_not_the_root() -> None:
    provider = ScriptedProvider(limit_model, model="priced")
    runtime = Runtime(
        provider,
        subagents=NO_SUMMARY,
        quota=QuotaLimits(max_total_cost="0.50"),
        pricing={"priced": COST_PRICE},
        telemetry=False,
    )
    result = await runtime.agent(tools=[search]).run("root")

    # The root: 0.13; the worker's three calls: 0.52 >= 0.50, so no fourth call.
    worker, late, batch = result.children
    assert (worker.status, worker.error_type) == ("failed", "quota_exceeded")
    assert worker.error == "Resource quota exceeded: cost limit reached ($0.52/$0.50)"
    assert worker.turns == 3
    assert worker.output == "worked 3"  # partial output kept
    assert worker.cost == Decimal("0.39")
    # The root's second call brought it to 0.65: every later spawn is refused, none ran.
    for refused in (late, batch):
        assert (refused.status, refused.error_type) == ("failed", "quota_exceeded")
        assert refused.error == "Resource quota exceeded: cost limit reached ($0.65/$0.50)"
        assert (refused.turns, refused.cost) == (0, Decimal(0))
    tool_messages = [m.content for m in result.messages if m.role == "tool"]
    assert (
        tool_messages[1:]
        == ["Error: Resource quota exceeded: cost limit reached ($0.65/$0.50)"] * 2
    )
    # The root is never stopped by the quota: it answers.
    assert (result.status, result.output, result.turns) == ("complete", "root answer", 3)
    assert result.cost == Decimal("0.39")
    assert result.total_cost == Decimal("0.78")
    assert len(provider.requests) == 3 + 3  # root 3, worker 3, nothing else

    stats = runtime.tracker.statistics()
    assert stats.total_cost == Decimal("0.78")
    assert stats.remaining_cost == Decimal(0)
    assert stats.limits.max_total_cost == Decimal("0.50")
    assert stats.executions == 1  # refused spawns took no slot


@pytest.mark.anyio
async def test_siblings_of_a_batch_see_the_cost_at_once() -> None:
    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        return tool_calls(call("search", query="q"), text="working", usage=COST_CALL)

    runtime = Runtime(
        ScriptedProvider(model, model="priced"),
        subagents=NO_SUMMARY,
        quota=QuotaLimits(max_total_cost=Decimal("0.25")),
        pricing={"priced": COST_PRICE},
        telemetry=False,
    )
    batch = await runtime.run_batch(
        [{"label": label, "task_prompt": "x"} for label in ("p1", "p2", "p3")],
        max_concurrent=1,
        tools=[search],
    )
    p1, p2, p3 = batch.results
    assert (p1.error_type, p1.turns, p1.cost) == ("quota_exceeded", 2, Decimal("0.26"))
    message = "Resource quota exceeded: cost limit reached ($0.26/$0.25)"
    assert p1.error == message
    for later in (p2, p3):
        assert (later.error_type, later.error, later.turns) == ("quota_exceeded", message, 0)
    assert batch.status == "failed"
    assert batch.total_cost == Decimal("0.26")
    assert runtime.tracker.statistics().remaining_cost == 0


@pytest.mark.anyio
async def test_a_zero_cost_limit_refuses_every_spawn_and_the_root_still_answers() -> None:
    provider = ScriptedProvider(limit_model, model="priced")
    runtime = Runtime(
        provider,
        subagents=NO_SUMMARY,
        quota=QuotaLimits(max_total_cost=0),
        pricing={"priced": COST_PRICE},
        telemetry=False,
    )
    result = await runtime.agent(tools=[search]).run("root")
    assert result.status == "complete"
    assert result.output == "root answer"
    worker = result.children[0]
    assert (worker.error_type, worker.turns) == ("quota_exceeded", 0)
    # The root's first call is charged before its spawn is looked at.
    assert worker.error == "Resource quota exceeded: cost limit reached ($0.13/$0)"
    assert all(c.error_type == "quota_exceeded" for c in result.children)
    assert {r.messages[0].content for r in provider.requests} == {"root"}
    assert runtime.tracker.statistics().remaining_cost == 0

    # Nothing spent at all: usd() writes a zero as "$0" (not "$0.00").
    fresh = Runtime(provider, quota=QuotaLimits(max_total_cost="0"), pricing={"priced": COST_PRICE})
    batch = await fresh.run_batch([{"label": "x", "task_prompt": "x"}])
    assert batch.results[0].error == "Resource quota exceeded: cost limit reached ($0/$0)"


def test_the_tracker_charges_cost_like_tokens() -> None:
    tracker = QuotaTracker(QuotaLimits(max_total_cost="0.50"))
    tracker.reserve()
    tracker.charge(10, Decimal("0.49"))
    tracker.charge(10, None)  # a call whose price is unknown adds nothing
    tracker.check_running()
    stats = tracker.statistics()
    assert (stats.total_tokens, stats.total_cost, stats.remaining_cost) == (
        20, Decimal("0.49"), Decimal("0.01")
    )  # fmt: skip
    tracker.charge(1, Decimal("0.03"))
    with pytest.raises(xzatoma.QuotaExceeded) as info:
        tracker.check_running()
    assert str(info.value) == "Resource quota exceeded: cost limit reached ($0.52/$0.50)"
    assert (info.value.limit, info.value.used, info.value.maximum) == (
        "cost", Decimal("0.52"), Decimal("0.50")
    )  # fmt: skip
    with pytest.raises(xzatoma.QuotaExceeded, match=re.escape("($0.52/$0.50)")):
        tracker.reserve()
    assert tracker.statistics().remaining_cost == 0
    assert QuotaTracker().statistics().remaining_cost is None


@pytest.mark.parametrize("bad", [Decimal("-0.01"), 0.1, 1, "0.1"], ids=repr)
def test_the_tracker_refuses_a_cost_that_is_no_decimal_amount(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"charge\(\) takes a non-negative, finite Decimal cost"):
        QuotaTracker().charge(1, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [Decimal("NaN"), Decimal("Infinity")], ids=repr)
def test_the_tracker_refuses_a_cost_that_is_not_finite(bad: Decimal) -> None:
    tracker = QuotaTracker()
    with pytest.raises(ConfigError, match=r"charge\(\) takes a non-negative, finite Decimal cost"):
        tracker.charge(1, bad)
    assert tracker.statistics().total_cost == 0


@pytest.mark.parametrize(
    ("given", "read_back"),
    [
        (Decimal("0.5"), Decimal("0.5")),
        ("0.50", Decimal("0.50")),
        (" 0.5 ", Decimal("0.5")),
        (0.5, Decimal("0.5")),
        (0.1, Decimal("0.1")),  # as written, not 0.1000000000000000055511151231257827
        (2, Decimal(2)),
        (0, Decimal(0)),
    ],
    ids=repr,
)
def test_a_cost_limit_in_any_number_form_reads_back_as_a_decimal(
    given: Decimal | float | int | str, read_back: Decimal
) -> None:
    limit = QuotaLimits(max_total_cost=given).max_total_cost
    assert isinstance(limit, Decimal)
    assert limit == read_back
    assert str(limit) == str(read_back)


@pytest.mark.parametrize("bad", [b for b in BAD_AMOUNTS if b is not None], ids=repr)
def test_an_invalid_cost_limit_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_total_cost"):
        QuotaLimits(max_total_cost=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (Decimal("0.52"), "$0.52"),
        (Decimal("0.5"), "$0.50"),
        (0.5, "$0.50"),
        (Decimal("12.346"), "$12.35"),
        (Decimal("0.01"), "$0.01"),
        (Decimal("0.00123"), "$0.0012"),
        (Decimal("0.000064"), "$0.000064"),
        (Decimal("0.0000766"), "$0.000077"),
    ],
    ids=str,
)
def test_usd_two_decimals_or_two_significant_digits_below_a_cent(
    amount: Decimal | float, shown: str
) -> None:
    assert usd(amount) == shown


# -- a cost limit needs every price, before anything runs --------------------------------------
def assert_names_the_model(message: str, model: str) -> None:
    assert f"max_total_cost needs the price of model {model!r}" in message
    assert f"pricing.{model}.input_per_mtok and pricing.{model}.output_per_mtok" in message
    assert "Runtime(..., pricing=" in message


def test_the_genai_prices_data_does_not_know_the_test_model() -> None:
    with pytest.raises(LookupError):
        genai_cost(1, 1, UNLISTED)


def test_a_cost_limit_with_an_unknown_root_model_is_refused_at_runtime() -> None:
    provider = ScriptedProvider(["never"], model=UNLISTED)
    with pytest.raises(ConfigError) as info:
        Runtime(provider, quota=QuotaLimits(max_total_cost=1))
    assert_names_the_model(str(info.value), UNLISTED)
    assert "provider 'scripted'" in str(info.value)
    assert provider.requests == []
    Runtime(provider, quota=QuotaLimits(max_total_cost=1), pricing={UNLISTED: Price(0, 0)})
    Runtime(provider)  # no limit: an unknown price is fine, its cost is None


@pytest.mark.parametrize("how", ["model", "provider"])
def test_a_cost_limit_with_an_unknown_child_model_is_refused_at_runtime(how: str) -> None:
    root = ScriptedProvider(["never"], model="gpt-4o")
    child = ScriptedProvider(["never"], model="unlisted-child")
    subagents = (
        SubagentConfig(model="unlisted-child") if how == "model" else SubagentConfig(provider=child)
    )
    with pytest.raises(ConfigError) as info:
        Runtime(root, subagents=subagents, quota=QuotaLimits(max_total_cost="0.5"))
    assert_names_the_model(str(info.value), "unlisted-child")
    assert root.requests == child.requests == []
    Runtime(
        root,
        subagents=subagents,
        quota=QuotaLimits(max_total_cost="0.5"),
        pricing={"unlisted-child": Price(1, 1)},
    )


@pytest.mark.parametrize("quota", ["limits", "tracker"])
def test_a_cost_limit_with_an_unknown_model_is_refused_at_agent(quota: str) -> None:
    provider = ScriptedProvider(["never"], model=UNLISTED)
    limits = QuotaLimits(max_total_cost=Decimal(1))
    with pytest.raises(ConfigError) as info:
        Agent(provider, quota=limits if quota == "limits" else QuotaTracker(limits))
    assert_names_the_model(str(info.value), UNLISTED)
    assert provider.requests == []
    Agent(provider, quota=limits, pricing=Pricing({UNLISTED: Price(0, 0)}))


@pytest.mark.anyio
async def test_a_cost_limit_with_a_model_on_a_local_server_is_refused(
    server: ScriptedHTTPServer, make_provider: MakeProvider
) -> None:
    provider = make_provider(model="gpt-4o")
    with pytest.raises(ConfigError) as info:
        Runtime(provider, quota=QuotaLimits(max_total_cost=1))
    assert_names_the_model(str(info.value), "gpt-4o")
    assert f"the endpoint {server.url}/v1" in str(info.value)
    assert server.requests == []


def test_agent_refuses_a_hand_built_subagent_tool_with_an_unknown_child_price() -> None:
    provider = ScriptedProvider(["never"], model="priced")
    subagent = SubagentTool(SubagentConfig(model="unlisted-child"), QuotaLimits(max_total_cost=1))
    with pytest.raises(ConfigError, match="unlisted-child"):
        Agent(provider, tools=[subagent], pricing={"priced": PRICE})


@pytest.mark.anyio
async def test_a_cost_limit_is_not_escaped_by_replies_without_usage() -> None:
    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if messages[0].content == "root":  # no usage in any reply, as some local servers do
            if messages[-1].role == "user":
                return tool_calls(spawn("worker", "work"))
            return reply("done")
        return tool_calls(call("search", query="q"), text="working")

    runtime = Runtime(
        ScriptedProvider(model, model="m"),
        subagents=SubagentConfig(summary_prompt=None, default_max_turns=20),
        quota=QuotaLimits(max_total_cost="0.000001"),
        pricing={"m": Price(1, 1)},
        telemetry=False,
    )
    result = await runtime.agent(tools=[search]).run("root")
    assert result.children[0].error_type == "quota_exceeded"


@pytest.mark.anyio
async def test_replacing_an_agent_s_provider_prices_the_new_model() -> None:
    agent = Agent(ScriptedProvider([reply("x", usage=use(1000, 0))], model="gpt-4o"))
    agent.provider = ScriptedProvider([reply("x", usage=use(1000, 0))], model=UNLISTED)
    assert (await agent.run("hi")).cost is None


# == 5. the config file and the command line ===================================================
PRICED_CONFIG = """\
provider:
  base_url: {url}/v1
  model: m
pricing:
  m:
    input_per_mtok: 0.1
    output_per_mtok: 0.4
agent:
  subagent:
    max_total_cost: 0.5
"""
"""chat() replies are 300 in, 5 out: $0.000032 a call at these prices."""
CHAT_COST = Decimal("0.000032")


def test_a_config_with_prices_and_a_cost_limit_validates_and_loads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(PRICED_CONFIG.format(url="http://127.0.0.1:8080"))
    code, out, err = cli(capsys, "config", "validate", str(path))
    assert (code, out, err) == (0, f"OK: {path} is valid\n", "")
    config = load_config(path)
    assert config.quota_limits().max_total_cost == Decimal("0.5")
    pricing = config.build_pricing()
    assert pricing.price_of("m", LOCAL) == Price("0.1", "0.4")
    assert pricing.price_of("gpt-4o", OPENAI) is not None  # the bundled data still behind it


BAD_CONFIGS = [
    ("pricing:\n  m:\n    input_per_mtok: 1\n    output_per_mtok: 2\n    cache_mtok: 1\n",
     "unknown key 'pricing.m.cache_mtok'; allowed here: input_per_mtok, output_per_mtok"),
    ("pricing:\n  m:\n    input_per_mtok: 1\n",
     "pricing.m.output_per_mtok: field required"),
    ("pricing:\n  m:\n    input_per_mtok: -1\n    output_per_mtok: 2\n",
     "pricing.m.input_per_mtok must be a non-negative, finite number of dollars, got -1.0"),
    ("pricing:\n  m:\n    input_per_mtok: 1\n    output_per_mtok: .inf\n",
     "pricing.m.output_per_mtok must be a non-negative, finite number of dollars, got inf"),
    ("pricing:\n  m:\n    input_per_mtok: '0.1'\n    output_per_mtok: 2\n",
     "pricing.m.input_per_mtok: input should be a valid number, got '0.1'"),
    ("pricing:\n  m:\n    input_per_mtok: true\n    output_per_mtok: 2\n",
     "pricing.m.input_per_mtok: input should be a valid number, got True"),
    ("pricing:\n  m: 3\n", "pricing.m must be a mapping of keys, got 3"),
    ("pricing: [1]\n", "pricing must be a mapping of keys, got [1]"),
    ("agent:\n  subagent:\n    max_total_cost: -0.5\n",
     "agent.subagent.max_total_cost must be a non-negative, finite number of dollars, got -0.5"),
    ("agent:\n  subagent:\n    max_total_cost: '0.5'\n",
     "agent.subagent.max_total_cost: input should be a valid number, got '0.5'"),
    ("agent:\n  subagent:\n    max_total_cost: .inf\n",
     "agent.subagent.max_total_cost must be a finite number"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS)
def test_each_bad_pricing_or_cost_limit_config_is_refused_naming_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, out, err = cli(capsys, "config", "validate", str(path))
    assert (code, out) == (2, "")
    assert err == f"xzatoma: error: {path}: {message}\n"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_a_nan_cost_limit_in_the_config_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"agent\.subagent\.max_total_cost"):
        XzatomaConfig.from_dict({"agent": {"subagent": {"max_total_cost": float("nan")}}})


def test_run_with_a_cost_limit_and_no_price_is_one_error_line_before_any_request(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer
) -> None:
    code, out, err = cli(capsys, "run", "hi", *endpoint(server), "--max-total-cost", "0.5")
    assert (code, out) == (2, "")
    line = one_error_line(err)
    assert_names_the_model(line, "m")
    assert f"the endpoint {server.url}/v1" in line
    assert server.requests == []


def test_batch_with_a_cost_limit_and_no_price_is_one_error_line_before_any_request(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer, tmp_path: Path
) -> None:
    tasks = str(tasks_file(tmp_path, "ab"))
    code, _, err = cli(capsys, "batch", tasks, *endpoint(server), "--max-total-cost", "0.5")
    assert code == 2
    assert_names_the_model(one_error_line(err), "m")
    assert server.requests == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "-1",
            "agent.subagent.max_total_cost must be a non-negative, finite number of dollars, "
            "got -1.0 (from --max-total-cost -1)",
        ),
        (
            "inf",
            "agent.subagent.max_total_cost must be a finite number (from --max-total-cost inf)",
        ),
        (
            "nan",
            "agent.subagent.max_total_cost must be a non-negative, finite number of dollars, "
            "got nan (from --max-total-cost nan)",
        ),
        ("abc", "argument --max-total-cost: invalid float value: 'abc'"),
    ],
)
def test_a_bad_max_total_cost_flag_is_one_error_line(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer, value: str, message: str
) -> None:
    code, _, err = cli(capsys, "run", "hi", *endpoint(server), f"--max-total-cost={value}")
    assert code == 2
    assert message in one_error_line(err)
    assert server.requests == []


def test_run_with_prices_in_the_config_shows_cost_in_json_and_tree(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer, tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(PRICED_CONFIG.format(url=server.url))
    server.add(
        chat(None, calls=[("subagent", {"label": "helper", "task_prompt": "find x"})]),
        chat("x is 42"),  # the child's answer
        chat("x=42"),  # the child's summary
        chat("The answer is 42."),
    )
    code, out, err = cli(
        capsys, "run", "what is x?", "--config", str(path), "--max-total-cost", "0.5",
        "--json", "--tree",
    )  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert data["status"] == "complete"
    assert data["cost"] == float(2 * CHAT_COST)
    assert data["total_cost"] == float(4 * CHAT_COST)
    (child,) = data["children"]
    assert (child["cost"], child["total_cost"]) == (float(2 * CHAT_COST), float(2 * CHAT_COST))
    assert re.search(r"^agent\s+complete\s+depth 0.*tokens\s+610  cost \$0\.000064$", err, re.M)
    assert re.search(r"^└─ helper\s+complete\s+depth 1.*tokens\s+610  cost \$0\.000064$", err, re.M)
    assert len(server.requests) == 4


def test_run_tree_shows_a_question_mark_for_an_unknown_cost_and_json_null(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer, tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        PRICED_CONFIG.format(url=server.url).replace(
            "    max_total_cost: 0.5\n", "    model: unpriced-child\n"
        )
    )
    server.add(
        chat(None, calls=[("subagent", {"label": "helper", "task_prompt": "find x"})]),
        chat("x is 42"),
        chat("x=42"),
        chat("The answer is 42."),
    )
    code, out, err = cli(capsys, "run", "what is x?", "--config", str(path), "--json", "--tree")
    assert code == 0
    assert [r.json()["model"] for r in server.requests] == [
        "m",
        "unpriced-child",
        "unpriced-child",
        "m",
    ]
    data = json.loads(out)
    assert data["cost"] == float(2 * CHAT_COST)
    assert data["total_cost"] is None
    assert data["children"][0]["cost"] is None
    assert '"total_cost": null' in out
    assert re.search(r"^agent\s.*cost \$0\.000064$", err, re.M)
    assert re.search(r"^└─ helper\s.*cost \?$", err, re.M)


def test_run_tree_has_no_cost_column_when_no_cost_is_known(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer
) -> None:
    server.add(chat("ok"))
    code, out, err = cli(capsys, "run", "hi", *endpoint(server), "--json", "--tree")
    assert code == 0
    assert json.loads(out)["cost"] is None
    assert '"cost": null' in out
    assert re.search(r"^agent\s+complete\s+depth 0\s+turns\s+1\s+tokens\s+305$", err, re.M)
    assert "cost" not in err


def test_batch_report_shows_each_task_s_cost_and_the_total(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer, tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(PRICED_CONFIG.format(url=server.url))
    server.add(*[chat("answer") for _ in range(4)])  # task + summary, two tasks
    code, out, _ = cli(capsys, "batch", str(tasks_file(tmp_path, "ab")), "--config", str(path))
    assert code == 0
    assert "== a: complete, 2 turns, 610 tokens, $0.000064\n" in out
    assert "== b: complete, 2 turns, 610 tokens, $0.000064\n" in out
    assert re.search(r"batch complete: 2 succeeded.*; 1220 tokens \(\$0\.00013\) in ", out)

    server.add(*[chat("answer") for _ in range(4)])
    code, out, _ = cli(
        capsys, "batch", str(tasks_file(tmp_path, "ab")), "--config", str(path), "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert data["total_cost"] == float(4 * CHAT_COST)
    assert [r["total_cost"] for r in data["results"]] == [float(2 * CHAT_COST)] * 2


def test_batch_report_says_cost_unknown_without_prices(
    capsys: pytest.CaptureFixture[str], server: ScriptedHTTPServer, tmp_path: Path
) -> None:
    server.add(*[chat("answer") for _ in range(4)])
    code, out, _ = cli(capsys, "batch", str(tasks_file(tmp_path, "ab")), *endpoint(server))
    assert code == 0
    assert "== a: complete, 2 turns, 610 tokens\n" in out
    assert re.search(r"; 1220 tokens \(cost unknown\) in ", out)
    assert "$" not in out

    server.add(*[chat("answer") for _ in range(4)])
    code, out, _ = cli(
        capsys, "batch", str(tasks_file(tmp_path, "ab")), *endpoint(server), "--json"
    )
    assert json.loads(out)["total_cost"] is None


def test_the_demo_shows_costs_at_its_price(capsys: pytest.CaptureFixture[str]) -> None:
    from xzatoma._demo import DEMO_PRICE, scenario

    result, _ = anyio.run(scenario)
    expected = sum((DEMO_PRICE.cost(node.usage) for node in walk(result)), Decimal(0))
    assert result.total_cost == expected
    assert Price("0.15", "0.60") == DEMO_PRICE

    code, out, err = cli(capsys, "demo", "--latency", "0")
    assert (code, err) == (0, "")
    assert "Result tree (label, status, depth, turns, own tokens, own cost):" in out
    own = usd(result.cost) if result.cost is not None else "?"
    assert re.search(rf"coordinator\s+complete\s+depth 0 .* cost {re.escape(own)}\n", out)
    assert (
        f"tokens, {usd(expected)} at the demo's price ($0.15/$0.60 per million tokens in/out)"
        in out
    )
    assert re.search(r'subagent_cost_usd_total\{depth="0"\}\s+\S+\n', out)


# == 6. telemetry ===============================================================================
@pytest.fixture
def captured() -> Iterator[TelemetryCapture]:
    with capture_telemetry() as capture:
        yield capture


@pytest.mark.anyio
async def test_subagent_cost_by_depth_is_the_tree_s_own_costs(captured: TelemetryCapture) -> None:
    result = await tree_runtime(telemetry=None).run("root")
    per_depth: dict[int, Decimal] = {}
    for node in walk(result):
        assert node.cost is not None
        per_depth[node.depth] = per_depth.get(node.depth, Decimal(0)) + node.cost
    assert per_depth == {0: 2 * ROOT_COST, 1: 2 * MID_COST + 2 * LEAF_COST, 2: LEAF_COST}
    for depth, cost in per_depth.items():
        assert captured.value(n.COST, depth=depth) == pytest.approx(float(cost), rel=1e-12)
    assert {a[n.DEPTH] for a in captured.attribute_sets(n.COST)} == {0, 1, 2}
    assert n.COST == "subagent.cost"


def test_the_cost_counter_is_in_us_dollars(captured: TelemetryCapture) -> None:
    anyio.run(tree_runtime(telemetry=None).run, "root")
    data = captured.metric_reader.get_metrics_data()
    assert data is not None
    (metric,) = [
        m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == n.COST
    ]
    assert metric.unit == "usd"
    assert getattr(metric.data, "is_monotonic", False)


@pytest.mark.anyio
@pytest.mark.parametrize("pricing", [{}, {"priced": Price(0, 0)}], ids=["unknown", "free"])
async def test_an_unknown_or_zero_cost_adds_nothing(
    captured: TelemetryCapture, pricing: Mapping[str, Price]
) -> None:
    result = await tree_runtime(telemetry=None, pricing=pricing).run("root")
    assert result.status == "complete"
    assert captured.value(n.EXECUTIONS, depth=1) == 3  # the tree ran and was recorded
    assert captured.attribute_sets(n.COST) == []


@pytest.mark.anyio
async def test_a_known_root_with_unknown_children_counts_the_root_only(
    captured: TelemetryCapture,
) -> None:
    runtime = Runtime(
        ScriptedProvider(tree_model, model="priced"),
        subagents=SubagentConfig(summary_prompt=None, model="unpriced"),
        pricing={"priced": PRICE},
    )
    await runtime.run("root")
    assert captured.attribute_sets(n.COST) == [{n.DEPTH: 0}]
    assert captured.value(n.COST, depth=0) == pytest.approx(float(2 * ROOT_COST))
    (root,) = captured.spans_named("invoke_agent agent")
    assert root.attributes is not None
    assert root.attributes[n.XZ_COST] == pytest.approx(float(2 * ROOT_COST))
    assert n.XZ_TOTAL_COST not in root.attributes  # a child's cost is unknown
    for span in captured.subagent_spans():
        assert span.attributes is not None
        assert n.XZ_COST not in span.attributes
        assert n.XZ_TOTAL_COST not in span.attributes
    unknown = captured.spans_named("chat unpriced")
    assert len(unknown) == 5  # a: 2, b, p1, p2: 1 each
    assert all(s.attributes is not None and n.XZ_COST not in s.attributes for s in unknown)


@pytest.mark.anyio
async def test_span_attributes_carry_each_call_s_and_each_run_s_cost(
    captured: TelemetryCapture,
) -> None:
    result = await tree_runtime(telemetry=None).run("root")
    chats = captured.spans_named("chat priced")
    assert len(chats) == 7
    call_costs = sorted(
        float(cast(float, s.attributes[n.XZ_COST])) for s in chats if s.attributes is not None
    )
    assert call_costs == pytest.approx(
        sorted(float(c) for c in [ROOT_COST] * 2 + [MID_COST] * 2 + [LEAF_COST] * 3)
    )
    nodes = by_label(result)
    (root,) = captured.spans_named("invoke_agent agent")
    runs = {"agent": root}
    for span in captured.subagent_spans():
        assert span.attributes is not None
        runs[str(span.attributes[n.XZ_LABEL])] = span
    assert set(runs) == set(nodes)
    for label, span in runs.items():
        assert span.attributes is not None
        node = nodes[label]
        assert node.cost is not None
        assert node.total_cost is not None
        assert span.attributes[n.XZ_COST] == pytest.approx(float(node.cost)), label
        assert span.attributes[n.XZ_TOTAL_COST] == pytest.approx(float(node.total_cost)), label
    assert (n.XZ_COST, n.XZ_TOTAL_COST) == ("xzatoma.cost_usd", "xzatoma.total_cost_usd")


def test_prometheus_exposes_subagent_cost_usd_total_by_depth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    previous = configuration()
    configure()  # nothing configured: the server brings its own provider and registry
    server = start_metrics_server(port=0)
    try:
        anyio.run(tree_runtime(telemetry=None).run, "root")
        text = httpx.get(server.url, timeout=10).text
    finally:
        server.stop()
        restore(previous)
    assert "# TYPE subagent_cost_usd_total counter" in text
    samples = {
        s.labels["depth"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "subagent_cost_usd_total"
    }
    assert samples == pytest.approx(
        {"0": float(2 * ROOT_COST), "1": float(2 * MID_COST + 2 * LEAF_COST),
         "2": float(LEAF_COST)}
    )  # fmt: skip
    assert n.PROMETHEUS_NAMES[n.COST] == "subagent_cost_usd_total"


# == 7. the hot path ============================================================================
class CountingPricing(Pricing):
    """A Pricing that counts its lookups."""

    __slots__ = ("asked",)

    def __init__(self, prices: Mapping[str, Price] | None = None) -> None:
        super().__init__(prices)
        self.asked: list[tuple[str, str | None]] = []

    def price_of(self, model: str, base_url: str | None = None) -> _pricing.CallPrice | None:
        self.asked.append((model, base_url))
        return super().price_of(model, base_url)


def looping_model(calls: int) -> ScriptedProvider:
    """A root that searches ``calls - 1`` times, then answers (every run the same)."""

    def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if sum(1 for m in messages if m.role == "assistant") < calls - 1:
            return tool_calls(call("search", query="q"), usage=use(10, 5))
        return reply("done", usage=use(10, 5))

    return ScriptedProvider(model, model=UNLISTED)


def bundled_lookups(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None]]:
    """Every look-up in genai-prices' data from now on, as ``(model, base_url)``."""
    bundled: list[tuple[str, str | None]] = []
    lookup = _pricing._bundled_price

    def counting(model: str, base_url: str | None) -> _pricing.CallPrice | None:
        bundled.append((model, base_url))
        return lookup(model, base_url)

    monkeypatch.setattr(_pricing, "_bundled_price", counting)
    return bundled


@pytest.mark.anyio
async def test_an_unknown_price_without_a_limit_is_looked_up_once_per_agent_not_per_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bundled = bundled_lookups(monkeypatch)
    pricing = CountingPricing()
    agent = Agent(looping_model(12), tools=[search], max_turns=20, pricing=pricing)
    first = await agent.run("go")
    assert (first.turns, first.cost) == (12, None)
    assert pricing.asked == [(UNLISTED, None)]  # once, not once per call
    assert bundled == [(UNLISTED, None)]

    for again in (agent, Agent(looping_model(12), tools=[search], max_turns=20, pricing=pricing)):
        assert (await again.run("again")).turns == 12
    assert len(pricing.asked) == 2  # once per Agent made, never per run or call
    assert len(bundled) == 1  # the answer (unknown) is cached


@pytest.mark.anyio
async def test_a_tree_looks_prices_up_once_per_run_and_genai_prices_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bundled = bundled_lookups(monkeypatch)
    pricing = CountingPricing()
    runtime = Runtime(
        ScriptedProvider(tree_model, model="gpt-4o"),
        subagents=NO_SUMMARY,
        pricing=pricing,
        telemetry=False,
    )
    result = await runtime.run("root")
    runs = list(walk(result))
    assert result.total_usage.requests == 7
    assert len(runs) == 5
    # One per Agent made, whatever its calls: the runtime's check, the root's agent, and one
    # child agent per parent run (the root's serves a, p1 and p2; a's serves b).
    assert len(pricing.asked) == 4
    assert set(pricing.asked) == {("gpt-4o", None)}
    assert bundled == [("gpt-4o", None)]  # genai-prices' data read once for the tree
    assert result.total_cost is not None
