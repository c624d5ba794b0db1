"""Shared test settings: async tests run on asyncio through anyio's pytest plugin.

A test that involves time opts into virtual time with ``@on_virtual_time`` (from
``tests/_clock.py``): it then runs twice, on trio's autojumping ``MockClock`` and on asyncio's
:class:`~_clock.VirtualTimeLoop`, each made fresh for the test, so its timeouts fire at once
and at the same instant on every run, whatever the machine's load.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from _clock import Backend, backend_options
from _http_server import MakeProvider, ScriptedHTTPServer
from _processes import boot_ticks, mcp_servers_started_since
from _redis_server import RedisServer, redis_server_or_skip

from xzatoma import OpenAIProvider


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[Backend, dict[str, object]]:
    backend: Backend | None = getattr(request, "param", None)
    if backend is None:
        return "asyncio"
    return backend, backend_options(backend)


@pytest.fixture
def server() -> Iterator[ScriptedHTTPServer]:
    """A scripted HTTP server on 127.0.0.1 (``tests/_http_server.py``)."""
    with ScriptedHTTPServer() as srv:
        yield srv


@pytest.fixture
async def make_provider(server: ScriptedHTTPServer) -> AsyncIterator[MakeProvider]:
    """``make(**kwargs)``: an ``OpenAIProvider`` for ``server`` (model ``local-model`` unless
    given), closed after the test."""
    made: list[OpenAIProvider] = []

    def make(**kwargs: Any) -> OpenAIProvider:
        kwargs.setdefault("model", "local-model")
        provider = OpenAIProvider(server.url + "/v1", **kwargs)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


@pytest.fixture(scope="session", autouse=True)
def no_mcp_server_survives_the_suite() -> Iterator[None]:
    """No MCP server the suite started (mcp-server-time, tests/_mcp_test_server.py) is alive
    once it ends: closing the tools, a cancellation or a Ctrl-C ended every one."""
    started = boot_ticks() - 1  # ticks are coarse: one early, not one late
    yield
    left = mcp_servers_started_since(started)
    assert not left, f"MCP server processes outlived the test suite: {left}"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session (``tests/_redis_server.py``); tests keep apart
    by naming their own quota tree."""
    with redis_server_or_skip() as started:
        yield started


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One real local Ray for the session: ``ray.init(num_cpus=2, include_dashboard=False)``.

    Its workers find ``tests/_ray_models.py`` on their ``PYTHONPATH`` and the test API key in
    their environment (set before Ray starts, as ``ray start`` would pass it on).
    """
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (make test has it)")
    import _ray_models

    os.environ[_ray_models.KEY_VARIABLE] = _ray_models.KEY
    tests = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    try:
        yield
    finally:
        ray.shutdown()
