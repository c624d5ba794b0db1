"""The command line's ``/metrics`` server: served around a run when asked, and kept up after
it for a final scrape (``--metrics-linger``)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ._interrupt import linger

if TYPE_CHECKING:
    from .config import XzatomaConfig
    from .telemetry import MetricsServer

__all__ = ("linger_for_a_scrape", "metrics_for", "serve_metrics")


def metrics_for(
    config: XzatomaConfig, *, announce: bool = True
) -> contextlib.AbstractContextManager[MetricsServer | None]:
    """Serve ``/metrics`` around a run when the config or ``--metrics-port`` asks for it;
    ``announce`` says where on stderr (not with ``--quiet``)."""
    if not config.telemetry.enabled:
        return contextlib.nullcontext()
    prom = config.telemetry.prometheus
    return serve_metrics(prom.host, prom.port, announce=announce)


@contextlib.contextmanager
def serve_metrics(host: str, port: int, *, announce: bool = True) -> Iterator[MetricsServer]:
    """Serve ``/metrics`` while the block runs; stopped however the block ends."""
    from . import telemetry

    server = telemetry.start_metrics_server(host=host, port=port)  # ConfigError: exit 2
    try:
        if announce:
            print(f"xzatoma: serving metrics at {server.url}", file=sys.stderr)
        yield server
    finally:
        server.stop()


def linger_for_a_scrape(server: MetricsServer | None, seconds: float) -> None:
    """``--metrics-linger``: keep serving for a final scrape; SIGINT or SIGTERM ends it
    early (the command keeps the exit code of its run)."""
    if server is None or not seconds > 0:
        return
    linger(seconds, f"xzatoma: metrics stay at {server.url} for {seconds:g} s")
