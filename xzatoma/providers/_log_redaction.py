"""Keeping the API key out of the HTTP libraries' own log records (httpx, httpcore, aiohttp).

httpx logs every response at INFO (``HTTP Request: POST ... "HTTP/1.1 500 <reason>"``) and
httpcore traces each step at DEBUG, quoting the status line and headers as bytes; an endpoint
that echoes the key there would put it in any application's logs. One filter on those
loggers redacts a record only while an xzatoma provider's request is in flight in the same
task (a context variable holds that provider's redactor), so other code's requests are left
alone and a logger that emits nothing costs nothing: the filter runs only for a record that
is already being logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ._secrets import Redactor

__all__ = ("install_log_redaction", "redacting_logs")

_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
    "aiohttp.client",
    "aiohttp.internal",
)
"""Every logger httpx and httpcore log to (``httpcore/_async/*.py``, ``httpx/_client.py``),
and the two of aiohttp's that its client code uses (``aiohttp/log.py``). A filter on a
logger sees only records logged to that logger itself, so each is named."""

_IN_FLIGHT: ContextVar[Redactor | None] = ContextVar("xzatoma_redactor_in_flight", default=None)


class _RedactInFlight(logging.Filter):
    """Redacts a record's message while a provider's request runs in this context."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact = _IN_FLIGHT.get()
        if redact is not None:
            record.msg, record.args = redact(record.getMessage()), ()
        return True


_FILTER = _RedactInFlight()


def install_log_redaction() -> None:
    """Put the filter on every httpx and httpcore logger that lacks it; idempotent.

    Checked at each provider's construction, not once per process, so a logging
    reconfiguration that dropped the filters is mended by the next provider.
    """
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


@contextmanager
def redacting_logs(redact: Redactor) -> Iterator[None]:
    """While inside, httpx and httpcore records logged from this context are redacted."""
    token = _IN_FLIGHT.set(redact)
    try:
        yield
    finally:
        _IN_FLIGHT.reset(token)
