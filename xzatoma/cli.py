"""The ``xzatoma`` command line: ``run``, ``batch``, ``demo`` and ``config validate``.

Exit codes: 0 complete, 1 failed, 2 usage or configuration error (also an unusable model
endpoint), 3 incomplete (out of turns), 130 interrupted (Ctrl-C). Every error the user can
fix is one ``xzatoma: error: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import anyio

from ._hooks import Hook
from ._progress import BatchProgress, batch_dict, describe_status, format_tree, print_batch
from ._result import RunResult
from ._runtime import Runtime
from ._subagent_models import BatchResult
from .config import (
    DEFAULT_BASE_URLS,
    OVERRIDE_KEYS,
    XzatomaConfig,
    apply_overrides,
    load_config,
    load_tasks,
)
from .errors import ConfigError
from .providers import OpenAIProvider

if TYPE_CHECKING:
    from .telemetry import MetricsServer

__all__ = ("build_parser", "main")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

_EXITS = (
    "exit codes: 0 complete, 1 failed, 2 usage or config error (also an unusable endpoint),\n"
    "3 incomplete, 130 interrupted (Ctrl-C). Reference: docs/cli.md, docs/configuration.md"
)
_HELP = {
    "xzatoma": (
        "Run LLM agents that delegate to subagents, recursively and in parallel batches,\n"
        "under one shared quota and a depth limit.\n\n"
        "New here? 'xzatoma demo' runs offline, with no model server.",
        "examples:\n"
        "  xzatoma demo\n"
        '  xzatoma run --provider ollama --model llama3.2 "Compare three sorting algorithms"\n'
        "  xzatoma batch examples/tasks.jsonl --base-url http://127.0.0.1:8000/v1 --model M\n"
        "  xzatoma config validate examples/config.yaml",
    ),
    "run": (
        "Run one agent on PROMPT and print its answer. The agent has the subagent and\n"
        "parallel_subagent tools, under the limits below.",
        "examples:\n"
        '  xzatoma run --provider ollama --model llama3.2 "Summarise RFC 9110 in 5 bullets"\n'
        '  xzatoma run --config examples/ollama.yaml --max-depth 2 --json "..."\n'
        "  OPENAI_API_KEY=... xzatoma run --provider openai --model gpt-4o-mini \\\n"
        '      --api-key-env OPENAI_API_KEY "..."',
    ),
    "batch": (
        "Run the tasks of FILE as one parallel batch of subagents and print each result.\n"
        "FILE is .jsonl (one task per line) or .yaml/.yml (a list, or {tasks: [...]}); a\n"
        "task has label and task_prompt, and optionally summary_prompt, allowed_tools and\n"
        "max_turns. Progress is live on a terminal, plain lines otherwise.",
        "examples:\n"
        "  xzatoma batch examples/tasks.jsonl --provider ollama --model llama3.2\n"
        "  xzatoma batch examples/tasks.yaml --config examples/ollama.yaml --json > out.json",
    ),
    "demo": (
        "Run a scripted agent tree offline (no model server): a researcher that recurses,\n"
        "a parallel batch of 8 with one failure, a depth refusal and a quota refusal, with\n"
        "/metrics served. Then print the result tree, the metrics scraped from its own\n"
        "endpoint, and the commands that point the same run at a real model.",
        "example:\n  xzatoma demo --metrics-port 9464 --metrics-linger 60",
    ),
    "config": ("Work with configuration files.", "example:\n  xzatoma config validate FILE"),
    "validate": (
        "Check a configuration file: print 'OK: FILE is valid', or the problem on stderr\n"
        "(exit 2).",
        "example:\n  xzatoma config validate examples/config.yaml",
    ),
}

# (flag, type, metavar, help); dest is the flag's name, an override key of the config.
_ENDPOINT = [
    ("--config", str, "FILE", "YAML configuration file (docs/configuration.md)"),
    ("--provider", str, "TYPE", "openai, ollama, vllm, llamacpp or lmstudio: a default URL"),
    ("--base-url", str, "URL", "API root, e.g. http://127.0.0.1:11434/v1"),
    ("--model", str, "NAME", "model name the endpoint serves"),
    ("--api-key-env", str, "NAME", "environment variable holding the API key (not the key)"),
]
_LIMITS = [
    ("--max-depth", int, "N", "deepest subagent level, 1-10 (default 3)"),
    ("--max-executions", int, "N", "subagents the run may start (default: unlimited)"),
    ("--max-total-tokens", int, "N", "tokens the whole tree may use (default: unlimited)"),
    ("--max-total-time", float, "SECONDS", "seconds after which no subagent may run"),
    ("--max-concurrent", int, "N", "tasks of a parallel batch in flight at once (default 5)"),
    ("--timeout", float, "SECONDS", "deadline for the whole run"),
]
_METRICS = [
    ("--metrics-port", int, "PORT", "serve Prometheus /metrics on this port (0: any free)"),
    ("--metrics-host", str, "HOST", "interface to serve /metrics on (default 127.0.0.1)"),
    ("--metrics-linger", float, "SECONDS", "keep serving /metrics this long after the run"),
]


class UsageError(Exception):
    """A mistake the user can fix: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the help to read, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"xzatoma: error: {message} (see '{self.prog} --help')\n")


def _flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    return {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}


def _options(p: argparse.ArgumentParser, title: str, table: list[Any], **kw: Any) -> Any:
    group = p.add_argument_group(title)
    for flag, kind, metavar, text in table:
        group.add_argument(flag, type=kind, metavar=metavar, help=text, **kw.get(flag, {}))
    return group


def _shared(p: argparse.ArgumentParser, *, batch: bool) -> None:
    types = {"dest": "provider_type", "choices": sorted(DEFAULT_BASE_URLS)}
    _options(p, "model endpoint (command line > --config file > defaults)", _ENDPOINT,
             **{"--provider": types})  # fmt: skip
    g = _options(p, "limits", _LIMITS)
    if batch:  # the tasks of a batch are subagents: --max-turns is their default
        g.add_argument("--max-turns", dest="subagent_max_turns", type=int, metavar="N",
                       help="model calls per task without its own max_turns")  # fmt: skip
    else:
        g.add_argument("--max-turns", type=int, metavar="N", help="model calls of the root agent")
        g.add_argument("--subagent-max-turns", type=int, metavar="N",
                       help="model calls per subagent (default 10)")  # fmt: skip
    _options(p, "metrics", _METRICS, **{"--metrics-linger": {"default": 0.0}})
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print the whole result as JSON")
    g.add_argument("--verbose", action="store_true", help="log retries and warnings to stderr")
    p.set_defaults(subparser=p)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (``docs/cli.md`` documents every option it has)."""
    from . import __version__

    def texts(key: str) -> dict[str, Any]:
        description, examples = _HELP[key]
        return {"description": description, "epilog": f"{examples}\n\n{_EXITS}",
                "formatter_class": argparse.RawDescriptionHelpFormatter}  # fmt: skip

    def sub(group: Any, key: str, text: str) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = group.add_parser(key, help=text, **texts(key))
        return made

    top = _Parser(prog="xzatoma", **texts("xzatoma"))
    top.add_argument("--version", action="version", version=f"xzatoma {__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub(commands, "run", "run one agent on a prompt")
    run.add_argument("prompt", metavar="PROMPT", help="the task; '-' reads it from stdin")
    run.add_argument("--system-prompt", metavar="TEXT", help="system prompt of the root agent")
    run.add_argument("--tree", action="store_true", help="also print the result tree to stderr")
    _shared(run, batch=False)
    batch = sub(commands, "batch", "run a parallel batch of tasks from a file")
    batch.add_argument("file", metavar="FILE", help="tasks file: .jsonl, .yaml or .yml")
    batch.add_argument("--fail-fast", action="store_true",
                       help="cancel the remaining tasks at the first failure")  # fmt: skip
    _shared(batch, batch=True)
    demo = sub(commands, "demo", "the offline demo with live /metrics (start here)")
    _options(demo, "metrics", _METRICS, **{"--metrics-port": {"default": 0},
                                            "--metrics-linger": {"default": 0.0}})  # fmt: skip
    demo.add_argument("--latency", type=float, metavar="SECONDS", default=0.05,
                      help="simulated seconds per model call (default 0.05)")  # fmt: skip
    config = sub(commands, "config", "check configuration files")
    actions = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    validate = sub(actions, "validate", "validate a configuration file")
    validate.add_argument("file", metavar="FILE", help="the YAML configuration file")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or argparse's own usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        with _logging(getattr(args, "verbose", False)):
            return _dispatch(args)
    except (UsageError, ConfigError) as exc:
        return _fail(str(exc))
    except BrokenPipeError:  # `xzatoma demo | head`: the reader left; leave quietly too
        with contextlib.suppress(OSError, ValueError):  # no real stdout under a test runner
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


@contextlib.contextmanager
def _logging(verbose: bool) -> Iterator[None]:
    """xzatoma's log records on stderr while a command runs: warnings with ``--verbose``
    (retries), else errors only, so a failure stays one line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("xzatoma: %(levelname)s: %(message)s"))
    handler.setLevel(logging.WARNING if verbose else logging.ERROR)
    logger = logging.getLogger("xzatoma")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command."""
    if args.command == "config":
        config = load_config(args.file)
        print(f"OK: {args.file} is valid")
        if config.provider.endpoint is None:
            print("note: no provider.base_url or provider.type; give --base-url when running")
        return EXIT_OK
    if args.command == "demo":
        from ._demo import run_demo

        with serve_metrics(
            args.metrics_host or "127.0.0.1",
            args.metrics_port,
            args.metrics_linger,
            announce=False,
        ) as server:
            return run_demo(server, latency=args.latency, out=sys.stdout)
    config = _configure(args)
    if args.command == "run":
        return _run(args, config)
    return _batch(args, config)


def _fail(message: str) -> int:
    print(f"xzatoma: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_USAGE


def _configure(args: argparse.Namespace) -> XzatomaConfig:
    """The file (or defaults) with the command line on top; names the flag in an error."""
    config = load_config(args.config) if args.config else XzatomaConfig()
    given = {k: getattr(args, k) for k in OVERRIDE_KEYS if getattr(args, k, None) is not None}
    try:
        return apply_overrides(config, **given)
    except ConfigError as exc:
        flags = _flag_names(args.subparser)
        named = [
            f"{flags[k]} {v}" for k, v in given.items() if str(exc).startswith(OVERRIDE_KEYS[k])
        ]
        raise ConfigError(f"{exc} (from {', '.join(named)})" if named else str(exc)) from None


def _runtime(config: XzatomaConfig, hooks: Sequence[Hook] = ()) -> Runtime:
    provider = config.build_provider()
    if provider is None:
        raise UsageError(
            "no model endpoint: give --base-url URL --model NAME (or --provider ollama --model "
            "NAME), or set provider.base_url in a --config file; 'xzatoma demo' runs offline"
        )
    children = config.subagent_config(config.build_provider(subagents=True))
    return Runtime(provider, subagents=children, quota=config.quota_limits(), hooks=hooks)


async def _close(runtime: Runtime) -> None:
    for provider in (runtime.provider, runtime.config.provider):
        if isinstance(provider, OpenAIProvider):
            await provider.aclose()


def _endpoint_error(results: Sequence[RunResult]) -> str | None:
    """The rule for "unusable endpoint": every run failed at its very first model call."""
    for r in results:
        if not (r.status == "failed" and r.error_type == "execution_failed" and r.turns == 0):
            return None
        if not (r.error or "").startswith("provider "):
            return None
    return f"the model endpoint is not usable: {results[0].error}" if results else None


def _run(args: argparse.Namespace, config: XzatomaConfig) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise UsageError("PROMPT is empty")
    runtime = _runtime(config)

    async def go() -> RunResult:
        try:
            return await runtime.run(
                prompt,
                system_prompt=args.system_prompt,
                max_turns=config.agent.max_turns,
                timeout=config.agent.timeout_seconds,
            )
        finally:
            await _close(runtime)

    with _metrics_for(config, args):
        try:
            result = anyio.run(go)
        except KeyboardInterrupt:
            print("xzatoma: interrupted; the run and its subagents were cancelled", file=sys.stderr)
            return EXIT_INTERRUPTED
    problem = _endpoint_error([result])
    if problem:
        return _fail(problem)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(result.output)
    if args.tree:
        print("\n".join(format_tree(result)), file=sys.stderr)
    if result.status != "complete":
        why = describe_status(result.status, result.error_type)
        print(f"xzatoma: run {why}: {result.error}", file=sys.stderr)
    return {"complete": EXIT_OK, "incomplete": EXIT_INCOMPLETE}.get(result.status, EXIT_FAILED)


def _batch(args: argparse.Namespace, config: XzatomaConfig) -> int:
    tasks = load_tasks(args.file)
    stream: TextIO = sys.stderr if args.json else sys.stdout
    progress = BatchProgress(stream, live=stream.isatty())
    runtime = _runtime(config, hooks=[progress])

    async def go() -> BatchResult:
        try:
            return await runtime.run_batch(
                tasks,
                max_concurrent=config.agent.subagent.max_concurrent,
                fail_fast=args.fail_fast,
                timeout=config.agent.timeout_seconds,
            )
        finally:
            await _close(runtime)

    with _metrics_for(config, args):
        try:
            batch = anyio.run(go)
        except KeyboardInterrupt:
            progress.close()
            progress.print_interrupted(len(tasks), as_json=args.json)
            print("xzatoma: interrupted; the batch was cancelled", file=sys.stderr)
            return EXIT_INTERRUPTED
        finally:
            progress.close()
    problem = _endpoint_error(batch.results)
    if problem:
        return _fail(problem)
    if args.json:
        print(json.dumps(batch_dict(batch), indent=2, ensure_ascii=False))
    else:
        print_batch(batch, sys.stdout)
    if batch.failed or batch.cancelled:
        return EXIT_FAILED
    return EXIT_INCOMPLETE if any(r.status == "incomplete" for r in batch.results) else EXIT_OK


def _metrics_for(
    config: XzatomaConfig, args: argparse.Namespace
) -> contextlib.AbstractContextManager[object]:
    """Serve ``/metrics`` around a run when the config or ``--metrics-port`` asks for it."""
    if not config.telemetry.enabled:
        return contextlib.nullcontext()
    prom = config.telemetry.prometheus
    return serve_metrics(prom.host, prom.port, args.metrics_linger)


@contextlib.contextmanager
def serve_metrics(
    host: str, port: int, linger: float = 0.0, *, announce: bool = True
) -> Iterator[MetricsServer]:
    """Serve ``/metrics`` while the block runs, then ``linger`` seconds more (Ctrl-C ends it)."""
    from . import telemetry

    server = telemetry.start_metrics_server(host=host, port=port)  # ConfigError: exit 2
    try:
        if announce:
            print(f"xzatoma: serving metrics at {server.url}", file=sys.stderr)
        yield server
        if linger > 0:
            print(f"xzatoma: metrics stay at {server.url} for {linger:g} s", file=sys.stderr)
            with contextlib.suppress(KeyboardInterrupt):
                time.sleep(linger)
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
