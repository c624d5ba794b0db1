"""A faster ``Histogram.record`` for the OTel Python SDK, bound per attribute set.

Most of what the SDK's ``record`` costs is cleaning, copying and hashing the attributes to
find the aggregation they belong to: the same work, with the same answer, on every call.
xzatoma records six histogram values per subagent execution from a handful of attribute
sets, so it finds each aggregation once and then hands it the measurement directly (the
figures are in bench/README.md, "The telemetry fast path"). What ``record`` does besides is
kept: the finite and non-negative checks (delegated, with the SDK's warning), the meter's
enabled flag, the exemplar filter on every measurement (the SDK's trace-based one once per
context, all its answer depends on), and the measurement's attributes whenever an exemplar
is sampled.

This leans on SDK internals, so it is used only where it was checked to give the same data
points as ``record`` (tests/test_telemetry_fast.py compares the two through views,
attribute filters, cardinality overflow, exemplars, readers added later and a meter
disabled between records):

- the SDK's own ``Histogram`` of a tested SDK release (:func:`sdk_is_tested`: a minor of
  :data:`TESTED_SDK_MINORS`, from :data:`OLDEST_TESTED_SDK` on), the range pyproject.toml
  pins; ``bench/otel_matrix.sh`` checks other releases;
- every reader cumulative: delta readers drop their aggregations at each collection, so a
  binding would go stale, and the instrument falls back to ``record`` for good;
- a binding is remade when a reader is added or removed (the SDK replaces its storage map);
- attribute keys and values the SDK keeps as they are (non-empty string keys, string or
  integer values); others go through ``record``, which cleans them.

Anything else, or any surprise while binding, takes the public ``record``: slower, never
wrong. ``XZATOMA_TELEMETRY_FAST_PATH=0`` in the environment turns the fast path off.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from bisect import bisect_left
from collections.abc import Mapping
from time import time_ns
from typing import Any, Final, Protocol

from opentelemetry import metrics
from opentelemetry.context import Context, get_current

__all__ = (
    "OLDEST_TESTED_SDK",
    "SWITCH",
    "TESTED_SDK_MINORS",
    "HistogramRecorder",
    "fast_histogram",
    "sdk_is_tested",
)

logger = logging.getLogger("xzatoma.telemetry")

SWITCH: Final = "XZATOMA_TELEMETRY_FAST_PATH"
"""Set to ``0`` to record every histogram through the SDK's public ``record`` (read once)."""

TESTED_SDK_MINORS: Final = frozenset({(1, 45)})
"""The ``opentelemetry-sdk`` minors (major, minor) whose internals the fast path was checked
against (``bench/otel_matrix.sh``); any other version records through the public
``Histogram.record``."""

OLDEST_TESTED_SDK: Final = (1, 45, 2)
"""The first release the checks passed on. Patch releases change internals too: 1.45.0 and
1.45.1 predate the reworked ``_ViewInstrumentMatch`` (hashed attribute keys, cardinality
limit, ``_get_or_create_aggregation``) that the fast path binds through."""


def sdk_is_tested(version: str) -> bool:
    """Whether the fast path was checked on ``opentelemetry-sdk`` ``version`` (``"1.45.2"``).

    Later patch releases of a tested minor count as tested, as pyproject.toml's range admits
    them; a release before :data:`OLDEST_TESTED_SDK` or of another minor does not.
    """
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if found is None:
        return False
    release = (int(found[1]), int(found[2]), int(found[3] or 0))
    return release[:2] in TESTED_SDK_MINORS and release >= OLDEST_TESTED_SDK


_Attributes = Mapping[str, str | int]
_INF: Final = float("inf")
_NO_CONTEXT: Final = object()
_new = object.__new__
_set = object.__setattr__


class HistogramRecorder(Protocol):
    """What the subscriber needs of a histogram: ``Histogram.record``'s signature."""

    def record(
        self, amount: float, attributes: _Attributes, context: Context | None = None
    ) -> None: ...


def fast_histogram(histogram: metrics.Histogram) -> HistogramRecorder:
    """``histogram`` itself, or a :class:`_BoundHistogram` over it when the SDK allows."""
    sdk = _sdk_internals()
    if sdk is None or not isinstance(histogram, sdk.Histogram):
        return histogram
    # The consumer is fixed for the histogram's life: checked once, here, not per binding.
    consumer = getattr(histogram, "_measurement_consumer", None)
    if not isinstance(consumer, sdk.SynchronousMeasurementConsumer):
        return histogram
    if not hasattr(consumer, "_reader_storages") or not hasattr(histogram, "_meter_config"):
        return histogram
    return _BoundHistogram(histogram, sdk)


_MEASUREMENT_FIELDS: Final = ("value", "time_unix_nano", "instrument", "context", "attributes")


class _Sdk:
    """The SDK internals the fast path touches, imported once."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics._internal._view_instrument_match import _hash_attributes
        from opentelemetry.sdk.metrics._internal.exemplar import TraceBasedExemplarFilter
        from opentelemetry.sdk.metrics._internal.instrument import Histogram
        from opentelemetry.sdk.metrics._internal.measurement import Measurement
        from opentelemetry.sdk.metrics._internal.measurement_consumer import (
            SynchronousMeasurementConsumer,
        )

        self.Histogram = Histogram
        self.Measurement = Measurement
        # The fast path fills a Measurement's __dict__ directly: only if that gives what
        # the constructor gives.
        fields = tuple(field.name for field in dataclasses.fields(Measurement))
        if fields != _MEASUREMENT_FIELDS:
            raise ImportError(f"Measurement has the fields {fields}, not {_MEASUREMENT_FIELDS}")
        made = _new(Measurement)
        _set(made, "__dict__", dict(zip(fields, (1.0, 2, None, None, None), strict=True)))
        if made != Measurement(1.0, 2, None, None, None):  # type: ignore[arg-type]
            raise ImportError("a Measurement is not made by filling its __dict__")
        self.SynchronousMeasurementConsumer = SynchronousMeasurementConsumer
        self.hash_attributes = _hash_attributes
        self.TraceBasedExemplarFilter = TraceBasedExemplarFilter
        self.ExplicitBuckets = _explicit_buckets_if_inlinable(Measurement)


def _explicit_buckets_if_inlinable(measurement: type) -> type | None:
    """The SDK's explicit-bucket aggregation if :func:`_add_to_buckets` leaves one as its
    ``aggregate`` does without an exemplar (checked on two fresh ones); ``None`` if not."""
    try:
        from opentelemetry.sdk.metrics._internal.aggregation import (
            _ExplicitBucketHistogramAggregation as ExplicitBuckets,
        )
        from opentelemetry.sdk.metrics._internal.exemplar import (
            AlignedHistogramBucketExemplarReservoir,
        )
        from opentelemetry.sdk.metrics.export import AggregationTemporality

        def made(record_min_max: bool) -> Any:
            reservoir: Any = AlignedHistogramBucketExemplarReservoir
            cumulative = AggregationTemporality.CUMULATIVE
            return ExplicitBuckets(
                {}, cumulative, 0, reservoir, boundaries=(1.0, 2.0), record_min_max=record_min_max
            )

        for record_min_max in (True, False):
            by_sdk, inlined = made(record_min_max), made(record_min_max)
            for value in (1.5, 0.0, 2.0, 7.0):
                by_sdk.aggregate(measurement(value, 0, None, None, None), False)
                _add_to_buckets(inlined, value)
            # Every field but the lock and the reservoir (objects of their own, never equal):
            # a field a later release adds, and aggregate() changes, shows up here.
            if _state(by_sdk) != _state(inlined):
                return None
    except Exception:  # shaped otherwise than tested: every value goes through aggregate
        return None
    return ExplicitBuckets


def _state(aggregation: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(aggregation).items() if k not in ("_lock", "_reservoir")}


def _add_to_buckets(aggregation: Any, amount: float) -> None:
    """What an explicit-bucket aggregation's ``aggregate`` does with a value it keeps no
    exemplar of, without the ``Measurement`` it would be handed (``amount`` is finite)."""
    with aggregation._lock:
        if aggregation._value is None:
            aggregation._value = [0] * (len(aggregation._boundaries) + 1)
        aggregation._sum += amount
        if aggregation._record_min_max:
            if amount < aggregation._min:
                aggregation._min = amount
            if amount > aggregation._max:
                aggregation._max = amount
        aggregation._value[bisect_left(aggregation._boundaries, amount)] += 1


_sdk: _Sdk | None = None
_sdk_checked = False


def _sdk_internals() -> _Sdk | None:
    global _sdk, _sdk_checked
    if not _sdk_checked:
        _sdk_checked = True
        if os.environ.get(SWITCH, "").strip().lower() in ("0", "false", "off", "no"):
            logger.info("xzatoma telemetry: %s is off: histograms use record()", SWITCH)
            return None
        try:
            from opentelemetry.sdk.version import __version__

            if sdk_is_tested(__version__):
                _sdk = _Sdk()
            else:
                logger.debug("xzatoma telemetry: SDK %s untested, plain record()", __version__)
        except (ImportError, ValueError):
            _sdk = None
    return _sdk


_MAX_BINDINGS: Final = 1024
"""More attribute sets than this on one histogram and the bindings start over (no leak)."""


class _BoundHistogram:
    """An SDK histogram whose ``record`` goes straight to the aggregations it would reach.

    Bindings are keyed by the identity of the attribute mapping and hold it, so an id is
    never reused while its entry lives: callers pass the same unchanging mapping for the
    same attribute set (xzatoma's are shared constants), a new mapping just binds anew.
    """

    __slots__ = (
        "_bindings",
        "_by_context",
        "_config",
        "_consumer",
        "_decided",
        "_histogram",
        "_measurement",
        "_public",
        "_sdk",
        "_should_sample",
    )

    def __init__(self, histogram: Any, sdk: _Sdk) -> None:
        self._histogram = histogram
        self._consumer = histogram._measurement_consumer
        self._config = histogram._meter_config
        exemplar_filter = self._consumer._sdk_config.exemplar_filter
        self._should_sample = exemplar_filter.should_sample
        # The SDK's trace-based filter answers from the context alone (is its span sampled?),
        # and a context is an immutable mapping: its answer is kept for the context last seen.
        self._by_context = type(exemplar_filter) is sdk.TraceBasedExemplarFilter
        self._decided: tuple[object, bool] = (_NO_CONTEXT, False)  # (context, its answer)
        self._measurement = sdk.Measurement
        self._sdk = sdk
        self._public = False  # set for good once the SDK's set-up rules the fast path out
        # id(attributes) -> (attributes, the storage map bound against, aggregations,
        # whether each is an explicit-bucket one whose aggregate is inlined)
        self._bindings: dict[int, tuple[_Attributes, object, tuple[Any, ...], bool]] = {}

    @property
    def bound(self) -> bool:
        """Whether records take the fast path (False once it fell back to ``record``)."""
        return not self._public

    def record(
        self, amount: float, attributes: _Attributes, context: Context | None = None
    ) -> None:
        """``Histogram.record``: ``context`` (the current one when ``None``) is what the
        exemplar filter judges and an exemplar keeps."""
        entry = self._bindings.get(id(attributes))
        if (
            entry is None
            or entry[0] is not attributes
            # A reader came or went: the SDK made a new storage map, so bind again.
            or entry[1] is not self._consumer._reader_storages
            or not 0 <= amount < _INF
        ):
            self._record_slowly(amount, attributes, context)
            return
        config = self._config
        if config is not None and not config.is_enabled:
            return
        context = context or get_current()  # as record: an empty context means the current
        seen, sample = self._decided
        if context is not seen:
            sample = self._should_sample(amount, time_ns(), attributes, context)
            if self._by_context:
                self._decided = (context, sample)
        histogram = self._histogram
        if sample:
            # An exemplar keeps the measurement's attributes: made as record makes it.
            measurement = self._measurement(amount, time_ns(), histogram, context, attributes)
            for aggregation in entry[2]:
                aggregation.aggregate(measurement, True)
            return
        if entry[3]:  # explicit buckets only (the default): their aggregate, inlined
            for aggregation in entry[2]:
                _add_to_buckets(aggregation, amount)
            return
        # Without an exemplar an aggregation reads only the value. The dataclass's own
        # __init__ (five frozen-field stores and a check) costs twice as much as filling
        # its __dict__, which gives the same object (the fields are checked at import).
        measurement = _new(self._measurement)
        _set(
            measurement,
            "__dict__",
            {
                "value": amount,
                "time_unix_nano": time_ns(),
                "instrument": histogram,
                "context": context,
                "attributes": None,
            },
        )
        for aggregation in entry[2]:
            aggregation.aggregate(measurement, False)

    def _record_slowly(
        self, amount: float, attributes: _Attributes, context: Context | None
    ) -> None:
        """Bind ``attributes`` and record through ``record`` (the SDK's checks and warnings)."""
        config = self._config
        enabled = config is None or config.is_enabled
        # Binding makes the aggregation; a disabled meter's record must make nothing.
        if not self._public and enabled and 0 <= amount < _INF:
            self._bind(attributes)
        self._histogram.record(amount, attributes, context)

    def _bind(self, attributes: _Attributes) -> None:
        """Find the aggregations of ``attributes`` as ``record`` would, or give up for good."""
        storages = self._consumer._reader_storages
        try:
            # Keys and values the SDK would keep as they are; anything it would clean or drop
            # takes the public path.
            if not all(isinstance(key, str) and key for key in attributes):
                raise _Unsupported("an attribute key that is not a non-empty string")
            if not all(isinstance(value, str | int) for value in attributes.values()):
                raise _Unsupported("an attribute value that is not a string or an integer")
            aggregations = []
            for storage in storages.values():
                for match in storage._get_or_init_view_instrument_match(self._histogram):
                    if match._reset_on_collect:
                        raise _Unsupported("a reader with delta temporality")
                    aggregations.append(_aggregation(match, attributes, self._sdk))
        except Exception as exc:  # an SDK set up or shaped otherwise than tested
            self._public = True
            self._bindings.clear()
            logger.debug("xzatoma telemetry: %r records through record(): %s", self, exc)
            return
        if len(self._bindings) >= _MAX_BINDINGS:
            self._bindings.clear()
        buckets = self._sdk.ExplicitBuckets
        inlined = buckets is not None and all(type(a) is buckets for a in aggregations)
        self._bindings[id(attributes)] = (attributes, storages, tuple(aggregations), inlined)

    def __repr__(self) -> str:
        return f"_BoundHistogram({self._histogram.name!r}, bound={self.bound})"


class _Unsupported(Exception):
    """An SDK set-up the fast path does not cover."""


def _aggregation(match: Any, attributes: _Attributes, sdk: _Sdk) -> Any:
    """The aggregation ``match.consume_measurement`` would feed for ``attributes``."""
    kept: dict[str, str | int] = dict(attributes)
    keys = match._view._attribute_keys
    if keys is not None:
        kept = {k: v for k, v in kept.items() if k in keys}
    with match._lock:
        return match._get_or_create_aggregation(sdk.hash_attributes(kept), kept)
