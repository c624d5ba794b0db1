"""What ``/metrics`` answers: the format a scraper asks for, gzipped when it accepts gzip.

The format is prometheus_client's negotiation (:func:`~prometheus_client.exposition.
choose_encoder`): OpenMetrics, with exemplars, for an ``Accept`` naming
``application/openmetrics-text`` (as Prometheus sends by default), else the classic text
format. What it answers is one of a fixed set of :class:`Variant` (format and gzip), never an
echo of what the client wrote, so the set of answers the render thread makes stays small
and no request bytes reach the response head. One render makes every variant waited for
from one collection; each is encoded once and compressed once, however many scrapers
share it.

prometheus_client is imported when an :class:`Exposition` is made (the server has checked
the extra is installed), not with this module.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, cast

from ._exemplars import adopt

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

__all__ = ("CLASSIC_TYPE", "Exposition", "Variant", "accepts_gzip")

logger = logging.getLogger("xzatoma.telemetry")

CLASSIC_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format: the answer unless the scraper asks for another."""
_VARY: Final = ("Vary", "Accept, Accept-Encoding")
_GZIP_LEVEL: Final = 1
"""The cheapest: xzatoma's 56 KB of text (a small tree) becomes 3.0 KB in 0.3 ms; zlib's
default (6) makes 2.7 KB in 0.9 ms, level 9 2.5 KB in 1.5 ms. On the agent's CPU, not the
network's, is where the difference counts."""
_REMEMBERED: Final = 64
"""``Accept`` header pairs whose variant is remembered (a scraper sends the same ones each
time); past that many the memory starts afresh, so odd headers cannot make it grow."""
_Q_ZERO: Final = re.compile(r"0(\.0{0,3})?")
_ESCAPINGS: Final = ("underscores", "dots", "values", "allow-utf-8")
_OPENMETRICS_VERSIONS: Final = ("1.0.0", "2.0.0")


@dataclass(frozen=True, slots=True)
class Variant:
    """One answer ``/metrics`` can give: a format, gzipped or not."""

    content_type: str
    """The ``Content-Type`` of the format, as prometheus_client names it."""
    gzip: bool
    """Whether the body is gzip-compressed (``Content-Encoding: gzip``)."""
    headers: tuple[tuple[str, str], ...] = field(init=False, compare=False, repr=False)
    """The headers of the answer besides ``Content-Type`` and ``Content-Length``."""

    def __post_init__(self) -> None:
        headers = (("Content-Encoding", "gzip"), _VARY) if self.gzip else (_VARY,)
        object.__setattr__(self, "headers", headers)


class _Families:
    """One collection's families, encoded as often as there are formats waited for."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class Exposition:
    """A registry's ``/metrics`` answers: which variant a request gets, and rendering them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client.exposition import choose_encoder

        self._registry = registry
        self._choose = choose_encoder
        self._encoders: dict[str, Callable[[Collector], bytes]] = {}
        for accept in _canonical_accepts():
            encoder, content_type = choose_encoder(accept)
            self._encoders[content_type] = encoder
        self._variants = {
            (content_type, zipped): Variant(content_type, zipped)
            for content_type in self._encoders
            for zipped in (False, True)
        }
        self._remembered: dict[tuple[str, str], Variant] = {}  # the I/O thread's alone
        adopt(registry)

    def negotiate(self, accept: str, accept_encoding: str) -> Variant:
        """The variant that answers a request with these ``Accept`` headers.

        A header prometheus_client cannot read (``version=1.x``: it compares the parts as
        numbers) gets the classic format, and an OpenMetrics version it takes but this
        server does not list gets OpenMetrics 1.0.0 (the body is the same).
        """
        key = (accept, accept_encoding)
        variant = self._remembered.get(key)
        if variant is None:
            if len(self._remembered) >= _REMEMBERED:
                self._remembered.clear()
            variant = self._remembered[key] = self._choose_variant(accept, accept_encoding)
        return variant

    def _choose_variant(self, accept: str, accept_encoding: str) -> Variant:
        try:
            content_type = self._choose(accept)[1]
        except Exception:
            content_type = CLASSIC_TYPE
        if content_type not in self._encoders:
            escaping = content_type.rpartition("escaping=")[2]
            content_type = _openmetrics("1.0.0", escaping)
            if content_type not in self._encoders:
                content_type = CLASSIC_TYPE
        return self._variants[content_type, accepts_gzip(accept_encoding)]

    def render(self, variants: Collection[Variant]) -> dict[Variant, bytes | None]:
        """Collect once, then each variant's body (None: encoding that format failed).

        Raises whatever collecting raises (the render thread logs it; the scrapers get a
        500).
        """
        adopt(self._registry)  # a reader made since the last render gets exemplars too
        families = cast("Collector", _Families(list(self._registry.collect())))
        encoded: dict[str, bytes | None] = {}
        for content_type in {variant.content_type for variant in variants}:
            try:
                encoded[content_type] = self._encoders[content_type](families)
            except Exception:
                logger.exception("xzatoma telemetry: encoding /metrics as %s failed", content_type)
                encoded[content_type] = None
        bodies: dict[Variant, bytes | None] = {}
        for variant in variants:
            body = encoded[variant.content_type]
            if body is not None and variant.gzip:
                body = gzip.compress(body, compresslevel=_GZIP_LEVEL, mtime=0)
            bodies[variant] = body
        return bodies


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` takes gzip: named, and not with ``q=0`` (refused).

    prometheus_client's ``gzip_accepted`` takes ``gzip;q=0`` as a yes; RFC 9110 says it is
    a no. A ``*`` is not taken as gzip: the uncompressed answer is always acceptable.
    """
    for coding in accept_encoding.split(","):
        name, _, parameters = coding.partition(";")
        if name.strip(" \t").lower() == "gzip":
            for parameter in parameters.split(";"):
                key, _, value = parameter.partition("=")
                if key.strip(" \t").lower() == "q" and _Q_ZERO.fullmatch(value.strip(" \t")):
                    return False
            return True
    return False


def _openmetrics(version: str, escaping: str) -> str:
    return f"application/openmetrics-text; version={version}; charset=utf-8; escaping={escaping}"


def _canonical_accepts() -> list[str]:
    """One ``Accept`` for each answer prometheus_client can give (it names each apart)."""
    accepts = ["", "application/openmetrics-text"]
    for escaping in _ESCAPINGS:
        accepts.append(f"text/plain; version=1.0.0; escaping={escaping}")
        accepts.extend(
            f"application/openmetrics-text; version={version}; escaping={escaping}"
            for version in _OPENMETRICS_VERSIONS
        )
    return accepts
