"""How a provider's requests travel: aiohttp on asyncio, httpx elsewhere, through one gate.

Both transports carry the same request (bytes, headers) and lend the same :class:`Reply`: a
status, headers, and the raw body as it came (still compressed: ``_reply_body`` inflates it
under the size cap). Whatever goes wrong on the way is one :class:`TransportFailure`, whose
``kind`` is all the provider needs to choose between retrying and failing.

- ``_aiohttp_transport.AiohttpTransport``, the default on asyncio: aiohttp keeps idle
  connections in a queue per host, so a request costs the same with 10 connections open as
  with 1000. httpcore scans every connection (and for each idle one, every connection
  again) on each request and each release: with hundreds of connections that scan is most
  of a request's CPU (the figures are in bench/README.md, "The HTTP path").
- ``_httpx_transport.HttpxTransport``: on trio (aiohttp runs on asyncio only), with
  ``transport="httpx"``, behind a proxy aiohttp cannot use, and for a caller's own
  ``httpx.AsyncClient``.

The :class:`Gate` in front of either lets at most ``size`` requests into the client at once,
and the client has that many connections, all kept alive: requests beyond it wait in one
FIFO here, never inside the client's pool, and connections are reused, not reopened. Each
transport bounds an attempt in time from the moment it passes the gate (a wait for a free
connection is not the endpoint being slow): aiohttp with its own total timeout, which it
keeps for the whole exchange anyway, httpx inside a cancel scope. A timeout is a
``TransportFailure`` of kind ``timeout``; its ``name`` is empty when the whole attempt ran
out of time, the library's own when one phase of it did.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Literal, Protocol, TypeAlias

import anyio

from ._urls import shown_url

__all__ = (
    "FailureKind",
    "FailureMap",
    "Gate",
    "Reply",
    "Transport",
    "TransportFailure",
    "connect_hints",
    "environment_proxy",
)

FailureKind: TypeAlias = Literal["timeout", "connect", "broken", "refused", "unbuildable"]
"""How a request failed on its way. ``timeout``, ``connect`` and ``broken`` (the connection
or the reply broke off) may go better next time and are retried; ``refused`` (the client
would not send it: a URL scheme it cannot speak, a protocol error of its own) and
``unbuildable`` (a header that cannot be encoded) fail the same way every time."""


class TransportFailure(Exception):
    """A request failed on its way: ``name`` is the HTTP library's exception name and
    ``said`` its text, not yet redacted (the provider redacts before it quotes)."""

    def __init__(self, kind: FailureKind, name: str, said: str) -> None:
        super().__init__(f"{name}: {said}")
        self.kind, self.name, self.said = kind, name, said


class FailureMap:
    """A ``with`` block that turns an HTTP library's exceptions into a TransportFailure.

    Anything that is not an ``Exception`` (a cancellation) passes, and so does a failure
    already mapped; a subclass says how the rest are mapped (:meth:`failure`).
    """

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, TransportFailure):
            raise self.failure(exc) from None

    def failure(self, exc: Exception) -> TransportFailure:
        raise NotImplementedError


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


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url``, as httpx reads it: ``{scheme}_proxy`` or
    else ``all_proxy`` (either case; lower case wins), unless ``no_proxy`` covers the host.

    Read once per transport. Both transports take the same one: httpx reads it itself,
    aiohttp is handed it (its own reading skips ``all_proxy`` and https proxies).
    """
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or (parts.hostname and urllib.request.proxy_bypass(parts.hostname)):
        return None
    return proxy


def connect_hints(proxy: str | None) -> tuple[str, str]:
    """What a "could not connect" message adds after the URL, and what it says to check:
    the proxy (its credentials left out) when the environment names one, else the server."""
    if proxy is None:
        return "", "base_url and that the server is running"
    return (
        f" through the proxy {shown_url(proxy)}",
        "the proxy (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY)",
    )
