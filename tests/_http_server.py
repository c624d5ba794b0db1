"""A scripted HTTP server on 127.0.0.1 for tests that must meet the network for real.

Each test queues the replies it wants (status, headers, body, optionally held until an event
is set) and reads back every request the server received. ``close()`` releases held replies,
drops open keep-alive connections and joins every handler thread, so nothing outlives a test.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self, TypeAlias

from xzatoma import OpenAIProvider

__all__ = ("RecordedRequest", "Reply", "ScriptedHTTPServer")


@dataclass
class Reply:
    """One scripted response."""

    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] = b""
    """Raw bytes, text (UTF-8), or a JSON value that is serialised for you."""
    headers: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None
    """When given, the server waits for this event before answering (set at ``close()``)."""

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return json.dumps(self.body).encode(), "application/json"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names lower-cased."""
    body: bytes
    client_port: int
    """The client's source port: equal ports mean one reused connection."""

    def json(self) -> Any:
        return json.loads(self.body)


class ScriptedHTTPServer:
    """A real ``ThreadingHTTPServer`` answering from a queue of :class:`Reply`."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._holds: list[threading.Event] = []
        self._closed_connections = threading.Semaphore(0)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = False
        self._server.block_on_close = True  # server_close() joins the handler threads
        # A short poll interval only makes shutdown() prompt; requests are served at once anyway.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, *replies: Reply) -> None:
        """Queue replies, answered in order; an empty queue answers 418."""
        with self._lock:
            self._replies.extend(replies)
            self._holds.extend(r.hold for r in replies if r.hold is not None)

    def wait_connection_closed(self, timeout: float) -> bool:
        """Block until a client connection has been closed; ``False`` on timeout."""
        return self._closed_connections.acquire(timeout=timeout)

    def close(self) -> None:
        with self._lock:
            for hold in self._holds:
                hold.set()
            connections = list(self._connections)
        for conn in connections:  # wake handlers blocked reading an idle keep-alive socket
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _next_reply(self) -> Reply:
        with self._lock:
            if self._replies:
                return self._replies.popleft()
        return Reply(418, "no scripted reply left")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is observable

            def setup(self) -> None:
                super().setup()
                with outer._lock:
                    outer._connections.add(self.connection)

            def finish(self) -> None:
                with outer._lock:
                    outer._connections.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()
                outer._closed_connections.release()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append(
                    RecordedRequest(
                        method=self.command,
                        path=self.path,
                        headers={k.lower(): v for k, v in self.headers.items()},
                        body=body,
                        client_port=self.client_address[1],
                    )
                )
                reply = outer._next_reply()
                if reply.hold is not None:
                    reply.hold.wait(timeout=60)
                payload, content_type = reply.encoded()
                try:
                    self.send_response(reply.status)
                    headers = {"Content-Type": content_type, **reply.headers}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    self.wfile.flush()
                except OSError:  # the client gave up (timeout) before we answered
                    self.close_connection = True

            do_GET = do_POST = _serve

        return Handler


MakeProvider: TypeAlias = Callable[..., OpenAIProvider]
"""The ``make_provider`` fixture (``tests/conftest.py``): ``make(**kwargs)`` for the server."""
