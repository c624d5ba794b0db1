"""``SessionSpanProcessor``: the session id on spans that xzatoma does not make itself.

While a traced tree works, its session id is in the current OTel context (as baggage, for
what a tool calls to send on, and under xzatoma's own key, ``_session_context``). Neither is
a span attribute; this processor makes it one on every span started inside the tree, so the
spans of a library a tool calls (an HTTP client's, a database driver's) are found by session
like xzatoma's own.
"""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Span, SpanProcessor

from . import _names as n
from ._session_context import SESSION_KEY

__all__ = ("SessionSpanProcessor",)


class SessionSpanProcessor(SpanProcessor):
    """Puts ``xzatoma.session.id`` on every span started inside a traced xzatoma tree.

    ``tracer_provider.add_span_processor(SessionSpanProcessor())``; the providers xzatoma
    builds (``configure(otlp_endpoint=...)``, :class:`~xzatoma.telemetry.TelemetryCapture`)
    have one already. It reads the session xzatoma put in the context, not the baggage entry
    of that name: baggage also arrives from outside (whatever an HTTP client sends), and a
    span started outside any tree is named by no session. A span that has the attribute
    already (xzatoma's own) keeps its value.
    """

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        session = otel_context.get_value(SESSION_KEY, parent_context)
        if session is None or not span.is_recording():
            return
        if (span.attributes or {}).get(n.XZ_SESSION_ID) is None:
            span.set_attribute(n.XZ_SESSION_ID, str(session))
