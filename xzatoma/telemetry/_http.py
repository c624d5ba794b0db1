"""The HTTP/1.x that ``/metrics`` speaks: reading a request head, writing a response head.

Pure code on bytes, no sockets, so every malformed input can be tried without a server. It
reads only what a scraper sends (a request line and headers; ``GET`` and ``HEAD`` carry no
body) and refuses the rest with the status a client can act on. Nothing here raises on any
input: every value is matched against its grammar before it is used (no ``int()`` of what a
client sent, no ``str.isdigit``, which takes ``'²'``), so a hostile head is a 400, never a
traceback in the agent's log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit

__all__ = (
    "MAX_HEADER_LINES",
    "Rejection",
    "Request",
    "count_heads",
    "find_head_end",
    "parse_head",
    "response_head",
)

MAX_HEADER_LINES: Final = 100
"""More header lines than this is a 431, whatever their size (as ``http.client`` limits)."""

_HEAD_END: Final = re.compile(rb"\r?\n\r?\n")
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION: Final = re.compile(r"HTTP/([0-9])\.([0-9])")
_DIGITS: Final = re.compile(r"[0-9]+")  # RFC 9110's 1*DIGIT: ASCII only, unlike ``\d``
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}


@dataclass(frozen=True, slots=True)
class Request:
    """A request head that parsed."""

    method: str
    path: str
    """The target's path, percent-decoded, without the query."""
    http10: bool
    """An HTTP/1.0 request: the answer must say ``Connection: keep-alive`` to keep it open."""
    keep_alive: bool
    """Whether the client lets the connection serve another request after this one."""
    accept: str = ""
    """Its ``Accept`` headers, joined with commas: which exposition format it wants."""
    accept_encoding: str = ""
    """Its ``Accept-Encoding`` headers, joined with commas: whether it takes gzip."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """A request the server answers with an error status and then closes the connection."""

    status: int
    message: str
    """The plain-text body: what was wrong, in one line."""


def find_head_end(buffer: bytes | bytearray, start: int) -> tuple[int, int] | None:
    """Where the head in ``buffer`` ends: (end of the head, start of what follows), or None.

    Args:
        buffer: What the connection has received.
        start: Where to start looking, so a head that arrives a byte at a time is scanned
            once, not once per byte.
    """
    found = _HEAD_END.search(buffer, max(0, start - 3))
    return None if found is None else (found.start(), found.end())


def count_heads(buffer: bytes | bytearray, at_most: int) -> tuple[int, int]:
    """How many complete heads ``buffer`` holds (up to ``at_most``), and where the last ends.

    The transport reads pipelined requests only this far ahead: what follows the last
    counted head stays in the socket until answers have been written. Blank lines before a
    request line count as a head here, which only ever makes the read-ahead shorter.
    """
    count = end = 0
    for found in _HEAD_END.finditer(buffer):
        if count == at_most:
            break
        count, end = count + 1, found.end()
    return count, end


def parse_head(head: bytes) -> Request | Rejection:
    """Read a request line and its headers (the bytes before the blank line).

    A request that says it has a body (``Content-Length`` above 0, ``Transfer-Encoding``)
    is answered and then the connection is closed, since /metrics never reads a body.
    """
    lines = head.decode("latin-1").split("\n")
    if len(lines) - 1 > MAX_HEADER_LINES:
        return Rejection(431, f"Too many header lines: at most {MAX_HEADER_LINES}")
    parts = lines[0].rstrip("\r").split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        return Rejection(400, "Bad request line: expected 'GET /metrics HTTP/1.1'")
    method, target, version = parts
    matched = _VERSION.fullmatch(version)
    if matched is None:
        return Rejection(400, "Bad request line: the version must read HTTP/1.1")
    if matched.group(1) != "1":
        return Rejection(505, "HTTP version not supported: /metrics answers HTTP/1.0 and 1.1")
    http10 = matched.group(2) == "0"
    connection: set[str] = set()
    lengths: set[str] = set()
    accept: list[str] = []
    accept_encoding: list[str] = []
    has_body = False
    for raw in lines[1:]:
        line = raw.rstrip("\r")
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            return Rejection(400, "Bad header line: expected 'Name: value'")
        key = name.lower()
        value = value.strip(" \t")
        if key == "connection":
            connection.update(token.strip(" \t").lower() for token in value.split(","))
        elif key == "content-length":
            lengths.update(length.strip(" \t") for length in value.split(","))
        elif key == "transfer-encoding":
            has_body = True
        elif key == "accept":  # a field sent twice is one list (RFC 9110, 5.3)
            accept.append(value)
        elif key == "accept-encoding":
            accept_encoding.append(value)
    if lengths:
        # Compared as digit strings, never converted: a 5,000-digit length is as wrong as -5.
        numbers = {length.lstrip("0") for length in lengths}
        if len(numbers) != 1 or not all(_DIGITS.fullmatch(length) for length in lengths):
            return Rejection(400, "Bad Content-Length: it must be one number of bytes")
        has_body = has_body or numbers.pop() != ""
    # HTTP/1.1 keeps a connection open unless told otherwise; HTTP/1.0 only when asked.
    keep_alive = "keep-alive" in connection if http10 else "close" not in connection
    path = _path(target)
    if path is None:
        return Rejection(400, "Bad request target: expected /metrics")
    return Request(
        method,
        path,
        http10,
        keep_alive and not has_body,
        ", ".join(accept),
        ", ".join(accept_encoding),
    )


def _path(target: str) -> str | None:
    """The percent-decoded path of a request target (origin or absolute form), if it has one.

    None for an absolute form that does not split (``http://[::1/metrics``: a bracket never
    closed), which ``urlsplit`` refuses with a ``ValueError``.
    """
    if not target.startswith("/"):
        try:
            target = urlsplit(target).path if "://" in target else ""
        except ValueError:
            return None
    return unquote(target.partition("?")[0])


def response_head(
    status: int,
    content_type: str,
    length: int,
    *,
    keep_alive: bool,
    http10: bool,
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """The status line and headers of a response whose body is ``length`` bytes."""
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {length}",
    ]
    lines.extend(f"{name}: {value}" for name, value in extra)
    if not keep_alive:
        lines.append("Connection: close")
    elif http10:
        lines.append("Connection: keep-alive")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")
