"""Requests through httpx: on trio, with ``transport="httpx"``, and for a caller's client.

httpx reads the environment's proxy and keeps cookies itself; the attempt's time is kept by
a cancel scope around the whole exchange, from when the request passes the gate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import anyio
import httpx

from ._transport import FailureKind, FailureMap, Gate, Reply, TransportFailure

__all__ = ("HttpxTransport",)


class _HttpxFailures(FailureMap):
    """httpx's exceptions as TransportFailures."""

    __slots__ = ()

    def failure(self, exc: Exception) -> TransportFailure:
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
        return TransportFailure(kind, type(exc).__name__, str(exc))


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
            lent = False
            with anyio.move_on_after(self._seconds) as scope:
                with _HTTPX_FAILURES:
                    response = await self._client.send(request, stream=True)
                try:
                    yield _HttpxReply(response)
                    lent = True
                finally:
                    await response.aclose()
            # Out of time while the reply was being read; not if only the closing ran late
            # (the reply is whole then, and sending the request again would repeat a POST).
            if scope.cancelled_caught and not lent:
                raise TransportFailure("timeout", "", f"no reply within {self._seconds:g} s")
        finally:
            self._gate.leave()

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()
