"""The transport a provider and its twins use in each event loop, and how many connections.

A connection belongs to the event loop that opened it; used from the next ``asyncio.run`` it
fails with "Event loop is closed", and dropped unclosed it leaks ``ResourceWarning``\\s. So
an owned transport is tied to its loop: a loop that finds one from another loop makes its
own, and each is closed inside its own loop when that loop shuts down (``asyncio.run`` and
``anyio.run`` finalise async generators at the end; a suspended one here closes it then).
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import AsyncGenerator
from typing import Final, Literal, TypeAlias

import httpx
import sniffio
from anyio.lowlevel import RunVar

from ..errors import ConfigError, ProviderError
from ._httpx_transport import HttpxTransport
from ._transport import Gate, Transport

__all__ = (
    "CONNECTIONS_CEILING",
    "check_transport_options",
    "TRANSPORTS",
    "LoopTransports",
    "TransportChoice",
    "default_max_connections",
)

TransportChoice: TypeAlias = Literal["auto", "aiohttp", "httpx"]
TRANSPORTS: Final = ("auto", "aiohttp", "httpx")
"""``auto``: aiohttp on asyncio, httpx on trio."""

CONNECTIONS_CEILING: Final = 1000
"""The most connections a provider opens unless told otherwise (``max_connections``)."""

_LOOP_MARK: RunVar[object] = RunVar("xzatoma_openai_loop_mark")
"""A fresh object per event loop run, so that "same loop" is one identity check."""


def check_transport_options(max_connections: object, transport: object) -> None:
    """Refuse a ``max_connections`` that is not an integer of at least 1 (``None``: the
    default) and a ``transport`` that is none of :data:`TRANSPORTS`, with a ConfigError."""
    if max_connections is not None and (type(max_connections) is not int or max_connections < 1):
        raise ConfigError(
            f"max_connections must be an integer of at least 1, got {max_connections!r}"
        )
    if transport not in TRANSPORTS:
        choices = ", ".join(repr(t) for t in TRANSPORTS)
        raise ConfigError(f"transport must be one of {choices}, got {transport!r}")


def default_max_connections() -> int:
    """:data:`CONNECTIONS_CEILING`, or half the process's open-file limit if that is lower
    (each connection is a file descriptor; the other half is left to everything else)."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return CONNECTIONS_CEILING
    if soft == resource.RLIM_INFINITY:
        return CONNECTIONS_CEILING
    return max(1, min(CONNECTIONS_CEILING, soft // 2))


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop (``None`` on trio)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _current_mark() -> object:
    mark = _LOOP_MARK.get(None)
    if mark is None:
        mark = object()
        _LOOP_MARK.set(mark)
    return mark


async def _close_when_loop_ends(transport: Transport) -> AsyncGenerator[None, None]:
    """Suspended at ``yield`` until closed, by ``aclose`` or by the loop's shutdown."""
    try:
        yield
    finally:
        await transport.aclose()


class LoopTransports:
    """The transport of the running loop: over the caller's client, or made for this loop.

    Args:
        given: A caller's client, used as it is in whatever loop (the caller closes it).
        choice: ``auto`` (aiohttp on asyncio, httpx on trio), ``aiohttp`` or ``httpx``.
        size: The most requests in flight at once, and the pool's connections.
        url: The endpoint.
        proxy: The proxy the environment names for it (:func:`environment_proxy`, read once
            by the provider), or ``None``.
        timeout: Seconds one attempt may take, from when it passes the gate.
    """

    __slots__ = (
        "_choice",
        "_given",
        "_guard",
        "_loop",
        "_mark",
        "_proxy",
        "_timeout",
        "_transport",
        "_url",
        "size",
    )

    def __init__(
        self,
        given: httpx.AsyncClient | None,
        *,
        choice: TransportChoice,
        size: int,
        url: str,
        proxy: str | None,
        timeout: float,
    ) -> None:
        self.size = size
        self._choice, self._url, self._proxy, self._timeout = choice, url, proxy, timeout
        self._given: Transport | None = None
        if given is not None:
            self._given = HttpxTransport(given, Gate(size), timeout, owned=False)
        elif choice != "httpx":
            # Imported now, where a provider is made, not at the first request: loading
            # aiohttp takes 0.1-0.3 s, which would stall the event loop and all its tasks.
            from . import _aiohttp_transport  # noqa: F401
        self._transport: Transport | None = None
        self._guard: AsyncGenerator[None, None] | None = None
        self._mark: object = None
        # The asyncio loop the transport was made in, held so that no later loop can have
        # its identity (None on trio, where the mark decides).
        self._loop: asyncio.AbstractEventLoop | None = None

    async def get(self) -> Transport:
        """The transport for the running loop, made on first use in it (no await before)."""
        if self._given is not None:
            return self._given
        transport, loop = self._transport, _running_asyncio_loop()
        if transport is not None and loop is not None and loop is self._loop:
            return transport  # the common case, without anyio's RunVar lookup
        mark = _current_mark()
        if transport is not None and self._mark is mark:
            return transport
        # A transport of an earlier loop was closed when that loop ended: let it go.
        transport = self._make()
        guard = _close_when_loop_ends(transport)
        await guard.asend(None)  # runs to the yield at once; now the loop will finalise it
        self._transport, self._guard, self._mark = transport, guard, mark
        self._loop = loop
        return transport

    def _make(self) -> Transport:
        """aiohttp on asyncio, unless told otherwise or behind a proxy it cannot use."""
        library = sniffio.current_async_library()
        if self._choice == "httpx" or (self._choice == "auto" and library != "asyncio"):
            return HttpxTransport.owning(Gate(self.size), self._timeout)
        if library != "asyncio":
            raise ProviderError(
                "transport='aiohttp' (a setting) runs on asyncio only, and this run is on "
                f"{library}: use transport='auto' or 'httpx'"
            )
        proxy = self._proxy
        if proxy is not None and not proxy.lower().startswith("http://"):
            if self._choice == "auto":
                return HttpxTransport.owning(Gate(self.size), self._timeout)
            scheme = proxy.partition(":")[0]  # never the rest: it may hold a password
            raise ProviderError(
                f"transport='aiohttp' (a setting) cannot use the {scheme} proxy the "
                "environment names for this endpoint: use transport='auto' or 'httpx'"
            )
        from ._aiohttp_transport import AiohttpTransport

        return AiohttpTransport(Gate(self.size), self._url, self._timeout, proxy)

    async def aclose(self) -> None:
        """Close the owned transport if it belongs to the running loop; else its loop did."""
        guard, mark = self._guard, self._mark
        self._transport = self._guard = self._mark = self._loop = None
        if guard is not None and mark is _current_mark():
            await guard.aclose()
