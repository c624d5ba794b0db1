"""When a failed model call is tried again, and after how long.

Transient failures (429, 5xx, connection errors, timeouts) are retried with capped
exponential backoff and full jitter; a ``Retry-After`` header (seconds or an HTTP date) is
honoured up to a minute.
"""

from __future__ import annotations

import email.utils
import time
from datetime import UTC
from typing import Final

__all__ = ("RETRY_STATUSES", "Retryable", "backoff", "retry_after")

RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
_BACKOFF_BASE = 0.5
_BACKOFF_CAP = 8.0
_BACKOFF_MAX_EXPONENT = 16
"""Past this many doublings the cap has long won; ``2.0**1025`` would raise OverflowError."""
_RETRY_AFTER_CAP = 60.0


class Retryable(Exception):
    """An attempt failed in a way another attempt may not; the message waits for the count."""

    def __init__(
        self, reason: str, head: str, tail: str, *, status: int | None = None, delay: float | None
    ) -> None:
        super().__init__(reason)
        self.reason, self.head, self.tail = reason, head, tail
        self.status, self.delay = status, delay


def backoff(attempt: int, jitter: float) -> float:
    """Full jitter: ``jitter`` (uniform in [0, 1)) times ``min(cap, base * 2**attempt)``, to
    spread out herds."""
    exponent = min(attempt, _BACKOFF_MAX_EXPONENT)
    return jitter * min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0**exponent)


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), capped."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always UTC
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), _RETRY_AFTER_CAP)
