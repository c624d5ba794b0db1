"""A real ``redis-server`` on a free 127.0.0.1 port, for the shared-quota tests.

Debian's package is installed by ``.ci/ensure-redis`` (``make test`` runs it); where it
could not be, :func:`redis_server_or_skip` skips with the reason. The server keeps nothing on
disk (no RDB, no AOF) and is killed at the end, with its directory.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ("RedisServer", "redis_server_or_skip")

STARTUP_SECONDS = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process: ``url``, ``pid``; :meth:`pause`/:meth:`resume` stop and
    continue it (a server that hangs), :meth:`stop` ends it."""

    def __init__(self, binary: str) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="xz-redis-"))
        last = ""
        for _ in range(5):  # a free port may be taken between our probe and redis's bind
            self.port = _free_port()
            self._process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self._dir),
                    "--daemonize",
                    "no",
                    "--loglevel",
                    "warning",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            if self._wait_ready():
                break
            last = self._output()
        else:
            raise RuntimeError(f"redis-server did not start: {last}")
        self.pid = self._process.pid
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _wait_ready(self) -> bool:
        """PING until PONG (the server is up), the process exits, or the startup bound."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn,
            ):
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return True
            time.sleep(0.02)  # a readiness poll, not an ordering of events
        self._process.kill()
        return False

    def _output(self) -> str:
        self._process.kill()
        out, _ = self._process.communicate(timeout=10)
        return out.decode(errors="replace")[-500:]

    def pause(self) -> None:
        """Stop the process (SIGSTOP): connections stay open and nothing is answered."""
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)
            self._process.kill()
            self._process.wait(timeout=30)
        if self._process.stdout is not None:
            self._process.stdout.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def redis_server_or_skip() -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, or the test skipped when redis-server is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (make test installs it with .ci/ensure-redis)")
    server = RedisServer(binary)
    try:
        yield server
    finally:
        server.stop()
