"""The policy objects, without an event loop: quota, depth rule, truncation."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xzatoma import ConfigError, DepthLimitExceeded, QuotaExceeded, QuotaLimits, QuotaTracker
from xzatoma._limits import check_depth, truncate_utf8


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_unlimited_tracker_never_refuses() -> None:
    tracker = QuotaTracker()
    for _ in range(1000):
        tracker.reserve()
    tracker.charge(10**9)
    tracker.check_running()
    stats = tracker.statistics()
    assert (stats.executions, stats.total_tokens) == (1000, 10**9)
    assert stats.remaining_executions is None
    assert stats.remaining_tokens is None
    assert stats.remaining_time is None


def test_execution_limit_message_and_no_slot_taken_on_refusal() -> None:
    tracker = QuotaTracker(QuotaLimits(max_executions=5))
    for _ in range(5):
        tracker.reserve()
    with pytest.raises(QuotaExceeded) as info:
        tracker.reserve()
    assert str(info.value) == "Resource quota exceeded: execution limit reached (5/5)"
    assert (info.value.limit, info.value.used, info.value.maximum) == ("executions", 5, 5)
    assert tracker.statistics().executions == 5
    tracker.check_running()  # running subagents are not stopped by the execution limit


def test_token_limit_stops_new_spawns_and_running_subagents() -> None:
    tracker = QuotaTracker(QuotaLimits(max_total_tokens=100))
    tracker.reserve()
    tracker.charge(99)
    tracker.check_running()
    tracker.charge(1)
    with pytest.raises(QuotaExceeded, match=r"token limit reached \(100/100 tokens\)"):
        tracker.check_running()
    with pytest.raises(QuotaExceeded) as info:
        tracker.reserve()
    assert str(info.value).count("Resource quota exceeded") == 1
    assert tracker.statistics().remaining_tokens == 0


def test_time_limit_counts_from_creation_on_the_injected_clock() -> None:
    clock = FakeClock()
    tracker = QuotaTracker(QuotaLimits(max_total_time=10), clock=clock)
    clock.now += 9.5
    tracker.reserve()
    assert tracker.remaining_time() == pytest.approx(0.5)
    clock.now += 0.5
    with pytest.raises(QuotaExceeded, match=r"time limit reached \(10.0s/10.0s\)"):
        tracker.check_running()
    assert tracker.remaining_time() == 0.0


def test_statistics_is_a_frozen_snapshot() -> None:
    tracker = QuotaTracker(QuotaLimits(max_executions=3, max_total_tokens=50))
    tracker.reserve()
    snapshot = tracker.statistics()
    tracker.reserve()
    assert snapshot.executions == 1
    assert snapshot.remaining_executions == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.executions = 7  # type: ignore[misc]


def test_reservation_is_atomic_across_threads() -> None:
    tracker = QuotaTracker(QuotaLimits(max_executions=1))
    started: list[int] = []
    barrier = threading.Barrier(50)

    def spawn(index: int) -> None:
        barrier.wait()
        try:
            tracker.reserve()
        except QuotaExceeded:
            return
        started.append(index)

    threads = [threading.Thread(target=spawn, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(started) == 1
    assert tracker.statistics().executions == 1


@pytest.mark.parametrize(
    "limits",
    [
        {"max_executions": -1},
        {"max_total_tokens": -5},
        {"max_total_time": 0},
        {"max_total_time": -1.0},
        {"max_executions": True},
    ],
)
def test_invalid_limits_are_config_errors(limits: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        QuotaLimits(**limits)  # type: ignore[arg-type]


@pytest.mark.parametrize(("depth", "max_depth"), [(0, 1), (2, 3), (9, 10)])
def test_depth_rule_allows_below_the_limit(depth: int, max_depth: int) -> None:
    check_depth(depth, max_depth)


@pytest.mark.parametrize(("depth", "max_depth"), [(1, 1), (3, 3), (10, 10), (4, 3)])
def test_depth_rule_refuses_at_the_limit(depth: int, max_depth: int) -> None:
    with pytest.raises(DepthLimitExceeded) as info:
        check_depth(depth, max_depth)
    assert str(info.value) == (
        f"Maximum subagent recursion depth ({max_depth}) exceeded. Current depth: {depth}."
    )


def test_truncation_leaves_short_text_alone() -> None:
    assert truncate_utf8("héllo", 1024) == ("héllo", False)


def test_truncation_cuts_multibyte_text_on_a_character_boundary() -> None:
    text = "€" * 2000  # 3 bytes each: 6000 bytes
    cut, truncated = truncate_utf8(text, 1024)
    data = cut.encode("utf-8")
    assert truncated
    assert len(data) <= 1024
    assert cut.endswith("[... output truncated to 1024 bytes]")
    assert set(cut.split("\n")[0]) == {"€"}
    assert len(data) > 1024 - 3 - 40  # it keeps as much as fits


@given(st.text(), st.integers(min_value=1024, max_value=4096))
def test_truncation_always_fits_and_stays_valid(text: str, limit: int) -> None:
    cut, truncated = truncate_utf8(text, limit)
    data = cut.encode("utf-8")  # raises if a lone surrogate slipped through
    assert len(data) <= limit
    assert truncated == (len(text.encode("utf-8", "replace")) > limit)
    if not truncated and all(not 0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert cut == text
