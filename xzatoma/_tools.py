"""Tools the model may call: the ``Tool`` base, ``ToolResult``, and the ``@tool`` decorator.

A tool's parameters are a pydantic model, so the JSON schema the model sees and the
validation of what it sends come from one place. Bad arguments never crash a run: they come
back to the model as an ``Error:`` tool message it can correct, and so does anything else a
tool raises (:func:`run_tool`), but for the run's own cancellation.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, get_type_hints, overload

import pydantic

from ._cancellation import is_stray_cancellation
from ._model_schema import schema_for_models
from ._types import ToolCall, ToolSpec

if TYPE_CHECKING:
    from ._agent import Agent
    from ._run import Run

__all__ = (
    "FunctionTool",
    "Tool",
    "ToolContext",
    "ToolResult",
    "parse_arguments",
    "run_tool",
    "tool",
)

logger = logging.getLogger("xzatoma.agent")

ArgsT = TypeVar("ArgsT", bound=pydantic.BaseModel)


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool gives back: the text the model reads, plus what only the caller sees."""

    content: str
    """The tool message the model receives."""
    is_error: bool = False
    """True when ``content`` reports a refusal or failure (it then starts with ``Error:``)."""

    @classmethod
    def error(cls, message: str) -> ToolResult:
        """An ``Error: ...`` result the model can read and react to."""
        return cls(f"Error: {message}", True)


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolContext:
    """What a tool may know about the run that called it: one tool call, live."""

    run: Run
    """The calling run (depth, label, deadline, quota; see :class:`xzatoma.Run`)."""
    agent: Agent
    """The agent whose model asked for the call (its tools, provider and settings)."""
    call: ToolCall
    """The call being answered."""
    id: int
    """Process-unique id of this tool call; runs it spawns name it as ``call_id``."""
    started: float
    """When the call began, on the run's clock."""

    @property
    def depth(self) -> int:
        """The calling run's depth (0 at the root)."""
        return self.run.depth

    @property
    def label(self) -> str:
        """The calling run's label."""
        return self.run.label

    @property
    def run_id(self) -> int:
        """Id of the calling run."""
        return self.run.id

    @property
    def event_id(self) -> int:
        """The same as :attr:`id` (the name event records use)."""
        return self.id

    @property
    def deadline(self) -> float:
        """Absolute deadline of the calling run on anyio's clock (``math.inf`` when none)."""
        return self.run.deadline

    def remaining_time(self) -> float:
        """Seconds until the calling run's deadline (``math.inf`` when none)."""
        return self.run.remaining_time()


class Tool(Generic[ArgsT]):
    """A tool: a name, a description, a pydantic parameters model and an async ``run``.

    Subclass it and set ``name``, ``description`` and ``parameters``, or decorate a typed
    async function with :func:`tool`. ``run`` returns a ``str`` or a :class:`ToolResult`.
    """

    name: str
    description: str = ""
    parameters: type[ArgsT]
    is_subagent_tool: ClassVar[bool] = False
    """True for the subagent tools, which a child's ``allowed_tools`` may never name."""

    _spec: ToolSpec | None = None

    async def run(self, args: ArgsT, ctx: ToolContext) -> ToolResult | str:
        """Do the work for validated ``args``."""
        raise NotImplementedError

    @property
    def spec(self) -> ToolSpec:
        """What the model is told about this tool (computed once)."""
        if self._spec is None:
            self._spec = ToolSpec(self.name, self.description, self.parameters_schema())
        return self._spec

    def parameters_schema(self) -> dict[str, Any]:
        """The JSON schema of the parameters model, as the model sees it (see
        :func:`schema_for_models`)."""
        return schema_for_models(self.parameters.model_json_schema())

    def validate_arguments(self, arguments: str) -> ArgsT:
        """Parse the model's raw JSON into the parameters model (raises ``ValueError``)."""
        return parse_arguments(self.parameters, self.name, arguments)

    async def invoke(self, ctx: ToolContext) -> ToolResult:
        """Validate ``ctx.call``'s arguments and run; bad arguments become an ``Error:``."""
        try:
            args = self.validate_arguments(ctx.call.arguments)
        except ValueError as exc:
            return ToolResult.error(str(exc))
        result = await self.run(args, ctx)
        return result if isinstance(result, ToolResult) else ToolResult(result)


async def run_tool(found: Tool[Any], ctx: ToolContext, cancels: int = 0) -> ToolResult:
    """Run ``found`` for ``ctx.call``; whatever it raises comes back as an ``Error:`` result.

    Only a cancellation of the run itself propagates. A ``CancelledError`` the tool raised
    on its own (a library it calls cancelled its own work) is a failure of that tool, like
    any other exception, so one tool cannot bring down the whole tree. ``cancels`` is the
    running task's :func:`~xzatoma._cancellation.cancel_requests` before the call (0 for a
    task started for it).
    """
    try:
        return await found.invoke(ctx)
    except Exception as exc:
        logger.info("tool %r raised %s", ctx.call.name, type(exc).__name__, exc_info=True)
        return ToolResult.error(f"tool '{ctx.call.name}' raised {type(exc).__name__}: {exc}")
    except (asyncio.CancelledError, BaseExceptionGroup) as exc:
        if not await is_stray_cancellation(exc, cancels):
            raise
        what = type(exc).__name__
        logger.info("tool %r raised a stray %s", ctx.call.name, what, exc_info=True)
        detail = f" ({exc})" if str(exc) else ""
        return ToolResult.error(
            f"tool '{ctx.call.name}' raised {what}{detail} although nothing cancelled "
            "this run; the tool failed, and the run goes on"
        )


def parse_arguments(model: type[ArgsT], tool_name: str, arguments: str) -> ArgsT:
    """Parse a model's raw JSON arguments into ``model``; ``ValueError`` says what is wrong."""
    try:
        return model.model_validate_json(arguments or "{}")
    except pydantic.ValidationError as exc:
        raise ValueError(describe_validation_error(tool_name, exc)) from None


def describe_validation_error(tool_name: str, exc: pydantic.ValidationError) -> str:
    """One readable line per defect, so the model can fix its call."""
    problems = []
    for error in exc.errors(include_url=False)[:10]:
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        if error["type"] == "json_invalid":
            problems.append(f"arguments are not valid JSON ({error['msg']})")
        else:
            problems.append(f"{where}: {error['msg']}")
    return f"Invalid arguments for tool '{tool_name}': " + "; ".join(problems)


class FunctionTool(Tool[pydantic.BaseModel]):
    """A tool made from a typed async function by :func:`tool`."""

    def __init__(
        self,
        func: Callable[..., Awaitable[object]],
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> None:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"@tool needs an async function, got {func!r}")
        self.func = func
        self.name = name or func.__name__
        self.description = description or inspect.cleandoc(func.__doc__ or "")
        hints = get_type_hints(func)
        fields: dict[str, Any] = {}
        self._ctx_param: str | None = None
        for param in inspect.signature(func).parameters.values():
            annotation = hints.get(param.name, Any)
            if annotation is ToolContext:
                self._ctx_param = param.name
                continue
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[param.name] = (annotation, default)
        model_name = "".join(part.title() for part in self.name.split("_")) + "Args"
        self.parameters = pydantic.create_model(
            model_name,
            __config__=pydantic.ConfigDict(extra="forbid"),
            **fields,
        )

    async def run(self, args: pydantic.BaseModel, ctx: ToolContext) -> ToolResult | str:
        kwargs = {name: getattr(args, name) for name in type(args).model_fields}
        if self._ctx_param is not None:
            kwargs[self._ctx_param] = ctx
        value = await self.func(**kwargs)
        if isinstance(value, ToolResult | str):
            return value
        return json.dumps(value, default=str)


@overload
def tool(func: Callable[..., Awaitable[object]], /) -> FunctionTool: ...
@overload
def tool(
    *, name: str | None = None, description: str | None = None
) -> Callable[[Callable[..., Awaitable[object]]], FunctionTool]: ...
def tool(
    func: Callable[..., Awaitable[object]] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
) -> FunctionTool | Callable[[Callable[..., Awaitable[object]]], FunctionTool]:
    """Make a :class:`Tool` from a typed async function.

    The parameters model is built from the signature (annotations and defaults), the
    description from the docstring. A parameter annotated ``ToolContext`` receives the
    context and is hidden from the model. A return value that is not a ``str`` or
    ``ToolResult`` is sent to the model as JSON.

    Example::

        @tool
        async def add(a: int, b: int) -> str:
            "Add two integers."
            return str(a + b)
    """
    if func is not None:
        return FunctionTool(func, name=name, description=description)

    def decorate(f: Callable[..., Awaitable[object]]) -> FunctionTool:
        return FunctionTool(f, name=name, description=description)

    return decorate
