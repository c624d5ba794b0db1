"""One httpx client per event loop for a provider and its ``with_model`` twins.

An ``httpx.AsyncClient`` holds sockets that belong to the event loop that opened them; used
from the next ``asyncio.run`` it fails with "Event loop is closed", and dropped unclosed it
leaks ``ResourceWarning``\\s. So the owned client is tied to its loop: a loop that finds a
client from another loop makes its own, and each client is closed inside its own loop when
that loop shuts down (``asyncio.run`` and ``anyio.run`` finalise async generators at the
end; a suspended one here closes the client when finalised).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import httpx
from anyio.lowlevel import RunVar

__all__ = ("LoopClients",)

_LOOP_MARK: RunVar[object] = RunVar("xzatoma_openai_loop_mark")
"""A fresh object per event loop run, so that "same loop" is one identity check."""


def _current_mark() -> object:
    mark = _LOOP_MARK.get(None)
    if mark is None:
        mark = object()
        _LOOP_MARK.set(mark)
    return mark


async def _close_when_loop_ends(client: httpx.AsyncClient) -> AsyncGenerator[None, None]:
    """Suspended at ``yield`` until closed, by ``aclose`` or by the loop's shutdown."""
    try:
        yield
    finally:
        await client.aclose()


class LoopClients:
    """The client a provider family uses in the running loop: the caller's, or its own.

    A client passed in is the caller's business and is used as it is, in whatever loop.
    """

    __slots__ = ("_client", "_given", "_guard", "_mark")

    def __init__(self, given: httpx.AsyncClient | None = None) -> None:
        self._given = given
        self._client: httpx.AsyncClient | None = None
        self._guard: AsyncGenerator[None, None] | None = None
        self._mark: object = None

    async def get(self) -> httpx.AsyncClient:
        """The client for the running loop, made on first use in it (no await before that)."""
        if self._given is not None:
            return self._given
        mark = _current_mark()
        if self._client is not None and self._mark is mark:
            return self._client
        # A client of an earlier loop was closed when that loop ended: let it go.
        client = httpx.AsyncClient()
        guard = _close_when_loop_ends(client)
        await guard.asend(None)  # runs to the yield at once; now the loop will finalise it
        self._client, self._guard, self._mark = client, guard, mark
        return client

    async def aclose(self) -> None:
        """Close the owned client if it belongs to the running loop; else its loop did."""
        guard, mark = self._guard, self._mark
        self._client = self._guard = self._mark = None
        if guard is not None and mark is _current_mark():
            await guard.aclose()
