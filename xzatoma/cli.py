"""The ``xzatoma`` command line: ``run``, ``batch``, ``demo``, ``journal show`` and
``config validate``.

Exit codes: 0 complete, 1 failed, 2 usage or configuration error (also an unusable model
endpoint), 3 incomplete (out of turns), 130 interrupted (SIGINT, Ctrl-C), 143 terminated
(SIGTERM). Every error the user can fix is one ``xzatoma: error: ...`` line on stderr, never
a traceback; so is a signal, whenever it comes (:mod:`xzatoma._interrupt`); text from a model
or an endpoint is escaped before it reaches the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

import anyio

from ._cli_distributed import check_distributed, check_reachable, ray_executor
from ._cli_metrics import linger_for_a_scrape, metrics_for, serve_metrics
from ._cli_otlp import otlp_push
from ._cli_output import batch_document, logging_for
from ._cli_parser import EXIT_FAILED, EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE, build_parser, settle
from ._cli_parser import flag_names as _flag_names
from ._hooks import Instrument
from ._interrupt import Interrupted, handling_signals, until_signal
from ._mcp_open import open_servers
from ._mcp_servers import Server
from ._progress import BatchProgress, Finished
from ._redis_quota import RedisQuota
from ._render import print_batch, print_interrupted, print_json, print_run
from ._result import RunResult
from ._runtime import Runtime
from ._subagent_models import BatchResult
from ._terminal import one_line, printable, tolerant_streams
from .config import (
    OVERRIDE_KEYS,
    XzatomaConfig,
    apply_overrides,
    load_config,
    load_given_config,
    load_tasks,
)
from .errors import ConfigError, JournalWriteError, LocalModelError
from .providers import OpenAIProvider
from .providers._urls import shown_url

if TYPE_CHECKING:
    from ._ray_executor import RayExecutor

__all__ = ("build_parser", "main")


# Arguments that name files: any bytes the file system allows, not text sent to a model.
_PATH_ARGUMENTS = frozenset({"file", "config", "journal"})


class UsageError(Exception):
    """A mistake the user can fix: printed as one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it).

    ``argv`` None means the process's own arguments: this is the console script, which
    exits next, so SIGINT and SIGTERM stay ignored after the command (see
    :func:`~xzatoma._interrupt.handling_signals`); with ``argv`` given (Python, tests) the
    previous handlers come back.
    """
    with handling_signals(restore=argv is not None):
        try:
            return _main(argv)
        except Interrupted as why:  # before the work started (say, reading the prompt)
            return _interrupted(why, "nothing had started")


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        settle(args, parser)  # -q/-v (args.verbosity), --messages without --json
    except SystemExit as exc:  # --help, --version, or argparse's own usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        with tolerant_streams(), logging_for(args.verbosity):
            return _dispatch(args)
    except (UsageError, ConfigError) as exc:
        return _fail(str(exc))
    except BrokenPipeError:  # `xzatoma demo | head`: the reader left; leave quietly too
        with contextlib.suppress(OSError, ValueError):  # no real stdout under a test runner
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


def _dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; its telemetry pushed over OTLP when OTEL_EXPORTER_OTLP_*
    name a collector, and flushed however the command ends (:mod:`xzatoma._cli_otlp`)."""
    with otlp_push(args):
        return _command(args)


def _command(args: argparse.Namespace) -> int:
    """Run the parsed command."""
    _refuse_undecodable(args)
    if args.command == "config":
        config = load_config(args.file)
        print(f"OK: {args.file} is valid")
        provider = config.provider
        if provider.type is None and provider.base_url is None and args.verbosity >= 0:
            print("note: no provider.base_url or provider.type; give --base-url when running")
        return EXIT_OK
    if args.command == "journal":
        from ._journal import read_journal
        from ._render import print_journal

        print_journal(read_journal(args.journal), sys.stdout, as_json=args.json)
        return EXIT_OK
    if args.command == "demo":
        from ._demo import run_demo

        host = args.metrics_host or "127.0.0.1"
        with serve_metrics(host, args.metrics_port, announce=False) as server:
            try:
                if args.local:
                    from ._demo_local import run_local_demo

                    code = run_local_demo(server, out=sys.stdout)
                else:
                    code = run_demo(server, latency=args.latency, out=sys.stdout)
            except Interrupted as why:
                return _interrupted(why, "the demo was cancelled")
            except LocalModelError as exc:
                print(f"xzatoma: error: {one_line(str(exc))}", file=sys.stderr)
                return EXIT_FAILED
            linger_for_a_scrape(server, args.metrics_linger)
        return code
    config = _configure(args)
    check_distributed(args, config)
    if args.command == "run":
        return _run(args, config)
    return _batch(args, config)


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"xzatoma: error: {one_line(message)}", file=sys.stderr)
    return code


def _refuse_undecodable(args: argparse.Namespace) -> None:
    """Text arguments must be UTF-8: Python hands other bytes over as lone surrogates
    (surrogateescape), which no request could carry."""
    subparser = getattr(args, "subparser", None)
    flags = _flag_names(subparser) if subparser is not None else {}
    for dest, value in vars(args).items():
        if isinstance(value, str) and dest not in _PATH_ARGUMENTS:
            _utf8(value, flags.get(dest, dest.upper()))


def _utf8(text: str, what: str) -> str:
    """``text`` if it is valid Unicode; else a :class:`UsageError` naming the first bad byte."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError as bad:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate that stands for no byte
            code = ord(text[bad.start])
            raise UsageError(
                f"{what} is not valid UTF-8 (lone surrogate U+{code:04X} at position {bad.start})"
            ) from None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{what} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start})"
        ) from None
    return text  # pragma: no cover - surrogateescape'd bytes never decode as UTF-8


def _prompt(given: str) -> str:
    """PROMPT, or stdin's bytes for ``-``, as valid UTF-8 text that is not blank."""
    if given != "-":
        prompt = given
    elif sys.stdin is None:  # `<&-`: the shell closed it
        raise UsageError("PROMPT is '-' but stdin is closed; pipe the prompt in or pass it")
    elif hasattr(sys.stdin, "buffer"):
        raw = sys.stdin.buffer.read()
        try:
            prompt = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(
                f"PROMPT is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position "
                f"{exc.start} of stdin)"
            ) from None
    else:  # a text stream without bytes underneath (a test's StringIO)
        prompt = _utf8(sys.stdin.read(), "PROMPT")
    prompt = prompt.removeprefix("\ufeff")  # an editor's byte order mark is not the task
    if not prompt.strip():
        raise UsageError("PROMPT is empty")
    return prompt


def _configure(args: argparse.Namespace) -> XzatomaConfig:
    """The file (or defaults) with the command line on top; names the flag in an error."""
    config = load_given_config(args.config or None)  # else XZATOMA_CONFIG, else defaults
    given = {k: getattr(args, k) for k in OVERRIDE_KEYS if getattr(args, k, None) is not None}
    try:
        return apply_overrides(config, **given)
    except ConfigError as exc:
        flags, said = _flag_names(args.subparser), str(exc)
        named = [
            f"{flags[k]} {_as_typed(k, v)}"
            for k, v in given.items()
            if k in flags and said.startswith((f"{OVERRIDE_KEYS[k]} ", f"{OVERRIDE_KEYS[k]}:"))
        ]
        raise ConfigError(f"{exc} (from {', '.join(named)})" if named else said) from None


def _as_typed(key: str, value: object) -> str:
    """A flag's value as a person would write it: ``0``, not the parsed ``0.0``; every
    digit kept (``2.0000001``, not ``2``); a Redis URL without its password."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if key == "redis_url" and isinstance(value, str) and "://" in value:
        return shown_url(value)
    return str(value)


def _runtime(
    config: XzatomaConfig, hooks: Sequence[Instrument] = (), session_id: str | None = None
) -> Runtime:
    provider = config.build_model()
    if provider is None:
        raise UsageError(
            "no model endpoint: give --base-url URL --model NAME (or --provider ollama --model "
            "NAME), or set provider.base_url in a --config file; 'xzatoma demo' runs offline"
        )
    children = config.subagent_config(config.build_model(subagents=True))
    quota = config.build_quota()
    runtime = Runtime(
        provider,
        subagents=children,
        quota=quota,
        hooks=hooks,
        pricing=config.build_pricing(),
        session_id=session_id,
    )
    check_reachable(quota)  # Redis is read once, after every check that needs no network
    return runtime


async def _close(runtime: Runtime) -> None:
    with anyio.CancelScope(shield=True):  # also after a signal cancelled the run
        for provider in (runtime.provider, runtime.config.provider):
            if isinstance(provider, OpenAIProvider):
                await provider.aclose()
        if isinstance(runtime.tracker, RedisQuota):
            await runtime.tracker.aclose()  # this process's connections; the tree stays


def _mcp_servers(args: argparse.Namespace, config: XzatomaConfig) -> list[Server]:
    """The file's ``tools.mcp_servers``, each ``--mcp`` replacing the one of its name."""
    given: dict[str, Server] = {server.name: server for server in config.tools.servers()}
    for server in args.mcp:
        given[server.name] = server
    return list(given.values())


def _endpoint_error(results: Sequence[RunResult]) -> str | None:
    """The rule for "unusable endpoint": no run got an answer, at least one failed at its
    very first model call with a provider error, and every other one did too or was
    cancelled before any model call returned (``--fail-fast`` cancels the rest of a batch
    at the first failure, so they never had the chance)."""
    first = None
    for r in results:
        if r.status == "cancelled" and r.turns == 0:
            continue
        if not (r.status == "failed" and r.error_type == "execution_failed" and r.turns == 0):
            return None
        if not (r.error or "").startswith("provider "):
            return None
        if first is None:
            first = r
    return f"the model endpoint is not usable: {first.error}" if first else None


def _interrupted(why: Interrupted, what: str) -> int:
    said = "interrupted" if why.signum == signal.SIGINT else f"terminated ({why.name})"
    print(f"xzatoma: {said}; {what}", file=sys.stderr, flush=True)
    return why.exit_code


def _run(args: argparse.Namespace, config: XzatomaConfig) -> int:
    prompt = _prompt(args.prompt)
    finished = Finished()
    # ``finished`` keeps what the root had, on a signal.
    runtime = _runtime(config, hooks=[finished], session_id=args.session_id)

    servers = _mcp_servers(args, config)

    async def go() -> RunResult:
        try:
            async with open_servers(*servers) as tools:  # before the run; ended after it
                agent = runtime.agent(
                    tools=tools,
                    system_prompt=args.system_prompt,
                    max_turns=config.agent.max_turns,
                    timeout=config.agent.timeout_seconds,
                )
                return await agent.run(prompt)
        finally:
            await _close(runtime)

    with metrics_for(config, announce=args.verbosity >= 0) as server:
        try:
            result = until_signal(go)
        except Interrupted as why:
            partial = finished.root.output if finished.root is not None else ""
            print_interrupted(
                finished.finished, why.name, as_json=args.json, partial_output=partial
            )
            return _interrupted(why, "the run and its subagents were cancelled")
        problem = _endpoint_error([result])
        if args.json:
            print_json(result.to_dict(messages=args.messages), sys.stdout)
        if problem:
            return _fail(problem)
        print_run(result, sys.stdout, sys.stderr, tree=args.tree, as_json=args.json)
        linger_for_a_scrape(server, args.metrics_linger)
    return {"complete": EXIT_OK, "incomplete": EXIT_INCOMPLETE}.get(result.status, EXIT_FAILED)


def _batch(args: argparse.Namespace, config: XzatomaConfig) -> int:
    tasks = load_tasks(args.file)
    if (args.rerun_failed or args.extend_journal) and not args.journal:
        flag = "--rerun-failed" if args.rerun_failed else "--extend-journal"
        raise UsageError(f"{flag} works with --journal PATH, which was not given")
    stream: TextIO = sys.stderr if args.json else sys.stdout
    quiet = args.verbosity < 0
    progress = BatchProgress(stream, live=stream.isatty(), of=len(tasks), show=not quiet)
    runtime = _runtime(config, hooks=[progress], session_id=args.session_id)
    executor: RayExecutor | None = None

    servers = _mcp_servers(args, config)
    if servers and config.distributed.ray:
        raise UsageError(
            "MCP servers (--mcp, tools.mcp_servers) run in this process, and a batch on Ray "
            "runs in its workers: run the batch without --ray, or without MCP servers"
        )

    async def go() -> BatchResult:
        try:
            async with open_servers(*servers) as tools:  # before the batch; ended after it
                return await runtime.run_batch(
                    tasks,
                    # On Ray, workers x per_worker is the batch's concurrency.
                    max_concurrent=None if executor else config.agent.subagent.max_concurrent,
                    fail_fast=args.fail_fast,
                    tools=tools,
                    timeout=config.agent.timeout_seconds,
                    journal=args.journal,
                    rerun_failed=args.rerun_failed,
                    extend_journal=args.extend_journal,
                    executor=executor,
                )
        finally:
            await _close(runtime)

    with metrics_for(config, announce=not quiet) as server:
        executor = ray_executor(config, server)
        try:
            batch = until_signal(go)
        except Interrupted as why:
            progress.close()
            print_interrupted(
                progress.finished,
                why.name,
                as_json=args.json,
                total=len(tasks),
                journaled=progress.journaled,
            )
            if args.journal:
                print(
                    f"xzatoma: what had ended is in the journal {printable(args.journal)}; the "
                    "same command resumes the batch",
                    file=sys.stderr,
                )
            return _interrupted(why, "the batch was cancelled")
        except JournalWriteError as error:  # the batch stopped; what had ended is reported
            progress.close()
            if isinstance(error.result, BatchResult):
                if args.json:
                    print_json(batch_document(error.result, messages=args.messages), sys.stdout)
                else:
                    print_batch(error.result, sys.stdout)
            return _fail(str(error), EXIT_FAILED)
        finally:
            progress.close()
            if executor is not None:
                executor.close()  # the workers end with the command
        resumed = frozenset(batch.resumed)  # read back from the journal: not run now
        problem = _endpoint_error([r for i, r in enumerate(batch.results) if i not in resumed])
        if args.json:
            print_json(batch_document(batch, messages=args.messages), sys.stdout)
        if problem:
            return _fail(problem)
        if not args.json:
            print_batch(batch, sys.stdout)
        linger_for_a_scrape(server, args.metrics_linger)
    if batch.failed or batch.cancelled:
        return EXIT_FAILED
    return EXIT_INCOMPLETE if any(r.status == "incomplete" for r in batch.results) else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
