"""Every example runs (offline, and against a real endpoint on loopback), the example files
validate, and the docs agree with the code: the tool schemas, the batch JSON, the snippets
and the links."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pydantic
import pytest
from _http_server import Reply, ScriptedHTTPServer

from xzatoma import BatchResult, ParallelSubagentTool, RunResult, SubagentTool
from xzatoma._tool_messages import describe_batch
from xzatoma.cli import main
from xzatoma.config import XzatomaConfig, load_tasks

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def run_example(name: str, **env: str) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("XZATOMA_")}
    child_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    child_env.update(env)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=ROOT, env=child_env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


# What each example must print offline: a few lines that show it did its job.
EXPECTED = {
    "quickstart.py": [r"^status: complete$", r"^answer: The sentence has 9 words\.$"],
    "parallel_batch.py": [
        r"^\[complete\] quicksort: quicksort: explained\.$",
        r"^batch complete: 5 succeeded, 0 failed, 0 cancelled, 750 tokens$",
        r"^quota used: 5 executions$",
    ],
    "recursive_research.py": [
        r"^root \(depth 0\): complete",
        r"^    researcher \(depth 1\): complete",
        r"^        specialist \(depth 2\): complete",
        r"^answer: B-trees keep the tree shallow",
    ],
    "custom_tool.py": [
        r'"name": "order_status"',
        r"^tool order_status -> Error: Invalid arguments for tool 'order_status': order_id",
        r"^tool order_status -> A-1001: shipped",
        r"^tool subagent -> A-1002 is waiting for stock\.$",
        r"^status: complete$",
    ],
    "instrument.py": [
        r"^ended: geographer \(depth 1\) complete, 2 turns$",
        r"^tokens by depth: \{0: 100, 1: 100\}$",
        r"^      execute_tool lookup\n        lookup in the atlas$",
    ],
    "mcp_time.py": [
        r"^MCP tools: get_current_time, convert_time$",
        r"^    clock \(depth 1\): complete, 2 turns, called \['get_current_time'\]$",
        r'^tool result: \{ "timezone": "Asia/Tokyo", "datetime": "[0-9-]+T[0-9:]+\+09:00"',
        r"^answer: In Tokyo it is [0-9-]+T[0-9:]+\+09:00 \(\w+day\)\.$",
    ],
    "metrics_scrape.py": [
        r"^serving http://127\.0\.0\.1:\d+/metrics$",
        r"^batch partial: 3 succeeded, 1 failed$",
        r'^subagent_executions_total\{depth="1".*\} 4\.0$',
        r'^subagent_errors_total\{depth="1",error_type="quota_exceeded".*\} 1\.0$',
    ],
    "service.py": [
        r"^session alice: complete, 1 subagent executions at depth 1$",
        r"^session bob: complete, 2 subagent executions at depth 1$",
        r"^session [0-9a-f-]{36}: complete, 3 subagent executions at depth 1$",
        r'^subagent_executions_total\{depth="1".*\} 6\.0$',
    ],
}


def test_every_example_has_expectations() -> None:
    assert set(SCRIPTS) == set(EXPECTED)


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs_offline(name: str) -> None:
    done = run_example(name)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    for pattern in EXPECTED[name]:
        assert re.search(pattern, done.stdout, re.MULTILINE), f"{pattern!r} not in:\n{done.stdout}"


@pytest.fixture
def endpoint() -> Iterator[ScriptedHTTPServer]:
    with ScriptedHTTPServer() as server:
        body = {
            "id": "x", "object": "chat.completion", "model": "served-model",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "A real answer."}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        }  # fmt: skip
        server.add(*[Reply(body=body) for _ in range(60)])
        yield server


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs_against_a_real_endpoint(name: str, endpoint: ScriptedHTTPServer) -> None:
    done = run_example(
        name,
        XZATOMA_BASE_URL=endpoint.url + "/v1",
        XZATOMA_MODEL="my-model",
        XZATOMA_API_KEY_ENV="XZATOMA_TEST_KEY",
        XZATOMA_TEST_KEY="sk-example",
    )
    assert done.returncode == 0, done.stderr
    assert endpoint.requests, "the example never called the endpoint"
    for request in endpoint.requests:
        assert request.path == "/v1/chat/completions"
        assert request.json()["model"] == "my-model"
        assert request.headers["authorization"] == "Bearer sk-example"


# -- configuration and task files ----------------------------------------------------------


@pytest.mark.parametrize("name", ["config.yaml", "ollama.yaml"])
def test_example_configs_validate(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "validate", str(EXAMPLES / name)]) == 0
    assert capsys.readouterr().out == f"OK: {EXAMPLES / name} is valid\n"


def all_keys(model: type[pydantic.BaseModel], prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        key = prefix + name
        yield key
        nested = [a for a in getattr(field.annotation, "__args__", (field.annotation,))
                  if isinstance(a, type) and issubclass(a, pydantic.BaseModel)]  # fmt: skip
        # agent.subagent.provider is shown as null in config.yaml, tools.mcp_servers as []
        # (a list: the keys of its entries are in docs/configuration.md).
        listed = typing.get_origin(field.annotation) is list
        if nested and key != "agent.subagent.provider" and not listed:
            yield from all_keys(nested[0], key + ".")


def test_config_yaml_has_every_key_each_commented() -> None:
    text = (EXAMPLES / "config.yaml").read_text(encoding="utf-8")
    found: list[str] = []
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        match = re.match(r"^( *)([a-z_]+):", line)
        if not match:
            continue
        assert "#" in line, f"config.yaml: no comment on {line!r}"
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        found.append(".".join(name for _, name in stack))
    assert sorted(found) == sorted(all_keys(XzatomaConfig))


def test_config_yaml_shows_the_defaults() -> None:
    import yaml

    data = yaml.safe_load((EXAMPLES / "config.yaml").read_text(encoding="utf-8"))
    config = XzatomaConfig.from_dict(data)
    assert config.agent == XzatomaConfig().agent
    assert config.telemetry == XzatomaConfig().telemetry


@pytest.mark.parametrize("name", ["tasks.jsonl", "tasks.yaml"])
def test_example_task_files_load(name: str) -> None:
    tasks = load_tasks(EXAMPLES / name)
    assert [t.label for t in tasks] == ["quicksort", "mergesort", "heapsort"]


# -- docs agree with the code --------------------------------------------------------------


def doc_block(text: str, name: str) -> tuple[int, int, Any]:
    marker = re.escape(name)
    pattern = rf"<!-- BEGIN {marker} .*?-->\n```json\n(.*?)\n```\n<!-- END {marker} -->"
    match = re.search(pattern, text, re.DOTALL)
    assert match, f"docs/tool-schemas.md has no block for {name}"
    return match.start(1), match.end(1), json.loads(match.group(1))


def test_tool_schemas_doc_matches_the_tools() -> None:
    path = DOCS / "tool-schemas.md"
    text = path.read_text(encoding="utf-8")
    stale = []
    for tool in (SubagentTool(), ParallelSubagentTool()):
        start, end, documented = doc_block(text, tool.name)
        actual = tool.spec.to_openai()
        if documented != actual:
            stale.append(tool.name)
            text = text[:start] + json.dumps(actual, indent=2) + text[end:]
    if stale and os.environ.get("XZATOMA_UPDATE_DOCS") == "1":
        path.write_text(text, encoding="utf-8")
        return
    assert not stale, (
        f"docs/tool-schemas.md is stale for {stale}; regenerate it with "
        "XZATOMA_UPDATE_DOCS=1 pytest tests/test_examples.py -k tool_schemas"
    )


def test_batch_json_example_has_the_real_keys() -> None:
    _, _, documented = doc_block(
        (DOCS / "tool-schemas.md").read_text(encoding="utf-8"), "batch-json"
    )
    result = RunResult("x", "complete", label="a", depth=1)
    batch = BatchResult((result,), "complete", 1, 0, 0, 0.0)
    actual = json.loads(describe_batch(batch, 1_048_576).content)  # what the model reads
    assert documented.keys() == actual.keys()
    assert documented["tasks"][0].keys() == actual["tasks"][0].keys()


def test_the_testing_snippet_in_concepts_runs() -> None:
    text = (DOCS / "concepts.md").read_text(encoding="utf-8")
    snippet = (
        text.split("## Testing your agents", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    )
    body = textwrap.indent(snippet, "    ")
    namespace: dict[str, Any] = {}
    exec(f"async def snippet():\n{body}", namespace)  # the doc uses top-level await
    anyio.run(namespace["snippet"])


def test_the_demo_excerpt_in_getting_started_is_real(capsys: pytest.CaptureFixture[str]) -> None:
    text = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    excerpt = text.split("```text\nResult tree", 1)[1].split("```", 1)[0].splitlines()[1:]
    assert main(["demo", "--latency", "0"]) == 0
    output = capsys.readouterr().out.splitlines()
    for line in excerpt:
        if line.strip() != "...":
            assert line in output, f"getting-started.md shows a demo line it does not print: {line}"


def test_every_example_is_in_getting_started() -> None:
    text = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    for path in EXAMPLES.iterdir():
        if path.suffix in (".py", ".yaml", ".jsonl"):
            assert f"(../examples/{path.name})" in text, path.name


def test_relative_links_in_docs_resolve() -> None:
    for doc in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
