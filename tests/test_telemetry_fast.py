"""The histogram fast path gives exactly the data points ``Histogram.record`` gives.

Each test records one sequence twice, on two SDK meter providers set up alike: once through
the SDK's public ``record`` and once through ``fast_histogram``, then compares what an
in-memory reader collects (attributes, count, sum, min, max, buckets, exemplars). The set-ups
are the ones that change where a measurement goes: views that rename, filter attributes or
change the aggregation, a cardinality limit, two readers, a reader added later, delta
temporality, exemplars, a disabled meter; and values the SDK refuses.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import (
    ExplicitBucketHistogramAggregation,
    SumAggregation,
    View,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.version import __version__ as sdk_version

from xzatoma.telemetry import _fast
from xzatoma.telemetry._config import state
from xzatoma.telemetry._fast import (
    OLDEST_TESTED_SDK,
    TESTED_SDK_MINORS,
    fast_histogram,
    sdk_is_tested,
)

BUCKETS = (0.1, 0.2, 0.4, 0.8, 1.6)
Attributes = Mapping[str, str | int]
DEPTH_1: Attributes = {"depth": 1}
DEPTH_2: Attributes = {"depth": 2}
PAIR: Attributes = {"depth": 1, "status": "complete"}
VALUES = (0, 0.05, 0.1, 0.15, 0.4, 1, 1.6, 7, 123456.5, 3)
SDK_TESTED = sdk_is_tested(sdk_version)
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

Setup = Callable[[], dict[str, Any]]


def _record_both(
    setup: Setup,
    records: Sequence[tuple[float, Mapping[str, str | int]]],
    *,
    between: Callable[[MeterProvider], None] | None = None,
) -> tuple[list[Any], list[Any], Any]:
    """Record ``records`` publicly and through the fast path; the data points of each."""
    results = []
    fast = None
    for use_fast in (False, True):
        options = setup()
        readers = options.pop("readers")
        provider = MeterProvider(metric_readers=readers, **options)
        histogram = provider.get_meter("t").create_histogram(
            "h", "s", explicit_bucket_boundaries_advisory=BUCKETS
        )
        recorder = fast_histogram(histogram) if use_fast else histogram
        half = len(records) // 2
        for value, attributes in records[:half]:
            recorder.record(value, attributes)
        if between is not None:
            between(provider)
        for value, attributes in records[half:]:
            recorder.record(value, attributes)
        results.append([_points(reader) for reader in readers])
        if use_fast:
            fast = recorder
        provider.shutdown()
    return results[0], results[1], fast


def _points(reader: InMemoryMetricReader) -> list[tuple[Any, ...]]:
    """Every data point of ``reader``, timestamps and trace ids left out."""
    data = reader.get_metrics_data()
    found: list[tuple[Any, ...]] = []
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    fields = dict(vars(point)) if hasattr(point, "__dict__") else {}
                    if not fields:
                        slots: tuple[str, ...] = getattr(point, "__slots__", ())
                        fields = {name: getattr(point, name) for name in slots}
                    exemplars = tuple(
                        (e.value, tuple(sorted((e.filtered_attributes or {}).items())))
                        for e in fields.pop("exemplars", ())
                    )
                    for name in ("start_time_unix_nano", "time_unix_nano"):
                        fields.pop(name, None)
                    attributes = tuple(sorted(fields.pop("attributes").items()))
                    found.append((metric.name, attributes, sorted(fields.items()), exemplars))
    return sorted(found, key=repr)


def _records() -> list[tuple[float, Mapping[str, str | int]]]:
    sets = (DEPTH_1, DEPTH_2, PAIR)
    return [(value, sets[i % 3]) for i, value in enumerate(VALUES * 3)]


def _one_reader() -> dict[str, Any]:
    return {"readers": [InMemoryMetricReader()]}


SETUPS: dict[str, Setup] = {
    "default": _one_reader,
    "two readers": lambda: {"readers": [InMemoryMetricReader(), InMemoryMetricReader()]},
    "view filtering attributes": lambda: {
        "readers": [InMemoryMetricReader()],
        "views": [View(instrument_name="h", name="renamed", attribute_keys={"depth"})],
    },
    "view with other buckets": lambda: {
        "readers": [InMemoryMetricReader()],
        "views": [
            View(instrument_name="h", aggregation=ExplicitBucketHistogramAggregation((1.0,)))
        ],
    },
    "two views, one a sum": lambda: {
        "readers": [InMemoryMetricReader()],
        "views": [
            View(instrument_name="h"),
            View(instrument_name="h", name="h_sum", aggregation=SumAggregation()),
        ],
    },
    "cardinality limit": lambda: {
        "readers": [InMemoryMetricReader()],
        "views": [View(instrument_name="h", aggregation_cardinality_limit=2)],
    },
}


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_the_fast_path_gives_the_data_points_of_record(name: str) -> None:
    public, fast, recorder = _record_both(SETUPS[name], _records())

    assert fast == public
    assert public[0], "nothing was recorded: the comparison would prove nothing"
    assert _is_bound(recorder) is SDK_TESTED


def _is_bound(recorder: object) -> bool:
    return isinstance(recorder, _fast._BoundHistogram) and recorder.bound


def test_the_installed_sdk_takes_the_fast_path() -> None:
    # A failure, not a skip: on an SDK outside the tested releases every histogram silently
    # takes the slower public record(), and the tests above prove nothing about the fast path.
    if not SDK_TESTED:
        tested = ", ".join(f"{major}.{minor}" for major, minor in sorted(TESTED_SDK_MINORS))
        oldest = ".".join(map(str, OLDEST_TESTED_SDK))
        pytest.fail(
            f"opentelemetry-sdk {sdk_version} is installed, but the telemetry fast path was "
            f"checked only on {tested} from {oldest} on, so histograms fall back to the slower "
            "record(). Install the range pyproject.toml pins (pip install -e "
            f"'.[dev,prometheus]'), or check this release with `bench/otel_matrix.sh "
            f"{sdk_version}` and, if every test passes, add it to TESTED_SDK_MINORS "
            "(xzatoma/telemetry/_fast.py) and to the opentelemetry pins of pyproject.toml.",
            pytrace=False,
        )
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    histogram = provider.get_meter("t").create_histogram("h")
    recorder = fast_histogram(histogram)
    recorder.record(1.0, DEPTH_1)  # binds, and records through record()
    public_calls: list[float] = []
    sdk_record = histogram.record

    def counting(amount: float, attributes: Any = None, context: Any = None) -> None:
        public_calls.append(amount)
        sdk_record(amount, attributes, context)

    histogram.record = counting  # type: ignore[method-assign]
    for value in (2.0, 3.0, 4.0):
        recorder.record(value, DEPTH_1)

    assert _is_bound(recorder)
    assert public_calls == []  # the three values went straight to the aggregation
    (point,) = _points(reader)
    assert (dict(point[2])["count"], dict(point[2])["sum"]) == (4, 10.0)
    assert isinstance(histogram, Histogram)


def test_explicit_bucket_aggregations_take_a_value_without_a_measurement(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The default aggregation of a histogram: its aggregate() is inlined on the fast path, so
    # a value with no exemplar to keep makes no Measurement and calls no aggregate().
    sdk = _fast._sdk_internals()
    assert sdk is not None
    assert sdk.ExplicitBuckets is not None
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    histogram = provider.get_meter("t").create_histogram(
        "h", explicit_bucket_boundaries_advisory=BUCKETS
    )
    recorder = fast_histogram(histogram)
    recorder.record(0.3, DEPTH_1)  # binds, through record()
    aggregated: list[object] = []
    monkeypatch.setattr(sdk.ExplicitBuckets, "aggregate", lambda *args: aggregated.append(args))
    for value in (0.05, 0.2, 9.0):
        recorder.record(value, DEPTH_1)

    assert aggregated == []
    (point,) = _points(reader)
    data = dict(point[2])
    assert (data["count"], data["sum"], data["min"], data["max"]) == (4, 9.55, 0.05, 9.0)
    assert data["bucket_counts"] == (1, 1, 1, 0, 0, 1)


def _bounds(requirement: str) -> tuple[tuple[int, ...], tuple[int, int]]:
    """``NAME>=A.B[.C][bN],<A.D`` as ``((A, B[, C]), (A, D))``."""
    found = re.fullmatch(r"[\w-]+>=(\d+)\.(\d+)(?:\.(\d+))?(?:b\d+)?,<(\d+)\.(\d+)", requirement)
    assert found, f"{requirement!r} is not of the form NAME>=A.B[.C],<A.D"
    lower = tuple(int(part) for part in found.groups()[:3] if part is not None)
    return lower, (int(found[4]), int(found[5]))


def test_pyproject_pins_the_opentelemetry_releases_the_fast_path_was_tested_on() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["prometheus"]]
    pins = {
        requirement.split(">")[0]: requirement
        for requirement in requirements
        if requirement.startswith("opentelemetry-")
    }
    (major,) = {major for major, _ in TESTED_SDK_MINORS}
    minors = sorted(minor for _, minor in TESTED_SDK_MINORS)
    # One run of minors, from the oldest tested release to the end of the newest minor.
    expected = (OLDEST_TESTED_SDK, (major, minors[-1] + 1))

    assert minors == list(range(OLDEST_TESTED_SDK[1], minors[-1] + 1))
    assert _bounds(pins["opentelemetry-sdk"]) == expected
    assert _bounds(pins["opentelemetry-api"]) == expected
    # The exporter ships with the SDK, 21 minors ahead (0.66b* with 1.45), and requires it.
    lower, upper = _bounds(pins["opentelemetry-exporter-prometheus"])
    assert (lower[:2], upper) == ((0, minors[0] + 21), (0, minors[-1] + 22))


@pytest.mark.parametrize(
    ("version", "tested"),
    [
        ("1.45.2", True),
        ("1.45.10", True),
        ("1.45.3.dev0", True),
        ("1.45.1", False),
        ("1.45", False),
        ("1.44.9", False),
        ("1.46.0", False),
        ("2.45.2", False),
        ("not a version", False),
    ],
)
def test_a_release_is_tested_from_the_oldest_tested_one_within_a_tested_minor(
    version: str, tested: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_fast, "TESTED_SDK_MINORS", frozenset({(1, 45)}))
    monkeypatch.setattr(_fast, "OLDEST_TESTED_SDK", (1, 45, 2))

    assert sdk_is_tested(version) is tested


def test_an_untested_sdk_version_records_through_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_fast, "TESTED_SDK_MINORS", frozenset({(0, 1)}))
    monkeypatch.setattr(_fast, "_sdk_checked", False)
    monkeypatch.setattr(_fast, "_sdk", None)
    histogram = MeterProvider().get_meter("t").create_histogram("h")

    assert fast_histogram(histogram) is histogram


def test_the_environment_switch_turns_the_fast_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_fast.SWITCH, "0")
    monkeypatch.setattr(_fast, "_sdk_checked", False)
    monkeypatch.setattr(_fast, "_sdk", None)
    histogram = MeterProvider().get_meter("t").create_histogram("h")

    assert fast_histogram(histogram) is histogram


def test_a_histogram_of_the_no_op_api_is_left_as_it_is() -> None:
    histogram = NoOpMeterProvider().get_meter("t").create_histogram("h")

    assert fast_histogram(histogram) is histogram


def test_a_reader_added_later_gets_the_records_that_follow() -> None:
    late: list[InMemoryMetricReader] = []

    def add_reader(provider: MeterProvider) -> None:
        reader = InMemoryMetricReader()
        late.append(reader)
        provider.add_metric_reader(reader)

    records = _records()
    public, fast, _ = _record_both(_one_reader, records, between=add_reader)

    assert fast == public
    late_public, late_fast = (_points(reader) for reader in late)
    assert late_fast == late_public
    count = sum(dict(fields)["count"] for _, _, fields, _ in late_fast)
    assert count == len(records) - len(records) // 2


def test_delta_temporality_falls_back_to_record_and_stays_exact() -> None:
    def delta() -> dict[str, Any]:
        temporality: dict[type, AggregationTemporality] = {Histogram: AggregationTemporality.DELTA}
        return {"readers": [InMemoryMetricReader(preferred_temporality=temporality)]}

    public, fast, recorder = _record_both(delta, _records())

    assert fast == public
    assert not recorder.bound


def test_exemplars_of_sampled_spans_are_kept_with_their_attributes() -> None:
    tracer = TracerProvider().get_tracer("t")
    records = _records()
    results = []
    for use_fast in (False, True):
        reader = InMemoryMetricReader()
        provider = MeterProvider(
            metric_readers=[reader],
            views=[View(instrument_name="h", attribute_keys={"depth"})],
        )
        histogram = provider.get_meter("t").create_histogram(
            "h", explicit_bucket_boundaries_advisory=BUCKETS
        )
        recorder = fast_histogram(histogram) if use_fast else histogram
        for i, (value, attributes) in enumerate(records):
            if i % 2:
                with tracer.start_as_current_span("sampled"):
                    recorder.record(value, attributes)
            else:
                recorder.record(value, attributes)
        results.append(_points(reader))

    public, fast = results
    assert fast == public
    exemplars = [e for *_, point_exemplars in public for e in point_exemplars]
    assert exemplars, "no exemplar was sampled: the comparison would prove nothing"
    # The view keeps only depth on the point; the exemplar keeps what the view dropped.
    assert ("status", "complete") in {a for _, attrs in exemplars for a in attrs}


def test_an_explicit_context_is_what_the_exemplar_filter_judges_as_in_record() -> None:
    from xzatoma.telemetry._metrics import NO_EXEMPLARS

    tracer = TracerProvider().get_tracer("t")
    results = []
    for use_fast in (False, True):
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        histogram = provider.get_meter("t").create_histogram(
            "h", explicit_bucket_boundaries_advisory=BUCKETS
        )
        recorder = fast_histogram(histogram) if use_fast else histogram
        with tracer.start_as_current_span("sampled"):
            for value, attributes in _records():
                recorder.record(value, attributes, NO_EXEMPLARS)  # no span: no exemplar
        results.append(_points(reader))
    public, fast = results
    assert fast == public
    assert public, "nothing was recorded: the comparison would prove nothing"
    assert not [e for *_, point_exemplars in public for e in point_exemplars]


def test_a_meter_disabled_between_records_drops_the_records_that_follow() -> None:
    from opentelemetry.sdk.metrics._internal import _disable_meter_configurator

    def disable(provider: MeterProvider) -> None:
        provider._set_meter_configurator(meter_configurator=_disable_meter_configurator)

    # The second half brings an attribute set first seen while the meter is disabled: it
    # must leave no point behind (not even an empty one).
    records = _records()
    records[len(records) // 2 + 1] = (0.5, {"depth": 9})
    public, fast, _ = _record_both(_one_reader, records, between=disable)

    assert fast == public
    assert sum(dict(fields)["count"] for _, _, fields, _ in fast[0]) == len(records) // 2
    assert ("depth", 9) not in {a for _, attrs, _, _ in fast[0] for a in attrs}


def test_attributes_the_sdk_would_clean_take_the_public_path() -> None:
    odd: Attributes = {"depth": 1, "": "dropped by the SDK"}
    public, fast, recorder = _record_both(_one_reader, [(1.0, DEPTH_1), (2.0, odd)] * 3)

    assert fast == public
    assert not recorder.bound


def test_refused_values_are_refused_with_the_sdks_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = [(-1.0, DEPTH_1), (float("nan"), DEPTH_1), (float("inf"), DEPTH_1)]
    with caplog.at_level(logging.WARNING):
        public, fast, _ = _record_both(_one_reader, [(1.0, DEPTH_1), *refused, (2.0, DEPTH_1)])

    assert fast == public
    (point,) = fast[0]
    assert dict(point[2])["count"] == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 * len(refused)


def test_a_fresh_mapping_per_call_binds_again_and_the_bindings_stay_bounded() -> None:
    records = [(float(i % 7), {"depth": i % 3}) for i in range(3000)]
    public, fast, recorder = _record_both(_one_reader, records)

    assert fast == public
    assert len(recorder._bindings) <= _fast._MAX_BINDINGS


@pytest.fixture
def restore_global_tracer() -> Iterator[None]:
    saved = trace._TRACER_PROVIDER
    yield
    trace._TRACER_PROVIDER = saved
    state._global_marker = object()
    state._global_tracing = False


@pytest.mark.usefixtures("restore_global_tracer")
def test_a_global_tracer_provider_set_later_is_picked_up() -> None:
    if trace._TRACER_PROVIDER is not None:
        pytest.skip("a global tracer provider is already set in this process")
    assert state.config.tracer_provider is None
    assert not state.tracing()
    assert not state.tracing()  # asked twice, the answer is the cached one

    trace._TRACER_PROVIDER = TracerProvider()

    assert state.tracing()


# -- the queue: values are handed over in bulk, at each collection --------------------------


def _bound(reader: InMemoryMetricReader) -> Any:
    provider = MeterProvider(metric_readers=[reader])
    histogram = provider.get_meter("t").create_histogram(
        "h", explicit_bucket_boundaries_advisory=BUCKETS
    )
    recorder: Any = fast_histogram(histogram)
    assert recorder.bound
    recorder.record(0.3, DEPTH_1)  # binds, through record()
    return recorder


def _queued(recorder: Any) -> int:
    return sum(len(binding.queued or ()) for binding in recorder._bindings.values())


def test_a_collection_sees_every_value_queued_before_it() -> None:
    reader = InMemoryMetricReader()
    recorder = _bound(reader)
    for value in (0.05, 0.15, 9.0):
        recorder.record(value, DEPTH_1)
    assert _queued(recorder) == 3  # queued, not yet handed over
    (point,) = _points(reader)
    assert dict(point[2])["count"] == 4
    assert dict(point[2])["bucket_counts"] == (1, 1, 1, 0, 0, 1)
    assert _queued(recorder) == 0
    recorder.record(0.5, DEPTH_1)
    (point,) = _points(reader)
    assert dict(point[2])["count"] == 5  # cumulative: the next collection adds what followed


def test_the_queue_is_bounded_without_any_collection() -> None:
    reader = InMemoryMetricReader()
    recorder = _bound(reader)
    for _ in range(_fast._MAX_QUEUED * 3 + 7):
        recorder.record(0.05, DEPTH_1)
        assert _queued(recorder) < _fast._MAX_QUEUED
    (point,) = _points(reader)
    assert dict(point[2])["count"] == _fast._MAX_QUEUED * 3 + 8


def test_threads_recording_while_others_collect_lose_and_double_nothing() -> None:
    import threading

    reader = InMemoryMetricReader()
    recorder = _bound(reader)
    start = threading.Barrier(6)
    per_thread = 5_000

    def record() -> None:
        start.wait()
        for i in range(per_thread):
            recorder.record(0.05 if i % 2 else 1.0, DEPTH_1)

    def collect() -> None:
        start.wait()
        for _ in range(50):
            reader.get_metrics_data()

    threads = [threading.Thread(target=record) for _ in range(4)]
    threads += [threading.Thread(target=collect) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    (point,) = _points(reader)
    data = dict(point[2])
    assert data["count"] == 4 * per_thread + 1
    assert data["bucket_counts"] == (2 * per_thread, 0, 1, 0, 2 * per_thread, 0)
    assert data["sum"] == pytest.approx(0.3 + 2 * per_thread * (0.05 + 1.0))


def test_a_collection_waits_for_a_hand_over_another_thread_has_begun(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    reader = InMemoryMetricReader()
    recorder = _bound(reader)
    for value in (0.05, 0.15, 9.0):
        recorder.record(value, DEPTH_1)
    entered, release = threading.Event(), threading.Event()
    add = _fast._add_to_buckets

    def slow_add(aggregation: Any, amounts: Sequence[float]) -> None:
        entered.set()  # the values are taken from the queue, not yet added
        assert release.wait(timeout=60)
        add(aggregation, amounts)

    monkeypatch.setattr(_fast, "_add_to_buckets", slow_add)
    handing_over = threading.Thread(target=recorder.flush)
    handing_over.start()
    assert entered.wait(timeout=60)
    monkeypatch.setattr(_fast, "_add_to_buckets", add)
    seen: list[Any] = []
    collecting = threading.Thread(target=lambda: seen.append(_points(reader)))
    collecting.start()
    collecting.join(timeout=0.5)
    assert collecting.is_alive(), "the collection read the aggregation mid-hand-over"
    release.set()
    for thread in (handing_over, collecting):
        thread.join(timeout=60)
        assert not thread.is_alive()
    ((point,),) = seen
    assert dict(point[2])["count"] == 4


def test_a_binding_replaced_while_values_wait_still_hands_them_over() -> None:
    reader = InMemoryMetricReader()
    recorder = _bound(reader)
    binding = recorder._bindings[id(DEPTH_1)]
    assert binding.queued is not None
    recorder.record(0.05, DEPTH_1)
    # What a record on another thread does when it found the binding just before the
    # bindings were cleared: its append lands on the retired binding's queue.
    recorder._retire(recorder._bindings.values())
    recorder._bindings.clear()
    binding.queued.append(0.15)
    recorder.record(9.0, DEPTH_1)  # binds anew
    (point,) = _points(reader)
    assert dict(point[2])["count"] == 4
    assert not recorder._retired or all(not b.queued for b in recorder._retired)
    (point,) = _points(reader)
    assert not recorder._retired  # found empty: dropped
