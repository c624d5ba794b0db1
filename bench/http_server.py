"""A fast OpenAI-compatible chat endpoint on 127.0.0.1 for the HTTP benchmark (``http_bench.py``).

``python bench/http_server.py --port 0 --latency 0.05`` prints ``{"port": P, "control_port":
Q}`` once it listens and serves until its stdin closes or it gets SIGTERM. Every ``POST`` to a
path ending in ``/chat/completions`` is answered after ``--latency`` seconds with a valid chat
completion (content ``done``, 20 prompt and 5 completion tokens, the request's model echoed);
the body is parsed as JSON first, so a client that sends more pays for it on both sides.

It is a raw ``asyncio.Protocol`` on uvloop with httptools' parser: HTTP/1.1 keep-alive,
pipelined requests answered in order, one timer for all waiting answers and no task, so that
the server is never what the benchmark measures (``http_bench.py`` shows its CPU per request
and a capacity probe). ``GET /stats`` answers with its counters: requests, requests in flight
now and at most, connections opened, bytes received and the server's own CPU time;
``GET /stats?reset=1`` (or ``POST /stats/reset``) answers with them and starts them again.
The control port serves the same ``/stats`` without counting its own connections, so that a
client asking for the figures does not change them.

``--probe BASE_URL`` makes it a client instead: the capacity probe's keep-alive connections.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import signal
import sys
import threading
import time
from collections import deque
from typing import Any, cast

import httptools
import uvloop

JSON_HEADERS = b"Content-Type: application/json\r\n"
parse_json = json.JSONDecoder().scan_once
"""json's C scanner itself: ``json.loads`` adds 3-4 µs of checks around it on the bench
machine, a tenth of what the whole server spends on a request."""
CLOSE = b"Connection: close\r\n"
CHAT_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n"
STATUS_LINES = {200: b"200 OK", 400: b"400 Bad Request", 404: b"404 Not Found"}


class Counters:
    """What the server saw since the last reset; ``snapshot`` is what ``/stats`` returns."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.open_connections = 0
        self.completions = 0
        self.reset()

    def reset(self) -> None:
        """Start counting again; what is open or in flight now is the new maximum."""
        self.requests = 0
        self.max_in_flight = self.in_flight
        self.connections_opened = 0
        self.max_open_connections = self.open_connections
        self.bytes_received = 0
        self.body_bytes = 0
        self.since_wall = time.perf_counter()
        self.since_cpu = time.process_time()

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "connections_opened": self.connections_opened,
            "open_connections": self.open_connections,
            "max_open_connections": self.max_open_connections,
            "bytes_received": self.bytes_received,
            "body_bytes": self.body_bytes,
            "wall_s": time.perf_counter() - self.since_wall,
            "cpu_s": time.process_time() - self.since_cpu,
        }


def response(status: int, body: bytes, *, keep_alive: bool = True, head: bool = False) -> bytes:
    """One whole HTTP/1.1 response: status line, headers and (unless ``head``) the body."""
    connection = b"" if keep_alive else CLOSE
    return b"".join(
        (
            b"HTTP/1.1 ",
            STATUS_LINES[status],
            b"\r\n",
            JSON_HEADERS,
            connection,
            b"Content-Length: %d\r\n\r\n" % len(body),
            b"" if head else body,
        )
    )


def completion_body(number: int, model: str) -> bytes:
    """A fresh chat completion: what an OpenAI endpoint answers, with content ``done``."""
    return (
        b'{"id":"chatcmpl-%d","object":"chat.completion","created":%d,"model":%s,'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"done"},'
        b'"logprobs":null,"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":20,"completion_tokens":5,"total_tokens":25}}'
    ) % (number, int(time.time()), quoted(model))


@functools.lru_cache(maxsize=64)
def quoted(model: str) -> bytes:
    """The model's name as a JSON string (one or two names per run: worked out once)."""
    return json.dumps(model).encode()


class Waiting:
    """The answers waiting out their latency, in the order they fall due, under one timer.

    The latency is the same for every request, so requests fall due in the order they came:
    a queue and one timer for its head cost less than a timer per request. Times are the
    event loop's clock (uvloop's moves in steps of 1 ms), read once per loop iteration.
    """

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.loop = asyncio.get_running_loop()
        self.queue: deque[tuple[float, Connection, list[Any], bytes, bool]] = deque()
        self.armed = False

    def add(self, connection: Connection, slot: list[Any], answer: bytes, close: bool) -> None:
        due = self.loop.time() + self.latency
        self.queue.append((due, connection, slot, answer, close))
        if not self.armed:
            self.armed = True
            self.loop.call_at(due, self._release)

    def _release(self) -> None:
        now = self.loop.time() + 1e-6  # the sum above may land a hair past a clock step
        queue = self.queue
        while queue and queue[0][0] <= now:
            _, connection, slot, answer, close = queue.popleft()
            connection.due(slot, answer, close)
        if queue:
            self.loop.call_at(queue[0][0], self._release)
        else:
            self.armed = False


class Connection(asyncio.Protocol):
    """One client connection: parses requests, answers them in order once each is ready.

    Each request takes a slot in ``pending`` as it completes; a slot is a list that holds the
    response once it is due and whether to close the connection after it. Responses leave
    from the front only, so pipelined requests are answered in the order they came.
    """

    def __init__(self, counters: Counters, waiting: Waiting, *, control: bool) -> None:
        self.counters = counters
        self.waiting = waiting
        self.control = control
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[list[Any]] = deque()
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        if not self.control:
            self.counters.connections_opened += 1
            self.counters.open_connections += 1
            self.counters.max_open_connections = max(
                self.counters.max_open_connections, self.counters.open_connections
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.control:
            self.counters.open_connections -= 1

    def data_received(self, data: bytes) -> None:
        if not self.control:
            self.counters.bytes_received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._finish(response(400, b'{"error":"bad request"}', keep_alive=False), close=True)

    # httptools' callbacks, one request at a time (pipelined ones in order)
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        keep_alive = self.parser.should_keep_alive()
        path, _, query = self.url.partition(b"?")
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.url, self.body = b"", []
        if path.endswith(b"/chat/completions") and method == b"POST" and not self.control:
            self._chat(body, keep_alive)
        elif path.startswith(b"/stats"):
            reset = path == b"/stats/reset" or b"reset=1" in query
            stats = {**self.counters.snapshot(), "latency_s": self.waiting.latency}
            if reset:
                self.counters.reset()
            body = json.dumps(stats).encode()
            ready = response(200, body, keep_alive=keep_alive, head=method == b"HEAD")
            self._finish(ready, close=not keep_alive)
        else:
            self._finish(response(404, b'{"error":"not found"}', keep_alive=keep_alive))

    def _chat(self, body: bytes, keep_alive: bool) -> None:
        counters = self.counters
        counters.requests += 1
        counters.body_bytes += len(body)
        try:
            text = body.decode()
            request, end = parse_json(text, 0)
            if end != len(text.rstrip()):
                raise ValueError("more than one JSON value")
            model = request["model"]
        except (ValueError, KeyError, TypeError, StopIteration):
            self._finish(response(400, b'{"error":"the body is no chat request"}'))
            return
        counters.in_flight += 1
        counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
        counters.completions += 1
        body = completion_body(counters.completions, str(model))
        answer = CHAT_HEAD % (b"" if keep_alive else CLOSE, len(body)) + body
        if self.waiting.latency > 0:
            slot: list[Any] = [None, False]
            self.pending.append(slot)
            self.waiting.add(self, slot, answer, not keep_alive)
        else:
            counters.in_flight -= 1
            self._finish(answer, close=not keep_alive)

    def due(self, slot: list[Any], answer: bytes, close: bool) -> None:
        """The latency of the request in ``slot`` is over: it may be answered."""
        self.counters.in_flight -= 1
        slot[0], slot[1] = answer, close
        self._flush()

    def _finish(self, answer: bytes, *, close: bool = False) -> None:
        self.pending.append([answer, close])
        self._flush()

    def _flush(self) -> None:
        """Write every ready response at the front; close after one that said so."""
        pending = self.pending
        if len(pending) == 1 and self.transport is not None:  # the usual case: one, ready
            answer, close = pending[0]
            if answer is not None:
                pending.clear()
                self.transport.write(answer)
                if close:
                    self.transport.close()
                return
        ready, close = [], False
        while self.pending and self.pending[0][0] is not None and not close:
            answer, close = self.pending.popleft()
            ready.append(answer)
        if self.transport is None or not ready:
            return
        self.transport.write(b"".join(ready))
        if close:
            self.transport.close()


async def serve(port: int, latency: float) -> None:
    """Listen on 127.0.0.1, print the ports, serve until stdin closes or SIGTERM."""
    loop = asyncio.get_running_loop()
    counters = Counters()
    waiting = Waiting(latency)
    stop = asyncio.Event()
    server = await loop.create_server(
        lambda: Connection(counters, waiting, control=False), "127.0.0.1", port, backlog=4096
    )
    control = await loop.create_server(
        lambda: Connection(counters, waiting, control=True), "127.0.0.1", 0, backlog=64
    )
    ports = [s.getsockname()[1] for s in (*server.sockets, *control.sockets)]
    print(json.dumps({"port": ports[0], "control_port": ports[1]}), flush=True)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def wait_for_stdin_to_close() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_stdin_to_close, daemon=True).start()
    await stop.wait()
    server.close()
    control.close()


class ProbeClient(asyncio.Protocol):
    """One keep-alive connection of the probe: the next request once the answer is whole.

    As cheap a client as Python has (uvloop, no HTTP library, no task), so that the probe
    measures the server rather than itself.
    """

    def __init__(self, request: bytes, deadline: float, finished: asyncio.Future[int]) -> None:
        self.request, self.deadline, self.finished = request, deadline, finished
        self.buffer, self.answered = b"", 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = int(self.buffer.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
            whole = end + 4 + length
            if len(self.buffer) < whole:
                return
            answer, self.buffer = self.buffer[:whole], self.buffer[whole:]
            self.answered += b'"content":"done"' in answer
            if time.time() < self.deadline:
                self.transport.write(self.request)
            else:
                self.transport.close()
                self.finished.set_result(self.answered)


async def probe(base_url: str, connections: int, duration: float, start_at: float) -> int:
    """Load ``base_url`` over ``connections`` from ``start_at`` for ``duration`` seconds."""
    loop = asyncio.get_running_loop()
    host_port, _, root = base_url.split("//", 1)[1].partition("/")
    host, port = host_port.rsplit(":", 1)
    body = json.dumps({"model": "probe", "messages": [{"role": "user", "content": "Go."}]})
    request = (
        f"POST /{root.strip('/')}/chat/completions HTTP/1.1\r\nHost: {host_port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    await asyncio.sleep(max(0.0, start_at - time.time()))
    deadline = time.time() + duration
    finished = [loop.create_future() for _ in range(connections)]
    for future in finished:
        await loop.create_connection(
            lambda f=future: ProbeClient(request, deadline, f), host, int(port)
        )
    return sum(await asyncio.gather(*finished))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds before each answer")
    parser.add_argument("--probe", metavar="BASE_URL", help="be a probe client of that server")
    parser.add_argument("--connections", type=int, default=50, help="probe: connections")
    parser.add_argument("--duration", type=float, default=3.0, help="probe: seconds of load")
    parser.add_argument("--start-at", type=float, default=0.0, help="probe: time.time() to start")
    args = parser.parse_args()
    if args.probe:
        answered = uvloop.run(probe(args.probe, args.connections, args.duration, args.start_at))
        print(json.dumps({"answered": answered}), flush=True)
    else:
        uvloop.run(serve(args.port, args.latency))


if __name__ == "__main__":
    main()
