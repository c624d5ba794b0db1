"""Reading a reply body with a cap on its decompressed size, and bounded memory while doing it.

httpx's own decoders inflate each network chunk whole, so one 64 KiB chunk of a gzip bomb
becomes 64 MiB before anyone can count it. Here the raw bytes are inflated with
``max_length``: no more than the cap (plus one byte, to see it was passed) ever exists in
memory, whatever the compression ratio. The requests say ``Accept-Encoding: gzip, deflate``,
the two encodings decoded here. The compressed bytes are counted too, so a body that
inflates to nothing (endless empty gzip members) cannot be read forever either.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from ..errors import ProviderError
from ._secrets import Redactor
from ._transport import Reply

__all__ = ("ACCEPT_ENCODING", "read_capped", "read_prefix")

ACCEPT_ENCODING = "gzip, deflate"
"""The encodings asked for, and the only ones a reply may use."""
_PIECE = 65536
"""The most one inflate call produces: pieces as small as network chunks, so no piece is
ever a second copy of a big body."""
_QUOTED = 40
"""How much of a header value a message quotes."""


def _raw_limit(limit: int) -> int:
    """The most compressed bytes read for a cap of ``limit`` decoded bytes.

    Compression that makes data bigger than it was is not compression; the 1/64 and 1 KiB
    more leave room for the framing of incompressible data (5 bytes per stored block) and
    for gzip headers.
    """
    return limit + limit // 64 + 1024


class _BadEncoding(Exception):
    """Compressed data that cannot be decoded; the text says why."""


class _Inflater:
    """Decompresses gzip or deflate a bounded piece at a time.

    A gzip body may hold several members one after another (RFC 1952, section 2.2): each
    member's end starts the next, decoded under the same cap. Bytes after the end that do not
    start a member, or any bytes after the end of deflate data, are refused: zlib would keep
    them in ``unused_data``, uncounted and copied again with every chunk.
    """

    __slots__ = ("_deflate", "_members", "_started", "_wbits", "_zlib")

    def __init__(self, encoding: str) -> None:
        self._deflate = encoding == "deflate"
        self._started = False
        self._members = 1
        self._wbits = zlib.MAX_WBITS if self._deflate else zlib.MAX_WBITS | 16
        self._zlib = zlib.decompressobj(self._wbits)

    def pieces(self, data: bytes, room: int) -> Iterator[bytes]:
        """Inflate ``data``, each piece at most ``room`` bytes; stops once ``room`` is used.

        Also drains output zlib still holds from earlier input (it may owe some once
        ``max_length`` cut a call short), so nothing is lost and nothing is unbounded.

        Raises:
            _BadEncoding: The data is not valid gzip (or deflate) data.
        """
        while room > 0:
            if self._zlib.eof:
                data = self._next_member(data)
                if not data:
                    return
            try:
                piece = self._zlib.decompress(data, min(room, _PIECE))
            except zlib.error as exc:
                if self._members > 1:
                    raise _BadEncoding(
                        f"the bytes after gzip member {self._members - 1} do not start "
                        f"another member: {exc}"
                    ) from None
                if self._started or not self._deflate:
                    raise _BadEncoding(str(exc)) from None
                # "deflate" is zlib-wrapped by the standard, raw by some servers.
                self._wbits = -zlib.MAX_WBITS
                self._zlib = zlib.decompressobj(self._wbits)
                self._started = True
                continue
            self._started = self._started or bool(data)
            data = self._zlib.unconsumed_tail
            if piece:
                room -= len(piece)
                yield piece
            elif not self._zlib.eof:
                return  # zlib needs more input

    def _next_member(self, data: bytes) -> bytes:
        """The input left after a member ended; a fresh decoder for it, if there is any."""
        rest = self._zlib.unused_data + data
        if rest:
            if self._deflate:
                raise _BadEncoding(f"{len(rest)} bytes follow the end of the deflate data")
            self._zlib = zlib.decompressobj(self._wbits)
            self._members += 1
        return rest


def _inflater(response: Reply, url: str, redact: Redactor) -> _Inflater | None:
    encoding = (response.header("content-encoding") or "identity").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _Inflater("gzip" if encoding == "x-gzip" else encoding)
    raise ProviderError(
        f"reply from {url} uses Content-Encoding '{redact.quote(encoding, _QUOTED)}', which "
        f"was not asked for (xzatoma asks for {ACCEPT_ENCODING}); check the server or proxy "
        "in between",
        status_code=response.status,
    )


async def _read(response: Reply, limit: int, url: str, redact: Redactor) -> tuple[bytearray, bool]:
    """Up to ``limit`` decoded bytes, and whether the body held more than that."""
    content = response.whole
    if content is not None:  # made whole in memory (httpx.MockTransport): no stream
        return bytearray(content[:limit]), len(content) > limit
    body = bytearray()
    inflater = _inflater(response, url, redact)
    raw_room = _raw_limit(limit)
    try:
        while raw := await response.next_chunk():
            if inflater is None:
                body += raw
            else:
                for piece in inflater.pieces(raw, limit + 1 - len(body)):
                    body += piece
                raw_room -= len(raw)  # after inflating it: broken data says so first
                if raw_room < 0:
                    return body, True
            if len(body) > limit:
                del body[limit:]
                return body, True
    except _BadEncoding as exc:
        encoding = redact.quote(response.header("content-encoding") or "", _QUOTED)
        raise ProviderError(
            f"reply from {url} is not valid {encoding} data ({exc}); check the server or "
            "proxy in between",
            status_code=response.status,
        ) from None
    return body, False


async def read_capped(response: Reply, limit: int, url: str, redact: Redactor) -> bytearray:
    """The whole decoded body of a successful reply, refused once it passes ``limit`` bytes.

    ``limit`` bounds the compressed bytes read too (see :func:`_raw_limit`). ``redact``
    makes the header values a message quotes safe.

    Raises:
        ProviderError: The body passed ``limit`` (not worth a retry: the same request gets
            the same reply), or its compression is broken or was not asked for.
    """
    body, more = await _read(response, limit, url, redact)
    if more:
        raise ProviderError(
            f"reply from {url} exceeded max_response_bytes ({limit} bytes); raise it with "
            "OpenAIProvider(max_response_bytes=...), provider.max_response_bytes in the "
            "config file or --max-response-bytes",
            status_code=response.status,
        )
    return body


async def read_prefix(
    response: Reply, limit: int, url: str, redact: Redactor
) -> tuple[bytes, bool]:
    """At most the first ``limit`` decoded bytes (enough of an error body to quote), and
    whether the body held more: then the prefix ends at a cut."""
    body, more = await _read(response, limit, url, redact)
    return bytes(body), more
