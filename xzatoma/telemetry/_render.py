"""The ``/metrics`` render thread: ``generate_latest`` off the I/O thread, one at a time.

A collection costs milliseconds of CPU; run on the I/O thread it would stall every other
connection for as long. Scrapes that arrive while one runs share its result (the transport
keeps them waiting for it), so fifty scrapers at once cost one collection, not fifty.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ("Renderer",)

logger = logging.getLogger("xzatoma.telemetry")


class Renderer:
    """The render thread: one collection at a time, on request; results go back by callback."""

    def __init__(
        self, produce: Callable[[], bytes], deliver: Callable[[bytes | None], None]
    ) -> None:
        self._produce = produce
        self._deliver = deliver
        self._wake = threading.Condition()
        self._wanted = False
        self._stopped = False
        self.thread = threading.Thread(target=self._run, name="xzatoma-metrics-render", daemon=True)

    def request(self) -> None:
        """Collect once more; ``deliver`` gets the body (``None`` if collecting raised)."""
        with self._wake:
            self._wanted = True
            self._wake.notify()

    def stop(self) -> None:
        """End the thread after the collection in progress, if any (then join ``thread``)."""
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
                self._wanted = False
            try:
                body: bytes | None = self._produce()
            except Exception:
                logger.exception("xzatoma telemetry: collecting the metrics for /metrics failed")
                body = None
            self._deliver(body)
