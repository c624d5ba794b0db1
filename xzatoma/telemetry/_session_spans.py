"""``SessionSpanProcessor``: the session id on spans that xzatoma does not make itself.

While a runtime's tree works, its session id is OTel baggage in the current context
(``xzatoma.session.id``), so it travels to whatever a tool calls: W3C ``baggage`` headers
out of an instrumented HTTP client, and a tool's own code can read it. Baggage is not a span
attribute, though; this processor makes it one on every span started where it is set, so
the spans of a library a tool calls (an HTTP client's, a database driver's) are found by
session like xzatoma's own.
"""

from __future__ import annotations

from opentelemetry import baggage
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Span, SpanProcessor

from . import _names as n

__all__ = ("SessionSpanProcessor",)


class SessionSpanProcessor(SpanProcessor):
    """Copies the ``xzatoma.session.id`` baggage entry onto every span started under it.

    ``tracer_provider.add_span_processor(SessionSpanProcessor())``; the providers xzatoma
    builds (``configure(otlp_endpoint=...)``, :class:`~xzatoma.telemetry.TelemetryCapture`)
    have one already. OpenTelemetry's ``opentelemetry-processor-baggage`` does the same for
    every baggage entry.
    """

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        session = baggage.get_baggage(n.XZ_SESSION_ID, parent_context)
        if session is not None and span.is_recording():
            span.set_attribute(n.XZ_SESSION_ID, str(session))
