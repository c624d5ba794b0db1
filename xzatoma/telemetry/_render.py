"""The ``/metrics`` render thread: collecting and encoding off the I/O thread, one at a time.

A collection costs milliseconds of CPU; run on the I/O thread it would stall every other
connection for as long. Scrapes that arrive while one runs share its result when they want
a variant it makes (the transport keeps them waiting for it; the others wait for the next),
so fifty scrapers at once cost one collection, not fifty, and one compression per variant.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from ._exposition import Variant

__all__ = ("Rendered", "Renderer")

logger = logging.getLogger("xzatoma.telemetry")

Rendered = Mapping[Variant, bytes | None]
"""One render's bodies by variant (None: encoding that one failed)."""


class Renderer:
    """The render thread: one render at a time, on request; results go back by callback."""

    def __init__(
        self,
        produce: Callable[[frozenset[Variant]], Rendered],
        deliver: Callable[[Rendered | None], None],
    ) -> None:
        self._produce = produce
        self._deliver = deliver
        self._wake = threading.Condition()
        self._wanted: frozenset[Variant] = frozenset()  # empty: nothing asked
        self._stopped = False
        self.thread = threading.Thread(target=self._run, name="xzatoma-metrics-render", daemon=True)

    def request(self, variants: frozenset[Variant]) -> None:
        """Render ``variants``; ``deliver`` gets their bodies (``None`` if collecting raised).

        Asked only while no render runs (the transport waits for ``deliver`` first).
        """
        with self._wake:
            self._wanted = variants
            self._wake.notify()

    def stop(self) -> None:
        """End the thread after the render in progress, if any (then join ``thread``)."""
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._wanted or self._stopped):
                    self._wake.wait()
                if self._stopped:
                    return
                variants, self._wanted = self._wanted, frozenset()
            try:
                bodies: Rendered | None = self._produce(variants)
            except Exception:
                logger.exception("xzatoma telemetry: collecting the metrics for /metrics failed")
                bodies = None
            self._deliver(bodies)
