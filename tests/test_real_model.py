"""xzatoma against a real small model: llama.cpp's server (the ``xllamacpp`` wheel) running
Qwen2.5-Coder-0.5B-Instruct on this machine, at temperature 0 with a fixed seed.

What is asserted is xzatoma's part: exit codes, statuses, the tree's shape, that a tool was
really called, and the metric invariants in a real scrape of ``/metrics``; never the model's
wording. Where the model's choice matters (does it delegate when asked?), a second attempt
runs with another seed; xzatoma's own guarantees are checked on every attempt.

Run with ``make test-real`` (CI runs it after ``make test``). The model is downloaded once
into ``$XZATOMA_CACHE_DIR`` (the Makefile's ``.cache/``); a failed download fails the tests.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from xzatoma import Agent, ModelSettings, OpenAIProvider, RunResult, tool
from xzatoma._local_model import MODEL, ensure_model
from xzatoma._local_server import LocalServer

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(1200)]

SEEDS = (7, 11)
"""The first attempt's seed, and the second's where the model's choice matters."""
XZATOMA = str(Path(sys.executable).with_name("xzatoma"))


@pytest.fixture(scope="module")
def llama() -> Iterator[LocalServer]:
    path = ensure_model(say=lambda line: print(f"real model: {line}", file=sys.stderr))
    with LocalServer(path) as server:
        yield server


@dataclass
class Ran:
    """One ``xzatoma`` command: its exit code, its ``--json`` document and its metrics."""

    code: int
    result: dict[str, Any]
    stderr: str
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, lb), v in self.metrics.items() if n == name and wanted <= set(lb))


def xzatoma(
    llama: LocalServer, *args: str, seed: int, scrape: bool = False, stdin: str | None = None
) -> Ran:
    """Run the installed console script against the local server; with ``scrape``, serve
    ``/metrics`` on a free port, scrape it after the run (while it lingers), then stop it."""
    command = [XZATOMA, *args, "--json", "--base-url", llama.base_url, "--model", MODEL.name,
               "--temperature", "0", "--seed", str(seed), "--request-timeout", "900",
               "--max-retries", "0"]  # fmt: skip
    if scrape:
        command += ["--metrics-port", "0", "--metrics-linger", "600"]
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    lines: list[str] = []
    try:
        if stdin is not None:
            assert process.stdin is not None
            process.stdin.write(stdin)
            process.stdin.close()
        if scrape:
            metrics = _scrape_while_lingering(process, lines)
        stdout, rest = process.communicate(timeout=1100)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = "".join(lines) + rest
    assert stdout.strip(), f"no JSON on stdout; exit {process.returncode}; stderr:\n{stderr}"
    return Ran(process.returncode, json.loads(stdout), stderr, metrics)


def _scrape_while_lingering(
    process: subprocess.Popen[str], lines: list[str]
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert process.stderr is not None
    url = None
    for line in process.stderr:
        lines.append(line)
        if "serving metrics at " in line:
            url = line.split("serving metrics at ", 1)[1].strip()
        if "metrics stay at" in line:
            break
    assert url is not None, "".join(lines)
    text = httpx.get(url, timeout=30).text
    process.send_signal(signal.SIGTERM)  # ends the linger; the exit code stays the run's
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


EXIT_CODES = {"complete": 0, "failed": 1, "incomplete": 3}


def check_run(ran: Ran) -> None:
    """What must hold for any run, whatever the model chose."""
    result = ran.result
    assert ran.code == EXIT_CODES[result["status"]], (ran.code, result["status"], ran.stderr)
    assert "Traceback" not in ran.stderr
    assert "dropped the tools" not in ran.stderr  # llama.cpp with --jinja renders them
    assert result["turns"] >= 1
    assert result["usage"]["requests"] == result["turns"]
    assert not result["usage"]["estimated"]  # llama.cpp reports usage


def check_invariants(ran: Ran) -> None:
    """docs/telemetry.md metrics, on a real scrape: executions = completions + errors per depth,
    nothing active at rest, and every spawn of the tree counted."""
    depths = {dict(lb).get("depth") for (n, lb) in ran.metrics if n.startswith("subagent_")}
    depths.discard(None)
    for depth in depths:
        assert depth is not None
        executions = ran.metric("subagent_executions_total", depth=depth)
        ended = ran.metric("subagent_completions_total", depth=depth) + ran.metric(
            "subagent_errors_total", depth=depth
        )
        assert executions == ended, (depth, executions, ended)
        assert ran.metric("subagent_active_count", depth=depth) == 0
    spawned = list(_descendants(ran.result))
    assert ran.metric("subagent_executions_total") == len(spawned)


def _descendants(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for child in node["children"]:
        yield child
        yield from _descendants(child)


def tell(ran: Ran) -> None:
    """What the model did, for the log of ``make test-real`` (its ``-rP`` shows it)."""
    print(f"exit {ran.code}; text tool calls read: {ran.metric('xzatoma_text_tool_calls_total'):g}")
    for line in _tree(ran.result, 0):
        print(line)


def _tree(node: dict[str, Any], depth: int) -> Iterator[str]:
    error = f" ({node['error']})" if node.get("error") else ""
    output = " ".join(str(node.get("output", "")).split())[:100]
    yield (f"{'  ' * depth}{node.get('label', 'batch')}: {node['status']}, {node.get('turns', 0)} "
           f"turns{error}: {output!r}")  # fmt: skip
    for child in node.get("children", node.get("results", [])):
        yield from _tree(child, depth + 1)


def attempts(run: Callable[[int], Ran], chose: Callable[[Ran], bool]) -> Ran:
    """``run`` with the first seed, and with the second if the model did not do what the
    prompt asked (``chose``); xzatoma's guarantees are checked on both."""
    ran = run(SEEDS[0])
    tell(ran)
    for seed in SEEDS[1:]:
        if chose(ran):
            break
        print(f"the model did not do what was asked; again with seed {seed}")
        ran = run(seed)
        tell(ran)
    assert chose(ran), json.dumps(ran.result, indent=1)[:4000]
    return ran


# -- the tests ----------------------------------------------------------------------------------
def test_a_plain_run_answers(llama: LocalServer) -> None:
    def run(seed: int) -> Ran:
        ran = xzatoma(llama, "run", "What is the capital of France? Answer in one sentence.",
                      "--max-turns", "4", "--max-depth", "1", seed=seed)  # fmt: skip
        check_run(ran)
        return ran

    ran = attempts(run, lambda r: r.result["status"] == "complete")
    assert ran.code == 0
    assert ran.result["output"].strip()


def test_a_delegation_through_subagent_stays_in_its_limits(llama: LocalServer) -> None:
    prompt = ('Call the subagent tool with label "france" and task_prompt "What is the capital '
              'of France?". Then tell me what it found.')  # fmt: skip

    def run(seed: int) -> Ran:
        ran = xzatoma(llama, "run", prompt, "--max-depth", "1", "--max-executions", "3",
                      "--max-turns", "4", seed=seed, scrape=True)  # fmt: skip
        check_run(ran)
        check_invariants(ran)
        children = ran.result["children"]
        assert all(c["depth"] == 1 and c["children"] == [] for c in children)  # max depth 1
        started = [c for c in children if c["error_type"] != "quota_exceeded"]
        assert len(started) <= 3  # --max-executions 3, however often the model asks
        for refused in (c for c in children if c["error_type"] == "quota_exceeded"):
            assert refused["turns"] == 0
            assert refused["error"].startswith("Resource quota exceeded: execution limit")
        return ran

    ran = attempts(run, lambda r: any(c["status"] == "complete" for c in r.result["children"]))
    done = [c for c in ran.result["children"] if c["status"] == "complete"]
    assert all(c["turns"] >= 1 and c["output"].strip() for c in done)
    assert ran.metric("subagent_completions_total", depth="1", status="complete") == len(done)
    assert ran.metric("subagent_executions_total", depth="2") == 0


def test_a_parallel_subagent_batch_runs_both_tasks(llama: LocalServer) -> None:
    prompt = ('Call the parallel_subagent tool with exactly these arguments: {"tasks": '
              '[{"label": "a", "task_prompt": "What is 2 + 2?"}, {"label": "b", '
              '"task_prompt": "What is 3 + 3?"}]}. Then tell me both answers.')  # fmt: skip

    def run(seed: int) -> Ran:
        ran = xzatoma(llama, "run", prompt, "--max-depth", "1", "--max-executions", "6",
                      "--max-turns", "3", seed=seed, scrape=True)  # fmt: skip
        check_run(ran)
        check_invariants(ran)
        return ran

    def batched(ran: Ran) -> bool:
        labels = [c["label"] for c in ran.result["children"] if c["status"] == "complete"]
        return ran.metric("subagent_batches_total") >= 1 and {"a", "b"} <= set(labels)

    ran = attempts(run, batched)
    assert ran.metric("subagent_batch_size_sum", depth="1") >= 2
    assert ran.metric("subagent_batches_total", depth="1", status="complete") >= 1


def test_the_python_api_really_calls_a_custom_tool(llama: LocalServer) -> None:
    calls: list[str] = []

    @tool
    async def order_status(order_id: str) -> str:
        """Look up the shipping status of an order by its id."""
        calls.append(order_id)
        return f"order {order_id}: shipped on 2026-11-30"

    async def run() -> RunResult:
        settings = ModelSettings(temperature=0.0, seed=SEEDS[0], max_tokens=200)
        async with OpenAIProvider(
            llama.base_url, MODEL.name, timeout=900, max_retries=0, settings=settings
        ) as provider:
            agent = Agent(provider, tools=[order_status], max_turns=3)
            return await agent.run("What is the status of order A-17? Use the order_status tool.")

    result = anyio.run(run)
    print(f"{result.status}, {result.turns} turns ({result.error}); order_status called {calls}")
    assert calls, "the model never called order_status"
    assert all("17" in order_id for order_id in calls)  # the arguments the model chose
    answered = [m for m in result.messages if m.role == "tool"]
    assert len(answered) == len(calls)  # every call's result went back to the model
    for message, order_id in zip(answered, calls, strict=True):
        assert message.content == f"order {order_id}: shipped on 2026-11-30"
    assert result.usage.requests == result.turns >= 2
    # This model tends to call the tool again instead of answering; either end is documented.
    if result.status != "complete":
        assert result.status == "incomplete"
        assert result.error is not None
        assert "ran out of turns" in result.error or "finish_reason 'length'" in result.error


def test_the_real_model_is_offered_an_mcp_tool(llama: LocalServer) -> None:
    from xzatoma.mcp import StdioServer, open_servers

    clock = StdioServer(
        "time", sys.executable, ["-m", "mcp_server_time", "--local-timezone", "UTC"]
    )

    async def run() -> tuple[Agent, RunResult]:
        settings = ModelSettings(temperature=0.0, seed=SEEDS[0], max_tokens=200)
        async with (
            open_servers(clock) as tools,
            OpenAIProvider(
                llama.base_url, MODEL.name, timeout=900, max_retries=0, settings=settings
            ) as provider,
        ):
            offered = [t for t in tools if t.name == "get_current_time"]
            agent = Agent(provider, tools=offered, max_turns=3)
            question = "What time is it now in the timezone Europe/Paris? Use get_current_time."
            return agent, await agent.run(question)

    agent, result = anyio.run(run)
    called = [c for m in result.messages for c in m.tool_calls]
    answers = [m for m in result.messages if m.role == "tool"]
    print(f"{result.status}, {result.turns} turns; called {[c.arguments for c in called]}")
    print(f"tool results: {[m.content for m in answers]}; answer: {result.output!r}")
    # Offered, with mcp-server-time's own schema; calling it is the model's choice.
    (spec,) = agent.specs
    assert spec.name == "get_current_time"
    assert spec.parameters["required"] == ["timezone"]
    assert result.status in ("complete", "incomplete")
    assert len(answers) == len(called)
    for message, made in zip(answers, called, strict=True):
        assert made.name == "get_current_time"
        timezone = json.loads(made.arguments).get("timezone")
        if timezone in zoneinfo.available_timezones():  # a real zone: a real answer
            assert not (message.content or "").startswith("Error:"), message.content
            assert json.loads(message.content or "{}")["timezone"] == timezone
        else:  # the model's invention: the server's refusal, named, as a tool message
            assert (message.content or "").startswith(
                "Error: MCP tool 'get_current_time' of server 'time' failed: "
            ), message.content


def test_a_max_tokens_cut_is_reported_as_not_complete(llama: LocalServer) -> None:
    ran = xzatoma(llama, "run", "Write a long story about a lighthouse keeper.",
                  "--max-tokens", "5", "--max-depth", "1", seed=SEEDS[0])  # fmt: skip
    tell(ran)
    check_run(ran)
    assert (ran.code, ran.result["status"]) == (3, "incomplete")
    assert "finish_reason 'length'" in ran.result["error"]
    assert "max_tokens=5" in ran.result["error"]
    assert ran.result["usage"]["completion_tokens"] <= 5


def test_a_batch_file_runs_every_task_on_the_real_model(llama: LocalServer, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        "\n".join(
            json.dumps({"label": label, "task_prompt": prompt, "max_turns": 3})
            for label, prompt in (("two", "What is 1 + 1?"), ("nine", "What is 4 + 5?"))
        )
    )
    ran = xzatoma(llama, "batch", str(tasks), "--max-depth", "1", seed=SEEDS[0], scrape=True)
    tell(ran)
    results = ran.result["results"]
    assert [r["label"] for r in results] == ["two", "nine"]
    assert all(r["depth"] == 1 and r["turns"] >= 1 for r in results)
    assert ran.metric("subagent_executions_total", depth="1") == 2
    assert ran.metric("subagent_batches_total", depth="1") == 1
    statuses = {r["status"] for r in results}
    assert ran.code == (0 if statuses == {"complete"} else 3 if "failed" not in statuses else 1)
    check_batch_invariants(ran)


def check_batch_invariants(ran: Ran) -> None:
    executions = ran.metric("subagent_executions_total", depth="1")
    ended = ran.metric("subagent_completions_total", depth="1") + ran.metric(
        "subagent_errors_total", depth="1"
    )
    assert executions == ended
    assert ran.metric("subagent_active_count") == 0
