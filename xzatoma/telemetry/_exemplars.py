"""Exemplars on ``/metrics``: the SDK's, put back on the OTel Prometheus exporter's families.

The exporter (``opentelemetry-exporter-prometheus`` 0.66b) turns each SDK data point into
prometheus_client samples and drops the point's exemplars. :func:`adopt` wraps the
per-metric translation of each of the exporter's collectors in a registry: the families
come out exactly as the exporter makes them (names, labels, order), then every histogram
bucket and counter sample gets the exemplar the SDK kept for it, labelled
``{trace_id="<32 hex>",span_id="<16 hex>"}``, with its value and time. The OpenMetrics
format shows them; the classic text format leaves them out.

The SDK hands an exemplar out once (its reservoir starts afresh at every collection), so
the last one of each bucket is kept and shown until a newer one replaces it, as
prometheus_client's own histograms do, and a scrape in the classic format does not take
it from the next OpenMetrics one. An exemplar without a trace (an ``AlwaysOn`` filter
outside any span) links to nothing and is left out, as are its filtered attributes
(OpenMetrics allows 128 characters of exemplar labels; the two ids take 63).

This leans on the exporter's private ``_CustomCollector._translate_metric``, checked on the
releases ``pyproject.toml`` allows (0.66b*); where it is missing, or what it makes is not
shaped as expected, the metrics are served as the exporter made them, without exemplars,
and a warning says so once.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric as Family
    from prometheus_client.samples import Exemplar, Sample

__all__ = ("adopt",)

logger = logging.getLogger("xzatoma.telemetry")

_MARK: Final = "_xzatoma_exemplars"
"""Set on a collector once its translation is wrapped, so it is wrapped once."""

_SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def adopt(registry: CollectorRegistry) -> None:
    """Put exemplars on what every exporter collector in ``registry`` yields, from now on.

    Cheap enough to call before every render (a look at each registered collector), so a
    reader created after the server started is picked up at the next scrape. A collector
    already adopted is left as it is.
    """
    try:
        from opentelemetry.exporter.prometheus import _CustomCollector
    except ImportError:  # an exporter without it: nothing to adopt
        return
    lock = getattr(registry, "_lock", None)
    collectors = getattr(registry, "_collector_to_names", None)
    if lock is None or not isinstance(collectors, dict):
        return
    with lock:
        found = [c for c in collectors if isinstance(c, _CustomCollector)]
    for collector in found:
        if getattr(collector, _MARK, None) is None:
            translate = getattr(collector, "_translate_metric", None)
            if callable(translate):
                setattr(collector, _MARK, _Translation(translate))
                collector._translate_metric = getattr(collector, _MARK)  # type: ignore[method-assign]


class _Translation:
    """One collector's ``_translate_metric``, then the exemplars on what it added."""

    def __init__(self, translate: Callable[..., None]) -> None:
        self._translate = translate
        self._kept: dict[_SampleKey, Exemplar] = {}
        """The last exemplar of each bucket or counter sample, until a newer one comes."""
        self._names: set[str] = set()
        """Metrics that ever had an exemplar (only those cost more than the exporter)."""
        self._broken = False

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        metric = kwargs.get("metric")
        families = kwargs.get("metric_family_id_metric_family")
        if self._broken or metric is None or not isinstance(families, dict):
            self._translate(*args, **kwargs)
            return
        points = getattr(metric.data, "data_points", ())
        if metric.name not in self._names and not any(p.exemplars for p in points):
            self._translate(*args, **kwargs)  # the usual case: nothing to add
            return
        before = {key: len(family.samples) for key, family in families.items()}
        self._translate(*args, **kwargs)
        try:
            self._names.add(metric.name)
            grown = [
                (family, before.get(key, 0))
                for key, family in families.items()
                if len(family.samples) > before.get(key, 0)
            ]
            if not grown:  # a kind the exporter does not translate: nothing to add to
                return
            if len(grown) > 1:
                self._give_up(f"{metric.name} made {len(grown)} families grow, not one")
                return
            family, start = grown[0]
            if family.type == "histogram":
                self._on_buckets(family, start, points)
            elif family.type == "counter":
                self._on_totals(family, start, points)
        except Exception:  # never lose the exporter's output to this
            logger.exception("xzatoma telemetry: exemplars for /metrics failed; left out")
            self._broken = True

    def _on_buckets(self, family: Family, start: int, points: Sequence[Any]) -> None:
        """Each point's buckets are the next ``len(bucket_counts)`` ``_bucket`` samples."""
        samples = family.samples
        name = family.name + "_bucket"
        buckets = [i for i in range(start, len(samples)) if samples[i].name == name]
        if len(buckets) != sum(len(p.bucket_counts) for p in points):
            self._give_up(f"{family.name} has {len(buckets)} buckets, not one per count")
            return
        offset = 0
        for point in points:
            chunk = buckets[offset : offset + len(point.bucket_counts)]
            offset += len(chunk)
            if samples[chunk[-1]].labels.get("le") != "+Inf":
                self._give_up(f"{family.name}'s buckets of a point do not end at +Inf")
                return
            by_bucket: dict[int, list[Any]] = {}
            for exemplar in point.exemplars:
                # The SDK's bucket of a value, (bound[i-1], bound[i]]: bisect_left.
                index = bisect.bisect_left(point.explicit_bounds, exemplar.value)
                by_bucket.setdefault(min(index, len(chunk) - 1), []).append(exemplar)
            for index, position in enumerate(chunk):
                self._attach(samples, position, _newest(by_bucket.get(index, ())))

    def _on_totals(self, family: Family, start: int, points: Sequence[Any]) -> None:
        """A counter has one ``_total`` sample per point: it gets the point's newest."""
        samples = family.samples
        name = family.name + "_total"
        totals = [i for i in range(start, len(samples)) if samples[i].name == name]
        if len(totals) != len(points):
            self._give_up(f"{family.name} has {len(totals)} totals for {len(points)} points")
            return
        for position, point in zip(totals, points, strict=True):
            self._attach(samples, position, _newest(point.exemplars))

    def _attach(self, samples: list[Sample], position: int, fresh: Exemplar | None) -> None:
        sample = samples[position]
        key = (sample.name, tuple(sample.labels.items()))
        if fresh is not None:
            self._kept[key] = fresh
        else:
            fresh = self._kept.get(key)
        if fresh is not None:
            samples[position] = sample._replace(exemplar=fresh)

    def _give_up(self, why: str) -> None:
        """The exporter's output is not shaped as expected: serve it without exemplars."""
        logger.warning(
            "xzatoma telemetry: /metrics is served without exemplars (this version of "
            "opentelemetry-exporter-prometheus is not the one it was checked on: %s)",
            why,
        )
        self._broken = True


def _newest(exemplars: Sequence[Any]) -> Exemplar | None:
    """The prometheus_client exemplar of the newest SDK one in a trace; None if none is."""
    newest = None
    for exemplar in exemplars:
        if not (exemplar.trace_id and exemplar.span_id):
            continue  # links to no trace
        if newest is None or exemplar.time_unix_nano >= newest.time_unix_nano:
            newest = exemplar
    return None if newest is None else _exemplar(newest)


def _exemplar(exemplar: Any) -> Exemplar:
    """The prometheus_client exemplar of an SDK one (which has a trace and a span)."""
    from prometheus_client.samples import Exemplar, Timestamp

    nanos = int(exemplar.time_unix_nano)
    return Exemplar(
        {"trace_id": f"{exemplar.trace_id:032x}", "span_id": f"{exemplar.span_id:016x}"},
        float(exemplar.value),
        Timestamp(nanos // 1_000_000_000, nanos % 1_000_000_000),
    )
