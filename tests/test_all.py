"""The public surface: ``xzatoma.__all__`` is exactly what the package promises."""

from __future__ import annotations

import importlib
import inspect

import pytest

import xzatoma

EXPECTED = {
    "Agent",
    "RunResult",
    "RunStatus",
    "ErrorType",
    "Completion",
    "Message",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "ModelSettings",
    "OpenAIProvider",
    "Provider",
    "Tool",
    "ToolContext",
    "ToolResult",
    "tool",
    "BatchResult",
    "ParallelSubagentTool",
    "Quota",
    "QuotaLimits",
    "QuotaStatistics",
    "QuotaTracker",
    "RayExecutor",
    "RedisQuota",
    "Runtime",
    "RuntimeStatistics",
    "SubagentStatistics",
    "Price",
    "Pricing",
    "SubagentConfig",
    "SubagentTask",
    "SubagentTool",
    "Event",
    "Hook",
    "Hooks",
    "Instrument",
    "Run",
    "ModelCall",
    "Batch",
    "ConfigError",
    "DepthLimitExceeded",
    "JournalError",
    "JournalWriteError",
    "LocalModelError",
    "MCPServerError",
    "ProviderError",
    "QuotaExceeded",
    "QuotaUnavailable",
    "XzatomaError",
}


def test_all_is_exactly_the_public_surface() -> None:
    assert set(xzatoma.__all__) == EXPECTED
    assert len(xzatoma.__all__) == len(EXPECTED)


def test_every_public_name_is_importable_and_documented_where_it_is_a_class() -> None:
    for name in xzatoma.__all__:
        value = getattr(xzatoma, name)
        if isinstance(value, type):
            assert value.__doc__, f"{name} has no docstring"


def test_public_classes_say_they_come_from_xzatoma() -> None:
    for name in xzatoma.__all__:
        value = getattr(xzatoma, name)
        if isinstance(value, type) or inspect.isfunction(value):
            assert value.__module__ == "xzatoma", name
    from xzatoma import events

    for kind in events.ALL_EVENTS:
        assert kind.__module__ == "xzatoma.events", kind


@pytest.mark.parametrize(
    "module",
    [
        "xzatoma",
        "xzatoma.events",
        "xzatoma.telemetry",
        "xzatoma.testing",
        "xzatoma.config",
        "xzatoma.mcp",
    ],
)
def test_every_public_class_and_function_reports_a_public_module(module: str) -> None:
    public = importlib.import_module(module)
    for name in public.__all__:
        value = getattr(public, name)
        if isinstance(value, type) or inspect.isfunction(value):
            where = value.__module__
            assert not any(part.startswith("_") for part in where.split(".")), (name, where)
            assert hasattr(importlib.import_module(where), name), (name, where)


def test_error_tree() -> None:
    assert issubclass(xzatoma.ConfigError, xzatoma.XzatomaError)
    assert issubclass(xzatoma.ConfigError, ValueError)
    for name in ("ProviderError", "QuotaExceeded", "DepthLimitExceeded"):
        assert issubclass(getattr(xzatoma, name), xzatoma.XzatomaError)


def test_the_mcp_module_is_its_own_public_surface() -> None:
    from xzatoma import mcp

    assert set(mcp.__all__) == {
        "DEFAULT_STARTUP_TIMEOUT",
        "DEFAULT_TIMEOUT",
        "MAX_RESTARTS",
        "HTTPServer",
        "MCPTool",
        "StdioServer",
        "open_servers",
    }
    for name in mcp.__all__:
        value = getattr(mcp, name)
        if isinstance(value, type) or inspect.isfunction(value):
            assert value.__module__ == "xzatoma.mcp", name
            assert value.__doc__, name


def test_the_events_module_offers_every_event_class_a_subscriber_needs() -> None:
    from xzatoma import events

    classes = {name for name in events.__all__ if isinstance(getattr(events, name), type)}
    live = {"Hooks", "Instrument", "Run", "ModelCall", "Batch"}
    assert classes == {kind.__name__ for kind in events.ALL_EVENTS} | live
    assert set(events.__all__) == classes | {"ALL_EVENTS", "RUN_EVENTS", "Event", "Hook"}
    assert events.RUN_EVENTS < events.ALL_EVENTS
