"""xzatoma: a runtime for LLM agents that delegate to subagents, recursively and in parallel
batches, under one quota and a depth limit, with OpenTelemetry built in."""

from __future__ import annotations

import inspect as _inspect

from ._agent import Agent as Agent
from ._events import Event as Event
from ._hooks import Hook as Hook
from ._hooks import Hooks as Hooks
from ._hooks import Instrument as Instrument
from ._limits import Quota as Quota
from ._limits import QuotaLimits as QuotaLimits
from ._limits import QuotaStatistics as QuotaStatistics
from ._limits import QuotaTracker as QuotaTracker
from ._pricing import Price as Price
from ._pricing import Pricing as Pricing
from ._ray_executor import RayExecutor as RayExecutor
from ._redis_quota import RedisQuota as RedisQuota
from ._result import ErrorType as ErrorType
from ._result import RunResult as RunResult
from ._result import RunStatus as RunStatus
from ._run import Batch as Batch
from ._run import ModelCall as ModelCall
from ._run import Run as Run
from ._runtime import Runtime as Runtime
from ._statistics import RuntimeStatistics as RuntimeStatistics
from ._statistics import SubagentStatistics as SubagentStatistics
from ._subagent_models import BatchResult as BatchResult
from ._subagent_models import SubagentConfig as SubagentConfig
from ._subagent_models import SubagentTask as SubagentTask
from ._subagents import ParallelSubagentTool as ParallelSubagentTool
from ._subagents import SubagentTool as SubagentTool
from ._tools import Tool as Tool
from ._tools import ToolContext as ToolContext
from ._tools import ToolResult as ToolResult
from ._tools import tool as tool
from ._types import Completion as Completion
from ._types import Message as Message
from ._types import ToolCall as ToolCall
from ._types import ToolSpec as ToolSpec
from ._types import Usage as Usage
from ._version import package_version
from .errors import ConfigError as ConfigError
from .errors import DepthLimitExceeded as DepthLimitExceeded
from .errors import JournalError as JournalError
from .errors import JournalWriteError as JournalWriteError
from .errors import LocalModelError as LocalModelError
from .errors import MCPServerError as MCPServerError
from .errors import ProviderError as ProviderError
from .errors import QuotaExceeded as QuotaExceeded
from .errors import QuotaUnavailable as QuotaUnavailable
from .errors import XzatomaError as XzatomaError
from .providers import ModelSettings as ModelSettings
from .providers import OpenAIProvider as OpenAIProvider
from .providers import Provider as Provider

__version__ = package_version()

__all__ = (
    # the agent loop, one run and its result
    "Agent",
    "Run",
    "RunResult",
    "RunStatus",
    "ErrorType",
    # chat types
    "Completion",
    "Message",
    "ToolCall",
    "ToolSpec",
    "Usage",
    # providers
    "ModelSettings",
    "OpenAIProvider",
    "Provider",
    # tools
    "Tool",
    "ToolContext",
    "ToolResult",
    "tool",
    # subagents, quota and the front door
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
    # prices and cost
    "Price",
    "Pricing",
    "SubagentConfig",
    "SubagentTask",
    "SubagentTool",
    # subscribers and what they are told
    "Batch",
    "Event",
    "Hook",
    "Hooks",
    "Instrument",
    "ModelCall",
    # errors
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
)

# The public names say where to import them from (in reprs, tracebacks, docs and pickles),
# not which private module holds their code.
for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type) or _inspect.isfunction(_value):
        _value.__module__ = __name__
del _name, _value
