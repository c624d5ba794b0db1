"""The open ``/metrics`` connections of one server: watched, timed out, and evicted in order.

The transport's I/O thread alone uses it. It knows nothing of HTTP: it keeps which
connections are open, what the selector watches each for, when each times out, and which
one goes first when the server is full, so that neither a flood of half-open sockets nor
clients that stop reading can lock a real scraper out.
"""

from __future__ import annotations

import selectors
import socket
from collections import OrderedDict

from ._connection import FRESH, LINGERING, WAITING, Connection, Timers

__all__ = ("Pool",)

_EVICTION_ORDER = (LINGERING, FRESH, WAITING)
"""Who goes first: a connection already answered and closing, then the oldest that has not
sent a complete request, then the one idle the longest (a stalled answer comes last)."""


class Pool:
    """Every open connection, its selector registration, its deadline and its place in line."""

    def __init__(self, selector: selectors.BaseSelector, max_connections: int) -> None:
        self._selector = selector
        self._max_connections = max_connections
        self.connections: dict[int, Connection] = {}
        """The open connections by number (the order they were accepted in)."""
        self._evictable: dict[str, OrderedDict[int, Connection]] = {
            state: OrderedDict() for state in _EVICTION_ORDER
        }
        # Mid-answer with output the socket did not take, least recent progress first.
        self._stalled: OrderedDict[int, Connection] = OrderedDict()
        self._timers = Timers()
        self._numbers = 0
        self.evicted = 0
        """Connections closed to make room for a new one."""
        self.timed_out = 0
        """Connections closed by their deadline (a lingering one's end is not counted)."""

    def add(self, sock: socket.socket, deadline: float) -> Connection:
        """Open a connection on an accepted socket, watched for reading until ``deadline``."""
        self._numbers += 1
        conn = Connection(sock, self._numbers)
        self.connections[conn.number] = conn
        self._evictable[FRESH][conn.number] = conn
        self.watch(conn, selectors.EVENT_READ)
        self._timers.set(conn, deadline)
        return conn

    def make_room(self) -> bool:
        """Whether one more connection fits, evicting one if the pool is full."""
        if len(self.connections) < self._max_connections:
            return True
        for queue in (*self._evictable.values(), self._stalled):
            if queue:
                _number, conn = queue.popitem(last=False)
                self.evicted += 1
                self.close(conn)
                return True
        return False  # every connection awaits the render: none may go

    def enter(self, conn: Connection, state: str) -> None:
        """Move ``conn`` to ``state``, at the back of that state's line if it has one."""
        queue = self._evictable.get(conn.state)
        if queue is not None:
            queue.pop(conn.number, None)
        conn.state = state
        queue = self._evictable.get(state)
        if queue is not None:
            queue[conn.number] = conn

    def stalled(self, conn: Connection) -> None:
        """``conn``'s answer is waiting for the socket: last in the line of stalled answers."""
        self._stalled[conn.number] = conn
        self._stalled.move_to_end(conn.number)

    def unstalled(self, conn: Connection) -> None:
        """``conn``'s answer is all sent."""
        self._stalled.pop(conn.number, None)

    def set_deadline(self, conn: Connection, deadline: float) -> None:
        """When ``conn`` times out (``NEVER``: not while this state lasts)."""
        self._timers.set(conn, deadline)

    def next_due(self) -> float:
        """When the earliest deadline falls (``NEVER`` if none)."""
        return self._timers.next_due()

    def expire(self, now: float) -> None:
        """Close every connection whose deadline is ``now`` or earlier."""
        for conn in self._timers.expired(now):
            if conn.state != LINGERING:
                self.timed_out += 1
            self.close(conn)

    def watch(self, conn: Connection, events: int) -> None:
        """Have the selector watch ``conn`` for ``events`` (0: not at all)."""
        if events == conn.events:
            return
        if not conn.events:
            self._selector.register(conn.sock, events, conn)
        elif not events:
            self._selector.unregister(conn.sock)
        else:
            self._selector.modify(conn.sock, events, conn)
        conn.events = events

    def close(self, conn: Connection) -> None:
        """Close ``conn`` and forget it; closing it again does nothing."""
        if conn.closed:
            return
        conn.closed = True
        self.connections.pop(conn.number, None)
        self._stalled.pop(conn.number, None)
        queue = self._evictable.get(conn.state)
        if queue is not None:
            queue.pop(conn.number, None)
        self.watch(conn, 0)
        conn.sock.close()
        conn.outbuf.clear()

    def close_all(self) -> None:
        """Close every open connection (the server is stopping)."""
        for conn in list(self.connections.values()):
            self.close(conn)
