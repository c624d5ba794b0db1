"""The HTTP path under load: which transport runs, the gate in front of the pool, connection
reuse, the environment's proxy, sniffio, and tool schemas serialised once.

Every request here goes over real loopback HTTP to ``tests/_http_server.py``'s threaded
server; the figures (µs per request at N=10,000) live in the benchmark, bench/http_bench.py.
"""

from __future__ import annotations

import json
import resource
import threading
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpcore
import pytest
from _http_server import Reply, ScriptedHTTPServer

import xzatoma
from xzatoma import Message, OpenAIProvider, ToolSpec
from xzatoma.errors import ConfigError, ProviderError
from xzatoma.providers import _loop_transport, _openai_wire
from xzatoma.providers._aiohttp_transport import AiohttpTransport
from xzatoma.providers._httpx_transport import HttpxTransport

TRANSPORTS = ("aiohttp", "httpx")
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def answer(content: str = "ok") -> Reply:
    return Reply(
        body={
            "choices": [{"message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    )


def run_on(backend: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Real time, real sockets: not the virtual clocks of tests/_clock.py."""
    return anyio.run(fn, backend=backend)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("backend", "expected"), [("asyncio", AiohttpTransport), ("trio", HttpxTransport)]
)
def test_auto_takes_aiohttp_on_asyncio_and_httpx_on_trio(
    backend: str, expected: type, server: ScriptedHTTPServer
) -> None:
    server.add(answer("first"), answer("second"))

    async def main() -> tuple[list[str | None], object]:
        async with OpenAIProvider(server.url, "m") as provider:
            contents = [
                (await provider.complete([Message.user("hi")], [])).content for _ in range(2)
            ]
            return contents, await provider._transports.get()

    contents, transport = run_on(backend, main)

    assert contents == ["first", "second"]
    assert type(transport) is expected
    # Two requests in a row, one connection: kept alive and reused.
    assert len({request.client_port for request in server.requests}) == 1


@pytest.mark.timeout(60)
def test_aiohttp_asked_for_on_trio_is_a_clear_provider_error(server: ScriptedHTTPServer) -> None:
    async def main() -> None:
        async with OpenAIProvider(server.url, "m", transport="aiohttp") as provider:
            await provider.complete([Message.user("hi")], [])

    with pytest.raises(ProviderError, match=r"asyncio only.*transport='auto' or 'httpx'"):
        run_on("trio", main)
    assert server.requests == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.anyio
async def test_requests_beyond_max_connections_wait_in_the_gate_not_in_the_pool(
    transport: str, server: ScriptedHTTPServer
) -> None:
    release = threading.Event()
    server.add(*(Reply(body=answer(f"r{i}").body, hold=release) for i in range(6)))
    got: list[str | None] = []
    async with OpenAIProvider(server.url, "m", max_connections=2, transport=transport) as provider:  # type: ignore[arg-type]

        async def ask() -> None:
            got.append((await provider.complete([Message.user("hi")], [])).content)

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(ask)
            with anyio.fail_after(30):
                while len(server.requests) < 2:  # the two that got through reach the server
                    await anyio.sleep(0.01)
            gate = (await provider._transports.get()).gate
            assert gate.inside == 2
            assert gate._semaphore.statistics().tasks_waiting == 4
            assert len(server.requests) == 2
            release.set()

    assert sorted(got) == [f"r{i}" for i in range(6)]  # type: ignore[type-var]
    # Six requests over at most two connections, both kept alive.
    assert len({request.client_port for request in server.requests}) <= 2


def test_max_connections_defaults_to_1000_or_half_the_open_file_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _: (20000, 20000))
    assert _loop_transport.default_max_connections() == 1000
    assert OpenAIProvider("http://127.0.0.1:1/v1", "m").max_connections == 1000
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    assert _loop_transport.default_max_connections() == 512
    monkeypatch.setattr(resource, "getrlimit", lambda _: (resource.RLIM_INFINITY,) * 2)
    assert _loop_transport.default_max_connections() == 1000
    assert OpenAIProvider("http://127.0.0.1:1/v1", "m", max_connections=7).max_connections == 7


@pytest.mark.parametrize("value", [0, -1, 2.5, "10", True])
def test_a_max_connections_that_is_not_a_positive_integer_is_refused(value: object) -> None:
    with pytest.raises(ConfigError, match="max_connections must be an integer of at least 1"):
        OpenAIProvider("http://127.0.0.1:1/v1", "m", max_connections=value)  # type: ignore[arg-type]


def test_an_unknown_transport_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match="transport must be one of 'auto', 'aiohttp', 'httpx'"):
        OpenAIProvider("http://127.0.0.1:1/v1", "m", transport="h2")  # type: ignore[arg-type]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.anyio
async def test_the_proxy_of_the_environment_is_used_and_no_proxy_is_honoured(
    transport: str, server: ScriptedHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scripted server stands in for a forward proxy: it sees the absolute URL.
    monkeypatch.setenv("HTTP_PROXY", server.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    server.add(answer("via proxy"), answer("direct"))
    far = "http://model.invalid:8000/v1"
    async with OpenAIProvider(far, "m", transport=transport) as provider:  # type: ignore[arg-type]
        reply = await provider.complete([Message.user("hi")], [])
    assert reply.content == "via proxy"
    assert server.requests[0].path == f"{far}/chat/completions"

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = server.url.replace("localhost", "127.0.0.1")
    async with OpenAIProvider(direct, "m", transport=transport) as provider:  # type: ignore[arg-type]
        assert (await provider.complete([Message.user("hi")], [])).content == "direct"
    assert server.requests[1].path == "/chat/completions"


def test_sniffio_is_a_dependency_and_httpcore_finds_the_running_library() -> None:
    # httpcore imports sniffio on every request to learn which loop runs; without it the
    # import fails each time (a quarter of a request's CPU) and trio is taken for asyncio.
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    assert any(d.replace(" ", "").startswith("sniffio>=") for d in dependencies)
    found: list[str] = []

    async def probe() -> None:
        found.append(httpcore._synchronization.current_async_library())

    for backend in ("asyncio", "trio"):
        anyio.run(probe, backend=backend)
    assert found == ["asyncio", "trio"]


@pytest.mark.timeout(60)
def test_the_httpx_transport_works_on_trio(server: ScriptedHTTPServer) -> None:
    # Without sniffio httpcore would drive trio's sockets through its asyncio backend.
    server.add(answer("on trio"))

    async def main() -> str | None:
        async with OpenAIProvider(server.url, "m", transport="httpx") as provider:
            return (await provider.complete([Message.user("hi")], [])).content

    assert run_on("trio", main) == "on trio"


def test_tool_schemas_are_serialised_once_per_set_of_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = (
        ToolSpec(
            "lookup", "Look a word up.", {"type": "object", "properties": {"w": {"type": "string"}}}
        ),
        ToolSpec("add", "Add two numbers.", {"type": "object"}),
    )
    built: list[str] = []
    to_openai = ToolSpec.to_openai

    def counting(self: ToolSpec) -> dict[str, Any]:
        built.append(self.name)
        return to_openai(self)

    monkeypatch.setattr(ToolSpec, "to_openai", counting)
    monkeypatch.setattr(_openai_wire, "_tools_cache", {})
    messages = [Message.user("hi")]
    first = _openai_wire.encode_request("m", messages, specs, {"temperature": 0.5})
    again = _openai_wire.encode_request("m", [*messages, Message.assistant("x")], specs, None)

    assert built == ["lookup", "add"]  # the second request reused the first's JSON
    body, second = json.loads(first), json.loads(again)
    assert body["tools"] == second["tools"] == [to_openai(s) for s in specs]
    assert body["temperature"] == 0.5
    assert [m["role"] for m in second["messages"]] == ["user", "assistant"]
    # Other specs (equal, but new objects) are serialised on their own.
    _openai_wire.encode_request(
        "m", messages, tuple(ToolSpec(s.name, s.description, s.parameters) for s in specs), None
    )
    assert built == ["lookup", "add", "lookup", "add"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.anyio
async def test_a_wait_for_a_free_connection_does_not_count_against_the_timeout(
    transport: str, server: ScriptedHTTPServer
) -> None:
    # One connection, four requests ahead of the last, each answered after about 1 s: the
    # last waits about 4 s for the connection, more than its 3 s timeout, then answers in
    # time. Its clock starts when it gets the connection, as each request's own does.
    holds = [threading.Event() for _ in range(5)]
    server.add(*(Reply(body=answer(f"r{i}").body, hold=hold) for i, hold in enumerate(holds)))
    got: list[str | None] = []
    async with OpenAIProvider(
        server.url,
        "m",
        max_connections=1,
        timeout=3,
        max_retries=0,
        transport=transport,  # type: ignore[arg-type]
    ) as provider:

        async def ask() -> None:
            got.append((await provider.complete([Message.user("hi")], [])).content)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(ask)
            for answered, hold in enumerate(holds):
                with anyio.fail_after(30):
                    while len(server.requests) <= answered:  # this one reached the server
                        await anyio.sleep(0.01)
                if answered < 4:
                    await anyio.sleep(1)  # each of the first four takes about a second
                hold.set()

    assert sorted(got) == [f"r{i}" for i in range(5)]  # type: ignore[type-var]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.anyio
async def test_both_transports_keep_cookies_and_say_who_they_are(
    transport: str, server: ScriptedHTTPServer
) -> None:
    # A load balancer's sticky-session cookie comes back on the next request, as httpx
    # always did; the User-Agent is xzatoma's whichever library sends it.
    first = answer("one")
    first.headers["Set-Cookie"] = "AWSALB=abc; Path=/"
    server.add(first, answer("two"))
    async with OpenAIProvider(server.url, "m", transport=transport) as provider:  # type: ignore[arg-type]
        for _ in range(2):
            await provider.complete([Message.user("hi")], [])
    assert "cookie" not in server.requests[0].headers
    assert server.requests[1].headers["cookie"] == "AWSALB=abc"
    agents = {request.headers["user-agent"] for request in server.requests}
    assert agents == {f"xzatoma/{xzatoma.__version__}"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.anyio
async def test_all_proxy_is_honoured_with_its_credentials(
    transport: str, server: ScriptedHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    proxy = server.url.replace("http://", "http://user:s3cret@")
    monkeypatch.setenv("ALL_PROXY", proxy)
    server.add(answer("via all_proxy"))
    far = "http://model.invalid:8000/v1"
    async with OpenAIProvider(far, "m", transport=transport) as provider:  # type: ignore[arg-type]
        assert (await provider.complete([Message.user("hi")], [])).content == "via all_proxy"
    (request,) = server.requests
    assert request.path == f"{far}/chat/completions"
    assert request.headers["proxy-authorization"] == "Basic dXNlcjpzM2NyZXQ="  # user:s3cret


@pytest.mark.timeout(60)
def test_auto_takes_httpx_behind_a_proxy_aiohttp_cannot_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "https://user:s3cret@proxy.invalid:3128")
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    async def transport_of(choice: str) -> object:
        provider = OpenAIProvider("http://model.invalid/v1", "m", transport=choice)  # type: ignore[arg-type]
        try:
            return await provider._transports.get()
        finally:
            await provider.aclose()

    assert type(run_on("asyncio", lambda: transport_of("auto"))) is HttpxTransport
    with pytest.raises(ProviderError, match="cannot use the https proxy") as info:
        run_on("asyncio", lambda: transport_of("aiohttp"))
    assert "s3cret" not in str(info.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.anyio
async def test_cancelled_calls_give_their_places_back(
    transport: str, server: ScriptedHTTPServer
) -> None:
    # Two calls in flight and three waiting at the gate, all cancelled: every place comes
    # back, and the next call goes through on a connection.
    hold = threading.Event()
    server.add(*(Reply(body=answer().body, hold=hold) for _ in range(2)), answer("after"))
    async with OpenAIProvider(server.url, "m", max_connections=2, transport=transport) as provider:  # type: ignore[arg-type]
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(provider.complete, [Message.user("hi")], [])
            with anyio.fail_after(30):
                while len(server.requests) < 2:
                    await anyio.sleep(0.01)
            gate = (await provider._transports.get()).gate
            assert gate._semaphore.statistics().tasks_waiting == 3
            tg.cancel_scope.cancel()
        assert gate.inside == 0
        assert gate._semaphore.statistics().tasks_waiting == 0
        hold.set()
        assert (await provider.complete([Message.user("hi")], [])).content == "after"
