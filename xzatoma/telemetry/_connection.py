"""One ``/metrics`` connection's state, and the limits and statistics of a server's connections.

Plain data for the transport's I/O thread, which alone reads and changes a connection.
"""

from __future__ import annotations

import socket
from collections import deque
from dataclasses import dataclass
from typing import Final

from ._http import Request

__all__ = (
    "BUSY",
    "FRESH",
    "LINGERING",
    "NEVER",
    "WAITING",
    "Connection",
    "Limits",
    "MetricsServerStatistics",
)

FRESH: Final = "fresh"
"""Accepted, no complete request yet: the first to be evicted after a lingering one."""
WAITING: Final = "waiting"
"""Answered, kept alive, waiting for (or reading) its next request."""
BUSY: Final = "busy"
"""A complete request is being answered: never evicted, no timeout while it renders."""
LINGERING: Final = "lingering"
"""Answered and closing: reads and drops what the client still sends, briefly."""
NEVER: Final = float("inf")


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of one server (validated by ``start_metrics_server``)."""

    max_connections: int
    idle_timeout: float
    header_timeout: float
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
    """Connections closed by ``header_timeout`` or ``idle_timeout``."""
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
        self.eof = False  # the client half-closed: it sends nothing more
        self.deadline = NEVER
        self.scheduled = NEVER  # the earliest timer queued for it
