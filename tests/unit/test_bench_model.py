"""The worker benchmark: its cost model recovers known costs from runs of different shapes; its
data and its memory figures measure what they say."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tracker.bench.worker import (
    POLL_MAX_SECONDS,
    POLL_MIN_SECONDS,
    Measured,
    Shape,
    _poll_interval,
    _requests,
    core_alone,
    fit,
)
from tracker.settings import Settings


def _run(messages: int, batches: int, events: int) -> Measured:
    run = Measured(Shape("r", events, 1, 1), messages, 1, 1.0)
    run.customer_batches = batches
    return run


def test_the_fit_recovers_the_costs_that_made_the_times() -> None:
    a, b, c = 100e-6, 30e-6, 25e-6
    runs = [_run(20_000, 19_000, 20_000), _run(9_000, 90_000, 100_000),
            _run(500, 30_000, 100_000), _run(3_500, 88_000, 200_000)]  # fmt: skip
    seconds = [a * r.messages + b * r.customer_batches + c * r.shape.events for r in runs]
    assert fit(runs, seconds) == pytest.approx((a, b, c), rel=1e-9)


def test_runs_that_cannot_separate_the_terms_are_refused() -> None:
    runs = [_run(10, 10, 10), _run(20, 20, 20), _run(30, 30, 30)]
    with pytest.raises(ValueError, match="vary their shapes"):
        fit(runs, [1.0, 2.0, 3.0])


def test_one_event_per_customer_opens_an_instance_for_every_customer() -> None:
    # The 1,000,000-open-instance point: as many events as customers, one a request.
    shape = Shape("open", 20_000, 20_000, per_request=1)
    records = [r for request in _requests(shape, 10**12, random.Random(7)) for r in request]
    by_customer = Counter(r["anonymous_id"] for r in records)
    assert len(by_customer) == 20_000 and set(by_customer.values()) == {1}
    assert {r["event"] for r in records} == {"Product Viewed"}  # the journey's first stage


def test_growth_per_instance_is_read_between_half_and_all_open() -> None:
    run = _run(1, 1, 1)
    assert run.bytes_per_added_instance is None  # no half-way reading
    run.open_instances, run.rss_bytes = 1_000_000, 900_000_000
    run.half_open_instances, run.half_rss_bytes = 500_000, 700_000_000
    assert run.bytes_per_added_instance == 400


def test_poll_interval_shrinks_as_the_run_nears_its_end() -> None:
    # 10% done in 2 s: 18 s left at that rate, a quarter of it capped at the maximum
    assert _poll_interval(10_000, 100_000, 2.0) == POLL_MAX_SECONDS
    # 90% done in 18 s: 2 s left, polled every half second
    assert _poll_interval(90_000, 100_000, 18.0) == pytest.approx(0.5)
    # nothing counted yet, or everything: as often as allowed
    assert _poll_interval(0, 100_000, 1.0) == POLL_MIN_SECONDS
    assert _poll_interval(100_000, 100_000, 20.0) == POLL_MIN_SECONDS
    assert _poll_interval(99_999, 100_000, 20.0) == POLL_MIN_SECONDS


def test_the_core_alone_works_every_customer_of_the_shape() -> None:
    result = core_alone(Settings(), Shape("small", 2_000, 400, per_request=5))
    # Every customer's events go through it at least once; never more batches than events.
    assert 400 <= result["customer_batches"] <= 2_000
    assert result["events_per_cpu_s"] > 0
