"""llama.cpp's own OpenAI-compatible server, from the ``xllamacpp`` wheel, in a child process.

:class:`LocalServer` starts ``python -m xzatoma._local_server`` on a free 127.0.0.1 port with
a fixed thread count, context size and ``n_predict`` cap, waits until ``/health`` answers,
and stops it however the block ends. The child is a separate process so that the server's
threads, its memory and its logs (written to a file, quoted when it fails) stay out of the
caller's process. It exits at once when its stdin closes, even mid-generation: that is how
:meth:`LocalServer.stop` asks it to, and what happens when the caller dies, even by SIGKILL.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

import httpx

from ._extras import install_hint
from .errors import LocalModelError

__all__ = ("LocalServer", "ServerSettings", "require_xllamacpp")

_READY: Final = "XZATOMA-LOCAL-SERVER-READY"
_EXTRA_HINT: Final = f"{install_hint('local')}, or run 'make demo-local' in the checkout"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How the server runs; the defaults suit two cores and the 0.5B model."""

    threads: int = 2
    """CPU threads for generation and for prompt processing."""
    context: int = 16384
    """Context size in tokens, shared by the slots."""
    n_predict: int = 1024
    """The server's cap on tokens generated per request, whatever a request asks."""
    parallel: int = 2
    """Requests served at once (the slots); more wait in the server's queue."""
    startup_timeout: float = 300.0
    """Seconds to wait for the model to load and ``/health`` to answer."""
    stop_grace: float = 2.0
    """Seconds :meth:`LocalServer.stop` waits after closing the child's stdin, and again
    after SIGTERM, before it escalates; the child normally exits at once."""


def require_xllamacpp() -> None:
    """Check that the ``local`` extra is installed, before anything costly (the 490 MB
    download) is done for a server that could not start.

    Raises:
        LocalModelError: ``xllamacpp`` cannot be imported; the message says what to install.
    """
    try:
        found = importlib.util.find_spec("xllamacpp") is not None
    except (ImportError, ValueError):  # a broken install, or a module without a spec
        found = False
    if not found:
        raise LocalModelError(f"serving a local model needs the xllamacpp wheel: {_EXTRA_HINT}")


class LocalServer:
    """A llama.cpp server for one GGUF file, in a child process, on 127.0.0.1.

    Use as a context manager: ``with LocalServer(path) as server: server.base_url``.

    Raises:
        LocalModelError: ``xllamacpp`` is not installed, or the server did not come up in
            time (the message quotes the end of its log).
    """

    def __init__(self, model_path: Path, settings: ServerSettings = ServerSettings()) -> None:
        self.model_path = Path(model_path)
        self.settings = settings
        self.address = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The API root to give ``OpenAIProvider`` or ``--base-url`` (``.../v1``)."""
        return f"{self.address}/v1"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the child and wait until it serves (``startup_timeout``)."""
        require_xllamacpp()
        s = self.settings
        self._log = tempfile.TemporaryFile(prefix="xzatoma-llama-")  # noqa: SIM115 - stop() closes it
        command = [sys.executable, "-m", "xzatoma._local_server", str(self.model_path),
                   "--threads", str(s.threads), "--context", str(s.context),
                   "--n-predict", str(s.n_predict), "--parallel", str(s.parallel)]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, bufsize=0
        )
        deadline = time.monotonic() + s.startup_timeout
        try:
            self.address = self._await_address(deadline)
            self._await_health(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """End the child (see :func:`_end`), even mid-generation; idempotent."""
        process, self._process = self._process, None
        if process is not None:
            _end(process, self.settings.stop_grace)
            if process.stdout is not None:
                process.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 12) -> str:
        """The last lines the server logged (llama.cpp writes its progress to stderr)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def _await_address(self, deadline: float) -> str:
        process = self._process
        assert process is not None
        assert process.stdout is not None
        said = b""  # read from the raw pipe: a buffered readline could hold the line back
        while True:
            for line in said.decode("utf-8", "replace").splitlines(keepends=True):
                if line.startswith(_READY) and line.endswith("\n"):
                    return line.split(maxsplit=1)[1].strip().rstrip("/")
            left = deadline - time.monotonic()
            if process.poll() is not None:
                raise self._failed(f"the server exited with code {process.returncode}")
            if left <= 0:
                raise self._failed(f"the model did not load in {self.settings.startup_timeout:g} s")
            readable, _, _ = select.select([process.stdout], [], [], min(left, 1.0))
            if readable:
                said += os.read(process.stdout.fileno(), 65536)

    def _await_health(self, deadline: float) -> None:
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                try:
                    if client.get(f"{self.address}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)  # polling a server that is loading, not ordering events
        raise self._failed("/health did not answer 200 in time")

    def _failed(self, why: str) -> LocalModelError:
        tail = self.log_tail()
        said = f"; its log ends:\n{tail}" if tail else ""
        name = self.model_path.name
        return LocalModelError(f"the llama.cpp server for {name} failed: {why}{said}")


def _end(process: subprocess.Popen[bytes], grace: float) -> None:
    """Close the child's stdin, on which it exits at once; if it is still there after
    ``grace`` seconds, SIGTERM; after ``grace`` more, SIGKILL; then reap it."""
    with contextlib.suppress(OSError):
        if process.stdin is not None:
            process.stdin.close()
    for escalate in (process.terminate, process.kill):
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            escalate()
    process.wait()


def _serve(argv: Sequence[str]) -> int:
    """The child: load the model, serve, say where, and run until stdin closes."""
    parser = argparse.ArgumentParser(prog="python -m xzatoma._local_server")
    parser.add_argument("model")
    for flag in ("--threads", "--context", "--n-predict", "--parallel"):
        parser.add_argument(flag, type=int, required=True)
    args = parser.parse_args(argv)
    import xllamacpp  # untyped; pyproject.toml tells mypy so

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # any free port; the server says which
    params.n_ctx = args.context
    params.n_predict = args.n_predict
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    # No busy-waiting between batches: an idle server must leave the cores to its callers.
    params.cpuparams.poll = 0
    params.cpuparams_batch.poll = 0
    params.use_jinja = True  # the model's own chat template, which renders tools
    params.endpoint_metrics = True
    server = xllamacpp.Server(params)
    print(_READY, server.listening_address, flush=True)
    os.dup2(2, 1)  # whatever llama.cpp prints later goes to the log, not to a pipe none reads
    sys.stdin.read()  # until the parent closes it or exits
    # At once, with ``server`` still referenced: its destructor (``del``, or a normal exit)
    # waits for the main loop, which held a request being generated for 30 s here, the
    # cores busy long after the caller had gone.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(_serve(sys.argv[1:]))
