"""Reading a reply body with a cap on its decompressed size, and bounded memory while doing it.

httpx's own decoders inflate each network chunk whole, so one 64 KiB chunk of a gzip bomb
becomes 64 MiB before anyone can count it. Here the raw bytes are inflated with
``max_length``: no more than the cap (plus one byte, to see it was passed) ever exists in
memory, whatever the compression ratio. The requests say ``Accept-Encoding: gzip, deflate``,
the two encodings decoded here.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import httpx

from ..errors import ProviderError

__all__ = ("ACCEPT_ENCODING", "read_capped", "read_prefix")

ACCEPT_ENCODING = "gzip, deflate"
"""The encodings asked for, and the only ones a reply may use."""
_PIECE = 65536
"""The most one inflate call produces: pieces as small as network chunks, so no piece is
ever a second copy of a big body."""


class _Inflater:
    """Decompresses gzip or deflate a bounded piece at a time."""

    __slots__ = ("_deflate", "_started", "_zlib")

    def __init__(self, encoding: str) -> None:
        self._deflate = encoding == "deflate"
        self._started = False
        wbits = zlib.MAX_WBITS if self._deflate else zlib.MAX_WBITS | 16
        self._zlib = zlib.decompressobj(wbits)

    def pieces(self, data: bytes, room: int) -> Iterator[bytes]:
        """Inflate ``data``, each piece at most ``room`` bytes; stops once ``room`` is used.

        Also drains output zlib still holds from earlier input (it may owe some once
        ``max_length`` cut a call short), so nothing is lost and nothing is unbounded.
        """
        while room > 0:
            try:
                piece = self._zlib.decompress(data, min(room, _PIECE))
            except zlib.error:
                if self._started or not self._deflate:
                    raise
                # "deflate" is zlib-wrapped by the standard, raw by some servers.
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                self._started = True
                continue
            self._started = self._started or bool(data)
            data = self._zlib.unconsumed_tail
            if not piece:
                return
            room -= len(piece)
            yield piece


def _inflater(response: httpx.Response, url: str) -> _Inflater | None:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _Inflater("gzip" if encoding == "x-gzip" else encoding)
    raise ProviderError(
        f"reply from {url} uses Content-Encoding {encoding[:40]!r}, which was not asked for "
        f"(xzatoma asks for {ACCEPT_ENCODING}); check the server or proxy in between",
        status_code=response.status_code,
    )


async def _read(response: httpx.Response, limit: int, url: str) -> tuple[bytearray, bool]:
    """Up to ``limit`` decoded bytes, and whether the body held more than that."""
    if response.is_stream_consumed:  # made whole in memory (httpx.MockTransport): no stream
        content = response.content
        return bytearray(content[:limit]), len(content) > limit
    body = bytearray()
    inflater = _inflater(response, url)
    try:
        async for raw in response.aiter_raw():
            if inflater is None:
                body += raw
            else:
                for piece in inflater.pieces(raw, limit + 1 - len(body)):
                    body += piece
            if len(body) > limit:
                del body[limit:]
                return body, True
    except zlib.error as exc:
        raise ProviderError(
            f"reply from {url} is not valid {response.headers['content-encoding']} data "
            f"({exc}); check the server or proxy in between",
            status_code=response.status_code,
        ) from None
    return body, False


async def read_capped(response: httpx.Response, limit: int, url: str) -> bytearray:
    """The whole decoded body of a successful reply, refused once it passes ``limit`` bytes.

    Raises:
        ProviderError: The body passed ``limit`` (not worth a retry: the same request gets
            the same reply), or its compression is broken or was not asked for.
    """
    body, more = await _read(response, limit, url)
    if more:
        raise ProviderError(
            f"reply from {url} exceeded max_response_bytes ({limit} bytes); raise it with "
            "OpenAIProvider(max_response_bytes=...), provider.max_response_bytes in the "
            "config file or --max-response-bytes",
            status_code=response.status_code,
        )
    return body


async def read_prefix(response: httpx.Response, limit: int, url: str) -> bytes:
    """At most the first ``limit`` decoded bytes: enough of an error body to quote."""
    return bytes((await _read(response, limit, url))[0])
