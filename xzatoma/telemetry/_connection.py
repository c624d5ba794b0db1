"""One ``/metrics`` connection's state, and the limits, deadlines and statistics of a server's.

Plain data and small rules for the transport's I/O thread, which alone reads and changes a
connection: how far ahead it may read, and when it times out.
"""

from __future__ import annotations

import heapq
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from ._http import Request, count_heads, find_head_end

__all__ = (
    "BUSY",
    "FRESH",
    "LINGERING",
    "NEVER",
    "READ_AHEAD",
    "WAITING",
    "Connection",
    "Limits",
    "MetricsServerStatistics",
    "Timers",
)

FRESH: Final = "fresh"
"""Accepted, no complete request yet: the first to be evicted after a lingering one."""
WAITING: Final = "waiting"
"""Answered, kept alive, waiting for (or reading) its next request."""
BUSY: Final = "busy"
"""A complete request is being answered: no timeout while it renders; once its answer is
being written, ``write_timeout`` without progress closes it, and a full server evicts the
one whose answer stalled the longest."""
LINGERING: Final = "lingering"
"""Answered and closing: reads and drops what the client still sends, briefly."""
NEVER: Final = float("inf")
READ_AHEAD: Final = 8
"""Complete requests a connection may have read and queued behind the one being answered."""
_RECV: Final = 65536


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of one server (validated by ``start_metrics_server``)."""

    max_connections: int
    idle_timeout: float
    header_timeout: float
    write_timeout: float
    max_header_bytes: int


@dataclass(frozen=True, slots=True)
class MetricsServerStatistics:
    """A snapshot of a metrics server's connections (``MetricsServer.statistics()``)."""

    connections: int
    """Connections open now (never above ``max_connections``)."""
    accepted: int
    """Connections accepted since the server started."""
    requests: int
    """Requests answered, errors included."""
    evicted: int
    """Connections closed to make room for a new one."""
    timed_out: int
    """Connections closed by ``header_timeout``, ``idle_timeout`` or ``write_timeout``."""
    max_connections: int
    """The cap on connections open at once."""


class Connection:
    """A client connection: its socket, buffers, state and deadline."""

    __slots__ = (
        "closed",
        "deadline",
        "eof",
        "events",
        "inbuf",
        "keep_alive",
        "number",
        "outbuf",
        "request",
        "scanned",
        "scheduled",
        "sock",
        "state",
    )

    def __init__(self, sock: socket.socket, number: int) -> None:
        self.sock = sock
        self.number = number
        self.state = FRESH
        self.inbuf = bytearray()
        self.scanned = 0  # how far inbuf was searched for the end of a head
        self.outbuf: deque[memoryview] = deque()
        self.request: Request | None = None
        self.keep_alive = False
        self.closed = False
        self.events = 0  # what the selector watches it for (0: not registered)
        self.eof = False  # the client half-closed: it sends nothing more (inbuf is all of it)
        self.deadline = NEVER
        self.scheduled = NEVER  # the earliest timer queued for it

    def receive(self, max_header_bytes: int) -> bytes | None:
        """What the client sent, up to what it may queue; None: it may not read more now.

        A connection holds at most ``max_header_bytes`` + 1 bytes of requests, and at most
        ``READ_AHEAD`` complete ones: the socket's data is peeked at and only the bytes up to
        the last allowed head are taken, so the rest stays in the kernel (and the client's
        sends wait) until answers are written. Bytes that are only dropped need no bound.
        """
        if self.state == LINGERING or (self.state == BUSY and not self.keep_alive):
            return self.sock.recv(_RECV)
        inbuf = self.inbuf
        room = max_header_bytes + 1 - len(inbuf)
        if room <= 0 or (inbuf and count_heads(inbuf, READ_AHEAD)[0] >= READ_AHEAD):
            return None
        peeked = self.sock.recv(min(room, _RECV), socket.MSG_PEEK)
        if not peeked:
            return peeked  # end of stream
        queued, end = count_heads(inbuf + peeked if inbuf else peeked, READ_AHEAD)
        take = end - len(inbuf) if queued == READ_AHEAD else len(peeked)
        return self.sock.recv(take)

    def has_request(self) -> bool:
        """Whether ``inbuf`` holds another complete request head (blank lines alone are none).

        Asked once the client has half-closed: what it sent before its end is still answered,
        and the answer to the last of it closes the connection.
        """
        return find_head_end(self.inbuf.lstrip(b"\r\n"), 0) is not None

    def may_read(self, max_header_bytes: int) -> bool:
        """Whether it may read more while its answer is written (not past the read-ahead)."""
        if self.eof:
            return False
        inbuf = self.inbuf
        if self.keep_alive and inbuf:
            full = len(inbuf) > max_header_bytes
            if full or count_heads(inbuf, READ_AHEAD)[0] >= READ_AHEAD:
                return False
        return True


class Timers:
    """Every connection's deadline in one heap, so the I/O thread sleeps until the next.

    A connection has one entry at a time for its earliest deadline; a deadline moved later
    is picked up when that entry fires, so a connection whose deadline moves on every read
    does not grow the heap.
    """

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Connection]] = []

    def set(self, conn: Connection, deadline: float) -> None:
        """Set when ``conn`` times out (``NEVER``: not while this state lasts)."""
        conn.deadline = deadline
        if deadline < conn.scheduled:
            conn.scheduled = deadline
            heapq.heappush(self._heap, (deadline, conn.number, conn))

    def next_due(self) -> float:
        """When the earliest entry fires (``NEVER`` if none)."""
        return self._heap[0][0] if self._heap else NEVER

    def expired(self, now: float) -> Iterator[Connection]:
        """The open connections whose deadline is ``now`` or earlier (the caller closes them)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _number, conn = heapq.heappop(heap)
            if conn.closed or when != conn.scheduled:
                continue  # stale: closed, or superseded by an earlier entry
            conn.scheduled = NEVER
            if conn.deadline <= now:
                yield conn
            elif conn.deadline < NEVER:
                self.set(conn, conn.deadline)
