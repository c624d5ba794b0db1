"""Requests through aiohttp, the default on asyncio: one session per event loop.

Set up to behave at the wire as the httpx client does: no redirects followed, bodies left
compressed (``_reply_body`` inflates them under the cap), cookies kept between the requests
of a provider (also from hosts given as IP addresses, as httpx does), idle connections kept
5 s, the environment's proxy for the endpoint, httpx's certificates for https, up to 1000
header lines of up to 64 KiB. One total timeout bounds the whole exchange: connecting,
sending, and every byte of the reply.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Mapping
from types import TracebackType

import aiohttp
import httpx
from yarl import URL

from ._transport import FailureKind, FailureMap, Gate, TransportFailure

__all__ = ("AiohttpTransport",)

_READ_SIZE = 65536
"""The most one read of a body hands over."""
_HEADER_BYTES = 65536
"""The longest status or header line taken (aiohttp's own limit is 8190, httpcore's more)."""
_HEADERS = 1000
"""The most header fields taken (aiohttp's own limit is 128; httpx has none but size)."""
_IDLE_SECONDS = 5.0
"""How long an idle connection is kept (httpx's ``keepalive_expiry``); many servers close
theirs after 5 s, and reusing one they closed costs a failed attempt."""


class _AiohttpFailures(FailureMap):
    """aiohttp's exceptions as TransportFailures."""

    __slots__ = ("_sending",)

    def __init__(self, *, sending: bool) -> None:
        self._sending = sending

    def failure(self, exc: Exception) -> TransportFailure:
        kind: FailureKind
        if isinstance(exc, aiohttp.ClientConnectorError):  # refused, DNS, TLS handshake
            kind = "connect"
        elif isinstance(exc, aiohttp.ServerTimeoutError):  # one phase: connect, a read
            kind = "timeout"
        elif isinstance(exc, asyncio.TimeoutError):  # the attempt's total: a bare one
            return TransportFailure("timeout", "", str(exc))
        elif isinstance(exc, aiohttp.InvalidURL):
            kind = "refused"
        elif isinstance(exc, aiohttp.ClientResponseError) and exc.status == 400:
            # Not a status the server sent: aiohttp's parser refused the reply (a line too
            # long, a bad status line or chunk) and says so as a 400, quoting the first 100
            # bytes, which can hold part of a key the redactor would not recognise.
            cause = exc.__cause__
            name = type(cause).__name__ if cause is not None else "BadHttpMessage"
            return TransportFailure("broken", name, _parser_said(exc.message))
        elif isinstance(exc, aiohttp.ClientError | OSError):
            kind = "broken"  # disconnected, reset, a cut body
        elif self._sending and isinstance(exc, ValueError | TypeError):
            kind = "unbuildable"  # a header aiohttp will not write
        else:
            kind = "refused"
        return TransportFailure(kind, type(exc).__name__, str(exc))


def _parser_said(message: str) -> str:
    """The first line of a parser's message, cut where it starts quoting the reply's bytes
    (``b'...'``): all of that goes, however it ends."""
    first = message.strip().splitlines()[0] if message.strip() else "not an HTTP reply"
    quoted = [i for i in (first.find("b'"), first.find('b"')) if i >= 0]
    return f"{first[: min(quoted)]}(the reply's bytes)" if quoted else first


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
            with transport.send_failures:
                headers = self._headers
                if transport.proxy_login is not None:
                    headers = {**headers, **transport.proxy_login}
                self._response = await transport.session.post(
                    self._url,
                    data=self._body,
                    headers=headers,
                    allow_redirects=False,
                    proxy=transport.proxy,
                    proxy_headers=transport.proxy_headers,
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
        with self._transport.read_failures:
            return await self._response.content.read(_READ_SIZE)


class AiohttpTransport:
    """Requests through an ``aiohttp.ClientSession`` of its own (asyncio only).

    The proxy is handed over, read once (:func:`~._transport.environment_proxy`): aiohttp's
    own ``trust_env`` reads it (and ``~/.netrc``) in a worker thread on every request, two
    trips through a thread that cost more than the rest of the request, and it skips
    ``ALL_PROXY`` and https proxies. Only an ``http://`` proxy is handed to aiohttp; the
    pool takes httpx for any other (``_loop_transport``).
    """

    __slots__ = (
        "gate",
        "proxy",
        "proxy_headers",
        "proxy_login",
        "read_failures",
        "send_failures",
        "session",
    )

    def __init__(self, gate: Gate, url: str, timeout: float, proxy: str | None) -> None:
        self.gate = gate
        # httpx's context (certifi, or SSL_CERT_FILE / SSL_CERT_DIR): the same servers are
        # trusted whichever transport runs. Made only for https: loading it takes 0.1 s.
        secure = url.lower().startswith("https:")
        context: ssl.SSLContext | bool = httpx.create_ssl_context() if secure else True
        self.proxy: URL | None = None
        self.proxy_headers: dict[str, str] | None = None  # for the CONNECT of https
        self.proxy_login: dict[str, str] | None = None  # with each plain http request
        if proxy is not None:
            found = URL(proxy)
            if found.user is not None:  # a header to the proxy, never in a URL
                credentials = f"{found.user}:{found.password or ''}".encode()
                login = {"Proxy-Authorization": f"Basic {base64.b64encode(credentials).decode()}"}
                if secure:
                    self.proxy_headers = login
                else:
                    self.proxy_login = login
            self.proxy = found.with_user(None)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=gate.size, ssl=context, keepalive_timeout=_IDLE_SECONDS
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            timeout=aiohttp.ClientTimeout(total=timeout),
            max_line_size=_HEADER_BYTES,
            max_field_size=_HEADER_BYTES,
            max_headers=_HEADERS,
        )
        self.send_failures = _AiohttpFailures(sending=True)
        self.read_failures = _AiohttpFailures(sending=False)

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> _AiohttpExchange:
        return _AiohttpExchange(self, url, body, headers)

    async def aclose(self) -> None:
        await self.session.close()
