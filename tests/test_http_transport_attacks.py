"""A hostile pass over the HTTP path of issue 18: aiohttp on asyncio, compared with httpx.

Every endpoint is a real server on 127.0.0.1: the raw-socket one of
``test_boundary_provider`` for replies ``http.server`` cannot write, a keep-alive one below
that answers by the prompt (so the order requests arrive in does not matter), and a TLS one
with a throwaway self-signed certificate. Tests marked ``xfail(strict=True)`` are bugs found
here: they flip to a failure (XPASS) once fixed, and the mark goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_boundary_provider import (
    CANARY,
    CORE,
    PLAIN_KEY,
    RawRequest,
    Sender,
    assert_no_secret,
    chat_body,
    head,
    leaked_fragment,
    raw_server,
)

from xzatoma import Message, OpenAIProvider, Runtime, SubagentConfig
from xzatoma.errors import ProviderError
from xzatoma.providers._transport import Transport

TRANSPORTS = ("aiohttp", "httpx")
DOCS = Path(__file__).resolve().parents[1] / "docs"
OK_BODY = json.dumps(chat_body("ok")).encode()


def on(transport: str, *, bug: str | None = None) -> Any:
    """A ``transport`` parameter, marked as a known bug on that transport when ``bug``."""
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    return pytest.param(transport, marks=marks, id=transport)


def make(url: str, transport: str, **kwargs: Any) -> OpenAIProvider:
    async def no_sleep(seconds: float) -> None:
        return None

    kwargs.setdefault("timeout", 30)
    model = kwargs.pop("model", "m")
    provider = OpenAIProvider(url, model, transport=transport, **kwargs)  # type: ignore[arg-type]
    provider._sleep = no_sleep
    return provider


@contextlib.asynccontextmanager
async def provider_on(url: str, transport: str, **kwargs: Any) -> AsyncIterator[OpenAIProvider]:
    provider = make(url, transport, **kwargs)
    try:
        yield provider
    finally:
        await provider.aclose()


async def ask(provider: OpenAIProvider, prompt: str = "hi") -> str | None:
    return (await provider.complete([Message.user(prompt)], [])).content


async def wait_for(condition: Callable[[], bool], seconds: float = 30) -> None:
    """Until ``condition()`` holds (something another thread does), at most ``seconds``."""
    with anyio.fail_after(seconds):
        while not condition():
            await anyio.sleep(0.005)


async def gate_of(provider: OpenAIProvider) -> Any:
    return (await provider._transports.get()).gate


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text, f"not one line: {text!r}"
    return text


def answering(data: bytes) -> Callable[[RawRequest, Sender], None]:
    """A script that sends ``data`` and leaves the connection open."""

    def script(request: RawRequest, send: Sender) -> None:
        send(data)

    return script


def closing(data: bytes) -> Callable[[RawRequest, Sender], None]:
    """A script that sends ``data``, then ends the connection (the client reads a FIN)."""

    def script(request: RawRequest, send: Sender) -> None:
        if data:
            send(data)
        with contextlib.suppress(OSError):
            send._conn.shutdown(socket.SHUT_WR)

    return script


# -- a keep-alive server that answers by the prompt ------------------------------------------


class PromptServer:
    """HTTP/1.1 keep-alive; the last message's content says what to do:
    ``ok:N`` answers ``N``, ``fail:N`` answers HTTP 400, ``hold:N`` answers only when the
    server closes (the client is expected to give up first), ``partial:N`` sends the headers
    and a piece of the body, then holds. ``seen`` is every prompt received, in order."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ports: set[int] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                prompt = json.loads(body)["messages"][-1]["content"]
                with outer.lock:
                    outer.seen.append(prompt)
                    outer.ports.add(self.client_address[1])
                verb, _, arg = prompt.partition(":")
                if verb in ("hold", "partial"):
                    if verb == "partial":
                        self.send_response(200)
                        self.send_header("Content-Length", "100000")
                        self.end_headers()
                        self.wfile.write(b'{"choices": [')
                        self.wfile.flush()
                    outer.stop.wait(60)
                    self.close_connection = True
                    return
                status = 400 if verb == "fail" else 200
                data = json.dumps(chat_body(arg) if status == 200 else {"error": arg}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def saw(self, prompt: str) -> bool:
        with self.lock:
            return prompt in self.seen

    def close(self) -> None:
        self.stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def prompts() -> Iterator[PromptServer]:
    server = PromptServer()
    try:
        yield server
    finally:
        server.close()


def aiohttp_connections(transport: Transport) -> tuple[int, int] | None:
    """(acquired, idle) connections of an aiohttp transport's pool; ``None`` for httpx."""
    if type(transport).__name__ != "AiohttpTransport":
        return None
    connector: Any = getattr(transport, "session").connector  # noqa: B009
    idle = sum(len(conns) for conns in connector._conns.values())
    return len(connector._acquired), idle


# == 1. cancellation ==========================================================================


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.anyio
async def test_a_request_cancelled_while_the_server_holds_it_frees_the_gate(
    transport: str, prompts: PromptServer
) -> None:
    async with provider_on(prompts.url, transport, max_retries=0) as provider:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, provider, "hold:1")
            await wait_for(lambda: prompts.saw("hold:1"))
            assert (await gate_of(provider)).inside == 1
            tg.cancel_scope.cancel()
        assert (await gate_of(provider)).inside == 0
        assert await ask(provider, "ok:after") == "after"
        assert (await gate_of(provider)).inside == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.anyio
async def test_requests_cancelled_all_at_once_while_queued_at_the_gate(
    transport: str, prompts: PromptServer
) -> None:
    async with provider_on(prompts.url, transport, max_connections=1, max_retries=0) as provider:
        gate = await gate_of(provider)
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, provider, "hold:first")
            await wait_for(lambda: prompts.saw("hold:first"))
            for i in range(40):
                tg.start_soon(ask, provider, f"ok:{i}")
            await wait_for(lambda: gate._semaphore.statistics().tasks_waiting == 40)
            tg.cancel_scope.cancel()
        assert gate.inside == 0
        assert gate._semaphore.statistics().tasks_waiting == 0
        assert prompts.seen == ["hold:first"]  # none of the queued ones was sent
        assert await ask(provider, "ok:next") == "next"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.anyio
async def test_a_request_cancelled_mid_body_does_not_give_its_connection_back(
    transport: str, prompts: PromptServer
) -> None:
    async with provider_on(prompts.url, transport, max_retries=0, timeout=20) as provider:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, provider, "partial:1")
            await wait_for(lambda: prompts.saw("partial:1"))
            tg.cancel_scope.cancel()
        transport_now = await provider._transports.get()
        assert transport_now.gate.inside == 0
        # Half a body is still on that connection: reused, the next reply would be garbage.
        assert aiohttp_connections(transport_now) in (None, (0, 0))
        assert await ask(provider, "ok:clean") == "clean"
        assert aiohttp_connections(transport_now) in (None, (0, 1))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.anyio
async def test_fifty_requests_through_one_connection_some_failing_some_cancelled(
    transport: str, prompts: PromptServer
) -> None:
    plan = {i: ("hold" if i % 7 == 3 else "fail" if i % 5 == 0 else "ok") for i in range(50)}
    got: dict[int, str | None] = {}
    failed: dict[int, str] = {}
    scopes: dict[int, anyio.CancelScope] = {}
    async with provider_on(prompts.url, transport, max_connections=1, max_retries=0) as provider:

        async def one(i: int) -> None:
            with anyio.CancelScope() as scope:
                scopes[i] = scope
                try:
                    got[i] = await ask(provider, f"{plan[i]}:{i}")
                except ProviderError as exc:
                    failed[i] = one_line(exc)

        async def canceller() -> None:
            # Each held request is given up once the server has it: the one connection is
            # then closed and the queue goes on through a new one.
            for i in (i for i, verb in plan.items() if verb == "hold"):
                await wait_for(lambda i=i: prompts.saw(f"hold:{i}"))  # type: ignore[misc]
                scopes[i].cancel()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in plan:
                    tg.start_soon(one, i)
                tg.start_soon(canceller)
        gate = await gate_of(provider)
        assert gate.inside == 0
        assert gate._semaphore.statistics().tasks_waiting == 0
    assert got == {i: str(i) for i, verb in plan.items() if verb == "ok"}
    assert sorted(failed) == [i for i, verb in plan.items() if verb == "fail"]
    assert all("HTTP 400" in message for message in failed.values())
    assert sorted(prompts.seen) == sorted(f"{verb}:{i}" for i, verb in plan.items())


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.anyio
async def test_a_fail_fast_batch_cancels_its_calls_in_flight_and_frees_the_gate(
    transport: str, prompts: PromptServer
) -> None:
    async with provider_on(prompts.url, transport, max_connections=3, max_retries=0) as provider:
        runtime = Runtime(provider, subagents=SubagentConfig(summary_prompt=None), telemetry=False)
        tasks = [{"label": f"h{i}", "task_prompt": f"hold:{i}"} for i in range(2)]
        tasks += [{"label": "bad", "task_prompt": "fail:boom"}]
        tasks += [{"label": f"q{i}", "task_prompt": f"ok:{i}"} for i in range(5)]

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                results: list[Any] = []

                async def batch() -> None:
                    results.append(await runtime.run_batch(tasks, fail_fast=True))

                tg.start_soon(batch)
        (outcome,) = results
        assert outcome.failed >= 1
        assert not outcome.results[2].succeeded
        gate = await gate_of(provider)
        assert gate.inside == 0
        assert await ask(provider, "ok:after") == "after"


# == 2. the loop ending =======================================================================


@contextlib.contextmanager
def leak_watch(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Everything an unclosed session or connection says: ResourceWarnings, asyncio's
    logged errors ("Unclosed client session") and unraisable exceptions from ``__del__``."""
    said: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: said.append(repr(u.exc_value)))

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                said.append(f"{record.name}: {record.getMessage()}")

    handler = Catch()
    logging.getLogger("asyncio").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield said
            gc.collect()
            said.extend(str(w.message) for w in caught)
    finally:
        logging.getLogger("asyncio").removeHandler(handler)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_two_asyncio_runs_without_aclose_leave_nothing_unclosed(
    transport: str, prompts: PromptServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = [make(prompts.url, transport, max_retries=0)]  # dropped at the end, unclosed

    async def main(n: int) -> str | None:
        async with anyio.create_task_group() as tg:  # one left half-read as the loop ends
            tg.start_soon(ask, held[0], f"partial:{n}")
            await wait_for(lambda: prompts.saw(f"partial:{n}"))
            tg.cancel_scope.cancel()
        return await ask(held[0], f"ok:{n}")

    with leak_watch(monkeypatch) as said:
        assert asyncio.run(main(1)) == "1"
        assert asyncio.run(main(2)) == "2"
        held.clear()
    assert said == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_aclose_inside_the_loop_and_requests_after_it(
    transport: str, prompts: PromptServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = [make(prompts.url, transport, max_retries=0)]  # dropped at the end, unclosed

    async def main() -> list[str | None]:
        first = await ask(held[0], "ok:a")
        await held[0].aclose()
        await held[0].aclose()  # twice is fine
        second = await ask(held[0], "ok:b")  # a new pool for the same loop
        return [first, second]

    with leak_watch(monkeypatch) as said:
        assert asyncio.run(main()) == ["a", "b"]
        assert anyio.run(main) == ["a", "b"]
        held.clear()
    assert said == []


HAND_CLOSED = (
    "a loop closed without shutdown_asyncgens() never finalises the guard of "
    "_close_when_loop_ends: the pool of that loop is dropped unclosed when the next loop "
    "replaces it ({})"
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "transport",
    [on("aiohttp", bug=HAND_CLOSED.format("'Unclosed client session' ResourceWarning and an "
        "asyncio ERROR log")),
     on("httpx", bug=HAND_CLOSED.format("'unclosed <socket.socket ...>' ResourceWarnings"))],
)  # fmt: skip
def test_a_loop_closed_by_hand_leaves_nothing_unclosed(
    transport: str, prompts: PromptServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = make(prompts.url, transport, max_retries=0)
    with leak_watch(monkeypatch) as said:
        loop = asyncio.new_event_loop()
        assert loop.run_until_complete(ask(provider, "ok:1")) == "1"
        loop.close()  # the pre-asyncio.run idiom: no loop.shutdown_asyncgens()
        assert asyncio.run(ask(provider, "ok:2")) == "2"
        del provider, loop
    assert said == []


def test_uvloop_runs_the_aiohttp_path(prompts: PromptServer) -> None:
    uvloop = pytest.importorskip("uvloop")
    provider = make(prompts.url, "aiohttp")
    assert uvloop.run(ask(provider, "ok:uv")) == "uv"


# == 3. HTTP misbehaviour =====================================================================

MANY_HEADERS = "the reply has more than aiohttp's 128 headers"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)  # aiohttp refused it before 0818f10
@pytest.mark.anyio
async def test_a_reply_header_over_8190_bytes_is_read_as_httpx_reads_it(transport: str) -> None:
    reply = head("200 OK", X_Trace="t" * 9000, Content_Length=str(len(OK_BODY))) + OK_BODY
    with raw_server(answering(reply)) as srv:
        async with provider_on(srv.url, transport) as provider:
            assert await ask(provider) == "ok"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "transport",
    [on("aiohttp"), on("httpx")],
)  # fmt: skip
@pytest.mark.anyio
async def test_a_reply_with_200_headers_is_read_as_httpx_reads_it(transport: str) -> None:
    lines = "".join(f"X-H{i}: v\r\n" for i in range(200))
    reply = f"HTTP/1.1 200 OK\r\nConnection: close\r\n{lines}Content-Length: {len(OK_BODY)}"
    with raw_server(answering(reply.encode() + b"\r\n\r\n" + OK_BODY)) as srv:
        async with provider_on(srv.url, transport) as provider:
            assert await ask(provider) == "ok"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "transport",
    [on("aiohttp"), on("httpx")],
)  # fmt: skip
@pytest.mark.parametrize(
    "reply",
    [b"GARBAGE NOT HTTP\r\n\r\n", b"HTTP/1.1 2x0 Nope\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n"],
    ids=["no status line", "bad status", "bad chunk"],
)  # fmt: skip
@pytest.mark.anyio
async def test_a_reply_that_is_not_http_is_not_mistaken_for_an_http_status(
    transport: str, reply: bytes
) -> None:
    with raw_server(closing(reply)) as srv:
        async with provider_on(srv.url, transport, max_retries=0) as provider:
            with pytest.raises(ProviderError) as info:
                await ask(provider)
    message = one_line(info.value)
    assert message.startswith(f"request to {srv.url}/chat/completions failed: ")
    assert info.value.status_code is None
    assert "400" not in message, message


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "status",
    ["301 Moved", "302 Found", "303 See Other", "307 Temporary Redirect", "308 Permanent Redirect"],
)
@pytest.mark.anyio
async def test_a_redirect_is_not_followed_and_says_so(transport: str, status: str) -> None:
    with raw_server(closing(head("200 OK", Content_Length="0"))) as elsewhere:
        moved = head(status, Location=f"{elsewhere.url}/stolen", Content_Length="0")
        with raw_server(answering(moved)) as srv:
            async with provider_on(srv.url, transport, api_key=CANARY) as provider:
                with pytest.raises(ProviderError) as info:
                    await ask(provider)
        assert elsewhere.requests == []  # neither the body nor the key went there
    code = int(status[:3])
    assert info.value.status_code == code
    assert one_line(info.value) == (
        f"model endpoint failed: HTTP {code} from {srv.url}/chat/completions: (empty body)"
    )
    assert len(srv.requests) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "reply", [head("204 No Content"), head("200 OK", Content_Length="0")], ids=["204", "empty"]
)
@pytest.mark.anyio
async def test_an_empty_reply_is_one_malformed_reply_not_retried(
    transport: str, reply: bytes
) -> None:
    with raw_server(answering(reply)) as srv:
        async with provider_on(srv.url, transport) as provider:
            with pytest.raises(ProviderError) as info:
                await ask(provider)
    assert one_line(info.value) == (
        f"malformed reply from {srv.url}/chat/completions: not JSON; body: (empty body)"
    )
    assert len(srv.requests) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + OK_BODY,
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + OK_BODY,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
        + b"%x\r\n" % len(OK_BODY)
        + OK_BODY
        + b"\r\n0\r\nX-T: done\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n"
        + head("200 OK", Content_Length=str(len(OK_BODY)))
        + OK_BODY,
    ],
    ids=["http/1.0 close-delimited", "1.1 close-delimited", "chunked with trailers", "100"],
)
@pytest.mark.anyio
async def test_unusual_but_valid_framing_is_read(transport: str, reply: bytes) -> None:
    with raw_server(closing(reply)) as srv:
        async with provider_on(srv.url, transport) as provider:
            assert await ask(provider) == "ok"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "reply",
    [b"", head("200 OK", Content_Length="500"), head("200 OK", Content_Length="500") + b"{",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n"],
    ids=["nothing", "headers only", "half a body", "half a chunked body"],
)  # fmt: skip
@pytest.mark.anyio
async def test_a_server_closing_early_is_retried_then_one_clear_line(
    transport: str, reply: bytes
) -> None:
    with raw_server(closing(reply)) as srv:
        async with provider_on(srv.url, transport, api_key=CANARY, max_retries=2) as provider:
            with pytest.raises(ProviderError) as info:
                await ask(provider)
            assert (await gate_of(provider)).inside == 0
    message = one_line(info.value)
    assert message.startswith(f"request to {srv.url}/chat/completions failed (3 attempts): ")
    assert len(srv.requests) == 3
    assert CORE not in message


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a throwaway certificate")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@contextlib.contextmanager
def tls_server(cert: Path, key: Path) -> Iterator[str]:
    """https://127.0.0.1:PORT answering every request with ``OK_BODY``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError, ssl.SSLError), conn:
            conn.settimeout(30)
            with context.wrap_socket(conn, server_side=True) as tls:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                # The whole body too: closing with unread bytes resets the connection.
                top, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in top.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(body) < length:
                    chunk = tls.recv(65536)
                    if not chunk:
                        return
                    body += chunk
                tls.sendall(head("200 OK", Content_Length=str(len(OK_BODY))) + OK_BODY)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=serve, args=(conn,), daemon=True)
            threads.append(thread)
            thread.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        stop.set()
        acceptor.join()
        listener.close()
        for thread in threads:
            thread.join(30)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.anyio
async def test_a_self_signed_certificate_is_one_clean_line_and_ssl_cert_file_trusts_it(
    transport: str,
    self_signed: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with tls_server(*self_signed) as url:
        async with provider_on(url, transport, api_key=CANARY, max_retries=0) as provider:
            with pytest.raises(ProviderError) as info:
                await ask(provider)
        message = one_line(info.value)
        assert message.startswith(f"could not connect to {url}/chat/completions: ")
        assert "certificate verify failed: self-signed certificate" in message
        assert_no_secret(info.value, caplog)

        monkeypatch.setenv("SSL_CERT_FILE", str(self_signed[0]))
        async with provider_on(url, transport, api_key=CANARY) as provider:
            assert await ask(provider) == "ok"


# == 4. the API key ===========================================================================


def key_prefix_in(where: str) -> Callable[[RawRequest, Sender], None]:
    """Echoes the Authorization header so that the line is too long for aiohttp (64 KiB
    since 0818f10) and the key straddles the 100th byte, where aiohttp cuts the line it
    quotes."""

    def script(request: RawRequest, send: Sender) -> None:
        echoed = request.headers["authorization"].encode()
        if where == "header":
            line = b"X-Echo: " + b"a" * 80 + echoed + b"b" * 70_000
            send(b"HTTP/1.1 200 OK\r\n" + line + b"\r\nContent-Length: 2\r\n\r\nhi")
        else:
            line = b"HTTP/1.1 500 " + b"a" * 80 + echoed + b"b" * 70_000
            send(line + b"\r\nContent-Length: 2\r\n\r\nhi")
        with contextlib.suppress(OSError):
            send._conn.shutdown(socket.SHUT_WR)

    return script


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "transport",
    [on("aiohttp"), on("httpx")],
)  # fmt: skip
@pytest.mark.parametrize("where", ["header", "status reason"])
@pytest.mark.anyio
async def test_a_key_echoed_in_an_over_long_line_leaves_no_fragment(
    transport: str, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with raw_server(key_prefix_in(where)) as srv:
        async with provider_on(srv.url, transport, api_key=PLAIN_KEY, max_retries=0) as provider:
            with contextlib.suppress(ProviderError):
                await ask(provider)
                raise AssertionError("the reply was taken")
            with pytest.raises(ProviderError) as info:
                await ask(provider)
    message = one_line(info.value)
    assert leaked_fragment(message) is None, f"{leaked_fragment(message)!r} in {message}"
    logged = "\n".join(logging.Formatter().format(r) for r in caplog.records)
    assert leaked_fragment(logged) is None, f"{leaked_fragment(logged)!r} in the logs"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.anyio
async def test_the_key_goes_only_into_the_authorization_header(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with raw_server(answering(head("200 OK", Content_Length=str(len(OK_BODY)))
                                               + OK_BODY)) as srv:  # fmt: skip
        async with provider_on(srv.url, transport, api_key=CANARY) as provider:
            assert await ask(provider) == "ok"
            shown = [repr(provider), repr(await provider._transports.get())]
    (request,) = srv.requests
    assert request.headers["authorization"] == f"Bearer {CANARY}"
    others = {k: v for k, v in request.headers.items() if k != "authorization"}
    assert CORE not in json.dumps(others) + request.body.decode() + request.head
    for text in [*shown, caplog.text]:
        assert CORE not in text


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("where", ["reason", "header", "body", "body of a 200"])
@pytest.mark.anyio
async def test_a_key_echoed_by_the_server_never_comes_back_out(
    transport: str, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    def echo(request: RawRequest, send: Sender) -> None:
        said = request.headers["authorization"].encode()
        if where == "reason":
            send(b"HTTP/1.1 503 " + said + b"\r\nContent-Length: 0\r\n\r\n")
        elif where == "header":
            send(b"HTTP/1.1 503 No\r\nX-Echo: " + said + b"\r\nContent-Length: 0\r\n\r\n")
        else:
            status = b"200 OK" if where == "body of a 200" else b"401 No"
            body = b"you sent " + said
            send(b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    with raw_server(echo) as srv:
        async with provider_on(srv.url, transport, api_key=CANARY, max_retries=1) as provider:
            with pytest.raises(ProviderError) as info:
                await ask(provider)
    assert_no_secret(info.value, caplog)


# == 5. proxies ===============================================================================


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


FAR = "http://model.invalid:8000/v1"


IGNORE_PROXY_AUTH = pytest.mark.filterwarnings(
    "ignore:The 'proxy_auth' parameter is deprecated:DeprecationWarning"
)
"""For the tests of something else than the DeprecationWarning (that is its own test)."""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.anyio
@IGNORE_PROXY_AUTH
async def test_a_dead_proxy_is_a_could_not_connect_without_its_password(
    transport: str, clean_proxy_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clean_proxy_env.setenv("HTTP_PROXY", "http://proxyuser:pr0xyPa55@127.0.0.1:1")
    async with provider_on(FAR, transport, max_retries=1) as provider:
        with pytest.raises(ProviderError) as info:
            await ask(provider)
    message = one_line(info.value)
    assert message.startswith(
        f"could not connect to {FAR}/chat/completions through the proxy http://[redacted]@"
    )
    assert "(2 attempts)" in message
    for text in (message, repr(info.value), caplog.text):
        assert "pr0xyPa55" not in text


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.anyio
async def test_a_dead_proxy_is_named_as_the_proxy(
    transport: str, clean_proxy_env: pytest.MonkeyPatch
) -> None:
    clean_proxy_env.setenv("HTTP_PROXY", "http://127.0.0.1:1")
    async with provider_on(FAR, transport, max_retries=0) as provider:
        with pytest.raises(ProviderError) as info:
            await ask(provider)
    message = one_line(info.value)
    assert message.startswith("could not connect"), message
    assert "proxy" in message.lower(), message


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)  # aiohttp: proxy_auth= warned before 0818f10
@pytest.mark.anyio
async def test_a_proxy_with_credentials_works_without_a_deprecation_warning(
    transport: str, clean_proxy_env: pytest.MonkeyPatch
) -> None:
    reply = head("200 OK", Content_Length=str(len(OK_BODY))) + OK_BODY
    with raw_server(closing(reply)) as srv:
        clean_proxy_env.setenv("HTTP_PROXY", srv.url.replace("//", "//proxyuser:pr0xyPa55@"))
        async with provider_on(FAR, transport, max_retries=0) as provider:
            assert await ask(provider) == "ok"
    (request,) = srv.requests
    assert request.headers["proxy-authorization"] == "Basic cHJveHl1c2VyOnByMHh5UGE1NQ=="


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.anyio
@IGNORE_PROXY_AUTH
async def test_proxy_credentials_echoed_by_the_proxy_are_redacted(
    transport: str, clean_proxy_env: pytest.MonkeyPatch
) -> None:
    def proxy(request: RawRequest, send: Sender) -> None:
        body = f"who is {request.headers.get('proxy-authorization')}?".encode()
        send(head("407 Proxy Authentication Required", Content_Length=str(len(body))) + body)

    with raw_server(proxy) as srv:
        clean_proxy_env.setenv("HTTP_PROXY", srv.url.replace("//", "//proxyuser:pr0xyPa55@"))
        async with provider_on(FAR, transport, max_retries=0) as provider:
            with pytest.raises(ProviderError) as info:
                await ask(provider)
    assert srv.requests[0].headers["proxy-authorization"] == "Basic cHJveHl1c2VyOnByMHh5UGE1NQ=="
    message = one_line(info.value)
    assert "HTTP 407" in message
    assert "cHJveHl1c2VyOnByMHh5UGE1NQ" not in message, message


@pytest.mark.timeout(60)
@pytest.mark.anyio
async def test_all_proxy_routes_the_same_on_both_transports(
    clean_proxy_env: pytest.MonkeyPatch,
) -> None:
    routes: dict[str, str] = {}
    with raw_server(closing(head("200 OK", Content_Length=str(len(OK_BODY))) + OK_BODY)) as srv:
        clean_proxy_env.setenv("ALL_PROXY", srv.url)
        for transport in TRANSPORTS:
            before = len(srv.requests)
            async with provider_on(FAR, transport, max_retries=0) as provider:
                try:
                    routes[transport] = f"answered {await ask(provider)}"
                except ProviderError as exc:
                    routes[transport] = str(exc).split(":", 1)[0]
            routes[transport] += f", {len(srv.requests) - before} via the proxy"
    assert routes["aiohttp"] == routes["httpx"], routes


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.anyio
async def test_no_proxy_lower_case_and_wildcard_are_honoured(
    transport: str, clean_proxy_env: pytest.MonkeyPatch
) -> None:
    with raw_server(closing(head("200 OK", Content_Length=str(len(OK_BODY))) + OK_BODY)) as srv:
        clean_proxy_env.setenv("http_proxy", "http://127.0.0.1:1")  # dead: must be bypassed
        for no_proxy in ("127.0.0.1", "*"):
            clean_proxy_env.setenv("no_proxy", no_proxy)
            async with provider_on(srv.url, transport, max_retries=0) as provider:
                assert await ask(provider) == "ok"


# == 6. docs ==================================================================================


def test_the_docs_say_when_an_attempts_time_starts() -> None:
    text = " ".join((DOCS / "providers.md").read_text().split())
    assert "The wait at the gate counts toward the attempt's `timeout`" not in text
