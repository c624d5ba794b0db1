"""``xzatoma demo``: an offline scripted model drives a realistic agent tree while ``/metrics``
is served, then the demo prints the result tree, the metrics it scraped from itself, and how
to point the same run at a real endpoint.

The scenario, a release-readiness review: the root delegates research to a ``researcher``
that recurses once (a ``fact-checker``), which tries to go deeper and is refused by the depth
limit; then a parallel batch checks eight services, one of whose model calls fails; then a
last spawn is refused because the execution quota is used up; the root still answers. The
scripted model answers from the conversation alone and counts tokens by words, so everything
printed is the same on every run except durations and the port.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, TextIO

import anyio

from ._extras import install_hint
from ._interrupt import until_signal
from ._limits import QuotaLimits, QuotaStatistics
from ._pricing import Price
from ._render import format_tree
from ._result import RunResult
from ._runtime import Runtime
from ._subagent_models import DEFAULT_SUMMARY_PROMPT, SubagentConfig
from ._tools import tool
from ._types import Completion, Message, ToolCall, ToolSpec, Usage
from .errors import ProviderError, usd
from .testing import ScriptedProvider, call

if TYPE_CHECKING:
    from .telemetry import MetricsServer

__all__ = (
    "CHANGELOGS",
    "MAX_CONCURRENT",
    "MAX_DEPTH",
    "MAX_EXECUTIONS",
    "PROMPT",
    "report",
    "run_demo",
    "scenario",
)

MAX_DEPTH, MAX_EXECUTIONS, MAX_CONCURRENT = 2, 10, 4
DEMO_MODEL = "scripted-demo"
DEMO_PRICE = Price(input_per_mtok="0.15", output_per_mtok="0.60")
"""The scripted model's price, given as a user gives a local model's (docs/cost.md)."""
SYSTEM_PROMPT = (
    "You coordinate release reviews. Delegate research to a subagent, check services with "
    "parallel subagents, and answer with a short readiness report."
)
PROMPT = (
    "Is release 2.0 ready to ship? Research the breaking changes, check all eight services, "
    "and draft the release notes."
)
RESEARCH_TASK = (
    "Research the breaking changes between 1.x and 2.0 in the gateway and auth services."
)
FACT_TASK = "Verify these claims against the changelogs: tokens are now JWT; /v1 is removed."
CHECK_TASK = "Review the 2.0 changelog of the {} service: is it ready to ship?"
SERVICES = ("gateway", "auth", "billing", "search", "notifications", "storage", "analytics", "web")
FAILING = "billing"
_CHECK = re.compile(re.escape(CHECK_TASK).replace(re.escape("{}"), "(.+)"))

CHANGELOGS = {
    "gateway": "2.0: the /v1 routes are removed; /v2 is the default. Rate limits per API key.",
    "auth": "2.0: session tokens are now signed JWTs; tokens issued by 1.x expire at upgrade.",
    "billing": "2.0: invoices in multiple currencies; new tax rules for the EU.",
    "search": "2.0: new ranking model behind a flag; no API change.",
    "notifications": "2.0: webhooks retried with backoff; payload gains a 'version' field.",
    "storage": "2.0: objects over 5 GB use multipart upload automatically.",
    "analytics": "2.0: daily rollups moved from 02:00 to 03:00 UTC.",
    "web": "2.0: new login page using the JWT tokens from auth.",
}


@tool
async def read_changelog(service: str) -> str:
    """Read the 2.0 changelog of one service."""
    return CHANGELOGS.get(service, f"no changelog for {service!r}")


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


def _answer(
    messages: Sequence[Message], tools: Sequence[ToolSpec], text: str | None, *calls: ToolCall
) -> Completion:
    """A reply whose usage is counted in words: deterministic whatever the timings."""
    prompt = sum(_words(m.content) for m in messages) + 40 * len(tools)
    completion = _words(text) + sum(_words(c.arguments.replace(",", " ")) for c in calls)
    usage = Usage(1, prompt, completion, prompt + completion)
    return Completion(content=text, tool_calls=calls, usage=usage)


Say = Callable[..., Completion]
"""``say(text, *tool_calls)``: a reply to the conversation at hand."""


def _script(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
    """The scripted model: who is asking (the first message) and how far along it is."""
    first = messages[0].content or ""
    turn = sum(1 for m in messages if m.role == "assistant")
    last = messages[-1]

    def say(text: str | None, *calls: ToolCall) -> Completion:
        return _answer(messages, tools, text, *calls)

    if last.role == "user" and last.content == DEFAULT_SUMMARY_PROMPT:
        return say(_summary(first))
    if first == SYSTEM_PROMPT:
        return _coordinator(turn, [m.content or "" for m in messages if m.role == "tool"], say)
    if first == RESEARCH_TASK:
        return _researcher(turn, say)
    if first == FACT_TASK:
        return _fact_checker(turn, say)
    match = _CHECK.fullmatch(first)
    if match:
        return _checker(match.group(1), turn, say)
    return say("I was not scripted for this.")


def _coordinator(turn: int, said: list[str], say: Say) -> Completion:
    """The root: research, then the parallel checks, then one spawn too many, then answer."""
    if turn == 0:
        research = call("subagent", label="researcher", task_prompt=RESEARCH_TASK,
                        allowed_tools=["read_changelog"])  # fmt: skip
        return say("First, the breaking changes.", research)
    if turn == 1:
        allowed = ["read_changelog"]
        tasks = [
            {"label": f"check-{s}", "task_prompt": CHECK_TASK.format(s), "allowed_tools": allowed}
            for s in SERVICES
        ]
        batch = call("parallel_subagent", tasks=tasks, max_concurrent=MAX_CONCURRENT)
        return say("Now all eight services at once.", batch)
    if turn == 2:
        task = "Draft the 2.0 release notes from the findings so far."
        notes = call("subagent", label="release-notes-writer", task_prompt=task)
        return say("Last, the release notes.", notes)
    batch = json.loads(said[1].removeprefix("Error: "))
    failed = [t["label"].removeprefix("check-") for t in batch["tasks"] if not t["success"]]
    return say(
        "Release 2.0 readiness report.\n"
        f"- Breaking changes: {said[0]}\n"
        f"- Services: {batch['successful']} of {len(batch['tasks'])} ready; "
        f"{', '.join(failed)} could not be checked (the model call failed): re-run that check "
        "before shipping.\n"
        "- Release notes: no subagent left (quota), so a short draft: 2.0 removes /v1, moves "
        "sessions to JWTs (users sign in again), and adds multi-currency invoices.\n"
        "Verdict: ready once the billing check passes."
    )


def _researcher(turn: int, say: Say) -> Completion:
    """Depth 1: reads two changelogs, then recurses once to a fact-checker."""
    if turn == 0:
        return say(None, call("read_changelog", service="gateway"),
                   call("read_changelog", service="auth"))  # fmt: skip
    if turn == 1:
        check = call("subagent", label="fact-checker", task_prompt=FACT_TASK)
        return say("Two breaking changes; asking for a fact check.", check)
    return say(
        "Breaking changes in 2.0: the gateway removes the /v1 routes, and auth switches "
        "session tokens to signed JWTs, so every 1.x token expires at upgrade. The "
        "fact-checker confirmed both."
    )


def _fact_checker(turn: int, say: Say) -> Completion:
    """Depth 2 = max_depth: not offered the subagent tools, it calls one anyway (refused)."""
    if turn == 0:
        deeper = call("subagent", label="second-opinion", task_prompt=FACT_TASK)
        return say("A second opinion would help.", deeper)
    if turn == 1:
        return say(None, call("read_changelog", service="auth"))
    return say(
        "Both claims hold: auth 2.0 issues signed JWTs and the gateway drops /v1. "
        "(No second opinion: the depth limit refused it.)"
    )


def _checker(service: str, turn: int, say: Say) -> Completion:
    """A batch task: read the changelog, then judge; the billing check's model call fails."""
    if turn == 0:
        return say(None, call("read_changelog", service=service))
    if service == FAILING:
        raise ProviderError("HTTP 503 from the model endpoint: overloaded (simulated outage)")
    return say(f"{service}: ready to ship. {CHANGELOGS[service]}")


def _summary(first: str) -> str:
    if first == RESEARCH_TASK:
        return "Gateway drops /v1; auth moves to signed JWTs (1.x tokens expire). Fact-checked."
    if first == FACT_TASK:
        return "Both claims confirmed from the changelogs."
    match = _CHECK.fullmatch(first)
    return f"{match.group(1)}: ready." if match else "Done."


async def scenario(latency: float = 0.0) -> tuple[RunResult, QuotaStatistics]:
    """Run the demo tree (each model call takes ``latency`` seconds); returns the root's result
    and the quota snapshot."""

    async def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        if latency > 0:
            await anyio.sleep(latency)
        return _script(messages, tools)

    runtime = Runtime(
        ScriptedProvider(model, model=DEMO_MODEL),
        subagents=SubagentConfig(max_depth=MAX_DEPTH, max_concurrent=MAX_CONCURRENT),
        quota=QuotaLimits(max_executions=MAX_EXECUTIONS),
        pricing={DEMO_MODEL: DEMO_PRICE},
    )
    agent = runtime.agent(tools=[read_changelog], system_prompt=SYSTEM_PROMPT, name="coordinator")
    result = await agent.run(PROMPT)
    return result, runtime.tracker.statistics()


def run_demo(server: MetricsServer, *, latency: float, out: TextIO) -> int:
    """Run :func:`scenario` with ``/metrics`` served by ``server`` (``.url``), print it all;
    returns 0 when the root answered. A SIGINT or SIGTERM cancels the scenario and raises
    :class:`~xzatoma._interrupt.Interrupted`."""

    def show(text: str = "") -> None:
        print(text, file=out, flush=True)

    show("xzatoma demo: a scripted model (offline, no model server) runs a release review")
    show(
        f"  limits: max_depth {MAX_DEPTH}, max_executions {MAX_EXECUTIONS}, "
        f"max_concurrent {MAX_CONCURRENT}"
    )
    show(f"  metrics: {server.url}")
    show(f"  prompt: {PROMPT}")
    result, quota = until_signal(lambda: scenario(latency))  # a signal: Interrupted
    report(result, quota, server, show)
    show("\nPoint the same run at a real endpoint (the model then decides when to delegate):")
    for line in _real_endpoints():
        show(f"  {line}")
    return 0 if result.status == "complete" else 1


def report(
    result: RunResult, quota: QuotaStatistics, server: MetricsServer, show: Callable[[str], None]
) -> None:
    """The result tree, the final answer and the metrics scraped from ``server``."""
    show("\nResult tree (label, status, depth, turns, own tokens, own cost):")
    for line in format_tree(result):
        show(f"  {line}")
    total = result.total_usage
    cost = "unknown" if result.total_cost is None else usd(result.total_cost)
    show(
        f"  total: {total.requests} model calls, {total.total_tokens} tokens, {cost} at the "
        f"demo's price (${DEMO_PRICE.input_per_mtok}/${DEMO_PRICE.output_per_mtok} per "
        f"million tokens in/out); quota: {quota.executions}/{MAX_EXECUTIONS} executions used"
    )
    show("\nFinal answer:")
    for line in (result.output or f"(none: {result.error})").split("\n"):
        show(f"  {line}")
    show(f"\nMetrics scraped from {server.url} (subagent_* series; buckets left out):")
    for line in metric_lines(_scrape(server.url)):
        show(f"  {line}")


def _scrape(url: str) -> str:
    import httpx

    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return response.text


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_lines(text: str) -> list[str]:
    """The ``subagent_*`` samples of a Prometheus scrape, aligned, then the invariant check."""
    rows: list[tuple[str, str, float]] = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or not match["name"].startswith("subagent_"):
            continue
        name = match["name"]
        if name.endswith(("_bucket", "_created")):
            continue
        labels = [
            f'{k}="{v}"'
            for k, v in _LABEL.findall(match["labels"] or "")
            if not k.startswith("otel_")
        ]
        rows.append((name, ",".join(labels), float(match["value"])))
    if not rows:  # say why, since a reader of the demo cannot tell the cases apart
        import importlib.util

        if importlib.util.find_spec("prometheus_client") is None:
            why = f"the prometheus extra is not installed: {install_hint('prometheus')}"
        elif "gen_ai_client_" in text:  # the model calls were recorded
            why = "no subagent ran, so none was recorded"
        else:
            why = "the scrape holds none of xzatoma's metrics, not even its model calls"
        return [f"(no subagent_* series: {why})"]
    rows.sort(key=lambda row: (_ORDER.get(row[0].split("_")[1], 9), row[0], row[1]))
    width = max(len(n) + len(lb) for n, lb, _ in rows) + 4
    lines = [f"{n + ('{' + lb + '}' if lb else ''):<{width}} {_number(v)}" for n, lb, v in rows]
    return [*lines, _invariant(rows)]


_ORDER = {"executions": 0, "completions": 1, "errors": 2, "active": 3, "duration": 4,
          "turns": 5, "tokens": 6, "batches": 7, "batch": 8}  # fmt: skip


def _number(value: float) -> str:
    """An integer as one; seconds to the millisecond; dollars below a cent to two digits."""
    if value.is_integer():
        return str(int(value))
    return f"{value:.3f}" if abs(value) >= 0.01 else format(Decimal(f"{value:.2g}"), "f")


def _invariant(rows: list[tuple[str, str, float]]) -> str:
    def by_depth(name: str) -> dict[str, float]:
        totals: dict[str, float] = {}
        for n, labels, value in rows:
            if n == name:
                depth = dict(_LABEL.findall(labels)).get("depth", "?")
                totals[depth] = totals.get(depth, 0.0) + value
        return totals

    executions = by_depth("subagent_executions_total")
    completions = by_depth("subagent_completions_total")
    errors = by_depth("subagent_errors_total")
    active = sum(by_depth("subagent_active_count").values())
    holds = active == 0 and all(
        v == completions.get(d, 0.0) + errors.get(d, 0.0) for d, v in executions.items()
    )
    verdict = "holds" if holds else "DOES NOT HOLD"
    return f"invariant at rest (executions = completions + errors per depth, active = 0): {verdict}"


def _real_endpoints() -> list[str]:
    limits = (
        f"--max-depth {MAX_DEPTH} --max-executions {MAX_EXECUTIONS} "
        f"--max-concurrent {MAX_CONCURRENT} --metrics-port 9464"
    )
    prompt = shlex.quote(PROMPT)
    return [
        "Ollama:  ollama pull llama3.2",
        f"         xzatoma run --provider ollama --model llama3.2 {limits} {prompt}",
        "vLLM:    vllm serve Qwen/Qwen2.5-7B-Instruct --enable-auto-tool-choice "
        "--tool-call-parser hermes",
        f"         xzatoma run --provider vllm --model Qwen/Qwen2.5-7B-Instruct {limits} {prompt}",
        "OpenAI:  export OPENAI_API_KEY=...   # read from the variable --api-key-env names",
        "         xzatoma run --provider openai --model gpt-4o-mini --api-key-env OPENAI_API_KEY "
        f"{limits} {prompt}",
        f"Any of them from a file: xzatoma run --config examples/ollama.yaml {prompt}",
        "More: docs/getting-started.md, docs/cli.md, docs/configuration.md, docs/telemetry.md",
    ]
