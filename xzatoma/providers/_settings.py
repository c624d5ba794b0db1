"""Model settings: the sampling and tool-use knobs sent with every request, checked once.

Each setting is ``None`` until someone sets it, and only set ones go on the wire, so an
endpoint's own defaults stay in force for the rest. Settings layer: a subagent's provider
starts from its parent's and a :class:`~xzatoma.SubagentConfig` may override single fields
(:meth:`ModelSettings.merged`). ``tool_choice`` and ``parallel_tool_calls`` are sent only with
a request that offers tools: OpenAI refuses them on a request without any.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Final, Literal, get_args

from .._usage import MAX_TOKENS_PER_CALL
from ..errors import ConfigError

__all__ = (
    "NO_SETTINGS",
    "SETTING_NAMES",
    "TOOL_CHOICES",
    "ModelSettings",
    "ToolChoice",
    "settings_of",
)

ToolChoice = Literal["auto", "none", "required"]
"""``auto`` (the model decides), ``none`` (no tool calls), ``required`` (every reply calls a
tool, so an agent never answers and ends ``incomplete`` at ``max_turns``)."""
TOOL_CHOICES: Final = get_args(ToolChoice)

_SEED_LIMIT = 2**63
"""Seeds are 64-bit signed integers on the wire (OpenAI's ``seed``)."""


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """What to ask of the model besides the conversation; ``None`` leaves the endpoint's
    default.

    Raises:
        ConfigError: A value out of its range or of the wrong type; the message starts
            with the setting's name (the configuration file puts its section in front).
    """

    temperature: float | None = None
    """Sampling temperature, 0..2; 0 makes a local model's answers repeatable."""
    top_p: float | None = None
    """Nucleus sampling: the probability mass to sample from, 0..1."""
    seed: int | None = None
    """A seed for sampling, where the endpoint supports one (llama.cpp, vLLM, OpenAI)."""
    max_tokens: int | None = None
    """The most tokens one reply may have; a reply cut there ends the run ``incomplete``."""
    tool_choice: ToolChoice | None = None
    """``auto``, ``none`` or ``required``; sent only when the request offers tools."""
    parallel_tool_calls: bool | None = None
    """Whether one reply may call several tools; sent only when the request offers tools."""

    def __post_init__(self) -> None:
        _number(self.temperature, "temperature", 0.0, 2.0)
        _number(self.top_p, "top_p", 0.0, 1.0)
        _integer(self.seed, "seed", -_SEED_LIMIT, _SEED_LIMIT - 1)
        _integer(self.max_tokens, "max_tokens", 1, MAX_TOKENS_PER_CALL)
        if self.tool_choice is not None and self.tool_choice not in TOOL_CHOICES:
            words = ", ".join(repr(choice) for choice in TOOL_CHOICES[:-1])
            raise ConfigError(
                f"tool_choice must be {words} or {TOOL_CHOICES[-1]!r}, got "
                f"{self.tool_choice!r}; one named tool cannot be forced on every turn (the "
                "agent could never answer)"
            )
        if self.parallel_tool_calls is not None and type(self.parallel_tool_calls) is not bool:
            raise ConfigError(
                f"parallel_tool_calls must be true or false, got {self.parallel_tool_calls!r}"
            )

    def merged(self, over: ModelSettings | None) -> ModelSettings:
        """These settings with every field that ``over`` sets taken from ``over``."""
        if over is None or not over:
            return self
        if not self:
            return over
        return ModelSettings(
            **{
                f.name: getattr(over, f.name)
                if getattr(over, f.name) is not None
                else getattr(self, f.name)
                for f in fields(self)
            }
        )

    def request_fields(self, *, with_tools: bool) -> dict[str, Any]:
        """The set fields as request-body keys (the tool ones only ``with_tools``)."""
        body: dict[str, Any] = {}
        for name in SETTING_NAMES:
            value = getattr(self, name)
            if value is not None and (with_tools or name not in _TOOL_FIELDS):
                body[name] = value
        return body

    def __bool__(self) -> bool:
        """True when any setting is set."""
        return any(getattr(self, name) is not None for name in SETTING_NAMES)


def settings_of(provider: object) -> ModelSettings:
    """A provider's model settings; none for one that has no ``settings`` (a scripted one)."""
    settings = getattr(provider, "settings", None)
    return settings if isinstance(settings, ModelSettings) else NO_SETTINGS


SETTING_NAMES: Final = tuple(f.name for f in fields(ModelSettings))
"""Every setting's name, in order: also the keys of ``provider`` in the configuration file
and the ``--temperature``-like flags."""
_TOOL_FIELDS: Final = frozenset({"tool_choice", "parallel_tool_calls"})


def _number(value: object, name: str, low: float, high: float) -> None:
    if value is None:
        return
    # bool is an int to Python, but `temperature: true` in a file is a mistake, not 1.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number between {low:g} and {high:g}, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {value!r}")


def _integer(value: object, name: str, low: int, high: int) -> None:
    if value is None:
        return
    if type(value) is not int:
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        bound = f"at least {low}" if value < low else f"at most {high}"
        raise ConfigError(f"{name} must be {bound}, got {value}")


NO_SETTINGS: Final = ModelSettings()  # last: __post_init__ needs the checks above
"""No setting set (shared: a ``ModelSettings`` is frozen)."""
