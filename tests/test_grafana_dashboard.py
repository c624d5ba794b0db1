"""The example Grafana dashboard: every panel's query runs on a real Prometheus and shows data.

A separate xzatoma process runs a scripted tree (successes at depths 1 and 2, a parallel
batch, and one refusal or failure of each kind: ``invalid_input``, ``execution_failed``,
``max_depth_reached``, ``quota_exceeded``; tokens and a price, so cost) and serves
``/metrics``; a real Prometheus (Debian's ``prometheus`` package, ``tests/_prometheus.py``)
scrapes it. Once Prometheus has the first run, the process runs the tree again, so every
counter has risen between two scrapes and every ``rate()`` has something to show. Each panel
expression then has Grafana's variables put in as Grafana would (``$job`` and ``$instance``
from the dashboard's own variable queries, ``$__rate_interval``, ``$__range``...) and must
evaluate to a non-empty result of finite values; with a job or instance that does not exist
it must show nothing, so every panel follows the variables.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from _prometheus import by_depth, prometheus_server, query, stop

from xzatoma.telemetry import _names as n

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "examples" / "grafana-dashboard.json"

CHILD = textwrap.dedent(
    """
    import sys

    import anyio

    from xzatoma import Price, QuotaLimits, Runtime, SubagentConfig, Usage
    from xzatoma.errors import ProviderError
    from xzatoma.telemetry import start_metrics_server
    from xzatoma.testing import ScriptedProvider, call, tool_calls


    def model(messages, tools):
        if len(messages) > 1:
            return "done"
        first = messages[0].content
        if first == "root":
            return tool_calls(
                call("subagent", {"label": "ok", "task_prompt": "leaf"}),
                call("subagent", {"label": " ", "task_prompt": "leaf"}),  # invalid_input
                call("subagent", {"label": "bad", "task_prompt": "fail"}),
                call("subagent", {"label": "mid", "task_prompt": "mid"}),
                call("parallel_subagent", {"tasks": [{"label": "p", "task_prompt": "leaf"}] * 2}),
            )
        if first == "mid":
            return tool_calls(call("subagent", {"label": "deep", "task_prompt": "deep"}))
        if first == "deep":  # at depth 2 of max_depth 2: max_depth_reached
            return tool_calls(call("subagent", {"label": "deeper", "task_prompt": "leaf"}))
        if first == "fail":  # execution_failed
            raise ProviderError("scripted failure")
        if first == "quota":  # one execution allowed, two asked for: quota_exceeded
            asks = [call("subagent", {"label": f"q{i}", "task_prompt": "leaf"}) for i in (1, 2)]
            return tool_calls(*asks)
        return "leaf done"


    async def one_round():
        provider = ScriptedProvider(model, usage=Usage(1, 10, 5, 15))
        pricing = {"scripted": Price(1, 2)}  # $0.00002 a call
        tree = Runtime(
            provider,
            subagents=SubagentConfig(summary_prompt=None, max_depth=2),
            pricing=pricing,
        )
        quota = Runtime(
            provider,
            subagents=SubagentConfig(summary_prompt=None),
            quota=QuotaLimits(max_executions=1),
            pricing=pricing,
        )
        return [(await tree.run("root")).status, (await quota.run("quota")).status]


    async def main():
        with start_metrics_server(port=0) as server:
            statuses = await one_round()
            print(server.port, *statuses, flush=True)
            for _ in sys.stdin:  # one more round for each line; serve until stdin closes
                print(*await one_round(), flush=True)


    anyio.run(main)
    """
)
ROUND_EXECUTIONS = {"1": 8.0, "2": 1.0, "3": 1.0}
"""Spawn attempts of one round by depth: ok, " ", bad, mid, p, p and q1, q2; deep; deeper."""
ERROR_TYPES = ("invalid_input", "execution_failed", "max_depth_reached", "quota_exceeded")
"""One of each a round."""

# What Grafana puts in for its built-in variables; a window of 10 minutes holds every sample
# of the test, whatever the machine's speed.
BUILTINS = {
    "__rate_interval": "10m",
    "__interval": "10m",
    "__range": "10m",
    "__range_s": "600",
    "__range_ms": "600000",
    "__interval_ms": "600000",
}
EXPECTED_UNITS = {
    "Success rate": "percentunit",
    "Active subagents": "short",
    "Executions": "short",
    "Errors": "short",
    "Success rate by depth": "percentunit",
    "Error rate by type": "percentunit",
    "p95 duration by depth": "s",
    "Tokens by depth": "short",
    "Active subagents by depth": "short",
    "Parallel batches by status": "ops",
    "Model call p95 latency": "s",
    "Model tokens by type": "short",
    "Spend": "currencyUSD",
    "Cost per hour by depth": "currencyUSD",
    "Error budget burn rate (SLO 99%)": "short",
}
"""Every panel's unit: a ratio in 0..1 is ``percentunit``, seconds ``s``, US dollars
``currencyUSD``, counts and tokens ``short``, events a second ``ops``. A new panel needs its
unit here."""
SELECTOR = re.compile(r"\b((?:subagent|gen_ai|xzatoma)_[a-z_]+)(\{[^}]*\})?")
FILTER = ('job=~"$job"', 'instance=~"$instance"')


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels() -> list[dict[str, Any]]:
    return list(dashboard()["panels"])


def targets() -> list[tuple[str, str]]:
    """``(panel title + refId, expression)`` of every query of every panel."""
    return [(f"{p['title']} {t['refId']}", t["expr"]) for p in panels() for t in p["targets"]]


def variables() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}


def regex_value(values: list[str]) -> str:
    """A multi-value variable as Grafana's Prometheus data source writes it into a query:
    regex characters escaped (doubled, for the PromQL string), several values as ``(a|b)``."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def interpolate(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with ``$name``, ``${name}`` and ``[[name]]`` replaced; none may be left."""
    every = {**BUILTINS, **values}

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        assert name in every, f"a variable the test does not know: {name}"
        return every[name]

    # \w+ is greedy: $__range_s is __range_s, not __range followed by "_s".
    done = re.sub(r"\$\{(\w+)\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)
    assert "$" not in done, done
    return done


# -- the file itself -----------------------------------------------------------------------
def test_job_and_instance_are_multi_value_query_variables() -> None:
    found = variables()
    assert found["datasource"]["type"] == "datasource"
    for name in ("job", "instance"):
        variable = found[name]
        assert variable["type"] == "query"
        assert variable["multi"] is True
        assert variable["includeAll"] is True
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variable["refresh"] == 2  # options reloaded when the time range changes
    assert found["job"]["query"] == "label_values(subagent_executions_total, job)"
    assert found["instance"]["query"] == (
        'label_values(subagent_executions_total{job=~"$job"}, instance)'
    )
    names = [v["name"] for v in dashboard()["templating"]["list"]]
    assert names.index("job") < names.index("instance")  # instance's query reads $job


def test_every_panel_expression_is_filtered_by_job_and_instance() -> None:
    exposed = set(n.PROMETHEUS_NAMES.values())
    for where, expr in targets():
        grouped = re.sub(r"\b(by|on)\s*\([^)]*\)", "", expr)  # label names, not metrics
        selectors = SELECTOR.findall(grouped)
        assert selectors, where
        for metric, matchers in selectors:
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert metric in exposed or base in exposed, (where, metric)
            assert all(f in matchers for f in FILTER), (where, metric, matchers)


def test_every_panel_has_the_right_unit() -> None:
    found = {p["title"]: p["fieldConfig"]["defaults"].get("unit") for p in panels()}
    assert found == EXPECTED_UNITS
    for panel in panels():
        defaults = panel["fieldConfig"]["defaults"]
        if defaults["unit"] == "percentunit":
            assert (defaults.get("min"), defaults.get("max")) == (0, 1), panel["title"]


def test_panels_use_the_datasource_variable_and_unique_ids() -> None:
    ids = [p["id"] for p in panels()]
    assert len(set(ids)) == len(ids)
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs) > 0, panel["title"]


def test_interpolate_replaces_every_variable_form() -> None:
    expr = 'rate(x{job=~"$job", a="${instance}", b="[[job]]"}[$__rate_interval]) / $__range_s'
    done = interpolate(expr, {"job": "j", "instance": regex_value(["127.0.0.1:1", "h:2"])})
    assert done == (r'rate(x{job=~"j", a="(127\\.0\\.0\\.1:1|h:2)", b="j"}[10m]) / 600')
    with pytest.raises(AssertionError, match="does not know"):
        interpolate("x{a=~'$nope'}", {})


# -- a real Prometheus scraping a real run -------------------------------------------------
@dataclass(frozen=True)
class Scraped:
    url: str
    """The Prometheus."""
    jobs: list[str]
    instances: list[str]
    """The values the dashboard's variable queries return."""


def wait_for(url: str, promql: str, expected: dict[str, float], deadline: float, log: Path) -> None:
    """Poll Prometheus until ``promql`` (by depth) is ``expected``: waiting on an external
    process to scrape, not ordering our own events."""
    seen: dict[str, float] = {}
    while time.monotonic() < deadline:
        try:
            # Until it is ready, Prometheus answers 503 with a plain-text body.
            if httpx.get(f"{url}/-/ready", timeout=5).status_code == 200:
                seen = by_depth(query(url, promql))
        except httpx.TransportError:  # not listening yet
            seen = {}
        if seen == expected:
            return
        time.sleep(0.25)
    tail = log.read_text()[-3000:]
    pytest.fail(f"Prometheus never saw {promql} = {expected} (last {seen}); its log:\n{tail}")


def label_values(url: str, label: str, match: str) -> list[str]:
    """What Grafana's ``label_values(match, label)`` variable query asks Prometheus."""
    response = httpx.get(f"{url}/api/v1/label/{label}/values", params={"match[]": match})
    body = response.json()
    assert body["status"] == "success", body
    values: list[str] = body["data"]
    return values


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    folder = tmp_path_factory.mktemp("grafana")
    script = folder / "child.py"
    script.write_text(CHILD)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    child = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        line = child.stdout.readline()  # blocks until the first round ran and serves
        if not line:
            pytest.fail(f"the xzatoma process exited early: {child.communicate()[1]}")
        port, *statuses = line.split()
        assert statuses == ["complete", "complete"]
        scrape = f"""
            - job_name: xzatoma
              static_configs:
                - targets: ["127.0.0.1:{port}"]
            """
        with prometheus_server(folder, scrape) as url:
            deadline = time.monotonic() + 150
            total = "sum by (depth) (subagent_executions_total)"
            log = folder / "prometheus.log"
            wait_for(url, total, ROUND_EXECUTIONS, deadline, log)
            child.stdin.write("\n")  # a second round, now that Prometheus has the first
            child.stdin.flush()
            assert child.stdout.readline().split() == ["complete", "complete"]
            twice = {depth: 2 * count for depth, count in ROUND_EXECUTIONS.items()}
            wait_for(url, total, twice, deadline, log)
            jobs = label_values(url, "job", "subagent_executions_total")
            instances = label_values(
                url, "instance", f'subagent_executions_total{{job=~"{regex_value(jobs)}"}}'
            )
            yield Scraped(url, jobs, instances)
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stop(child)
        child.stdout.close()
        if child.stderr is not None:
            child.stderr.close()


@pytest.mark.prometheus
@pytest.mark.timeout(240)
def test_the_run_shows_every_outcome_to_prometheus(scraped: Scraped) -> None:
    assert scraped.jobs == ["xzatoma"]
    assert len(scraped.instances) == 1
    assert scraped.instances[0].startswith("127.0.0.1:")
    errors = query(scraped.url, "sum by (error_type) (subagent_errors_total)")
    assert {r["metric"]["error_type"]: float(r["value"][1]) for r in errors} == dict.fromkeys(
        ERROR_TYPES, 2.0
    )
    for metric in ("subagent_tokens_consumed_sum", "subagent_cost_usd_total"):
        assert all(v > 0 for v in by_depth(query(scraped.url, metric)).values()), metric
    batches = query(scraped.url, "subagent_batches_total")
    assert [float(r["value"][1]) for r in batches] == [2.0]


@pytest.mark.prometheus
@pytest.mark.timeout(240)
@pytest.mark.parametrize("selection", ["all", "one"])
def test_every_panel_expression_returns_data(scraped: Scraped, selection: str) -> None:
    # "all": the variables on All (Grafana writes every value as a regex); "one": a value
    # picked from each list.
    picked = slice(None) if selection == "all" else slice(1)
    values = {
        "job": regex_value(scraped.jobs[picked]),
        "instance": regex_value(scraped.instances[picked]),
    }
    units = {p["title"]: p["fieldConfig"]["defaults"]["unit"] for p in panels()}
    for where, expr in targets():
        result = query(scraped.url, interpolate(expr, values))
        assert result, f"{where}: no data from {expr}"
        numbers = [float(r["value"][1]) for r in result]
        assert all(math.isfinite(x) for x in numbers), (where, result)
        assert all(x >= 0 for x in numbers), (where, result)
        if units[where.rsplit(" ", 1)[0]] == "percentunit":
            assert all(x <= 1 for x in numbers), (where, result)


@pytest.mark.prometheus
@pytest.mark.timeout(240)
@pytest.mark.parametrize("variable", ["job", "instance"])
def test_every_panel_follows_the_variables(scraped: Scraped, variable: str) -> None:
    values = {"job": regex_value(scraped.jobs), "instance": regex_value(scraped.instances)}
    values[variable] = "no-such-" + variable
    for where, expr in targets():
        assert query(scraped.url, interpolate(expr, values)) == [], where
