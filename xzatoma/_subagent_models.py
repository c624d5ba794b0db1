"""The plain shapes of subagents: their configuration, the task the model sends and a batch's
result. No async code here: ``_spawn`` runs them, ``_views`` makes their JSON."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Final, Literal

import pydantic

from ._result import NO_COST, RunResult, add_costs
from ._types import Usage
from .errors import ConfigError
from .providers._base import Provider
from .providers._settings import ModelSettings

__all__ = (
    "DEFAULT_SUMMARY_PROMPT",
    "LABEL_MAX_LENGTH",
    "BatchResult",
    "ParallelSubagentArgs",
    "SubagentConfig",
    "SubagentTask",
)

DEFAULT_SUMMARY_PROMPT = "Summarize your findings concisely"

LABEL_MAX_LENGTH = 200
"""The longest label a task may have (characters)."""


@dataclass(frozen=True, slots=True)
class SubagentConfig:
    """How subagents are spawned; shared by both subagent tools of a tree."""

    max_depth: int = 3
    """Deepest level a subagent may run at (root is 0); 1..10."""
    default_max_turns: int = 10
    """Model calls a subagent may make when its task does not say; 1..100."""
    output_max_size: int = 1_048_576
    """Bytes of UTF-8 the parent receives from a child, marker included; at least 1024."""
    max_concurrent: int = 5
    """Tasks of one parallel batch in flight at once, unless the call says otherwise."""
    summary_prompt: str | None = DEFAULT_SUMMARY_PROMPT
    """Sent after the task answer; the answer to it is what the parent receives. None: off."""
    timeout: float | None = None
    """Seconds each subagent may run (also bounded by its parent and the quota)."""
    provider: Provider | None = None
    """Model for children instead of the parent's."""
    model: str | None = None
    """Model name for children (the provider must offer ``with_model``)."""
    model_settings: ModelSettings | None = None
    """Model settings for children: each field set here replaces the one children inherit
    from their parent's provider (the provider must offer ``with_settings``)."""

    def __post_init__(self) -> None:
        p = "agent.subagent"
        _int_in(self.max_depth, f"{p}.max_depth", 1, 10, "(stack overflow risk)")
        _int_in(self.default_max_turns, f"{p}.default_max_turns", 1, 100)
        if _not_int(self.output_max_size) or self.output_max_size < 1024:
            raise ConfigError(f"{p}.output_max_size must be at least 1024 bytes")
        if _not_int(self.max_concurrent) or self.max_concurrent < 1:
            raise ConfigError(f"{p}.max_concurrent must be greater than 0")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"{p}.timeout_seconds must be greater than 0")
        if self.model_settings is not None and not isinstance(self.model_settings, ModelSettings):
            raise ConfigError(
                f"model_settings must be a ModelSettings, got {type(self.model_settings).__name__}"
            )


def _not_int(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _int_in(value: int, name: str, low: int, high: int, why: str = "") -> None:
    if _not_int(value) or value < low:
        raise ConfigError(f"{name} must be greater than {low - 1}")
    if value > high:
        raise ConfigError(f"{name} cannot exceed {high}" + (f" {why}" if why else ""))


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


NonBlank = Annotated[str, pydantic.AfterValidator(_not_blank)]


class SubagentTask(pydantic.BaseModel):
    """A task for a subagent: its instructions and the limits it runs under."""

    # The docstring above is the schema description the model reads; it is also what
    # ``Runtime.run_batch`` and ``xzatoma batch`` take, as objects or dicts of these keys.

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    label: NonBlank = pydantic.Field(
        max_length=LABEL_MAX_LENGTH, description="A short name for this subagent's task."
    )
    task_prompt: NonBlank = pydantic.Field(
        description="The complete instructions for the subagent; it sees nothing else."
    )
    summary_prompt: str | None = pydantic.Field(
        default=None,
        description="What the subagent is asked after its task, to shape what you receive.",
    )
    allowed_tools: list[str] | None = pydantic.Field(
        default=None,
        description=(
            "Names of your own tools the subagent may use (default: all of them); never "
            "subagent or parallel_subagent, which it gets by itself."
        ),
    )
    max_turns: int | None = pydantic.Field(
        default=None, ge=1, le=50, description="Model calls the subagent may make (1-50)."
    )


class ParallelSubagentArgs(pydantic.BaseModel):
    """Independent tasks to run at the same time, each in its own subagent."""

    model_config = pydantic.ConfigDict(extra="forbid")

    tasks: list[SubagentTask] = pydantic.Field(
        min_length=1, description="The tasks, each run by its own subagent."
    )
    max_concurrent: int | None = pydantic.Field(
        default=None, ge=1, description="How many subagents run at once."
    )
    fail_fast: bool = pydantic.Field(
        default=False, description="Cancel the remaining tasks at the first failure."
    )


SCHEMA_WORDS: Final = frozenset(
    {"$schema", "additionalProperties", "anyOf", "default", "description", "items",
     "maxLength", "maximum", "minItems", "minimum", "properties", "required", "title", "type"}
)  # fmt: skip
"""JSON Schema's own words. Small models copy them from the tool's schema into the call
(``"required": ["label", "task_prompt"]``) and repeat them however often they are told not
to; in a call they can only be noise."""
_BATCH_KEYS: Final = frozenset({"fail_fast", "max_concurrent"})


def _without(noise: frozenset[str]) -> Callable[[object], object]:
    def drop(data: object) -> object:
        if isinstance(data, dict) and not noise.isdisjoint(data):
            return {k: v for k, v in data.items() if k not in noise}
        return data

    return drop


class ModelSentTask(SubagentTask):
    """A :class:`SubagentTask` as a model's ``subagent`` call sends it: JSON Schema words
    (:data:`SCHEMA_WORDS`) and the batch's own ``fail_fast``/``max_concurrent`` are dropped
    before it is checked; any other unknown key is still refused, so a misspelt
    restriction (``allowedTools``) cannot quietly give the child every tool. Tasks from
    Python and task files drop nothing."""

    _drop = pydantic.model_validator(mode="before")(_without(SCHEMA_WORDS | _BATCH_KEYS))


class ModelSentBatch(ParallelSubagentArgs):
    """:class:`ParallelSubagentArgs` as a model's ``parallel_subagent`` call sends them:
    JSON Schema words dropped, in the batch and in each task (see :class:`ModelSentTask`)."""

    _drop = pydantic.model_validator(mode="before")(_without(SCHEMA_WORDS))

    tasks: list[ModelSentTask] = pydantic.Field(  # type: ignore[assignment]
        min_length=1, description="The tasks, each run by its own subagent."
    )


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The outcome of a parallel batch."""

    results: tuple[RunResult, ...]
    """One result per task, in input order."""
    status: Literal["complete", "partial", "failed"]
    """``complete``: all succeeded; ``failed``: none did; else ``partial``."""
    successful: int
    failed: int
    cancelled: int
    duration: float
    resumed: tuple[int, ...] = ()
    """The tasks (indexes, in input order) whose result was read from the batch journal
    (``run_batch(journal=...)``) rather than run this time."""

    @classmethod
    def of(
        cls, results: Sequence[RunResult], duration: float, resumed: Sequence[int] = ()
    ) -> BatchResult:
        """The batch of these task results (in input order), counted."""
        count = len(results)
        ok = sum(1 for r in results if r.succeeded)
        cancelled = sum(1 for r in results if r.status == "cancelled")
        status: Literal["complete", "partial", "failed"] = (
            "complete" if ok == count else "failed" if ok == 0 else "partial"
        )
        return cls(
            tuple(results), status, ok, count - ok - cancelled, cancelled, duration, tuple(resumed)
        )

    @property
    def total_usage(self) -> Usage:
        """Every model call of every task's tree, each counted once."""
        total = Usage()
        for result in self.results:
            total = total + result.total_usage
        return total

    @property
    def total_cost(self) -> Decimal | None:
        """US dollars of every model call of every task's tree; ``None`` if any is unknown."""
        total: Decimal | None = NO_COST
        for result in self.results:
            total = add_costs(total, result.total_cost)
        return total
