"""The OpenAI provider at the boundary (issue 11: items 1, 2, 3, 4, 9, 13 and 16, and round 2).

Every misbehaving endpoint here is a real server on 127.0.0.1: the scripted one from
``_http_server`` for whole replies, and a raw-socket one (below) for what ``http.server``
cannot do: drip bytes, send an endless chunked body, a gzip bomb, echo a header back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import math
import socket
import sys
import threading
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import quote, quote_plus

import anyio
import httpx
import pytest
from _http_server import Reply, ScriptedHTTPServer

import xzatoma.providers.openai as openai_module
from xzatoma import Agent, QuotaLimits, Runtime, SubagentConfig, tool
from xzatoma._types import Message, ToolCall, Usage
from xzatoma.errors import ConfigError, ProviderError
from xzatoma.providers._aiohttp_transport import AiohttpTransport
from xzatoma.providers.openai import OpenAIProvider, clean_api_key, validate_base_url

CANARY = "sk-cAnary/7f+3a=9c'2e\\d0 4b"
"""A key whose every spelling differs: '/', '+', '=', a quote, a backslash and a space."""
CORE = "cAnary"
"""Survives every encoding of the key, so finding it anywhere means a spelling leaked."""
MiB = 1 << 20


# -- a raw-socket HTTP server ----------------------------------------------------------------


@dataclass(frozen=True)
class RawRequest:
    head: str
    headers: dict[str, str]
    body: bytes


Script = Callable[[RawRequest, "Sender"], None]


class Sender:
    """Writes to one client; ``False`` once the client is gone or the server is stopping."""

    def __init__(self, conn: socket.socket, stop: threading.Event) -> None:
        self._conn, self.stop = conn, stop

    def __call__(self, data: bytes) -> bool:
        if self.stop.is_set():
            return False
        try:
            self._conn.sendall(data)
        except OSError:
            return False
        return True

    def wait(self, seconds: float) -> bool:
        """Pause between drips; ``False`` when the server is stopping."""
        return not self.stop.wait(seconds)


class RawServer:
    """One request per connection, answered by ``script``; ``close()`` joins every thread."""

    def __init__(self, script: Script) -> None:
        self.requests: list[RawRequest] = []
        self._script = script
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # only so the accept loop notices close() promptly
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._conns.append(conn)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            while len(rest) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                rest += chunk
            request = RawRequest(lines[0], headers, rest)
            self.requests.append(request)
            self._script(request, Sender(conn, self._stop))

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join()
        self._listener.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join()
        for conn in conns:
            conn.close()


@contextlib.contextmanager
def raw_server(script: Script) -> Iterator[RawServer]:
    server = RawServer(script)
    try:
        yield server
    finally:
        server.close()


def head(status: str = "200 OK", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chat_body(content: str | None = "ok", **extra: Any) -> dict[str, Any]:
    body = {
        "model": "m",
        "choices": [
            {"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
    }
    return {**body, **extra}


ProviderFor: TypeAlias = Callable[..., OpenAIProvider]
"""What the ``provider_for`` fixture gives: ``provider_for(url, **options)``."""


async def no_sleep(seconds: float) -> None:
    return None


@pytest.fixture
def server() -> Iterator[ScriptedHTTPServer]:
    with ScriptedHTTPServer() as srv:
        yield srv


@pytest.fixture(params=["aiohttp", "httpx"])
async def provider_for(request: pytest.FixtureRequest) -> AsyncIterator[ProviderFor]:
    """Providers whose retry pauses are skipped, closed at the end of the test; every test
    that uses them runs once on each transport (aiohttp, asyncio's default, and httpx)."""
    made: list[OpenAIProvider] = []

    def make(url: str, **kwargs: Any) -> OpenAIProvider:
        kwargs.setdefault("transport", request.param)
        provider = OpenAIProvider(url, kwargs.pop("model", "m"), **kwargs)
        provider._sleep = no_sleep
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


def assert_no_secret(
    error: BaseException, caplog: pytest.LogCaptureFixture, logger_prefix: str = ""
) -> None:
    formatter = logging.Formatter()
    records = [r for r in caplog.records if r.name.startswith(logger_prefix)]
    for where, text in [
        ("str(error)", str(error)),
        ("repr(error)", repr(error)),
        ("logs", "\n".join(formatter.format(r) for r in records)),
    ]:
        assert CORE.lower() not in text.lower(), f"the key leaked into {where}: {text}"
    assert "\n" not in str(error), "the error is not one line"


# -- 1. the API key --------------------------------------------------------------------------


@pytest.mark.parametrize("odd", ["\u00e9", "\u200b", "\u00a0", "\u2019"])
def test_a_non_ascii_key_is_refused_without_its_value(odd: str) -> None:
    key = f"sk-{CORE}{odd}7f"
    with pytest.raises(ConfigError) as info:
        clean_api_key(key, source="environment variable XZ_KEY")
    message = str(info.value)
    assert message.startswith("environment variable XZ_KEY holds a non-ASCII character")
    assert CORE not in message
    with pytest.raises(ConfigError, match="api_key holds a non-ASCII character"):
        OpenAIProvider("http://127.0.0.1:1", "m", api_key=key)


SPELLINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda v: v,
    "header": lambda v: f"Authorization: {v}",
    "repr": repr,
    "bytes repr": lambda v: repr(v.encode()),
    "repr of repr": lambda v: repr(repr(v)),
    "json": json.dumps,
    "quote": lambda v: quote(v, safe=""),
    "quote keeping /": quote,
    "quote_plus": quote_plus,
    "upper-case escapes": lambda v: quote_plus(v).upper(),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("status", [401, 500])
@pytest.mark.parametrize("spelling", list(SPELLINGS))
@pytest.mark.anyio
async def test_a_key_echoed_back_in_any_spelling_is_redacted(
    spelling: str, status: int, provider_for: ProviderFor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    def echo(request: RawRequest, send: Sender) -> None:
        said = SPELLINGS[spelling](request.headers["authorization"])
        body = f"Incorrect API key provided: {said}".encode()
        send(head(f"{status} Nope", Content_Length=str(len(body))) + body)

    with raw_server(echo) as srv:
        provider = provider_for(srv.url, api_key=CANARY, max_retries=1)
        with pytest.raises(ProviderError) as info:
            await provider.complete([Message.user("hi")], [])
    assert srv.requests[0].headers["authorization"] == f"Bearer {CANARY}"
    assert f"HTTP {status}" in str(info.value)
    assert "Incorrect API key provided: " in str(info.value)
    assert_no_secret(info.value, caplog)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("slipped", ["\n", "\r\n", "\u00e9"])
@pytest.mark.anyio
async def test_an_httpx_error_that_quotes_the_header_is_redacted(
    slipped: str,
    server: ScriptedHTTPServer,
    provider_for: ProviderFor,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key that got past cleaning makes httpx or h11 refuse the header, quoting it.

    Only xzatoma's own log records are searched: httpcore's DEBUG trace quotes the refused
    header itself, which is why a key that would be refused never gets this far.
    """
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(openai_module, "clean_api_key", lambda key, source="api_key": key)
    provider = provider_for(server.url, api_key=CANARY + slipped, max_retries=1)
    utf8_sent = slipped == "\u00e9" and type(await provider._transports.get()) is AiohttpTransport
    with pytest.raises(ProviderError) as info:
        await provider.complete([Message.user("hi")], [])
    if utf8_sent:  # aiohttp writes it as UTF-8 (docs/providers.md): only clean_api_key stops it
        assert server.requests[0].headers["authorization"].endswith(CANARY + "\u00c3\u00a9")
        assert_no_secret(info.value, caplog, logger_prefix="xzatoma")
        return
    # Refused before anything was sent (httpx's h11 at the wire, aiohttp while building),
    # and not retried: the same header is refused every time.
    assert server.requests == []
    assert "attempts" not in str(info.value)
    assert_no_secret(info.value, caplog, logger_prefix="xzatoma")
    assert info.value.__cause__ is None


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_only_outside_text_is_redacted(provider_for: ProviderFor) -> None:
    """A key that is also a word of our own message (``ollama`` as key and host) leaves it whole."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    provider = provider_for(url, api_key="chat", max_retries=0)
    with pytest.raises(ProviderError) as info:
        await provider.complete([Message.user("hi")], [])
    assert f"could not connect to {url}/chat/completions" in str(info.value)


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_an_unusable_client_gives_a_provider_error(server: ScriptedHTTPServer) -> None:
    client = httpx.AsyncClient()
    await client.aclose()
    provider = OpenAIProvider(server.url, "m", api_key=CANARY, client=client)
    with pytest.raises(ProviderError, match=r"request to .* failed: RuntimeError"):
        await provider.complete([Message.user("hi")], [])


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_a_reply_nested_too_deeply_is_a_provider_error(
    server: ScriptedHTTPServer, provider_for: ProviderFor
) -> None:
    server.add(Reply(body=b"[" * 200_000, headers={"Content-Type": "application/json"}))
    with pytest.raises(ProviderError, match=r"malformed reply .*: not JSON"):
        await provider_for(server.url).complete([Message.user("hi")], [])


# -- 2. usage is untrusted input -------------------------------------------------------------

PROMPT = "x" * 40  # 40 bytes: 10 estimated prompt tokens
ANSWER = "y" * 81  # 81 bytes: 21 estimated completion tokens

BAD_USAGE: dict[str, Any] = {
    "negative": {"prompt_tokens": -1_000_000, "completion_tokens": -5, "total_tokens": -1_000_005},
    "float": {"prompt_tokens": 12.5, "completion_tokens": 3.0, "total_tokens": 15.5},
    "boolean": {"prompt_tokens": True, "completion_tokens": True, "total_tokens": True},
    "absurd float": {"prompt_tokens": 1e300, "completion_tokens": 1e300, "total_tokens": 1e300},
    "absurd int": {"prompt_tokens": 10**30, "completion_tokens": 10**30, "total_tokens": 10**30},
    "string": {"prompt_tokens": "12", "completion_tokens": "3", "total_tokens": "15"},
    "not an object": [12, 3, 15],
    "missing": None,
    # Zeros for a request and a reply that hold text: "nothing counted", not a count.
    "zeros": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    "zeros, total left out": {"prompt_tokens": 0, "completion_tokens": 0},
}


def with_usage(content: str, usage: Any, **message: Any) -> dict[str, Any]:
    body = chat_body(content)
    body["choices"][0]["message"].update(message)
    if usage is not None:
        body["usage"] = usage
    return body


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", list(BAD_USAGE))
@pytest.mark.anyio
async def test_untrusted_usage_is_estimated(
    case: str, server: ScriptedHTTPServer, provider_for: ProviderFor
) -> None:
    server.add(Reply(body=with_usage(ANSWER, BAD_USAGE[case])))
    completion = await provider_for(server.url).complete([Message.user(PROMPT)], [])
    assert completion.usage == Usage(1, 10, 21, 31, estimated=True)
    for value in (completion.usage.prompt_tokens, completion.usage.total_tokens):
        assert type(value) is int


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_usage_estimate_counts_tool_calls_and_keeps_valid_counts(
    server: ScriptedHTTPServer, provider_for: ProviderFor
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "é" * 6}}
    server.add(
        Reply(body=with_usage("", {"prompt_tokens": 7}, tool_calls=[call])),
        Reply(
            body=with_usage("ok", {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 3})
        ),
    )
    provider = provider_for(server.url)
    conversation = [
        Message.user("ab"),
        Message.assistant(None, (ToolCall("c0", "f", '{"q":1}'),)),  # 7 bytes
        Message.tool(ToolCall("c0", "f", "{}"), "abc"),  # 3 bytes: 12 in all, 3 tokens
    ]
    first = await provider.complete(conversation, [])
    second = await provider.complete(conversation, [])
    assert first.usage == Usage(1, 7, 3, 10, estimated=True)  # 12 bytes of "é": 3 tokens
    assert second.usage == Usage(1, 10, 5, 15, estimated=True)  # a total below the sum


def usage_reply(usage: Any, *, content: str | None = None, spawn: str | None = None) -> Reply:
    calls = None
    if spawn is not None:
        arguments = json.dumps({"label": spawn, "task_prompt": f"look into {spawn}"})
        calls = [
            {
                "id": f"call_{spawn}",
                "type": "function",
                "function": {"name": "subagent", "arguments": arguments},
            }
        ]
    message: dict[str, Any] = {} if calls is None else {"tool_calls": calls}
    return Reply(body=with_usage(content or "", usage, **message))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["negative", "float", "boolean", "missing", "zeros"])
@pytest.mark.anyio
async def test_bad_usage_cannot_get_subagents_past_a_token_limit(
    case: str, server: ScriptedHTTPServer, provider_for: ProviderFor
) -> None:
    usage = BAD_USAGE[case]
    server.add(
        usage_reply(usage, spawn="a"),  # the root asks for a first child
        usage_reply(usage, content="z" * 4000),  # the child: about 1000 estimated tokens
        usage_reply(usage, spawn="b"),  # the root asks for a second child: over the limit
        usage_reply(usage, content="root done"),
    )
    provider = provider_for(server.url)
    runtime = Runtime(
        provider,
        subagents=SubagentConfig(summary_prompt=None),
        quota=QuotaLimits(max_total_tokens=500),
    )
    result = await runtime.agent().run("go")
    assert (result.status, result.output) == ("complete", "root done")
    assert len(server.requests) == 4, "the second child made a model call"
    tool_messages = [m for m in server.requests[-1].json()["messages"] if m["role"] == "tool"]
    assert "Resource quota exceeded: token limit reached" in tool_messages[-1]["content"]
    assert result.total_usage.estimated
    assert result.total_usage.total_tokens >= 1000


# -- 3. the timeout bounds a whole attempt ---------------------------------------------------


def dripping(where: str) -> Script:
    """Sends one byte every 0.5 s, in the headers or in the body, until the client leaves."""

    def script(request: RawRequest, send: Sender) -> None:
        if where == "body":
            send(head(Content_Type="application/json", Content_Length="1000"))
        else:
            send(b"HTTP/1.1 200 OK\r\n")
        while send(b"x" if where == "body" else b"X-Drip: x\r\n") and send.wait(0.5):
            pass

    return script


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["headers", "body"])
@pytest.mark.anyio
async def test_a_drip_cannot_hold_an_attempt_past_its_timeout(
    where: str, provider_for: ProviderFor
) -> None:
    with raw_server(dripping(where)) as srv:
        provider = provider_for(srv.url, timeout=1, max_retries=1)
        with anyio.fail_after(10):  # two 1 s attempts, not 2 x 500 s of drip
            with pytest.raises(ProviderError) as info:
                await provider.complete([Message.user("hi")], [])
    assert "timed out after 1 s (2 attempts)" in str(info.value)
    assert "--request-timeout" in str(info.value)
    assert len(srv.requests) == 2  # retried like any transient failure


# -- 4. the reply size cap -------------------------------------------------------------------

ENDLESS_LIMIT = 48 * MiB
"""Where the "endless" body really ends, so the old code's run stays bounded too."""


def endless_chunked(status: str) -> Script:
    frame = b"%x\r\n%s\r\n" % (64 * 1024, b"x" * 64 * 1024)

    def script(request: RawRequest, send: Sender) -> None:
        send(head(status, Content_Type="application/json", Transfer_Encoding="chunked"))
        sent = 0
        while sent < ENDLESS_LIMIT and send(frame):
            sent += 64 * 1024
        send(b"0\r\n\r\n")

    return script


@contextlib.contextmanager
def memory_peak() -> Iterator[list[int]]:
    """Traces allocations; the list holds the peak in bytes once the block ends."""
    peak: list[int] = []
    gc.collect()
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_an_endless_chunked_body_hits_the_cap(provider_for: ProviderFor) -> None:
    with raw_server(endless_chunked("200 OK")) as srv:
        provider = provider_for(srv.url, max_retries=2)
        with memory_peak() as peak, pytest.raises(ProviderError) as info:
            await provider.complete([Message.user("hi")], [])
    assert str(info.value).startswith(
        f"reply from {srv.url}/chat/completions exceeded max_response_bytes (8388608 bytes); "
        "raise it with"
    )
    assert "--max-response-bytes" in str(info.value)
    assert len(srv.requests) == 1  # the same request would get the same reply: no retry
    assert peak[0] < 24 * MiB, f"{peak[0] / MiB:.1f} MiB held for an 8 MiB cap"


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_an_endless_error_body_is_read_only_for_its_excerpt(
    provider_for: ProviderFor,
) -> None:
    with raw_server(endless_chunked("400 Bad Request")) as srv:
        provider = provider_for(srv.url)
        with memory_peak() as peak, pytest.raises(ProviderError) as info:
            await provider.complete([Message.user("hi")], [])
    assert "HTTP 400" in str(info.value)
    assert "x" * 197 + "..." in str(info.value)
    assert peak[0] < 8 * MiB, f"{peak[0] / MiB:.1f} MiB held for an error excerpt"


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """1 GiB of zeros as gzip, about 1 MiB: one full-flushed deflate block, repeated.

    A full flush resets the compressor, so compressing the same MiB again gives the same
    bytes: one MiB is compressed instead of 1024.
    """
    zeros = bytes(MiB)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(1024):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    trailer = (crc & 0xFFFFFFFF).to_bytes(4, "little") + (1 << 30 & 0xFFFFFFFF).to_bytes(
        4, "little"
    )
    return header + block * 1024 + deflate.flush() + trailer


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cap", [None, 1024])
@pytest.mark.anyio
async def test_a_gzip_bomb_hits_the_cap_with_bounded_memory(
    cap: int | None, gzip_bomb: bytes, provider_for: ProviderFor
) -> None:
    def script(request: RawRequest, send: Sender) -> None:
        send(head(Content_Encoding="gzip", Content_Length=str(len(gzip_bomb))) + gzip_bomb)

    with raw_server(script) as srv:
        limits = {} if cap is None else {"max_response_bytes": cap}
        provider = provider_for(srv.url, **limits)
        with memory_peak() as peak, pytest.raises(ProviderError) as info:
            await provider.complete([Message.user("hi")], [])
    assert f"exceeded max_response_bytes ({cap or 8388608} bytes)" in str(info.value)
    assert len(gzip_bomb) < 2 * MiB
    assert peak[0] < 24 * MiB, f"{peak[0] / MiB:.1f} MiB held inflating a gzip bomb"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw deflate"])
@pytest.mark.anyio
async def test_compressed_replies_still_decode(
    encoding: str, server: ScriptedHTTPServer, provider_for: ProviderFor
) -> None:
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "raw deflate": -15}
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits[encoding])
    body = packer.compress(json.dumps(chat_body("z" * 100_000)).encode()) + packer.flush()
    name = encoding.removeprefix("raw ")
    server.add(Reply(body=body, headers={"Content-Encoding": name}))
    completion = await provider_for(server.url).complete([Message.user("hi")], [])
    assert completion.content == "z" * 100_000
    assert server.requests[0].headers["accept-encoding"] == "gzip, deflate"


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_a_reply_made_in_memory_is_capped_too() -> None:
    """httpx.MockTransport hands back bodies already read: still usable, still capped."""
    big = json.dumps(chat_body("z" * 5000)).encode()
    replies = iter([chat_body("small"), big])

    def handler(request: httpx.Request) -> httpx.Response:
        reply = next(replies)
        return (
            httpx.Response(200, content=reply)
            if isinstance(reply, bytes)
            else httpx.Response(200, json=reply)
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        provider = OpenAIProvider(
            "http://model.test/v1", "m", max_response_bytes=4096, client=client
        )
        assert (await provider.complete([Message.user("hi")], [])).content == "small"
        with pytest.raises(ProviderError, match=r"exceeded max_response_bytes \(4096 bytes\)"):
            await provider.complete([Message.user("hi")], [])


def test_max_response_bytes_is_checked() -> None:
    with pytest.raises(ConfigError, match="max_response_bytes must be at least 1024"):
        OpenAIProvider("http://127.0.0.1:1", "m", max_response_bytes=1023)


# -- 9. lone surrogates ----------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("form", ["json escape", "raw bytes"])
@pytest.mark.anyio
async def test_every_string_of_a_reply_is_made_encodable(
    form: str, server: ScriptedHTTPServer, provider_for: ProviderFor
) -> None:
    bad = "\ud800"
    call = {"id": f"id{bad}", "function": {"name": f"f{bad}", "arguments": f'{{"q": "{bad}"}}'}}
    body = chat_body(f"ok {bad} done", model=f"m{bad}")
    body["choices"][0]["message"]["tool_calls"] = [
        call,
        {"function": {"name": "g", "arguments": {"k": bad}}},
    ]
    body["choices"][0]["finish_reason"] = f"stop{bad}"
    text = json.dumps(body)  # escapes the surrogate as \ud800
    if form == "raw bytes":  # the three bytes of an encoded surrogate, not valid UTF-8
        raw = text.replace("\\ud800", "\ud800").encode("utf-8", "surrogatepass")
    else:
        raw = text.encode()
    server.add(Reply(body=raw, headers={"Content-Type": "application/json"}))
    completion = await provider_for(server.url).complete([Message.user("hi")], [])
    strings = [completion.content, completion.model, completion.finish_reason]
    for call_out in completion.tool_calls:
        strings += [call_out.id, call_out.name, call_out.arguments]
    for value in strings:
        assert value is not None
        value.encode("utf-8")  # raises on a lone surrogate
    assert completion.content == "ok \ufffd done"
    assert json.loads(completion.tool_calls[1].arguments) == {"k": "\ufffd"}


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_a_conversation_with_lone_surrogates_goes_on(
    server: ScriptedHTTPServer, provider_for: ProviderFor
) -> None:
    @tool
    async def lookup(query: str) -> str:
        """Look something up."""
        return f"found \udc80 for {query}"  # a tool's output may hold one too

    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"query": "q"}'},
    }
    server.add(
        Reply(body=with_usage("ok \ud800 done", None, tool_calls=[call])),
        Reply(body=chat_body("all done")),
    )
    result = await Agent(provider_for(server.url), tools=[lookup]).run("hi")
    assert (result.status, result.output) == ("complete", "all done")
    second = server.requests[1]
    assert second.headers["content-type"] == "application/json"
    sent = json.loads(second.body.decode("utf-8"))  # strict UTF-8, valid JSON
    assistant, tool_message = sent["messages"][-2:]
    assert assistant["content"] == "ok \ufffd done"
    assert tool_message["content"].startswith("found \ufffd for q")


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_an_error_excerpt_is_encodable(
    server: ScriptedHTTPServer, provider_for: ProviderFor
) -> None:
    server.add(Reply(400, b"bad \xed\xa0\x80 thing \xff"))
    with pytest.raises(ProviderError) as info:
        await provider_for(server.url).complete([Message.user("hi")], [])
    str(info.value).encode("utf-8")
    assert "bad \ufffd" in str(info.value)


# -- 13. base URLs -----------------------------------------------------------------------------

REFUSED_URLS = [
    "http://ho st/v1",
    "http://host:80 /v1",
    "http://host/v1 ",
    "http://host/v1\n",
    "http://host\u00a0/v1",
    "http://ho\u200bst/v1",
    "http://host:+80/v1",
    "http://host:\u0663/v1",  # an Arabic-Indic digit: int() takes it, a URL does not
    "http://host:8o/v1",
    "http://host:0/v1",
    "http://host:65536/v1",
    "http://[::1]:99999/v1",
    "http://xn--/v1",
    "http://xn--zz/v1",
    "http://%41host/v1",
    "http://host%00/v1",
    "http://a..b/v1",
    "http://.host/v1",
    "http://-host/v1",
    "http://" + "a" * 64 + ".com/v1",
    "http://[zz]/v1",
    "http://user@/v1",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_a_base_url_httpx_would_choke_on_is_refused(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_base_url(url, what="provider.base_url")
    message = str(info.value)
    assert message.startswith("provider.base_url ")
    assert "\n" not in message
    assert len(message) < 300


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/v1",
        "https://api.openai.com/v1/",
        "http://[::1]:11434/v1",
        "http://user:p%40ss@vllm.internal:8000/v1",
        "http://my_service:8000/v1",
        "http://b\u00fccher.example/v1",
        "http://localhost./v1",
        "http://host:/v1",
        "http://host/v1?api-version=2024-02-01",
    ],
)
def test_usable_base_urls_are_kept(url: str) -> None:
    validate_base_url(url)


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_credentials_in_the_url_are_never_shown(
    provider_for: ProviderFor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = provider_for(f"http://{CORE}-user:{CORE}-pw@127.0.0.1:{port}/v1", max_retries=1)
    with pytest.raises(ProviderError) as info:
        await provider.complete([Message.user("hi")], [])
    assert "could not connect to http://[redacted]@127.0.0.1" in str(info.value)
    assert CORE not in repr(provider)
    assert_no_secret(info.value, caplog)


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_a_query_string_stays_after_the_path(
    server: ScriptedHTTPServer, provider_for: ProviderFor
) -> None:
    server.add(Reply(body=chat_body()))
    await provider_for(server.url + "/v1/?api-version=2024-02-01").complete(
        [Message.user("hi")], []
    )
    assert server.requests[0].path == "/v1/chat/completions?api-version=2024-02-01"


# -- 16. one provider, several event loops -----------------------------------------------------


@pytest.mark.timeout(60)
def test_one_provider_serves_consecutive_event_loops(
    server: ScriptedHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    unraisable: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(repr(u.exc_value)))
    server.add(*(Reply(body=chat_body(f"answer {i}")) for i in range(6)))
    provider = OpenAIProvider(server.url, "big", max_retries=0)
    twin = provider.with_model("small")

    async def both() -> list[str | None]:
        first = await provider.complete([Message.user("hi")], [])
        second = await twin.complete([Message.user("hi")], [])
        return [first.content, second.content]

    answers = anyio.run(both) + asyncio.run(both()) + anyio.run(both)
    gc.collect()

    assert answers == [f"answer {i}" for i in range(6)]
    ports = [request.client_port for request in server.requests]
    assert (ports[0], ports[2], ports[4]) == (ports[1], ports[3], ports[5])  # twins share
    assert len({ports[0], ports[2], ports[4]}) == 3  # a new pool in each loop
    assert [r.json()["model"] for r in server.requests] == ["big", "small"] * 3
    assert unraisable == [], "a dropped client leaked sockets or warnings"
    # Each loop closed its own client when it ended: the server saw every connection go.
    assert all(server.wait_connection_closed(10) for _ in range(3))


# == Round 2: the classes a hostile tester found open after the first round ===================

PLAIN_KEY = "sk-proj-abcDEF123456_ghiJKL789"
"""A key no encoding changes, so each of its fragments has exactly one spelling."""


def leaked_fragment(text: str, key: str = PLAIN_KEY) -> str | None:
    """The longest start of ``key``, four characters or more, found in ``text``."""
    return next((key[:n] for n in range(len(key), 3, -1) if key[:n].lower() in text.lower()), None)


def padded_to_cut(key_chars: int, *, before: bytes = b"") -> bytes:
    """A body whose first 4096 bytes end with the first ``key_chars`` characters of the key."""
    padding = b" " * (4096 - len(before) - key_chars)
    return before + padding + PLAIN_KEY.encode() + b" and more"


# -- R1. a key cut in half where a text is cut -----------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key_chars", [4, 9, 16, len(PLAIN_KEY) - 1])
@pytest.mark.parametrize("where", ["error body", "malformed 200 body"])
@pytest.mark.anyio
async def test_a_key_cut_where_a_body_is_cut_leaves_no_fragment(
    where: str, key_chars: int, provider_for: ProviderFor, caplog: pytest.LogCaptureFixture
) -> None:
    if where == "error body":
        body, status = padded_to_cut(key_chars), "400 Bad Request"
    else:
        body, status = padded_to_cut(key_chars, before=b"not json:"), "200 OK"

    def script(request: RawRequest, send: Sender) -> None:
        send(head(status, Content_Length=str(len(body))) + body)

    with raw_server(script) as srv:
        provider = provider_for(srv.url, api_key=PLAIN_KEY, max_retries=0)
        with pytest.raises(ProviderError) as info:
            await provider.complete([Message.user("hi")], [])
    message = str(info.value)
    assert ("HTTP 400" if where == "error body" else "malformed reply") in message
    assert leaked_fragment(message) is None, f"{leaked_fragment(message)!r} left in {message}"
    assert message.endswith("[redacted]")


# -- R2. zero usage for text that is there ---------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_a_zero_count_is_estimated_only_where_there_was_text(
    server: ScriptedHTTPServer, provider_for: ProviderFor
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "é" * 6}}
    zero_out = {"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12}
    server.add(
        Reply(body=with_usage("", zero_out, tool_calls=[call])),  # a reply with a tool call
        Reply(body=with_usage("", {"prompt_tokens": 0, "completion_tokens": 0})),  # no text
    )
    provider = provider_for(server.url)
    with_call = await provider.complete([Message.user(PROMPT)], [])
    empty = await provider.complete([Message.user("")], [])
    assert with_call.usage == Usage(1, 12, 3, 15, estimated=True)  # 12 bytes of "é"
    assert empty.usage == Usage(1, 0, 0, 0), "a zero for no text at all is a real count"


# -- R3. what follows the end of a gzip member -----------------------------------------------

JUNK_LIMIT = 4 * MiB
"""Where the junk really ends, so the old code (which kept it all) finished too."""


def compressed_then(member: bytes, frame: bytes, encoding: str = "gzip") -> Script:
    """A chunked reply: ``member``, then ``frame`` again and again until ``JUNK_LIMIT``."""

    def script(request: RawRequest, send: Sender) -> None:
        start = head(Content_Encoding=encoding, Transfer_Encoding="chunked")
        send(start + b"%x\r\n%s\r\n" % (len(member), member))
        sent = 0
        while sent < JUNK_LIMIT and send(b"%x\r\n%s\r\n" % (len(frame), frame)):
            sent += len(frame)
        send(b"0\r\n\r\n")

    return script


def packed(data: bytes, encoding: str) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return packer.compress(data) + packer.flush()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.anyio
async def test_junk_after_the_compressed_data_is_refused(
    encoding: str, provider_for: ProviderFor
) -> None:
    member = packed(json.dumps(chat_body("fine")).encode(), encoding)
    with raw_server(compressed_then(member, b"J" * 65536, encoding)) as srv:
        provider = provider_for(srv.url, max_response_bytes=1024)
        with memory_peak() as peak, pytest.raises(ProviderError) as info:
            await provider.complete([Message.user("hi")], [])
    message = str(info.value)
    assert message.startswith(f"reply from {srv.url}/chat/completions is not valid {encoding}")
    expected = "do not start another member" if encoding == "gzip" else "follow the end"
    assert expected in message
    assert peak[0] < 2 * MiB, f"{peak[0] / MiB:.1f} MiB held for a 1 KiB cap"


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_a_body_of_empty_gzip_members_is_bounded_by_its_compressed_size(
    provider_for: ProviderFor,
) -> None:
    empty = packed(b"", "gzip")
    with raw_server(compressed_then(empty, empty * 3000)) as srv:
        provider = provider_for(srv.url, max_response_bytes=1024)
        with memory_peak() as peak, pytest.raises(ProviderError) as info:
            await provider.complete([Message.user("hi")], [])
    assert "exceeded max_response_bytes (1024 bytes)" in str(info.value)
    assert peak[0] < 2 * MiB, f"{peak[0] / MiB:.1f} MiB held for a 1 KiB cap"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("frame_size", [7, 65536])
@pytest.mark.anyio
async def test_every_member_of_a_gzip_body_is_decoded(
    frame_size: int, provider_for: ProviderFor
) -> None:
    reply = json.dumps(chat_body("A" * 5000)).encode()
    members = b"".join(packed(part, "gzip") for part in (reply[:20], b"", reply[20:]))
    frames = [members[i : i + frame_size] for i in range(0, len(members), frame_size)]

    def script(request: RawRequest, send: Sender) -> None:
        send(head(Content_Encoding="gzip", Transfer_Encoding="chunked"))
        for frame in frames:
            send(b"%x\r\n%s\r\n" % (len(frame), frame))
        send(b"0\r\n\r\n")

    with raw_server(script) as srv:
        completion = await provider_for(srv.url).complete([Message.user("hi")], [])
    assert completion.content == "A" * 5000


# -- R4. the key in httpx's and httpcore's own log records -----------------------------------


def echo_in(where: str) -> Script:
    def script(request: RawRequest, send: Sender) -> None:
        key = request.headers["authorization"].removeprefix("Bearer ")
        if where == "status reason":
            send(head(f"500 {key}", Content_Length="0"))
        else:
            send(head("502 Bad Gateway", X_Echo=key, Content_Length="2") + b"no")

    return script


@pytest.mark.timeout(30)
@pytest.mark.parametrize("provider_for", ["httpx"], indirect=True)
@pytest.mark.parametrize("where", ["status reason", "header"])
@pytest.mark.anyio
async def test_the_key_never_reaches_httpx_or_httpcore_log_records(
    where: str, provider_for: ProviderFor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with raw_server(echo_in(where)) as srv:
        provider = provider_for(srv.url, api_key=CANARY, max_retries=1)
        provider_for(srv.url, api_key=CANARY)  # a second provider adds no second filter
        with pytest.raises(ProviderError) as info:
            await provider.complete([Message.user("hi")], [])
        names = {record.name for record in caplog.records}
        assert {"httpx", "httpcore.http11"} <= names, "the loggers under test logged nothing"
        assert_no_secret(info.value, caplog)
        # Scoped to xzatoma's requests: another client's records are left as they are.
        caplog.clear()
        async with httpx.AsyncClient() as client:
            await client.post(srv.url, headers={"Authorization": f"Bearer {CANARY}"})
    if where == "status reason":
        assert CORE in caplog.text
    filters = logging.getLogger("httpx").filters
    assert len([f for f in filters if type(f).__name__ == "_RedactInFlight"]) == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("provider_for", ["aiohttp"], indirect=True)
@pytest.mark.parametrize("where", ["status reason", "header"])
@pytest.mark.anyio
async def test_the_key_never_reaches_a_log_record_through_aiohttp(
    where: str, provider_for: ProviderFor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with raw_server(echo_in(where)) as srv:
        provider = provider_for(srv.url, api_key=CANARY, max_retries=1)
        with pytest.raises(ProviderError) as info:
            await provider.complete([Message.user("hi")], [])
    assert "HTTP 50" in str(info.value)
    assert_no_secret(info.value, caplog)
    filters = logging.getLogger("aiohttp.client").filters
    assert len([f for f in filters if type(f).__name__ == "_RedactInFlight"]) == 1


# -- R5. whole-value encodings of a secret ---------------------------------------------------


def b64(text: str, *, urlsafe: bool = False, padded: bool = True) -> str:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    encoded = encode(text.encode()).decode()
    return encoded if padded else encoded.rstrip("=")


WHOLE_VALUE: dict[str, Callable[[str], str]] = {
    "every character \\u-escaped": lambda v: "".join(f"\\u{ord(c):04x}" for c in v),
    "every character \\U-escaped": lambda v: "".join(f"\\u{ord(c):04X}" for c in v),
    "every byte %xx": lambda v: "".join(f"%{b:02x}" for b in v.encode()),
    "every byte %XX": lambda v: "".join(f"%{b:02X}" for b in v.encode()),
    "base64 of the header": b64,
    "base64 of the key": lambda v: b64(v.removeprefix("Bearer ")),
    "url-safe base64 of the key, unpadded": lambda v: b64(
        v.removeprefix("Bearer "), urlsafe=True, padded=False
    ),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("spelling", list(WHOLE_VALUE))
@pytest.mark.anyio
async def test_a_key_echoed_whole_value_encoded_is_redacted(
    spelling: str, provider_for: ProviderFor, caplog: pytest.LogCaptureFixture
) -> None:
    echoed: list[str] = []

    def script(request: RawRequest, send: Sender) -> None:
        echoed.append(WHOLE_VALUE[spelling](request.headers["authorization"]))
        body = f"you sent {echoed[-1]} (bad)".encode()
        send(head("401 Unauthorized", Content_Length=str(len(body))) + body)

    with raw_server(script) as srv:
        provider = provider_for(srv.url, api_key=CANARY, max_retries=0)
        with pytest.raises(ProviderError) as info:
            await provider.complete([Message.user("hi")], [])
    message = str(info.value)
    assert "you sent [redacted] (bad)" in message
    encoded_key = WHOLE_VALUE[spelling](CANARY)
    assert encoded_key.lower() not in message.lower()


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_basic_credentials_from_the_url_echoed_back_are_redacted(
    provider_for: ProviderFor,
) -> None:
    password = f"pw/{CORE}:x"

    def script(request: RawRequest, send: Sender) -> None:
        body = f"Authorization: {request.headers['authorization']}".encode()
        send(head("403 Forbidden", Content_Length=str(len(body))) + body)

    with raw_server(script) as srv:
        url = srv.url.replace("//", f"//bob:{quote(password, safe='')}@")
        with pytest.raises(ProviderError) as info:
            await provider_for(url, max_retries=0).complete([Message.user("hi")], [])
    basic = b64(f"bob:{password}")
    assert srv.requests[0].headers["authorization"] == f"Basic {basic}"
    assert basic not in str(info.value)
    assert "Authorization: Basic [redacted]" in str(info.value)


# -- R6. every message made from reply data is safe ------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_a_content_encoding_that_echoes_the_key_is_redacted(
    provider_for: ProviderFor, caplog: pytest.LogCaptureFixture
) -> None:
    def script(request: RawRequest, send: Sender) -> None:
        key = request.headers["authorization"].removeprefix("Bearer ")
        send(head(Content_Encoding=key, Content_Length="2") + b"xx")

    with raw_server(script) as srv:
        provider = provider_for(srv.url, api_key=CANARY)
        with pytest.raises(ProviderError) as info:
            await provider.complete([Message.user("hi")], [])
    assert "uses Content-Encoding '[redacted]', which was not asked for" in str(info.value)
    assert_no_secret(info.value, caplog)


# -- R7. the tool-call ids of one reply are distinct -----------------------------------------


def numbered_call(value: int, call_id: str | None) -> dict[str, Any]:
    call: dict[str, Any] = {
        "type": "function",
        "function": {"name": "numbered", "arguments": json.dumps({"v": value})},
    }
    return call if call_id is None else {**call, "id": call_id}


@tool
async def numbered(v: int) -> str:
    """Echoes its number."""
    return f"result {v}"


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_the_tool_calls_of_one_reply_get_distinct_ids(
    server: ScriptedHTTPServer, provider_for: ProviderFor
) -> None:
    calls = [numbered_call(1, "x"), numbered_call(2, "x"), numbered_call(3, None)]
    calls.append(numbered_call(4, "call_2"))  # the name the missing id would have been given
    server.add(
        Reply(body={"choices": [{"message": {"content": None, "tool_calls": calls}}]}),
        Reply(body=chat_body("done")),
    )
    result = await Agent(provider_for(server.url), tools=[numbered]).run("go")
    assert (result.status, result.output) == ("complete", "done")
    sent = server.requests[1].json()["messages"]
    ids = [call["id"] for call in sent[1]["tool_calls"]]
    assert len(set(ids)) == 4, ids
    assert (ids[0], ids[3]) == ("x", "call_2"), "an id the endpoint chose once was changed"
    answers = {m["tool_call_id"]: m["content"] for m in sent if m["role"] == "tool"}
    assert answers == {ids[i]: f"result {i + 1}" for i in range(4)}


# -- R8. a lone surrogate written as an escape in the arguments ------------------------------


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_an_escaped_lone_surrogate_in_arguments_becomes_a_replacement_character(
    server: ScriptedHTTPServer, provider_for: ProviderFor
) -> None:
    seen: list[str] = []

    @tool
    async def remember(text: str) -> str:
        """Remembers a text."""
        seen.append(text)
        return "ok"

    # A lone high and a lone low escape, a valid pair, and an escaped backslash before "u".
    arguments = '{"text": "a\\ud800b \\uDC00 \\ud83d\\ude00 \\\\ud800"}'
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "remember", "arguments": arguments},
    }
    server.add(
        Reply(body={"choices": [{"message": {"content": None, "tool_calls": [call]}}]}),
        Reply(body=chat_body("done")),
    )
    result = await Agent(provider_for(server.url), tools=[remember]).run("go")
    assert result.status == "complete"
    assert seen == ["a\ufffdb \ufffd \U0001f600 \\ud800"]


# -- R9. timeouts and retry counts that are numbers but not limits ---------------------------


@pytest.mark.parametrize("timeout", [math.inf, -math.inf, math.nan])
def test_a_timeout_that_is_not_finite_is_refused(timeout: float) -> None:
    with pytest.raises(ConfigError, match=r"^timeout must be a finite number of seconds"):
        OpenAIProvider("http://127.0.0.1:1", "m", timeout=timeout)


def test_absurd_retry_counts_are_refused_and_backoff_never_overflows() -> None:
    for retries in (101, 10**26):
        with pytest.raises(ConfigError, match=r"^max_retries cannot exceed 100"):
            OpenAIProvider("http://127.0.0.1:1", "m", max_retries=retries)
    provider = OpenAIProvider("http://127.0.0.1:1", "m", max_retries=100)
    provider._random = lambda: 1.0
    assert [provider._backoff(n) for n in (0, 1, 1025, 10**6)] == [0.5, 1.0, 8.0, 8.0]
