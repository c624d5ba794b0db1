"""An OpenAI-compatible server on 127.0.0.1 that answers a batch by its tasks, for the batch
journal's tests (``tests/test_batch_journal.py``).

Each request is told apart by the task it is for (``task 17`` in its first user message), so
the answers do not depend on the order concurrent tasks reach it. It records which task every
request was for and, once the requests of its first ``answer_first`` tasks were answered,
holds every further one (never answered until :meth:`TaskServer.release`): what a batch
killed mid-run had in flight. Everything else (connections, threads, ``close()``) is
:class:`~_http_server.ScriptedHTTPServer`'s.
"""

from __future__ import annotations

import collections
import io
import json
import re
import threading
import time
from collections.abc import Collection
from http.server import BaseHTTPRequestHandler

from _http_server import Reply, ScriptedHTTPServer
from test_cli import chat

__all__ = ("TaskServer", "prompt_of")

_TASK = re.compile(r"task (\d+)")


def prompt_of(index: int) -> str:
    """The prompt of task ``index``, which the server reads back from each request."""
    return f"task {index}"


def _task_of(body: bytes) -> int:
    messages = json.loads(body)["messages"]
    first = next(m["content"] for m in messages if m["role"] == "user")
    match = _TASK.fullmatch(first)
    assert match, f"a request for no task: {first!r}"
    return int(match.group(1))


class TaskServer(ScriptedHTTPServer):
    """Answers ``answer {i}`` to each request of task ``i`` (HTTP 400 for the tasks in
    ``fail``); with ``answer_first=K``, holds every request of the tasks after the first K it
    answered, until :meth:`release` (or ``close()``)."""

    def __init__(self, *, answer_first: int | None = None, fail: Collection[int] = ()) -> None:
        self.seen: list[int] = []
        """The task of every request, in the order they arrived."""
        self.answered: set[int] = set()
        """The tasks whose requests were answered (or are being)."""
        self.held: list[int] = []
        """The tasks whose request is held (until released), in the order they arrived."""
        self.fail = set(fail)
        self._budget = answer_first
        self._release = threading.Event()
        self._changed = threading.Condition()
        self._body = threading.local()  # the request a handler thread is answering
        super().__init__()

    def release(self) -> None:
        """Answer the held requests (to whoever is still there), and every request from now."""
        with self._changed:
            self._budget = None
        self._release.set()

    def close(self) -> None:
        self.release()
        super().close()

    def requests_per_task(self, since: int = 0) -> collections.Counter[int]:
        """How many requests each task sent, counting from the ``since``-th request."""
        with self._changed:
            return collections.Counter(self.seen[since:])

    def wait_held(self, count: int, timeout: float = 60) -> None:
        """Block until ``count`` requests are being held."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.held) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.held)} requests held, not {count}: {self.held}"
                self._changed.wait(left)

    def _next_reply(self) -> Reply:
        task = _task_of(self._body.value)
        with self._changed:
            self.seen.append(task)
            budget = self._budget
            if budget is None or task in self.answered or len(self.answered) < budget:
                self.answered.add(task)
                hold = None
            else:
                self.held.append(task)
                hold = self._release
            self._changed.notify_all()
        if task in self.fail:
            return Reply(400, {"error": {"message": f"task {task} is refused"}}, hold=hold)
        return Reply(body=chat(f"answer {task}").body, hold=hold)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self
        base = super()._handler_class()

        class Handler(base):  # type: ignore[valid-type, misc]  # a class made at run time
            def _serve(self) -> None:
                # The base handler reads the body and then asks for the reply without it:
                # read it first, keep it for _next_reply (this thread's), and hand it back.
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer._body.value = body
                handler: BaseHTTPRequestHandler = self
                rfile, handler.rfile = handler.rfile, io.BytesIO(body)
                try:
                    super()._serve()
                finally:
                    handler.rfile = rfile

            do_GET = do_POST = _serve

        return Handler
