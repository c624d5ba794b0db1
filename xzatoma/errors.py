"""The exceptions xzatoma raises, split by who is to blame.

::

    XzatomaError                 root of everything xzatoma raises
    ├── ConfigError              the caller's mistake (also a ValueError): bad config or arguments
    ├── ProviderError            the model endpoint failed or answered something unusable
    ├── QuotaExceeded            a shared quota limit was reached
    ├── DepthLimitExceeded       a spawn would nest subagents deeper than ``max_depth``
    └── LocalModelError          the local model could not be fetched, verified or served

Run-time failures inside an agent tree are reported on ``RunResult`` (``status`` and
``error_type``) rather than raised, so a parent can always answer with what it has; these
classes are what the pieces raise internally and what public helpers raise to the caller.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = (
    "ConfigError",
    "DepthLimitExceeded",
    "LocalModelError",
    "ProviderError",
    "QuotaExceeded",
    "XzatomaError",
)


class XzatomaError(Exception):
    """Root of every exception xzatoma raises."""


class ConfigError(XzatomaError, ValueError):
    """The caller's mistake: an invalid setting, argument or configuration file."""


class ProviderError(XzatomaError):
    """The model endpoint failed, timed out, or answered with something unusable.

    Attributes:
        status_code: The HTTP status of the last attempt, when there was a response.
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class QuotaExceeded(XzatomaError):
    """A limit of the shared quota was reached.

    The message is built from the numbers, with one prefix:
    ``Resource quota exceeded: execution limit reached (5/5)``.
    """

    _WHAT: ClassVar[dict[str, str]] = {
        "executions": "execution limit reached ({used}/{maximum})",
        "tokens": "token limit reached ({used}/{maximum} tokens)",
        "time": "time limit reached ({used:.1f}s/{maximum:.1f}s)",
    }

    def __init__(self, *, limit: str, used: float, maximum: float) -> None:
        self.limit = limit
        self.used = used
        self.maximum = maximum
        detail = self._WHAT[limit].format(used=used, maximum=maximum)
        super().__init__(f"Resource quota exceeded: {detail}")


class DepthLimitExceeded(XzatomaError):
    """A spawn would run a subagent deeper than ``max_depth``."""

    def __init__(self, *, max_depth: int, depth: int) -> None:
        self.max_depth = max_depth
        self.depth = depth
        super().__init__(
            f"Maximum subagent recursion depth ({max_depth}) exceeded. Current depth: {depth}."
        )


class LocalModelError(XzatomaError):
    """The local model (``xzatoma demo --local``, the real-model tests) could not be
    downloaded, verified or served; the message says which step failed and what to do."""
