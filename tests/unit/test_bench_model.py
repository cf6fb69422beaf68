"""The worker benchmark's cost model recovers known costs from runs of different shapes."""

from __future__ import annotations

import pytest

from tracker.bench.worker import Measured, Shape, fit


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
