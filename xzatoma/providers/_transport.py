"""How a provider's requests travel: aiohttp on asyncio, httpx elsewhere, through one gate.

Both transports carry the same request (bytes, headers) and lend the same :class:`Reply`: a
status, headers, and the raw body as it came (still compressed: ``_reply_body`` inflates it
under the size cap). Whatever goes wrong on the way is one :class:`TransportFailure`, whose
``kind`` is all the provider needs to choose between retrying and failing.

- :class:`AiohttpTransport`, the default on asyncio: aiohttp keeps idle connections in a
  queue per host, so a request costs the same with 10 connections open as with 1000.
  httpcore scans every connection (and for each idle one, every connection again) on each
  request and each release: with hundreds of connections that scan is most of a request's
  CPU (the figures are in bench/README.md, "The HTTP path").
- :class:`HttpxTransport`: on trio (aiohttp runs on asyncio only), with
  ``transport="httpx"``, and for a caller's own ``httpx.AsyncClient``.

The :class:`Gate` in front of either lets at most ``size`` requests into the client at once,
and the client has that many connections, all kept alive: requests beyond it wait in one
FIFO here, never inside the client's pool, and connections are reused, not reopened. Each
transport bounds an attempt in time from the moment it passes the gate (a wait for a free
connection is not the endpoint being slow): aiohttp with its own total timeout, which it
keeps for the whole exchange anyway, httpx inside a cancel scope. A timeout is a
``TransportFailure`` of kind ``timeout`` whose ``name`` is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

import anyio
import httpx

if TYPE_CHECKING:
    import aiohttp
    from yarl import URL

__all__ = (
    "AiohttpTransport",
    "FailureKind",
    "Gate",
    "HttpxTransport",
    "Reply",
    "Transport",
    "TransportFailure",
)

FailureKind: TypeAlias = Literal["timeout", "connect", "broken", "refused", "unbuildable"]
"""How a request failed on its way. ``timeout``, ``connect`` and ``broken`` (the connection
or the reply broke off) may go better next time and are retried; ``refused`` (the client
would not send it: a URL scheme it cannot speak, a protocol error of its own) and
``unbuildable`` (a header that cannot be encoded) fail the same way every time."""

_PIECE = 65536
"""The most one read of an aiohttp body hands over."""


class TransportFailure(Exception):
    """A request failed on its way: ``name`` is the HTTP library's exception name and
    ``said`` its text, not yet redacted (the provider redacts before it quotes)."""

    def __init__(self, kind: FailureKind, name: str, said: str) -> None:
        super().__init__(f"{name}: {said}")
        self.kind, self.name, self.said = kind, name, said


class Reply(Protocol):
    """A reply whose body has not been read yet."""

    @property
    def status(self) -> int: ...

    def header(self, name: str) -> str | None:
        """A header's value (``name`` in lower case), ``None`` when absent."""
        ...

    async def next_chunk(self) -> bytes:
        """The next piece of the body as it came (``b""`` at its end); a failure while
        reading is a TransportFailure."""
        ...

    @property
    def whole(self) -> bytes | None:
        """The decoded body, when the client read it already (``httpx.MockTransport``)."""
        ...


class Transport(Protocol):
    """Sends a POST and lends its reply for as long as the ``async with`` lasts, the whole
    exchange bounded by the attempt's timeout."""

    @property
    def gate(self) -> Gate: ...

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> AbstractAsyncContextManager[Reply]: ...

    async def aclose(self) -> None: ...


class Gate:
    """At most ``size`` requests through at once; the rest wait here, first come first in.

    Passing costs no trip through the event loop while there is room; anyio hands a place
    that frees up to the longest waiter, so a newcomer never overtakes one.
    """

    __slots__ = ("_semaphore", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._semaphore = anyio.Semaphore(size)

    @property
    def inside(self) -> int:
        """Requests through the gate now."""
        return self.size - self._semaphore.value

    async def enter(self) -> None:
        try:
            self._semaphore.acquire_nowait()
        except anyio.WouldBlock:
            await self._semaphore.acquire()

    def leave(self) -> None:
        self._semaphore.release()


# -- httpx ---------------------------------------------------------------------------------
class _HttpxFailures:
    """``with`` block mapping httpx's exceptions to :class:`TransportFailure`."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not isinstance(exc, Exception) or isinstance(exc, TransportFailure):
            return  # nothing, a cancellation, or mapped already
        kind: FailureKind
        if isinstance(exc, httpx.TimeoutException):
            kind = "timeout"
        elif isinstance(exc, httpx.ConnectError):
            kind = "connect"
        elif isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
            kind = "refused"  # our own request is at fault: again is the same
        elif isinstance(exc, httpx.TransportError):
            kind = "broken"
        else:  # any other httpx error, or a caller's client gone wrong
            kind = "refused"
        raise TransportFailure(kind, type(exc).__name__, str(exc)) from None


_HTTPX_FAILURES = _HttpxFailures()


class _HttpxReply:
    __slots__ = ("_chunks", "_response")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._chunks: AsyncIterator[bytes] | None = None

    @property
    def status(self) -> int:
        return self._response.status_code

    def header(self, name: str) -> str | None:
        value: str | None = self._response.headers.get(name)
        return value

    @property
    def whole(self) -> bytes | None:
        response = self._response
        return response.content if response.is_stream_consumed else None

    async def next_chunk(self) -> bytes:
        if self._chunks is None:
            self._chunks = self._response.aiter_raw()
        with _HTTPX_FAILURES:
            try:
                return await anext(self._chunks)
            except StopAsyncIteration:
                return b""


class HttpxTransport:
    """Requests through an ``httpx.AsyncClient``; an owned one is closed by :meth:`aclose`."""

    __slots__ = ("_client", "_gate", "_owned", "_seconds", "_timeout")

    def __init__(
        self, client: httpx.AsyncClient, gate: Gate, timeout: float, *, owned: bool
    ) -> None:
        self._client, self._gate, self._owned = client, gate, owned
        self._seconds = timeout
        self._timeout = httpx.Timeout(timeout)

    @classmethod
    def owning(cls, gate: Gate, timeout: float) -> HttpxTransport:
        """With a client of its own: as many connections as the gate lets requests in, all
        kept alive (httpx keeps 20 by default and closes the rest as they go idle, so a busy
        pool would open a new connection for nearly every request)."""
        limits = httpx.Limits(max_connections=gate.size, max_keepalive_connections=gate.size)
        return cls(httpx.AsyncClient(limits=limits), gate, timeout, owned=True)

    @property
    def gate(self) -> Gate:
        return self._gate

    @asynccontextmanager
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> AsyncIterator[Reply]:
        try:
            request = self._client.build_request(
                "POST", url, content=body, headers=headers, timeout=self._timeout
            )
        except Exception as exc:  # httpx.InvalidURL, UnicodeEncodeError from a header
            raise TransportFailure("unbuildable", type(exc).__name__, str(exc)) from None
        await self._gate.enter()
        try:
            with anyio.move_on_after(self._seconds) as scope:
                with _HTTPX_FAILURES:
                    response = await self._client.send(request, stream=True)
                try:
                    yield _HttpxReply(response)
                finally:
                    await response.aclose()
            if scope.cancelled_caught:
                raise TransportFailure("timeout", "", f"no reply within {self._seconds:g} s")
        finally:
            self._gate.leave()

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()


# -- aiohttp -------------------------------------------------------------------------------
class _AiohttpFailures:
    """``with`` block mapping aiohttp's exceptions to :class:`TransportFailure`."""

    __slots__ = ("_aiohttp", "_sending")

    def __init__(self, *, sending: bool) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._sending = sending

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not isinstance(exc, Exception) or isinstance(exc, TransportFailure):
            return
        aiohttp = self._aiohttp
        kind: FailureKind
        if isinstance(exc, aiohttp.ClientConnectorError):  # refused, DNS, TLS handshake
            kind = "connect"
        elif isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
            # The attempt's total timeout (aiohttp raises a bare TimeoutError for it).
            raise TransportFailure("timeout", "", str(exc)) from None
        elif isinstance(exc, aiohttp.InvalidURL):
            kind = "refused"
        elif isinstance(exc, aiohttp.ClientError | OSError):
            kind = "broken"  # disconnected, reset, a reply that is not HTTP, a cut body
        elif self._sending and isinstance(exc, ValueError | TypeError):
            kind = "unbuildable"  # a header aiohttp will not write
        else:
            kind = "refused"
        raise TransportFailure(kind, type(exc).__name__, str(exc)) from None


class _AiohttpExchange:
    """One request through :class:`AiohttpTransport`: the ``async with`` that sends it, and
    the reply it lends. One object per request, no generator: at thousands of requests in
    flight, every object each one keeps alive is work for the garbage collector."""

    __slots__ = ("_body", "_headers", "_response", "_transport", "_url")

    def __init__(
        self, transport: AiohttpTransport, url: str, body: bytes, headers: Mapping[str, str]
    ) -> None:
        self._transport, self._url, self._body, self._headers = transport, url, body, headers
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> _AiohttpExchange:
        transport = self._transport
        await transport.gate.enter()
        try:
            with transport.sending:
                self._response = await transport.session.post(
                    self._url,
                    data=self._body,
                    headers=self._headers,
                    allow_redirects=False,
                    proxy=transport.proxy,
                    proxy_auth=transport.proxy_auth,
                )
        except BaseException:
            transport.gate.leave()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._response is not None:
                self._response.release()  # back to the pool if read to the end, closed if not
        finally:
            self._transport.gate.leave()

    @property
    def status(self) -> int:
        assert self._response is not None
        return self._response.status

    def header(self, name: str) -> str | None:
        assert self._response is not None
        value: str | None = self._response.headers.get(name)
        return value

    @property
    def whole(self) -> bytes | None:
        return None

    async def next_chunk(self) -> bytes:
        assert self._response is not None
        with self._transport.reading:
            return await self._response.content.read(_PIECE)


class AiohttpTransport:
    """Requests through an ``aiohttp.ClientSession`` of its own (asyncio only).

    Set up to behave as the httpx client does: no redirects followed, bodies left
    compressed (``_reply_body`` inflates them under the cap), no cookies kept between
    requests, a proxy from the environment (``HTTPS_PROXY``, ``NO_PROXY``...), and httpx's
    certificates for https, one total timeout for the whole exchange.

    The proxy is looked up once, here, for the provider's one URL: aiohttp's own
    ``trust_env`` looks it up (and ``~/.netrc``) in a worker thread on every request, two
    trips through a thread that cost more than the rest of the request.
    """

    __slots__ = ("gate", "proxy", "proxy_auth", "reading", "sending", "session")

    def __init__(self, gate: Gate, url: str, timeout: float) -> None:
        import aiohttp
        from aiohttp.helpers import get_env_proxy_for_url
        from yarl import URL

        self.gate = gate
        # httpx's context (certifi, or SSL_CERT_FILE / SSL_CERT_DIR): the same servers are
        # trusted whichever transport runs. Made only for https: loading it takes 0.1 s.
        secure = url.lower().startswith("https:")
        context: ssl.SSLContext | bool = httpx.create_ssl_context() if secure else True
        self.proxy: URL | None = None
        self.proxy_auth: aiohttp.BasicAuth | None = None
        with contextlib.suppress(LookupError):  # LookupError: no proxy for this URL
            self.proxy, self.proxy_auth = get_env_proxy_for_url(URL(url))
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=gate.size, ssl=context),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            # The whole exchange: connecting, sending, and every byte of the reply.
            timeout=aiohttp.ClientTimeout(total=timeout),
        )
        self.sending = _AiohttpFailures(sending=True)
        self.reading = _AiohttpFailures(sending=False)

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> _AiohttpExchange:
        return _AiohttpExchange(self, url, body, headers)

    async def aclose(self) -> None:
        await self.session.close()
