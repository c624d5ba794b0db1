"""The ``/metrics`` transport: one I/O thread, one render thread, a bounded set of connections.

A thread per connection (what ``wsgiref`` with ``ThreadingMixIn`` did) lets anyone who can
connect make the agent's process grow a thread for every socket they open and hold. Here one
thread runs a selector over every connection and one more renders the exposition, so the
process has two threads however many clients connect, and the limits below bound what each
connection may hold:

- ``max_connections`` open at once; a new one evicts first a connection already answered and
  lingering, then the oldest that has not yet sent a complete request, then the connection
  idle the longest, then the one whose answer has stalled the longest, so neither a flood
  of half-open sockets nor clients that stop reading can lock a real scraper out;
- ``header_timeout`` to send a complete request head, counted from the connection (or, on a
  kept-alive connection, from its first byte), never extended by a drip of bytes;
- ``idle_timeout`` between requests on a kept-alive connection;
- ``write_timeout`` for an answer that makes no progress (a reader that stops taking it);
- ``max_header_bytes`` of request head: more is a 431;
- ``READ_AHEAD`` pipelined requests read ahead of the one being answered: the rest wait in
  the socket, so a burst of requests is answered at the pace its client reads.

This module is the I/O thread's loop, accepting, and the hand-off to the render thread; the
open connections are a :class:`~._pool.Pool`, and the HTTP spoken on them an
:class:`~._exchange.Exchange`. Rendering (collecting, encoding and compressing: milliseconds
of CPU) runs in the render thread, one render at a time, of every variant (format, gzip)
waited for when it starts; scrapes that arrive while it runs share its result when it makes
their variant, and the others are rendered next, together.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Final

from ._connection import NEVER, Connection, Limits, MetricsServerStatistics
from ._exchange import Exchange
from ._pool import Pool
from ._render import Rendered, Renderer

if TYPE_CHECKING:
    from ._exposition import Exposition, Variant

__all__ = ("Transport",)

logger = logging.getLogger("xzatoma.telemetry")

_UNSENT: Final = 16384
"""Bytes of answer the kernel may hold unsent per connection (``TCP_NOTSENT_LOWAT``, where
the system has it): a pipelining client that does not read holds a few answers in the
kernel, not its whole socket buffer's worth, and is not read further until it reads."""
_ACCEPTS_PER_WAKE: Final = 64
_NOTSENT_LOWAT: Final[int | None] = getattr(socket, "TCP_NOTSENT_LOWAT", None)


class Transport:
    """Serves ``/metrics`` on a listening socket until :meth:`stop`."""

    def __init__(self, listener: socket.socket, exposition: Exposition, limits: Limits) -> None:
        self._listener = listener
        self._limits = limits
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (listener, self._wake_r, self._wake_w):
            sock.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._pool = Pool(self._selector, limits.max_connections)
        self._exchange = Exchange(self._pool, limits, exposition.negotiate, self._await_render)
        # Parsed requests waiting for a render, by the variant they get.
        self._awaiting: dict[Variant, list[Connection]] = {}
        self._rendering: frozenset[Variant] = frozenset()  # what the render running makes
        self._rendered: deque[Rendered | None] = deque()
        self._stopping = False
        self._accepting = True
        self._resume_accept = 0.0
        self._held: socket.socket | None = None  # accepted while no connection could go
        self._accepted = 0
        self._renderer = Renderer(exposition.render, self._on_rendered)
        port = listener.getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, name=f"xzatoma-metrics-{port}", daemon=True
        )
        self._renderer.thread.start()
        self._thread.start()

    def statistics(self) -> MetricsServerStatistics:
        """A snapshot of the counters (read without a lock: each is one int)."""
        return MetricsServerStatistics(
            connections=len(self._pool.connections),
            accepted=self._accepted,
            requests=self._exchange.requests,
            evicted=self._pool.evicted,
            timed_out=self._pool.timed_out,
            max_connections=self._limits.max_connections,
        )

    def stop(self) -> None:
        """End the I/O and render threads and close every socket; returns once they have."""
        self._stopping = True
        self._wake()
        self._thread.join()
        self._renderer.stop()
        self._renderer.thread.join()

    # -- the render thread's side ------------------------------------------------------------
    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake is pending anyway) or closed
            self._wake_w.send(b"\0")

    def _on_rendered(self, bodies: Rendered | None) -> None:
        """Called in the render thread: hand the result to the I/O thread."""
        self._rendered.append(bodies)
        self._wake()

    # -- the I/O thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                self._turn()
        finally:
            if self._held is not None:
                self._held.close()
            self._pool.close_all()
            self._selector.close()
            for sock in (self._listener, self._wake_r, self._wake_w):
                sock.close()

    def _turn(self) -> None:
        """One turn of the loop: wait for the selector or the next deadline, then serve."""
        wake_at = self._pool.next_due()
        if not self._accepting:
            wake_at = min(wake_at, self._resume_accept)
        if self._exchange.pipelined:  # requests already read: answer them, then poll again
            wake_at = 0.0
        timeout = None if wake_at == NEVER else max(0.0, wake_at - time.monotonic())
        for key, events in self._selector.select(timeout):
            conn = key.data
            try:
                if conn is not None:
                    self._exchange.on_ready(conn, events)
                elif key.fileobj is self._listener:
                    self._accept()
                else:
                    self._on_wake()
            except Exception:  # one bad connection must never end the server
                logger.exception("xzatoma telemetry: /metrics connection failed")
                if conn is not None:
                    self._pool.close(conn)
        self._exchange.read_pipelined()
        self._expire(time.monotonic())
        if self._held is not None:
            self._admit_held()

    def _await_render(self, conn: Connection, variant: Variant) -> None:
        """``conn`` asked for ``variant``: it shares the render in progress if that makes
        it, else waits for the next; with none in progress, it starts one."""
        waiting = self._awaiting.get(variant)
        if waiting is None:
            self._awaiting[variant] = [conn]
        else:
            waiting.append(conn)
        if not self._rendering:
            self._start_render()

    def _start_render(self) -> None:
        """Render every variant waited for, in one collection."""
        self._rendering = frozenset(self._awaiting)
        self._renderer.request(self._rendering)

    def _on_wake(self) -> None:
        with contextlib.suppress(OSError):  # one byte per wake: one call drains them
            while len(self._wake_r.recv(4096)) == 4096:
                pass
        while self._rendered:
            bodies = self._rendered.popleft()
            rendered, self._rendering = self._rendering, frozenset()
            for variant in rendered:
                body = None if bodies is None else bodies.get(variant)
                for conn in self._awaiting.pop(variant, ()):
                    if not conn.closed:
                        self._exchange.answer_render(conn, variant, body)
        if self._awaiting and not self._rendering:  # asked for during the render: next
            self._start_render()

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_WAKE):
            try:
                sock, _address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: pause, do not spin
                logger.warning("xzatoma telemetry: /metrics cannot accept (%s); pausing", exc)
                self._pause_accepting(time.monotonic() + 0.1)
                return
            self._accepted += 1
            if not self._pool.make_room():
                # Every connection is waiting for a render: hold this one, and leave the
                # next in the kernel's queue, until one is answered (and so evictable).
                self._held = sock
                self._pause_accepting(NEVER)
                return
            self._serve(sock)

    def _admit_held(self) -> None:
        """Serve the held connection once there is room; then accept again."""
        if not self._pool.make_room():
            return
        sock, self._held = self._held, None
        if sock is not None:
            self._serve(sock)
        self._resume_accepting()

    def _serve(self, sock: socket.socket) -> None:
        """Start serving an accepted connection: it has ``header_timeout`` for its request."""
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # whole answers are written at once: no Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if _NOTSENT_LOWAT is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _NOTSENT_LOWAT, _UNSENT)
        self._pool.add(sock, time.monotonic() + self._limits.header_timeout)

    def _pause_accepting(self, until: float) -> None:
        """Stop watching the listener until ``until`` (``NEVER``: until a held one is in)."""
        self._selector.unregister(self._listener)
        self._accepting, self._resume_accept = False, until

    def _resume_accepting(self) -> None:
        self._accepting = True
        self._selector.register(self._listener, selectors.EVENT_READ, None)

    def _expire(self, now: float) -> None:
        if not self._accepting and now >= self._resume_accept:
            self._resume_accepting()
        self._pool.expire(now)
