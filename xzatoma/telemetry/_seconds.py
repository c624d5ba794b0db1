"""One rule for every number of seconds the telemetry is given (timeouts, intervals)."""

from __future__ import annotations

import math

from ..errors import ConfigError

__all__ = ("positive_seconds",)


def positive_seconds(name: str, seconds: float) -> float:
    """``seconds`` as a float, or the ConfigError that names ``name`` and the rule: a finite
    number greater than 0 (infinity would remove the bound; NaN is no number)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {type(seconds).__name__}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"{name} must be a finite number of seconds greater than 0")
    return float(seconds)
