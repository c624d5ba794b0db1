"""``examples/service.py`` met for real: the app under uvicorn on loopback, httpx as the client.

Each request's tree runs in a runtime of its own, so its statistics are its tree alone, while
the one ``/metrics`` of the process adds up every tree and names no session.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from xzatoma import Completion, Message, Provider, ToolSpec
from xzatoma.telemetry._config import Configuration, configuration
from xzatoma.testing import ScriptedProvider

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "service.py"


def load_example() -> Any:
    """The example as a module, loaded by path (``examples/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("service_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


service = load_example()
create_app: Callable[..., Starlette] = service.create_app
scripted_model: Callable[[Sequence[Message], Sequence[ToolSpec]], Completion]
scripted_model = service.scripted_model


@asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` under uvicorn on a free loopback port, and a client for it; stopped after."""
    # Listening before uvicorn starts: requests wait in the backlog until the lifespan is done.
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # log_config=None: uvicorn leaves the process's logging configuration alone.
    config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
        server.should_exit = True


def executions(metrics: str, depth: str) -> float:
    """``subagent_executions_total`` at ``depth``, summed over its series, from Prometheus text."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "subagent_executions_total" and sample.labels.get("depth") == depth
    )


def every_root_delegates_at_once(roots: int) -> Provider:
    """The example's scripted model, holding each root's ``parallel_subagent`` call until
    ``roots`` of them have asked: every tree is then running at the same time."""
    asked = 0
    everyone = anyio.Event()

    async def model(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion:
        nonlocal asked
        completion = scripted_model(messages, tools)
        if completion.tool_calls:
            asked += 1
            if asked == roots:
                everyone.set()
            await everyone.wait()
        return completion

    return ScriptedProvider(model, usage=service.SCRIPTED_USAGE)


async def test_each_response_has_its_own_tree_and_metrics_add_them_all_up() -> None:
    counts = range(1, 11)
    sessions = {n: f"tenant-{n}-{uuid.uuid4().hex[:8]}" for n in counts}
    answers: dict[int, dict[str, Any]] = {}
    app = create_app(make_provider=lambda: every_root_delegates_at_once(len(counts)))

    async with serving(app) as client:

        async def post(n: int) -> None:
            body = {
                "prompt": f"Request {n}.",
                "tasks": [f"task {i} of request {n}" for i in range(n)],
                "session_id": sessions[n],
            }
            response = await client.post("/runs", json=body)
            assert response.status_code == 200, response.text
            answers[n] = response.json()

        async with anyio.create_task_group() as tg:
            for n in counts:
                tg.start_soon(post, n)
        metrics = (await client.get("/metrics")).raise_for_status().text

    for n in counts:
        answer = answers[n]
        assert answer["session_id"] == answer["statistics"]["session_id"] == sessions[n]
        assert answer["status"] == "complete"
        assert answer["output"] == "All tasks are done."
        statistics = answer["statistics"]
        assert list(statistics["by_depth"]) == ["1"]
        depth_1 = statistics["by_depth"]["1"]
        assert depth_1 == statistics["total"]
        assert depth_1["executions"] == n
        assert depth_1["completions"] == {"complete": n}
        assert depth_1["errors"] == {}
        assert depth_1["active"] == 0
        assert depth_1["turns"] == 2 * n  # each task, then its summary prompt
        assert depth_1["tokens"] == 2 * n * service.SCRIPTED_USAGE.total_tokens
        assert depth_1["duration_count"] == n
    assert executions(metrics, "1") == sum(counts)
    assert executions(metrics, "2") == 0
    labels = {
        name: value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        for name, value in sample.labels.items()
    }
    assert not [name for name in labels if "session" in name]
    assert not [s for s in sessions.values() if s in metrics]


async def test_a_session_id_is_generated_when_none_is_sent() -> None:
    async with serving(create_app()) as client:
        answers = [
            (await client.post("/runs", json={"prompt": "Hello.", "tasks": ["a"]})).json()
            for _ in range(2)
        ]
    generated = [answer["session_id"] for answer in answers]
    assert [uuid.UUID(s).version for s in generated] == [4, 4]
    assert generated[0] != generated[1]
    assert [answer["statistics"]["session_id"] for answer in answers] == generated


BAD_BODIES = [
    (b"not json", "the body is not JSON"),
    (b"[1, 2]", "the body must be a JSON object"),
    (b'{"tasks": ["a"]}', "prompt must be a non-empty string"),
    (b'{"prompt": ""}', "prompt must be a non-empty string"),
    (b'{"prompt": "  "}', "prompt must be a non-empty string"),
    (b'{"prompt": "x", "tasks": "a"}', "tasks must be a list of non-empty strings"),
    (b'{"prompt": "x", "tasks": ["a", 1]}', "tasks must be a list of non-empty strings"),
    (b'{"prompt": "x", "tasks": []}', "tasks must have 1 to 20 entries, got 0"),
    (json.dumps({"prompt": "x", "tasks": ["t"] * 21}).encode(), "tasks must have 1 to 20 entries"),
    (b'{"prompt": "x", "session_id": 7}', "session_id must be a string"),
    (b'{"prompt": "x", "session_id": ""}', "session_id must not be empty"),
    (json.dumps({"prompt": "x", "session_id": "s" * 200}).encode(), "session_id has 200 char"),
    (b'{"prompt": "x", "session_id": "a\\nb"}', "not printable"),
    (b"[" * 60_000, "the body is not JSON"),
    (b'{"prompt": "x", "tasks": ["a\\n- b\\n- c"]}', "each task must be one line"),
]


async def test_bad_input_is_a_400_that_says_what_is_wrong_and_the_service_goes_on() -> None:
    async with serving(create_app()) as client:
        for body, problem in BAD_BODIES:
            response = await client.post("/runs", content=body)
            assert response.status_code == 400, (body, response.text)
            assert response.headers["content-type"] == "application/json"
            assert problem in response.json()["error"], body
        huge = await client.post("/runs", content=b'{"prompt": "' + b"x" * 70_000 + b'"}')
        assert huge.status_code == 413
        assert "larger than 65536 bytes" in huge.json()["error"]
        good = await client.post("/runs", json={"prompt": "Now properly.", "tasks": ["a", "b"]})
        metrics = (await client.get("/metrics")).text
    assert good.status_code == 200
    assert good.json()["statistics"]["total"]["executions"] == 2
    assert executions(metrics, "1") == 2  # the bad requests ran nothing


async def test_metrics_negotiate_openmetrics_and_gzip() -> None:
    async with serving(create_app()) as client:
        await client.post("/runs", json={"prompt": "Something to count.", "tasks": ["a"]})
        openmetrics = await client.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
        text = await client.get("/metrics", headers={"accept-encoding": "gzip"})
        health = await client.get("/healthz")
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")
    assert "subagent_executions_total{" in openmetrics.text
    assert text.headers["content-type"].startswith("text/plain")
    assert text.headers["content-encoding"] == "gzip"
    assert "# EOF" not in text.text
    assert executions(text.text, "1") == 1
    assert health.status_code == 200


async def test_the_service_hands_the_telemetry_configuration_back_when_it_stops() -> None:
    async with serving(create_app()) as client:
        (await client.get("/healthz")).raise_for_status()
        assert configuration().meter_provider is not None
    assert configuration() == Configuration()  # OpenTelemetry's global providers again
