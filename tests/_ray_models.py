"""Scripted models, tools and worker set-ups for the Ray tests, importable in Ray workers.

The session's Ray puts this folder on its workers' ``PYTHONPATH`` (``ray_session`` in
``conftest.py``), so what a test sends them is pickled by reference to this module, as a
user's own code in an installed module would be.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.lowlevel

from xzatoma import Completion, Message, ToolSpec
from xzatoma.errors import ProviderError
from xzatoma.testing import call, tool_calls

KEY_VARIABLE = "XZ_RAY_TEST_API_KEY"
"""Set before the session's Ray starts, so its workers have it in their environment."""
KEY = "sk-ray-test-0123456789abcdef"


def _task_prompt(messages: Sequence[Message]) -> str:
    return next(m.content or "" for m in messages if m.role == "user")


async def echo(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion | str:
    """Answers ``did: <task prompt>`` (and the summary the same), after a checkpoint."""
    await anyio.lowlevel.checkpoint()
    return f"did: {_task_prompt(messages)}"


async def spawning(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion | str:
    """A task prompt ``spawn`` asks a subagent for ``leaf`` first; any other answers."""
    await anyio.lowlevel.checkpoint()
    prompt = _task_prompt(messages)
    if prompt == "spawn" and len(messages) == 1:
        return tool_calls(call("subagent", {"label": "leaf", "task_prompt": "leaf"}))
    return f"did: {prompt}"


async def bad_fails_others_hang(
    messages: Sequence[Message], tools: Sequence[ToolSpec]
) -> Completion | str:
    """``bad`` fails at once; every other task waits until it is cancelled."""
    if _task_prompt(messages) == "bad":
        raise ProviderError("the bad task's model failed")
    await anyio.sleep(3600)
    raise AssertionError("never reached: the batch cancels this task")


async def hang(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion | str:
    """Waits until it is cancelled (or its deadline passes)."""
    await anyio.sleep(3600)
    raise AssertionError("never reached")


async def brief(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> Completion | str:
    """Answers after 2 ms (a model that takes a moment); task ``spawn`` spawns a child."""
    await anyio.sleep(0.002)
    return await spawning(messages, tools)


class _FileExporter:
    """An OTel span exporter that appends one JSON line per span to a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[object]) -> object:
        from opentelemetry.sdk.trace.export import SpanExportResult

        with open(self.path, "a") as out:
            for span in spans:
                ctx = span.context  # type: ignore[attr-defined]
                parent = span.parent  # type: ignore[attr-defined]
                out.write(
                    json.dumps(
                        {
                            "name": span.name,  # type: ignore[attr-defined]
                            "trace_id": f"{ctx.trace_id:032x}",
                            "span_id": f"{ctx.span_id:016x}",
                            "parent_id": None if parent is None else f"{parent.span_id:016x}",
                            "pid": os.getpid(),
                            "session": (span.attributes or {}).get("xzatoma.session.id"),  # type: ignore[attr-defined]
                        }
                    )
                    + "\n"
                )
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class TraceToFile:
    """A worker set-up: the worker's spans go, one JSON line each, to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __call__(self) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        from xzatoma.telemetry import configure

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_FileExporter(self.path)))  # type: ignore[arg-type]
        configure(tracer_provider=provider)
