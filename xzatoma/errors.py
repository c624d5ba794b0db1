"""The exceptions xzatoma raises, split by who is to blame.

::

    XzatomaError                 root of everything xzatoma raises
    ├── ConfigError              the caller's mistake (also a ValueError): bad config or arguments
    │   ├── JournalError         a batch journal that cannot be used (corrupt, locked, newer,
    │   │                        other tasks)
    │   └── MCPServerError       an MCP server that could not be started or reached (before
    │                            the run: a missing command, an early exit, a refused
    │                            connection, a handshake that timed out)
    ├── JournalWriteError        a batch journal that could no longer be written mid-batch
    ├── ProviderError            the model endpoint failed or answered something unusable
    ├── QuotaExceeded            a shared quota limit was reached
    ├── QuotaUnavailable         a shared quota kept elsewhere (Redis) could not be reached
    ├── DepthLimitExceeded       a spawn would nest subagents deeper than ``max_depth``
    └── LocalModelError          the local model could not be fetched, verified or served

Run-time failures inside an agent tree are reported on ``RunResult`` (``status`` and
``error_type``) rather than raised, so a parent can always answer with what it has; these
classes are what the pieces raise internally and what public helpers raise to the caller.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from typing import ClassVar

__all__ = (
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


class XzatomaError(Exception):
    """Root of every exception xzatoma raises."""


class ConfigError(XzatomaError, ValueError):
    """The caller's mistake: an invalid setting, argument or configuration file."""


class JournalError(ConfigError):
    """A batch journal (``run_batch(journal=...)``, ``xzatoma batch --journal``) that cannot
    be used: not a journal, corrupt, in use by another live process, written by a newer
    xzatoma, made from other tasks. Raised before anything runs; the file is left as it is.
    """


class JournalWriteError(XzatomaError):
    """A batch journal that could no longer be written during a batch (the disk full, the
    file moved or removed): the batch stops there. What was committed before is kept, so the
    same batch with the same journal resumes once the cause is fixed.

    Attributes:
        result: The :class:`~xzatoma.BatchResult` as far as the batch went (the tasks that
            ended are in it, journaled or not); ``None`` from the journal itself.
    """

    def __init__(self, message: str, *, result: object | None = None) -> None:
        super().__init__(message)
        self.result = result


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
        "cost": "cost limit reached ({used}/{maximum})",
    }

    def __init__(self, *, limit: str, used: float | Decimal, maximum: float | Decimal) -> None:
        self.limit = limit
        self.used = used
        self.maximum = maximum
        if limit == "cost":
            spent = usd(used, ROUND_CEILING)  # reached: never shown below the limit
            detail = self._WHAT[limit].format(used=spent, maximum=usd(maximum))
        else:
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


class MCPServerError(ConfigError):
    """An MCP server (``xzatoma.mcp.open_servers``, ``tools.mcp_servers``, ``--mcp``) that
    could not be started or reached, raised before the run: the message names the server and
    why (the command not found, its exit code and the last lines of its stderr, a connection
    refused, no MCP handshake within its ``startup_timeout``).

    Attributes:
        server: The server's name.
        where: How it is reached (its command, or its URL without secrets).
        reason: Why, without the server's name.
    """

    def __init__(self, server: str, where: str, reason: str) -> None:
        super().__init__(f"MCP server '{server}' ({where}) could not be started: {reason}")
        self.server = server
        self.where = where
        self.reason = reason


class LocalModelError(XzatomaError):
    """The local model (``xzatoma demo --local``, the real-model tests) could not be
    downloaded, verified or served; the message says which step failed and what to do."""


def usd(amount: float | Decimal, rounding: str = ROUND_HALF_EVEN) -> str:
    """An amount of US dollars for a message: ``$0.52``; below a cent, two significant
    digits (``$0.0012``), so a small limit does not read ``$0.00``. ``rounding`` is a
    :mod:`decimal` rounding (``ROUND_CEILING``: a spend never reads below a limit it reached)."""
    value = Decimal(str(amount)) if not isinstance(amount, Decimal) else amount
    if value == 0:
        return "$0"
    if abs(value) < Decimal("0.01"):
        value = value.quantize(Decimal(1).scaleb(value.adjusted() - 1), rounding)  # 2 digits
        if abs(value) < Decimal("0.01"):
            return f"${value:f}"
    return f"${value.quantize(Decimal('0.01'), rounding)}"


class QuotaUnavailable(XzatomaError):
    """A quota kept outside this process (:class:`~xzatoma.RedisQuota`) that could not be
    reached, or did not answer within its timeout.

    A tree never runs unlimited for want of its quota: the spawn that needed it is refused
    (``error_type`` ``execution_failed``, this message on the result), and a running agent
    whose model call could not be charged or checked ends ``failed`` the same way.
    """
