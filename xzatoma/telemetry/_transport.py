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

Rendering (``generate_latest``, milliseconds of CPU) runs in the render thread, one at a
time; scrapes that arrive while it runs share its result, as the single-flight before did.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final

from ._connection import (
    BUSY,
    FRESH,
    LINGERING,
    NEVER,
    WAITING,
    Connection,
    Limits,
    MetricsServerStatistics,
    Timers,
)
from ._http import Rejection, Request, find_head_end, parse_head, response_head
from ._render import Renderer

__all__ = ("Limits", "MetricsServerStatistics", "Transport")

logger = logging.getLogger("xzatoma.telemetry")

EXPOSITION: Final = "text/plain; version=0.0.4; charset=utf-8"
_TEXT: Final = "text/plain; charset=utf-8"
_NOT_FOUND: Final = b"Not found: the metrics are at /metrics\n"
_NOT_ALLOWED: Final = b"Method not allowed: /metrics answers GET\n"
_RENDER_FAILED: Final = b"Collecting the metrics failed; the xzatoma.telemetry log says why\n"
_UNSENT: Final = 16384
"""Bytes of answer the kernel may hold unsent per connection (``TCP_NOTSENT_LOWAT``, where
the system has it): a pipelining client that does not read holds a few answers in the
kernel, not its whole socket buffer's worth, and is not read further until it reads."""
_ACCEPTS_PER_WAKE: Final = 64
_LINGER: Final = 2.0
"""Seconds a closing connection keeps reading (and dropping) what the client still sends,
so the kernel sends FIN, not RST, and the client reads the whole answer."""

_NOTSENT_LOWAT: Final[int | None] = getattr(socket, "TCP_NOTSENT_LOWAT", None)
_SENDMSG: Final = hasattr(socket.socket, "sendmsg")  # not on Windows
_BLANK: Final = frozenset(b"\r\n")


class Transport:
    """Serves ``/metrics`` on a listening socket until :meth:`stop`."""

    def __init__(
        self, listener: socket.socket, produce: Callable[[], bytes], limits: Limits
    ) -> None:
        self._listener = listener
        self._limits = limits
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (listener, self._wake_r, self._wake_w):
            sock.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._connections: dict[int, Connection] = {}
        # Eviction order: answered and lingering, never answered, then idle (oldest first).
        self._evictable: dict[str, OrderedDict[int, Connection]] = {
            state: OrderedDict() for state in (LINGERING, FRESH, WAITING)
        }
        # Mid-answer with output the socket did not take, least recent progress first.
        self._stalled: OrderedDict[int, Connection] = OrderedDict()
        self._timers = Timers()
        self._awaiting: list[Connection] = []  # parsed requests waiting for the render
        self._pipelined: deque[Connection] = deque()  # answered, with a next request read
        self._rendering = False
        self._rendered: deque[bytes | None] = deque()
        self._stopping = False
        self._accepting = True
        self._resume_accept = 0.0
        self._held: socket.socket | None = None  # accepted while no connection could go
        self._numbers = 0
        self._accepted = self._requests = self._evicted = self._timed_out = 0
        self._renderer = Renderer(produce, self._on_rendered)
        port = listener.getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, name=f"xzatoma-metrics-{port}", daemon=True
        )
        self._renderer.thread.start()
        self._thread.start()

    def statistics(self) -> MetricsServerStatistics:
        """A snapshot of the counters (read without a lock: each is one int)."""
        return MetricsServerStatistics(
            connections=len(self._connections),
            accepted=self._accepted,
            requests=self._requests,
            evicted=self._evicted,
            timed_out=self._timed_out,
            max_connections=self._limits.max_connections,
        )

    def stop(self) -> None:
        """End the I/O and render threads and close every socket; returns once they have."""
        self._stopping = True
        self._wake()
        self._thread.join()
        self._renderer.stop()
        self._renderer.thread.join()

    # -- the I/O thread ----------------------------------------------------------------------
    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake is pending anyway) or closed
            self._wake_w.send(b"\0")

    def _on_rendered(self, body: bytes | None) -> None:
        """Called in the render thread: hand the result to the I/O thread."""
        self._rendered.append(body)
        self._wake()

    def _run(self) -> None:
        try:
            while not self._stopping:
                wake_at = self._timers.next_due()
                if not self._accepting:
                    wake_at = min(wake_at, self._resume_accept)
                if self._pipelined:  # requests already read: answer them, then poll again
                    wake_at = 0.0
                timeout = None if wake_at == NEVER else max(0.0, wake_at - time.monotonic())
                for key, events in self._selector.select(timeout):
                    conn = key.data
                    try:
                        if conn is not None:
                            self._on_ready(conn, events)
                        elif key.fileobj is self._listener:
                            self._accept()
                        else:
                            self._on_wake()
                    except Exception:  # one bad connection must never end the server
                        logger.exception("xzatoma telemetry: /metrics connection failed")
                        if conn is not None:
                            self._close(conn)
                # One pipelined request per connection per turn: a burst on one connection
                # is interleaved with every other client, not answered in one go.
                for _ in range(len(self._pipelined)):
                    conn = self._pipelined.popleft()
                    if conn.state == WAITING and not conn.closed:
                        self._read_request(conn)
                self._expire(time.monotonic())
                if self._held is not None:
                    self._admit_held()
        finally:
            if self._held is not None:
                self._held.close()
            for conn in list(self._connections.values()):
                self._close(conn)
            self._selector.close()
            for sock in (self._listener, self._wake_r, self._wake_w):
                sock.close()

    def _on_wake(self) -> None:
        with contextlib.suppress(OSError):  # one byte per wake: one call drains them
            while len(self._wake_r.recv(4096)) == 4096:
                pass
        while self._rendered:
            body = self._rendered.popleft()
            self._rendering = False
            awaiting, self._awaiting = self._awaiting, []
            for conn in awaiting:
                if not conn.closed:
                    self._answer_render(conn, body)

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_WAKE):
            try:
                sock, _address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: pause, do not spin
                logger.warning("xzatoma telemetry: /metrics cannot accept (%s); pausing", exc)
                self._selector.unregister(self._listener)
                self._accepting = False
                self._resume_accept = time.monotonic() + 0.1
                return
            self._accepted += 1
            if len(self._connections) >= self._limits.max_connections and not self._evict():
                # Every connection is waiting for a render: hold this one, and leave the
                # next in the kernel's queue, until one is answered (and so evictable).
                self._held = sock
                self._selector.unregister(self._listener)
                self._accepting, self._resume_accept = False, NEVER
                return
            self._serve(sock)

    def _admit_held(self) -> None:
        """Serve the held connection once there is room; then accept again."""
        if len(self._connections) >= self._limits.max_connections and not self._evict():
            return
        sock, self._held = self._held, None
        if sock is not None:
            self._serve(sock)
        self._accepting = True
        self._selector.register(self._listener, selectors.EVENT_READ, None)

    def _serve(self, sock: socket.socket) -> None:
        """Start serving an accepted connection: it has ``header_timeout`` for its request."""
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # whole answers are written at once: no Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if _NOTSENT_LOWAT is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _NOTSENT_LOWAT, _UNSENT)
        self._numbers += 1
        conn = Connection(sock, self._numbers)
        self._connections[conn.number] = conn
        self._evictable[FRESH][conn.number] = conn
        self._watch(conn, selectors.EVENT_READ)
        self._timers.set(conn, time.monotonic() + self._limits.header_timeout)

    def _evict(self) -> bool:
        for queue in (*self._evictable.values(), self._stalled):
            if queue:
                _number, conn = queue.popitem(last=False)
                self._evicted += 1
                self._close(conn)
                return True
        return False

    def _on_ready(self, conn: Connection, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self._flush(conn)
        if events & selectors.EVENT_READ and not conn.closed:
            try:
                data = conn.receive(self._limits.max_header_bytes)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if data is None:  # read ahead as far as allowed: the rest waits in the socket
                self._watch(conn, conn.events & ~selectors.EVENT_READ)
                return
            if not data:
                if conn.state != BUSY:
                    self._close(conn)
                    return
                # Half-closed after its request (``nc -N``): answer, then close.
                conn.eof, conn.keep_alive = True, False
                self._watch(conn, selectors.EVENT_WRITE if conn.outbuf else 0)
            elif conn.state == LINGERING or (conn.state == BUSY and not conn.keep_alive):
                pass  # dropped: a body /metrics does not read, or bytes after the last request
            elif conn.state == BUSY:
                conn.inbuf += data  # pipelined requests, read once this one is answered
            else:
                # A new request begins with its first byte that is not a blank line (blank
                # lines before it are skipped), so a drip of CRLFs cannot restart the timer.
                if conn.state == WAITING and not conn.inbuf and data.strip(b"\r\n"):
                    self._timers.set(conn, time.monotonic() + self._limits.header_timeout)
                conn.inbuf += data
                self._read_request(conn)

    def _read_request(self, conn: Connection) -> None:
        """Answer the request in ``inbuf`` once its head is complete."""
        inbuf = conn.inbuf
        while inbuf and inbuf[0] in _BLANK:  # blank lines before a request line are allowed
            del inbuf[:1]
        found = find_head_end(inbuf, conn.scanned)
        limit = self._limits.max_header_bytes
        if found is None or found[0] > limit:
            conn.scanned = len(inbuf)
            if len(inbuf) > limit:
                self._begin(conn, None)
                message = f"Request header fields too large: at most {limit} bytes\n"
                self._respond(conn, 431, _TEXT, message.encode())
            return
        end, after = found
        parsed = parse_head(bytes(inbuf[:end]))
        del inbuf[:after]
        conn.scanned = 0
        if isinstance(parsed, Rejection):
            self._begin(conn, None)
            self._respond(conn, parsed.status, _TEXT, f"{parsed.message}\n".encode())
            return
        self._begin(conn, parsed)
        if parsed.path not in ("/metrics", "/metrics/"):
            self._respond(conn, 404, _TEXT, _NOT_FOUND)
        elif parsed.method not in ("GET", "HEAD"):
            self._respond(conn, 405, _TEXT, _NOT_ALLOWED, (("Allow", "GET, HEAD"),))
        else:
            self._awaiting.append(conn)
            if not self._rendering:
                self._rendering = True
                self._renderer.request()

    def _begin(self, conn: Connection, request: Request | None) -> None:
        """A complete request (or one refused): being answered, so no longer evictable."""
        queue = self._evictable.get(conn.state)
        if queue is not None:
            queue.pop(conn.number, None)
        conn.state = BUSY
        conn.request = request
        conn.keep_alive = request is not None and request.keep_alive
        conn.deadline = NEVER

    def _answer_render(self, conn: Connection, body: bytes | None) -> None:
        if body is None:
            self._respond(conn, 500, _TEXT, _RENDER_FAILED)
        else:
            self._respond(conn, 200, EXPOSITION, body)

    def _respond(
        self,
        conn: Connection,
        status: int,
        content_type: str,
        body: bytes,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Queue the answer to ``conn.request`` (None: a head that did not parse) and send."""
        self._requests += 1
        request = conn.request
        keep_alive = conn.keep_alive and status < 500
        head = response_head(
            status,
            content_type,
            len(body),
            keep_alive=keep_alive,
            http10=request is not None and request.http10,
            extra=extra,
        )
        conn.keep_alive = keep_alive
        conn.outbuf.append(memoryview(head))
        if request is None or request.method != "HEAD":
            conn.outbuf.append(memoryview(body))
        self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        """Send what the socket takes now; the rest when it is writable again."""
        if conn.closed or conn.state != BUSY:
            return
        outbuf, sent_any = conn.outbuf, False
        while outbuf:
            try:
                # Head and body in one call where there is sendmsg: with a busy agent in
                # the process, every call the I/O thread makes waits for the GIL again.
                sent = conn.sock.sendmsg(outbuf) if _SENDMSG else conn.sock.send(outbuf[0])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # the client went away
                self._close(conn)
                return
            sent_any = True
            while outbuf and sent >= len(outbuf[0]):
                sent -= len(outbuf.popleft())
            if sent:
                outbuf[0] = outbuf[0][sent:]
            if outbuf and _SENDMSG:
                break  # it took less than all: full until the selector says writable
        if outbuf:
            if sent_any or conn.deadline == NEVER:  # a reader that stops reading times out
                self._stalled[conn.number] = conn
                self._stalled.move_to_end(conn.number)
                self._timers.set(conn, time.monotonic() + self._limits.write_timeout)
            reading = selectors.EVENT_READ if conn.may_read(self._limits.max_header_bytes) else 0
            self._watch(conn, reading | selectors.EVENT_WRITE)
            return
        self._stalled.pop(conn.number, None)
        now = time.monotonic()
        if conn.keep_alive:
            self._watch(conn, selectors.EVENT_READ)
            conn.state, conn.request = WAITING, None
            self._evictable[WAITING][conn.number] = conn
            if conn.inbuf:  # a pipelined request: its head time counts from now
                self._timers.set(conn, now + self._limits.header_timeout)
                self._pipelined.append(conn)  # read from the loop, not by recursion
            else:
                self._timers.set(conn, now + self._limits.idle_timeout)
            return
        if conn.eof:  # nothing more will come: no need to linger
            self._close(conn)
            return
        self._watch(conn, selectors.EVENT_READ)
        # Closing: FIN first, and drop what the client still sends, so the kernel does not
        # answer unread bytes with a RST that could make the client lose the answer.
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        conn.state = LINGERING
        conn.inbuf.clear()
        self._evictable[LINGERING][conn.number] = conn
        self._timers.set(conn, now + min(_LINGER, self._limits.idle_timeout))

    def _close(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._connections.pop(conn.number, None)
        self._stalled.pop(conn.number, None)
        queue = self._evictable.get(conn.state)
        if queue is not None:
            queue.pop(conn.number, None)
        self._watch(conn, 0)
        conn.sock.close()
        conn.outbuf.clear()

    def _watch(self, conn: Connection, events: int) -> None:
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

    # -- timers ------------------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        if not self._accepting and now >= self._resume_accept:
            self._accepting = True
            self._selector.register(self._listener, selectors.EVENT_READ, None)
        for conn in self._timers.expired(now):
            if conn.state != LINGERING:
                self._timed_out += 1
            self._close(conn)
