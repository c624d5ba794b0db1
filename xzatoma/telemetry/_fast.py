"""A faster ``Histogram.record`` for the OTel Python SDK, bound per attribute set.

Most of what the SDK's ``record`` costs is cleaning, copying and hashing the attributes to
find the aggregation they belong to: the same work, with the same answer, on every call.
xzatoma records seven to ten histogram values per subagent execution from a handful of
attribute sets, so it finds each aggregation once, queues the values for it, and hands them
over in bulk when a reader collects (the figures are in bench/README.md, "The telemetry fast
path"). What ``record`` does besides is kept: the finite and non-negative checks (delegated,
with the SDK's warning), the meter's enabled flag, the exemplar filter on every measurement
(the SDK's trace-based one once per context, all its answer depends on; no span, no
exemplar), and the measurement's attributes whenever an exemplar is sampled.

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
import threading
import weakref
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from time import time_ns
from typing import Any, Final, Protocol

from opentelemetry import metrics
from opentelemetry.context import Context, get_current
from opentelemetry.trace import INVALID_SPAN

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
        from opentelemetry.trace.propagation import _SPAN_KEY

        self.span_key = _SPAN_KEY
        """Where a context keeps its span: no span there, no exemplar (the trace-based
        filter's first answer), found without calling it."""
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
            values = (1.5, 0.0, 2.0, 7.0, 0.1, 0.2)
            for value in values:
                by_sdk.aggregate(measurement(value, 0, None, None, None), False)
            _add_to_buckets(inlined, values[:1])
            _add_to_buckets(inlined, values[1:])
            # Every field but the lock and the reservoir (objects of their own, never equal):
            # a field a later release adds, and aggregate() changes, shows up here.
            if _state(by_sdk) != _state(inlined):
                return None
    except Exception:  # shaped otherwise than tested: every value goes through aggregate
        return None
    return ExplicitBuckets


def _state(aggregation: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(aggregation).items() if k not in ("_lock", "_reservoir")}


def _add_to_buckets(aggregation: Any, amounts: Sequence[float]) -> None:
    """What an explicit-bucket aggregation's ``aggregate`` does with each of ``amounts`` (in
    order, keeping no exemplar), without the ``Measurement`` it would be handed, under one
    lock (the amounts are finite; the sum is added in the same order, so it is the same)."""
    with aggregation._lock:
        counts = aggregation._value
        if counts is None:
            counts = aggregation._value = [0] * (len(aggregation._boundaries) + 1)
        total = aggregation._sum
        for amount in amounts:
            total += amount
        aggregation._sum = total
        if aggregation._record_min_max:
            least, most = min(amounts), max(amounts)
            if least < aggregation._min:
                aggregation._min = least
            if most > aggregation._max:
                aggregation._max = most
        boundaries = aggregation._boundaries
        for amount in amounts:
            counts[bisect_left(boundaries, amount)] += 1


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

_MAX_QUEUED: Final = 1024
"""Values a bound histogram keeps queued at most; the one after hands them all over."""


class _Flusher:
    """Hands the queued values of a meter provider's bound histograms to their aggregations
    at the start of each collection, before they are read.

    Registered with the provider's measurement consumer as if it were an observable
    instrument: the consumer calls every one's ``callback`` inside ``collect`` before it
    reads any aggregation, whichever reader collects, so a collection sees every value
    recorded before it began.
    """

    __slots__ = ("_histograms",)

    def __init__(self) -> None:
        self._histograms: weakref.WeakSet[_BoundHistogram] = weakref.WeakSet()

    def add(self, histogram: _BoundHistogram) -> None:
        self._histograms.add(histogram)

    def callback(self, options: object) -> Iterable[object]:
        for histogram in list(self._histograms):
            histogram.flush()
        return ()


_flushers: weakref.WeakKeyDictionary[object, _Flusher] = weakref.WeakKeyDictionary()
_flushers_lock = threading.Lock()


def _flusher_of(consumer: Any) -> _Flusher:
    """The flusher of ``consumer``, registered with it when first asked for."""
    with _flushers_lock:
        flusher = _flushers.get(consumer)
        if flusher is None:
            flusher = _flushers[consumer] = _Flusher()
            consumer.register_asynchronous_instrument(flusher)
        return flusher


class _Binding:
    """One attribute set of a bound histogram: the aggregations its values go to, and the
    values queued for them."""

    __slots__ = ("aggregations", "attributes", "inlined", "queued", "storages")

    def __init__(
        self,
        attributes: _Attributes,
        storages: object,
        aggregations: tuple[Any, ...],
        inlined: bool,
        queued: list[float] | None,
    ) -> None:
        self.attributes = attributes
        """The mapping bound (held, so its id is not reused while this lives)."""
        self.storages = storages
        """The consumer's storage map bound against (replaced when a reader comes or goes)."""
        self.aggregations = aggregations
        self.inlined = inlined
        """Whether every aggregation is an explicit-bucket one, added to by
        :func:`_add_to_buckets`."""
        self.queued = queued
        """Values not yet handed to the aggregations (appended by any thread; taken only
        under the histogram's flush lock); ``None`` when values are added at once."""


class _BoundHistogram:
    """An SDK histogram whose ``record`` goes straight to the aggregations it would reach.

    Bindings are keyed by the identity of the attribute mapping and hold it, so an id is
    never reused while its entry lives: callers pass the same unchanging mapping for the
    same attribute set (xzatoma's are shared constants), a new mapping just binds anew.

    A value for explicit-bucket aggregations (the default) with no exemplar to keep is
    appended to its binding's queue, and the queue handed over in bulk, under one lock per
    aggregation: at the start of every collection (:class:`_Flusher`), when it holds
    :data:`_MAX_QUEUED` values, and before any value reaches the same aggregations another way
    (so each sum is added up in the order of the records, as ``record`` would). When two
    attribute sets share an aggregation (a view that drops attributes), nothing is queued.
    """

    __slots__ = (
        "__weakref__",
        "_bindings",
        "_by_context",
        "_config",
        "_consumer",
        "_decided",
        "_flushing",
        "_histogram",
        "_measurement",
        "_public",
        "_queueing",
        "_retired",
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
        self._queueing = True  # off for good once two attribute sets share an aggregation
        self._bindings: dict[int, _Binding] = {}  # id(attributes) -> its binding
        # Bindings replaced or dropped while another thread may still append to their
        # queues: drained by each flush until one finds them empty.
        self._retired: list[_Binding] = []
        self._flushing = threading.Lock()
        _flusher_of(self._consumer).add(self)

    @property
    def bound(self) -> bool:
        """Whether records take the fast path (False once it fell back to ``record``)."""
        return not self._public

    def record(
        self, amount: float, attributes: _Attributes, context: Context | None = None
    ) -> None:
        """``Histogram.record``: ``context`` (the current one when ``None``) is what the
        exemplar filter judges and an exemplar keeps."""
        binding = self._bindings.get(id(attributes))
        if (
            binding is None
            or binding.attributes is not attributes
            # A reader came or went: the SDK made a new storage map, so bind again.
            or binding.storages is not self._consumer._reader_storages
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
            if self._by_context:
                span = context.get(self._sdk.span_key)
                sample = (
                    span is not None
                    and span is not INVALID_SPAN
                    and self._should_sample(amount, time_ns(), attributes, context)
                )
                self._decided = (context, sample)
            else:
                sample = self._should_sample(amount, time_ns(), attributes, context)
        queued = binding.queued
        if not sample and queued is not None:  # the usual case: an append
            queued.append(amount)
            if len(queued) >= _MAX_QUEUED:
                self._hand_over(binding)
            return
        if queued:  # the values before this one first
            self._hand_over(binding)
        histogram = self._histogram
        if sample:
            # An exemplar keeps the measurement's attributes: made as record makes it.
            measurement = self._measurement(amount, time_ns(), histogram, context, attributes)
            for aggregation in binding.aggregations:
                aggregation.aggregate(measurement, True)
            return
        if binding.inlined:  # explicit buckets only (the default): their aggregate, inlined
            for aggregation in binding.aggregations:
                _add_to_buckets(aggregation, (amount,))
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
        for aggregation in binding.aggregations:
            aggregation.aggregate(measurement, False)

    def flush(self) -> None:
        """Hand every queued value to its aggregations (each collection does it first).

        Every queue goes through :meth:`_hand_over`, which takes the lock, so a hand-over
        another thread has begun (its values taken, not yet added) ends before this returns.
        """
        for binding in list(self._bindings.values()):
            if binding.queued is not None:
                self._hand_over(binding)
        if self._retired:
            with self._flushing:
                retired, self._retired = self._retired, []
            kept = [binding for binding in retired if self._hand_over(binding)]
            if kept:
                with self._flushing:
                    self._retired.extend(kept)

    def _hand_over(self, binding: _Binding) -> bool:
        """Add the values queued on ``binding`` to its aggregations, in the order recorded;
        whether there were any."""
        queued = binding.queued
        if queued is None:
            return False
        with self._flushing:
            # Only a hand-over takes values, and this one holds the lock: the first ``count``
            # are there to take, and what is appended meanwhile stays for the next.
            count = len(queued)
            if not count:
                return False
            amounts = queued[:count]
            del queued[:count]
            for aggregation in binding.aggregations:
                _add_to_buckets(aggregation, amounts)
        return True

    def _retire(self, bindings: Iterable[_Binding]) -> None:
        """Keep the queues of bindings no longer looked up until a flush finds them empty
        (a record on another thread may have found the binding just before)."""
        queued = [binding for binding in bindings if binding.queued is not None]
        if queued:
            with self._flushing:
                self._retired.extend(queued)

    def _record_slowly(
        self, amount: float, attributes: _Attributes, context: Context | None
    ) -> None:
        """Bind ``attributes`` and record through ``record`` (the SDK's checks and warnings)."""
        self.flush()  # the values before this one first, wherever record takes it
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
            self._retire(self._bindings.values())
            self._bindings.clear()
            logger.debug("xzatoma telemetry: %r records through record(): %s", self, exc)
            return
        if len(self._bindings) >= _MAX_BINDINGS:
            self._retire(self._bindings.values())
            self._bindings.clear()
        bound = tuple(aggregations)
        if self._queueing and _shares_an_aggregation(bound, self._bindings.values(), storages):
            # Two attribute sets whose values one aggregation sums: queues per attribute
            # set would change the order of its additions, so add every value at once.
            self._queueing = False
            current = list(self._bindings.values())
            self._retire(current)
            for binding in current:
                at_once = _Binding(
                    binding.attributes,
                    binding.storages,
                    binding.aggregations,
                    binding.inlined,
                    None,
                )
                self._bindings[id(binding.attributes)] = at_once
        replaced = self._bindings.get(id(attributes))
        if replaced is not None:
            self._retire((replaced,))
        buckets = self._sdk.ExplicitBuckets
        inlined = buckets is not None and all(type(a) is buckets for a in aggregations)
        queued: list[float] | None = [] if inlined and self._queueing else None
        self._bindings[id(attributes)] = _Binding(attributes, storages, bound, inlined, queued)

    def __repr__(self) -> str:
        return f"_BoundHistogram({self._histogram.name!r}, bound={self.bound})"


def _shares_an_aggregation(
    aggregations: tuple[Any, ...], bindings: Iterable[_Binding], storages: object
) -> bool:
    """Whether another current binding feeds one of ``aggregations``."""
    mine = {id(a) for a in aggregations}
    return any(
        id(a) in mine
        for binding in bindings
        if binding.storages is storages
        for a in binding.aggregations
    )


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
