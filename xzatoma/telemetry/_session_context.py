"""A traced tree's session in the OTel context: as baggage, and under a key of xzatoma's own.

The baggage entry (``xzatoma.session.id``) is what travels: an instrumented HTTP client
inside a tool sends it in the W3C ``baggage`` header, and a Ray batch's workers receive it.
The private key is what :class:`~xzatoma.telemetry.SessionSpanProcessor` trusts: baggage
can also come in from outside (an HTTP server's instrumentation extracts whatever a client
sent), while only xzatoma sets this key, so a span is named by a session only when it is
started inside that session's tree.
"""

from __future__ import annotations

from opentelemetry import baggage
from opentelemetry import context as otel_context

from .._run import Run
from . import _names as n

__all__ = ("SESSION_KEY", "session_attributes", "session_context")

SESSION_KEY = otel_context.create_key(n.XZ_SESSION_ID)
"""Where xzatoma keeps the session of the tree that is running in an OTel context."""


def session_context(run: Run) -> otel_context.Context | None:
    """The current context with ``run``'s session set (baggage and key), or ``None`` when
    the run has no session id or the context carries it already (the runs below the top)."""
    session = run.session_id
    if session is None or otel_context.get_value(SESSION_KEY) == session:
        return None
    return otel_context.set_value(
        SESSION_KEY, session, baggage.set_baggage(n.XZ_SESSION_ID, session)
    )


def session_attributes(run: Run, attributes: dict[str, str | int]) -> dict[str, str | int]:
    """``attributes`` with the run's session id, when its tree has one."""
    if run.session_id is not None:
        attributes[n.XZ_SESSION_ID] = run.session_id
    return attributes
