"""Hardening at the boundary, the command line (issue 11, items 1, 5, 6, 7, 8, 9 and 13): the
API key from the environment, the provider's limits as flags, SIGTERM and SIGINT, one JSON
document on stdout, text from the model escaped for the terminal, output that never fails to
encode, and one-line errors for bad ports and undecodable prompts.

A real HTTP server on 127.0.0.1 stands in for the model; signals, encodings and argv bytes go
to real subprocesses of ``python -m xzatoma.cli``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, quote_plus

import pytest
from _http_server import Reply, ScriptedHTTPServer
from test_cli import Feed, chat, child_env, cli, endpoint, free_port, one_error_line, tasks_file

from xzatoma import Usage
from xzatoma._progress import BatchProgress
from xzatoma._render import print_interrupted, print_json

CLI = [sys.executable, "-m", "xzatoma.cli"]
KEY = "sk-live/Abc+123=xyz"

# What must never reach a terminal raw (newline and tab are fine in multi-line output).
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
HOSTILE = "ok \x1b[2J\x1b]0;pwned\x07 \u202egnp.exe \x9b31m \x7f\x00 \u2066x\u2069 end"


class CountingServer(ScriptedHTTPServer):
    """The scripted server, counting the replies it has started to give (so a test can wait
    until a given request has arrived, instead of sleeping)."""

    def __init__(self) -> None:
        super().__init__()
        self.taken = threading.Semaphore(0)

    def _next_reply(self) -> Reply:
        reply = super()._next_reply()
        self.taken.release()
        return reply

    def wait_requests(self, count: int, timeout: float = 30) -> None:
        for _ in range(count):
            assert self.taken.acquire(timeout=timeout), f"fewer than {count} requests arrived"


@pytest.fixture
def server() -> Iterator[CountingServer]:
    with CountingServer() as srv:
        yield srv


def popen(*argv: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env or child_env(), **kw,
    )  # fmt: skip


def run_cli(
    *argv: str | bytes, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess[Any]:
    """The finished command; its output is ``bytes``, or ``str`` when ``kw`` asks for text."""
    return subprocess.run(
        [*CLI, *argv], capture_output=True, env=env or child_env(), timeout=60, check=False, **kw
    )


def read_until(stream: IO[str], prefix: str) -> list[str]:
    seen = []
    for line in stream:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    pytest.fail(f"never saw a line starting {prefix!r}: {seen!r}")


def assert_key_absent(text: str, key: str = KEY) -> None:
    forms = {key, repr(key), repr(key.encode()), quote(key, safe=""), quote(key), quote_plus(key)}
    for form in forms:
        assert form not in text, f"the key leaked as {form!r}"
    assert "Abc+123" not in text
    assert "Abc%2B123" not in text


# -- item 1: the API key from the environment, end to end ----------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("raw", [KEY + "\n", KEY + "\r\n", f"  {KEY}  ", f"\t{KEY}\n\n"])
def test_a_key_with_surrounding_whitespace_is_stripped(server: CountingServer, raw: str) -> None:
    server.add(chat("the answer"))
    done = run_cli(
        "run", "hi", *endpoint(server), "--api-key-env", "XZ_KEY",
        env={**child_env(), "XZ_KEY": raw}, text=True,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "the answer\n", "")
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("inner", ["\x01", "\n", "\x7f", "\x1b"])
def test_a_key_with_an_inner_control_character_is_refused_by_name(
    server: CountingServer, inner: str
) -> None:
    done = run_cli(
        "run", "hi", *endpoint(server), "--api-key-env", "XZ_KEY",
        env={**child_env(), "XZ_KEY": KEY[:8] + inner + KEY[8:]}, text=True,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (2, "")
    line = one_error_line(done.stderr)
    assert "environment variable XZ_KEY holds a control character" in line
    assert_key_absent(done.stderr, KEY[:8] + inner + KEY[8:])
    assert_key_absent(done.stderr)
    assert server.requests == []


@pytest.mark.timeout(90)
@pytest.mark.parametrize("flags", [[], ["--json"], ["--tree"], ["--verbose", "--json", "--tree"]])
def test_the_key_is_printed_in_no_form_when_the_request_fails(
    server: CountingServer, flags: list[str]
) -> None:
    echoed = f"bad key {KEY} {KEY!r} {quote(KEY, safe='')} {quote_plus(KEY)} {KEY.encode()!r}"
    retry = Reply(503, echoed, headers={"Retry-After": "0"})
    server.add(retry, retry, Reply(401, {"error": {"message": echoed}}))
    done = run_cli(
        "run", "hi", *endpoint(server), "--api-key-env", "XZ_KEY", *flags,
        env={**child_env(), "XZ_KEY": KEY + "\n"}, text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert "HTTP 401" in done.stderr
    assert_key_absent(done.stdout + done.stderr)
    assert server.requests[-1].headers["authorization"] == f"Bearer {KEY}"


# -- item 5: the provider's limits from the command line ------------------------------------


def test_max_retries_from_the_command_line_beats_the_file(
    capsys: pytest.CaptureFixture[str], server: CountingServer, tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"provider: {{base_url: '{server.url}/v1', model: m, max_retries: 3}}\n")
    server.add(*[Reply(503, "busy", headers={"Retry-After": "0"}) for _ in range(4)])
    code, _, err = cli(capsys, "run", "hi", "--config", str(path), "--max-retries", "0")
    assert code == 2
    assert "HTTP 503" in one_error_line(err)
    assert len(server.requests) == 1  # the flag's 0 retries, not the file's 3
    server.add(chat("ok"))
    code, _, err = cli(capsys, "run", "hi", "--config", str(path))
    assert (code, len(server.requests)) == (0, 5)  # the file's 3 retries: 4 attempts


@pytest.mark.timeout(60)
def test_request_timeout_bounds_an_attempt(
    capsys: pytest.CaptureFixture[str], server: CountingServer
) -> None:
    release = threading.Event()
    server.add(Reply(body=chat("late").body, hold=release))
    try:
        code, _, err = cli(
            capsys, "run", "hi", *endpoint(server), "--request-timeout", "0.5",
            "--max-retries", "0",
        )  # fmt: skip
    finally:
        release.set()
    assert code == 2
    assert "timed out after 0.5 s" in one_error_line(err)


@pytest.mark.timeout(60)
def test_max_response_bytes_caps_the_reply(
    capsys: pytest.CaptureFixture[str], server: CountingServer, tmp_path: Path
) -> None:
    big = chat("x" * 5000)
    server.add(big, big)
    code, _, err = cli(capsys, "run", "hi", *endpoint(server), "--max-response-bytes", "2048")
    assert code == 2
    assert "2048" in one_error_line(err)
    path = tmp_path / "c.yaml"
    url = f"{server.url}/v1"
    path.write_text(f"provider: {{base_url: '{url}', model: m, max_response_bytes: 2048}}\n")
    code, out, _ = cli(
        capsys, "run", "hi", "--config", str(path), "--max-response-bytes", "65536"
    )  # fmt: skip
    assert (code, out) == (0, "x" * 5000 + "\n")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--request-timeout", "0", "provider.timeout_seconds must be greater than 0 "
                                   "(from --request-timeout 0)"),
        ("--max-retries", "-1", "provider.max_retries must be at least 0 (from --max-retries -1)"),
        ("--max-response-bytes", "100",
         "provider.max_response_bytes must be at least 1024 bytes (from --max-response-bytes 100)"),
        ("--max-retries", "two", "argument --max-retries: invalid int value: 'two'"),
        ("--max-connections", "0",
         "provider.max_connections must be at least 1 (from --max-connections 0)"),
        ("--max-connections", "-1",
         "provider.max_connections must be at least 1 (from --max-connections -1)"),
        ("--max-connections", "x", "argument --max-connections: invalid int value: 'x'"),
        ("--max-connections", "true", "argument --max-connections: invalid int value: 'true'"),
        ("--http-transport", "quic", "argument --http-transport: invalid choice: 'quic'"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["run", "batch"])
def test_provider_flags_are_validated_with_the_exact_messages(
    capsys: pytest.CaptureFixture[str], command: str, flag: str, value: str, message: str
) -> None:
    first = "hi" if command == "run" else "tasks.jsonl"
    code, out, err = cli(
        capsys, command, first, "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
        flag, value,
    )  # fmt: skip
    assert (code, out) == (2, "")
    assert message in one_error_line(err)


# -- item 6: SIGTERM and SIGINT --------------------------------------------------------------


def finished_batch(server: CountingServer, release: threading.Event) -> None:
    # One task at a time: a answers (task and summary); b's model call hangs until released.
    server.add(chat("a1"), chat("answer of a"), Reply(body=chat("b1").body, hold=release))


@pytest.mark.timeout(90)
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.parametrize("as_json", [False, True], ids=["plain", "json"])
def test_a_signal_cancels_the_batch_and_prints_what_finished(
    server: CountingServer, tmp_path: Path, signum: signal.Signals, as_json: bool
) -> None:
    release = threading.Event()
    finished_batch(server, release)
    proc = popen(
        "batch", str(tasks_file(tmp_path)), *endpoint(server), "--max-concurrent", "1",
        "--metrics-port", "0", *(["--json"] if as_json else []),
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stderr is not None
    progress = proc.stderr if as_json else proc.stdout
    seen = read_until(progress, "[1/3] done a")
    server.wait_requests(3)  # b's model call is being held: a finished, b is running
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        release.set()
    assert proc.returncode == 128 + signum
    said = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    assert err.splitlines()[-1] == f"xzatoma: {said}; the batch was cancelled"
    assert "Traceback" not in err
    err = "".join(seen) + err if as_json else err
    if as_json:
        report = json.loads(out)  # one JSON document, and nothing else
        assert (report["status"], report["signal"], report["total"]) == (
            "interrupted", signum.name, 3
        )  # fmt: skip
        [row] = report["finished"]
        assert (row["label"], row["status"], row["output"]) == ("a", "complete", "answer of a")
    else:
        assert "interrupted: 1 of 3 tasks had finished" in out
        assert "  a: complete, 2 turns, 610 tokens\n    answer of a\n" in out
        assert "batch complete" not in out
    assert_metrics_stopped(err)


def assert_metrics_stopped(err: str) -> None:
    match = re.search(r"serving metrics at http://127\.0\.0\.1:(\d+)/metrics", err)
    assert match, err
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", int(match.group(1))))


def delegating_root(server: CountingServer, release: threading.Event) -> None:
    tasks = [{"label": "a", "task_prompt": "do a"}, {"label": "b", "task_prompt": "do b"}]
    call = ("parallel_subagent", {"tasks": tasks, "max_concurrent": 1})
    server.add(
        chat("Let me delegate.", calls=[call]),
        chat("a1"),
        chat("answer of a"),
        Reply(body=chat("b1").body, hold=release),
    )


@pytest.mark.timeout(90)
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
@pytest.mark.parametrize("as_json", [False, True], ids=["plain", "json"])
def test_a_signal_cancels_the_run_and_prints_the_finished_subagents(
    server: CountingServer, signum: signal.Signals, as_json: bool
) -> None:
    release = threading.Event()
    delegating_root(server, release)
    proc = popen(
        "run", "delegate", *endpoint(server), "--metrics-port", "0",
        *(["--json"] if as_json else []),
    )  # fmt: skip
    server.wait_requests(4)  # root, a's task and summary, then b's call, held: a has ended
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        release.set()
    assert proc.returncode == 128 + signum
    said = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    assert err.splitlines()[-1] == f"xzatoma: {said}; the run and its subagents were cancelled"
    assert "Traceback" not in err
    if as_json:
        report = json.loads(out)
        assert (report["status"], report["signal"]) == ("interrupted", signum.name)
        assert report["output"] == "Let me delegate."
        [row] = report["finished"]
        assert (row["label"], row["status"], row["output"]) == ("a", "complete", "answer of a")
    else:
        assert "interrupted: 1 subagents had finished" in out
        assert "  a: complete, 2 turns, 610 tokens\n    answer of a\n" in out
        assert "partial answer of the root agent:\n    Let me delegate.\n" in out
    assert_metrics_stopped(err)


@pytest.mark.timeout(90)
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_ends_the_metrics_linger(server: CountingServer) -> None:
    server.add(chat("the answer"))
    proc = popen("run", "hi", *endpoint(server), "--metrics-port", "0", "--metrics-linger", "600")
    assert proc.stderr is not None
    read_until(proc.stderr, "xzatoma: metrics stay at")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)  # not the 600 s of the linger
    assert (proc.returncode, out) == (0, "the answer\n")
    assert "Traceback" not in err


A_THREAD_TAKES_THE_SIGNAL = """
import signal, sys, threading
from xzatoma._interrupt import handling_signals, linger

announced = threading.Event()


class Watched:
    # stderr that tells the helper thread when the linger listens for signals
    def write(self, text):
        sys.__stderr__.write(text)
        if text.startswith("lingering"):
            announced.set()
        return len(text)

    def flush(self):
        sys.__stderr__.flush()


def signal_this_thread():
    announced.wait()
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # lands here, not in main


sys.stderr = Watched()
with handling_signals():
    threading.Thread(target=signal_this_thread, daemon=True).start()
    linger(600, "lingering")
print("ended")
"""


@pytest.mark.timeout(90)
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_signal_another_thread_receives_still_ends_the_linger() -> None:
    """The kernel may hand a process's SIGTERM to any of its threads (the /metrics server
    has two); the event loop, asleep for the linger, must still be woken at once."""
    done = subprocess.run(
        [sys.executable, "-c", A_THREAD_TAKES_THE_SIGNAL],
        env=child_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "ended\n"), done.stderr


# -- item 7: --json prints the document even when the endpoint is unusable ------------------


def test_run_json_prints_the_document_for_an_unusable_endpoint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    code, out, err = cli(capsys, "run", "hi", "--base-url", url, "--model", "m", "--json")
    assert code == 2
    data = json.loads(out)
    assert (data["status"], data["error_type"], data["turns"]) == ("failed", "execution_failed", 0)
    assert "could not connect" in data["error"]
    assert "the model endpoint is not usable" in one_error_line(err)


def test_batch_json_prints_the_document_for_an_unusable_endpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, server: CountingServer
) -> None:
    server.add(Reply(404, {"error": "no such model"}), Reply(404, {"error": "no such model"}))
    code, out, err = cli(
        capsys, "batch", str(tasks_file(tmp_path, "ab")), *endpoint(server), "--json"
    )  # fmt: skip
    assert code == 2
    data = json.loads(out)
    assert (data["status"], data["failed"]) == ("failed", 2)
    assert [r["label"] for r in data["results"]] == ["a", "b"]
    assert err.splitlines()[-1].startswith("xzatoma: error: the model endpoint is not usable")


# -- item 8: text from the model is escaped for the terminal; --json keeps it ----------------


def assert_safe(text: str) -> None:
    found = RAW.findall(text)
    assert not found, f"raw controls reached the terminal: {found!r}"
    assert not re.search("[\ud800-\udfff]", text)


def test_run_output_and_tree_are_escaped_and_json_is_exact(
    capsys: pytest.CaptureFixture[str], server: CountingServer
) -> None:
    label = "evil\x1b[31m\u202e\nlabel"
    call = ("subagent", {"label": label, "task_prompt": "t"})
    server.add(chat(None, calls=[call]), chat("c1"), chat(HOSTILE), chat(HOSTILE))
    code, out, err = cli(capsys, "run", "hi", *endpoint(server), "--tree")
    assert code == 0
    assert_safe(out + err)
    assert out == (
        "ok \\x1b[2J\\x1b]0;pwned\\x07 \\u202egnp.exe \\x9b31m \\x7f\\x00 \\u2066x\\u2069 end\n"
    )
    assert "└─ evil\\x1b[31m\\u202e\\nlabel  complete" in err
    server.add(chat(None, calls=[call]), chat("c1"), chat(HOSTILE), chat(HOSTILE))
    code, out, _ = cli(capsys, "run", "hi", *endpoint(server), "--json")
    data = json.loads(out)
    assert (data["output"], data["children"][0]["label"]) == (HOSTILE, label)


def test_error_lines_are_escaped(
    capsys: pytest.CaptureFixture[str], server: CountingServer
) -> None:
    server.add(Reply(400, HOSTILE))  # the endpoint's error body, quoted in the error line
    code, out, err = cli(capsys, "run", "hi", *endpoint(server))
    assert (code, out) == (2, "")
    assert "\\x1b[2J" in one_error_line(err)
    assert_safe(err)
    # `xzatoma: run failed (...)`: a failure after a first answer.
    server.add(chat("thinking", calls=[("nope", {})]), Reply(400, HOSTILE))
    code, out, err = cli(capsys, "run", "hi", *endpoint(server), "--tree")
    assert code == 1
    assert_safe(out + err)
    assert "xzatoma: run failed (execution_failed): " in err
    assert "\\u202egnp.exe" in err


def test_batch_lines_and_headers_are_escaped(
    capsys: pytest.CaptureFixture[str], server: CountingServer, tmp_path: Path
) -> None:
    path = tmp_path / "t.jsonl"
    label = "a\x1b]0;x\x07\u202e"
    path.write_text(json.dumps({"label": label, "task_prompt": "x"}) + "\n")
    server.add(chat("one"), chat(HOSTILE))
    code, out, err = cli(capsys, "batch", str(path), *endpoint(server))
    assert (code, err) == (0, "")
    assert_safe(out)
    assert "[1/1] done a\\x1b]0;x\\x07\\u202e (complete" in out
    assert "== a\\x1b]0;x\\x07\\u202e: complete" in out
    assert "\\x1b[2J" in out


def test_live_progress_and_interrupted_reports_are_escaped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    label = "t\x1b[2J\u202e\x85"
    for live in (True, False):
        stream = io.StringIO()
        progress = BatchProgress(stream, live=live)
        f = Feed(progress)
        f.batch(2)
        f.ended(f.started(label), "complete", None, 1, Usage(1, 1, 1, 2), HOSTILE)
        progress.close()
        assert_safe(stream.getvalue().replace("\x1b[?25l", "").replace("\x1b[?25h", ""))
        assert "t\\x1b[2J\\u202e\\x85" in stream.getvalue()
        print_interrupted(progress.finished, "SIGINT", as_json=False, total=2)
        out = capsys.readouterr().out
        assert_safe(out)
        assert "  t\\x1b[2J\\u202e\\x85: complete" in out
        print_interrupted(progress.finished, "SIGINT", as_json=True, total=2)
        assert json.loads(capsys.readouterr().out)["finished"][0]["output"] == HOSTILE


# -- item 9: nothing the CLI prints can fail to encode ---------------------------------------

SURROGATE_REPLY = (
    b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": '
    b'"caf\\u00e9 \\ud800 done"}, "finish_reason": "stop"}], '
    b'"usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}'
)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("encoding", ["ascii", "utf-8"])
@pytest.mark.parametrize("as_json", [False, True], ids=["plain", "json"])
def test_unencodable_answers_are_printed_not_a_traceback(
    server: CountingServer, encoding: str, as_json: bool
) -> None:
    server.add(Reply(body=SURROGATE_REPLY, headers={"Content-Type": "application/json"}))
    done = run_cli(
        "run", "hi", *endpoint(server), "--tree", *(["--json"] if as_json else []),
        env={**child_env(), "PYTHONIOENCODING": encoding},
    )  # fmt: skip
    err = done.stderr.decode(encoding)
    assert done.returncode == 0, err
    assert "Traceback" not in err
    out = done.stdout.decode(encoding)
    if as_json:
        assert json.loads(out)["output"].startswith("café ")  # lone surrogate: a JSON escape
    else:
        assert out.startswith("caf\\xe9 " if encoding == "ascii" else "café ")
        assert out.rstrip("\n").endswith(" done")


# -- item 13: a port out of range, and prompts that are not UTF-8 ----------------------------


def test_a_base_url_port_out_of_range_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "run", "hi", "--base-url", "http://127.0.0.1:99999/v1",
                         "--model", "m")  # fmt: skip
    assert (code, out) == (2, "")
    assert one_error_line(err) == (
        "xzatoma: error: provider.base_url has port 99999, outside 1..65535 "
        "(from --base-url http://127.0.0.1:99999/v1)"
    )


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.platform == "win32", reason="argv bytes are POSIX")
def test_a_prompt_that_is_not_utf8_is_one_line(server: CountingServer) -> None:
    done = run_cli("run", b"caf\xff!", *endpoint(server))
    assert (done.returncode, done.stdout) == (2, b"")
    assert done.stderr == b"xzatoma: error: PROMPT is not valid UTF-8 (byte 0xff at position 3)\n"
    done = run_cli("run", "-", *endpoint(server), input=b"ok\n\xc3(")
    assert (done.returncode, done.stdout) == (2, b"")
    assert done.stderr == (
        b"xzatoma: error: PROMPT is not valid UTF-8 (byte 0xc3 at position 3 of stdin)\n"
    )
    done = run_cli("run", "hi", *endpoint(server), "--system-prompt", b"\xfe")
    assert done.stderr == (
        b"xzatoma: error: --system-prompt is not valid UTF-8 (byte 0xfe at position 0)\n"
    )
    assert server.requests == []


# -- round 2: what a hostile tester found in the committed work -----------------------------


def flood(proc: subprocess.Popen[str], signum: int) -> tuple[str, str]:
    """Send ``signum`` again and again until the process exits (a second signal at every
    moment of its way out), then collect its output."""
    deadline = time.monotonic() + 60
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the process outlived a minute of signals"
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        time.sleep(0.0005)  # pacing only: the order comes from the lines read before
    return proc.communicate(timeout=60)


@pytest.mark.timeout(90)
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and FIFOs")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_before_the_work_starts_is_one_line(
    tmp_path: Path, signum: signal.Signals
) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    proc = popen("run", "-", "--config", str(fifo), stdin=subprocess.PIPE)
    writer = os.open(fifo, os.O_WRONLY)  # returns once the command is reading its config
    try:
        out, err = flood(proc, signum)
    finally:
        os.close(writer)
    said = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    assert (proc.returncode, out) == (128 + signum, "")
    assert err == f"xzatoma: {said}; nothing had started\n"


@pytest.mark.timeout(90)
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_more_signals_while_the_batch_is_cancelled_change_nothing(
    server: CountingServer, tmp_path: Path, signum: signal.Signals
) -> None:
    release = threading.Event()
    finished_batch(server, release)
    proc = popen(
        "batch", str(tasks_file(tmp_path)), *endpoint(server), "--max-concurrent", "1", "--json"
    )  # fmt: skip
    assert proc.stderr is not None
    seen = read_until(proc.stderr, "[1/3] done a")
    server.wait_requests(3)  # b's model call is held
    try:
        out, err = flood(proc, signum)
    finally:
        release.set()
    assert proc.returncode == 128 + signum, "".join(seen) + err
    assert "Traceback" not in err
    report = json.loads(out)
    assert (report["status"], report["signal"]) == ("interrupted", signum.name)
    assert [row["label"] for row in report["finished"]] == ["a"]


@pytest.mark.timeout(90)
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_more_signals_during_the_linger_keep_the_run_s_exit_code(server: CountingServer) -> None:
    server.add(chat("the answer"))
    proc = popen("run", "hi", *endpoint(server), "--metrics-port", "0", "--metrics-linger", "600")
    assert proc.stderr is not None
    read_until(proc.stderr, "xzatoma: metrics stay at")
    out, err = flood(proc, signal.SIGTERM)
    assert (proc.returncode, out) == (0, "the answer\n")
    assert "Traceback" not in err


@pytest.mark.timeout(90)
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_cancels_the_demo_in_one_line(signum: signal.Signals) -> None:
    proc = popen("demo", "--latency", "600")
    assert proc.stdout is not None
    read_until(proc.stdout, "  prompt: ")
    out, err = flood(proc, signum)
    said = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    assert proc.returncode == 128 + signum
    assert err == f"xzatoma: {said}; the demo was cancelled\n"
    assert "Result tree" not in out


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "env",
    [{"LC_ALL": "C", "PYTHONUTF8": "0"}, {"PYTHONIOENCODING": "ascii:surrogateescape"}],
    ids=["C-locale", "surrogateescape"],
)
def test_output_never_fails_to_encode_whatever_the_error_handler(
    server: CountingServer, env: dict[str, str]
) -> None:
    server.add(chat("café ✓"))
    base = {k: v for k, v in child_env().items() if k not in ("PYTHONIOENCODING", "LANG")}
    done = run_cli("run", "hi", *endpoint(server), "--tree", env={**base, **env})
    assert "Traceback" not in done.stderr.decode("ascii", "replace")
    assert (done.returncode, done.stdout) == (0, b"caf\\xe9 \\u2713\n")
    assert done.stderr.startswith(b"agent  complete")


def shell(redirect: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """The command run by ``sh`` with one standard stream closed (``<&-``, ``>&-``, ``2>&-``)."""
    return subprocess.run(
        ["sh", "-c", f'exec "$@" {redirect}', "sh", *CLI, *argv],
        capture_output=True, text=True, env=child_env(), timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.timeout(90)
@pytest.mark.skipif(sys.platform == "win32", reason="sh redirections")
def test_closed_standard_streams_are_not_a_traceback(
    server: CountingServer, tmp_path: Path
) -> None:
    done = shell("<&-", "run", "-", *endpoint(server))
    assert (done.returncode, done.stdout) == (2, "")
    assert one_error_line(done.stderr) == (
        "xzatoma: error: PROMPT is '-' but stdin is closed; pipe the prompt in or pass it"
    )
    server.add(*[chat("ok")] * 6)
    done = shell(">&-", "batch", str(tasks_file(tmp_path)), *endpoint(server))
    assert (done.returncode, done.stderr) == (0, "")
    done = shell("2>&-", "run", "hi", "--base-url", f"http://127.0.0.1:{free_port()}/v1",
                 "--model", "m", "--max-retries", "0")  # fmt: skip
    assert (done.returncode, done.stdout) == (2, "")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--request-timeout", "inf",
         "provider.timeout_seconds must be a finite number (from --request-timeout inf)"),
        ("--request-timeout", "1e309",
         "provider.timeout_seconds must be a finite number (from --request-timeout inf)"),
        ("--timeout", "inf", "agent.timeout_seconds must be a finite number (from --timeout inf)"),
        ("--max-total-time", "inf",
         "agent.subagent.max_total_time must be a finite number (from --max-total-time inf)"),
        ("--max-retries", "101", "provider.max_retries cannot exceed 100 (from --max-retries 101)"),
        ("--api-key-env", "",
         "provider.api_key_env must name an environment variable; it is empty"),
        ("--metrics-linger", "nan", "argument --metrics-linger: must be a finite number of "
                                    "seconds, at least 0 (got 'nan')"),
        ("--metrics-linger", "-5", "argument --metrics-linger: must be a finite number of "
                                   "seconds, at least 0 (got '-5')"),
        ("--metrics-linger", "inf", "argument --metrics-linger: must be a finite number of "
                                    "seconds, at least 0 (got 'inf')"),
    ],
)  # fmt: skip
def test_infinite_or_empty_values_are_refused_by_name(
    capsys: pytest.CaptureFixture[str], server: CountingServer, flag: str, value: str,
    message: str,
) -> None:  # fmt: skip
    code, out, err = cli(capsys, "run", "hi", *endpoint(server), flag, value)
    assert (code, out) == (2, "")
    assert message in one_error_line(err)
    assert server.requests == []


def test_line_separators_c1_and_bidi_are_escaped_in_every_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    label, output = "a\u2028b\u2029c\x85d", "first\u2028still first\nsecond"
    stream = io.StringIO()
    progress = BatchProgress(stream, live=False)
    f = Feed(progress)
    f.batch(1)
    f.ended(f.started(label), "complete", None, 1, Usage(1, 1, 1, 2), output)
    assert "[1/1] done a\\u2028b\\u2029c\\x85d (complete" in stream.getvalue()
    print_interrupted(progress.finished, "SIGINT", as_json=False, total=1)
    out = capsys.readouterr().out
    assert "  a\\u2028b\\u2029c\\x85d: complete" in out
    assert "    first\u2028still first\n    second\n" in out  # indented on "\n" only
    raw = "\x9b31m \u202egnp \u2028 \u2029 \x7f \x85 \u2066"
    print_json({"output": raw, "label": label}, sys.stdout)
    text = capsys.readouterr().out
    assert not re.search("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]", text)
    assert json.loads(text) == {"output": raw, "label": label}  # the exact text


@pytest.mark.timeout(60)
def test_fail_fast_against_an_unusable_endpoint_is_exit_2(
    capsys: pytest.CaptureFixture[str], server: CountingServer, tmp_path: Path
) -> None:
    server.add(Reply(404, {"error": "no such model"}))
    code, out, err = cli(
        capsys, "batch", str(tasks_file(tmp_path)), *endpoint(server), "--fail-fast",
        "--max-concurrent", "1", "--json",
    )  # fmt: skip
    assert code == 2
    data = json.loads(out)
    assert (data["failed"], data["cancelled"]) == (1, 2)
    assert err.splitlines()[-1].startswith("xzatoma: error: the model endpoint is not usable")


@pytest.mark.timeout(60)
def test_a_byte_order_mark_on_stdin_is_not_sent(server: CountingServer) -> None:
    server.add(chat("ok"))
    done = run_cli("run", "-", *endpoint(server), input=b"\xef\xbb\xbfhello")
    assert (done.returncode, done.stdout) == (0, b"ok\n")
    assert server.requests[0].json()["messages"][-1]["content"] == "hello"
