"""What the command line prints besides its results: xzatoma's log records on stderr, as
``-q`` and ``-v`` ask, and the ``--json`` batch document with ``--messages``."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from ._subagent_models import BatchResult
from ._terminal import printable
from ._views import batch_dict
from .providers._tool_replies import SHOWN

__all__ = ("batch_document", "logging_for")

_LEVELS = {-1: logging.ERROR, 0: logging.ERROR, 1: logging.INFO, 2: logging.DEBUG}


class _EscapingFormatter(logging.Formatter):
    """Log records quote endpoints' words too: escape them like everything else printed.
    A traceback a record carries (a tool that raised) is printed from ``-vv`` on only: an
    error stays one line."""

    def __init__(self, fmt: str, *, tracebacks: bool) -> None:
        super().__init__(fmt)
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if not self.tracebacks and (record.exc_info or record.exc_text):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return printable(super().format(record))


@contextlib.contextmanager
def logging_for(verbosity: int) -> Iterator[None]:
    """xzatoma's log records on stderr while a command runs, by ``verbosity``: -1
    (``-q``) errors only; 0 errors, and the warnings marked
    :data:`~xzatoma.providers._tool_replies.SHOWN` (the endpoint dropped the tools); 1
    (``-v``, ``--verbose``) info and warnings too (retries); 2 (``-vv``) debug, with
    tracebacks."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _EscapingFormatter("xzatoma: %(levelname)s: %(message)s", tracebacks=verbosity >= 2)
    )
    level = _LEVELS[max(-1, min(verbosity, 2))]
    if verbosity == 0:
        handler.addFilter(lambda record: record.levelno >= level or getattr(record, SHOWN, False))
    else:
        handler.setLevel(level)
    logger = logging.getLogger("xzatoma")
    before = logger.level
    if verbosity > 0:
        logger.setLevel(level)
    logger.addHandler(handler)
    # The MCP SDK's own records (a server's failures, which xzatoma reports in its own
    # words) are shown with -v only; without, they must not reach Python's last-resort
    # handler, which would print them between the command's one-line messages.
    sdk = logging.getLogger("mcp")
    sdk_handler = handler if verbosity > 0 else logging.NullHandler()
    sdk.addHandler(sdk_handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)
        sdk.removeHandler(sdk_handler)


def batch_document(batch: BatchResult, *, messages: bool) -> dict[str, object]:
    """``--json`` for a batch; with ``--messages`` each result (and each of its children)
    carries its messages, as ``RunResult.to_dict(messages=True)`` gives them."""
    document = batch_dict(batch)
    if messages:
        entries: list[dict[str, object]] = document["results"]  # type: ignore[assignment]
        document["results"] = [
            {**r.to_dict(messages=True), "resumed": entry["resumed"]}
            for r, entry in zip(batch.results, entries, strict=True)
        ]
    return document
