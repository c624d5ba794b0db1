"""HTTP on the open ``/metrics`` connections: read each request, answer it, then what follows.

The transport's I/O thread hands every readable or writable connection here. A request is
answered in the order it came; what follows the answer (wait for the next request on a
kept-alive connection, linger while closing, or close at once) is decided here too, in one
place. Bytes are read only as far ahead as a connection may queue, and an answer the client
does not take times out, so a client cannot make the process hold more than the limits say.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from ._connection import BUSY, LINGERING, NEVER, WAITING, Connection, Limits
from ._exposition import Variant
from ._http import Rejection, Request, find_head_end, parse_head, response_head
from ._pool import Pool

__all__ = ("Exchange",)

_TEXT: Final = "text/plain; charset=utf-8"
_NOT_FOUND: Final = b"Not found: the metrics are at /metrics\n"
_NOT_ALLOWED: Final = b"Method not allowed: /metrics answers GET\n"
_RENDER_FAILED: Final = b"Collecting the metrics failed; the xzatoma.telemetry log says why\n"
_LINGER: Final = 2.0
"""Seconds a closing connection keeps reading (and dropping) what the client still sends,
so the kernel sends FIN, not RST, and the client reads the whole answer."""

_SENDMSG: Final = hasattr(socket.socket, "sendmsg")  # not on Windows
_BLANK: Final = frozenset(b"\r\n")


class Exchange:
    """Reads requests off the pool's connections and writes their answers.

    A request for the metrics is passed to ``render`` with the variant ``negotiate`` picks
    from its ``Accept`` headers; the transport calls :meth:`answer_render` with the body
    once the render thread has it.
    """

    def __init__(
        self,
        pool: Pool,
        limits: Limits,
        negotiate: Callable[[str, str], Variant],
        render: Callable[[Connection, Variant], None],
    ) -> None:
        self._pool = pool
        self._limits = limits
        self._negotiate = negotiate
        self._render = render
        self.pipelined: deque[Connection] = deque()
        """Answered, with a next request already read: :meth:`read_pipelined` answers it."""
        self.requests = 0
        """Requests answered, errors included."""

    def on_ready(self, conn: Connection, events: int) -> None:
        """The selector says ``conn`` is readable or writable (``events``): serve it."""
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
                self._pool.watch(conn, conn.events & ~selectors.EVENT_READ)
                return
            if not data:
                self._on_eof(conn)
            elif conn.state == LINGERING or (conn.state == BUSY and not conn.keep_alive):
                pass  # dropped: a body /metrics does not read, or bytes after the last request
            elif conn.state == BUSY:
                conn.inbuf += data  # pipelined requests, read once this one is answered
            else:
                # A new request begins with its first byte that is not a blank line (blank
                # lines before it are skipped), so a drip of CRLFs cannot restart the timer.
                if conn.state == WAITING and not conn.inbuf and data.strip(b"\r\n"):
                    deadline = time.monotonic() + self._limits.header_timeout
                    self._pool.set_deadline(conn, deadline)
                conn.inbuf += data
                self.read_request(conn)

    def _on_eof(self, conn: Connection) -> None:
        """The client half-closed (``nc -N``): answer what it sent before, then close.

        Its end says it sends nothing more, not that it takes back requests already read:
        the one being answered and those queued behind it are all answered, in order.
        """
        conn.eof = True
        if conn.state == BUSY:
            self._pool.watch(conn, selectors.EVENT_WRITE if conn.outbuf else 0)
        elif conn.state == WAITING and conn.has_request():
            # Answered, and its next request already read: ``pipelined`` holds it.
            self._pool.watch(conn, 0)
        else:  # nothing complete to answer (or lingering): done
            self._pool.close(conn)

    def read_pipelined(self) -> None:
        """Answer one pipelined request per connection that has one.

        One per connection per turn of the I/O loop: a burst on one connection is
        interleaved with every other client, not answered in one go.
        """
        for _ in range(len(self.pipelined)):
            conn = self.pipelined.popleft()
            if conn.state == WAITING and not conn.closed:
                self.read_request(conn)

    def read_request(self, conn: Connection) -> None:
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
            self._render(conn, self._negotiate(parsed.accept, parsed.accept_encoding))

    def answer_render(self, conn: Connection, variant: Variant, body: bytes | None) -> None:
        """Answer a request for the metrics with its ``variant``'s ``body`` (None: failed)."""
        if body is None:
            self._respond(conn, 500, _TEXT, _RENDER_FAILED)
        else:
            self._respond(conn, 200, variant.content_type, body, variant.headers)

    def _begin(self, conn: Connection, request: Request | None) -> None:
        """A complete request (or one refused): being answered, so no longer evictable."""
        self._pool.enter(conn, BUSY)
        conn.request = request
        conn.keep_alive = request is not None and request.keep_alive
        self._pool.set_deadline(conn, NEVER)

    def _respond(
        self,
        conn: Connection,
        status: int,
        content_type: str,
        body: bytes,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Queue the answer to ``conn.request`` (None: a head that did not parse) and send."""
        self.requests += 1
        request = conn.request
        keep_alive = conn.keep_alive and status < 500 and self._more_to_come(conn)
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
                self._pool.close(conn)
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
                self._pool.stalled(conn)
                deadline = time.monotonic() + self._limits.write_timeout
                self._pool.set_deadline(conn, deadline)
            reading = selectors.EVENT_READ if conn.may_read(self._limits.max_header_bytes) else 0
            self._pool.watch(conn, reading | selectors.EVENT_WRITE)
            return
        self._pool.unstalled(conn)
        self._answered(conn)

    @staticmethod
    def _more_to_come(conn: Connection) -> bool:
        """Whether a request may follow the one answered: any, until the client half-closed.

        After that, only one it sent before its end and already read, so the answer to its
        last request says ``Connection: close``.
        """
        return not conn.eof or conn.has_request()

    def _answered(self, conn: Connection) -> None:
        """The answer is all sent: wait for the next request, linger while closing, or close."""
        now = time.monotonic()
        if conn.keep_alive and self._more_to_come(conn):
            # After a half-close the socket stays readable (its end): no longer watched.
            self._pool.watch(conn, 0 if conn.eof else selectors.EVENT_READ)
            self._pool.enter(conn, WAITING)
            conn.request = None
            if conn.inbuf:  # a pipelined request: its head time counts from now
                self._pool.set_deadline(conn, now + self._limits.header_timeout)
                self.pipelined.append(conn)  # read from the loop, not by recursion
            else:
                self._pool.set_deadline(conn, now + self._limits.idle_timeout)
            return
        if conn.eof:  # nothing more will come: no need to linger
            self._pool.close(conn)
            return
        self._pool.watch(conn, selectors.EVENT_READ)
        # Closing: FIN first, and drop what the client still sends, so the kernel does not
        # answer unread bytes with a RST that could make the client lose the answer.
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        self._pool.enter(conn, LINGERING)
        conn.inbuf.clear()
        self._pool.set_deadline(conn, now + min(_LINGER, self._limits.idle_timeout))
