"""The timers heap: customers come due in deadline order, exactly those before ``now``, and
the copies every batch pushes do not pile up."""

from __future__ import annotations

import random

from streams.timers import Timers


def test_due_in_deadline_order_and_only_before_now() -> None:
    timers = Timers()
    rng = random.Random(3)
    deadlines = {f"c{i}": rng.randrange(1_000, 2_000) for i in range(500)}
    for customer, deadline in deadlines.items():
        timers.push(deadline, customer)
    assert timers.due(1_000, 10**6) == set()  # a deadline at now is not due yet
    assert not timers.due_before(min(deadlines.values()))
    assert timers.due_before(min(deadlines.values()) + 1)
    first = timers.due(1_500, 10)  # the ten earliest of those due
    assert first == set(sorted(deadlines, key=lambda c: (deadlines[c], c))[:10])
    rest = timers.due(1_500, 10**6)
    assert first | rest == {c for c, d in deadlines.items() if d < 1_500}
    assert len(timers) == sum(d >= 1_500 for d in deadlines.values())


def test_keys_of_any_length_and_script_keep_their_order_by_deadline() -> None:
    timers = Timers()
    timers.push(2_000, "a")
    timers.push(1_000, "visitor-ünïcødé-客户-" + "x" * 300)
    timers.push(1_000, "")
    timers.push(-5, "before the epoch")  # long past: due at once
    assert timers.due(1, 10) == {"before the epoch"}
    assert timers.due(1_001, 10) == {"visitor-ünïcødé-客户-" + "x" * 300, ""}
    assert timers.due(10**15, 10) == {"a"}


def test_copies_of_a_timer_are_dropped_as_the_heap_grows() -> None:
    timers = Timers()
    for _batch in range(50):  # every batch of every customer pushes its deadline again
        for i in range(1_000):
            timers.push(5_000 + i % 7, f"c{i}")
    # One entry per customer and deadline, at most twice that between compactions.
    assert len(timers) <= 2 * 1_000
    assert timers.due(10**15, 10**6) == {f"c{i}" for i in range(1_000)}
    assert len(timers) == 0


def test_a_later_deadline_of_the_same_customer_stays() -> None:
    timers = Timers()
    for _ in range(3_000):
        timers.push(1_000, "c")
    timers.push(9_000, "c")
    assert timers.due(2_000, 10) == {"c"}
    assert timers.due(10_000, 10) == {"c"}


def test_clear_keeps_only_the_customers_asked_for() -> None:
    timers = Timers()
    for i in range(100):
        timers.push(1_000 + i, f"c{i}")
    timers.clear(keep={b"c3", b"c50"})
    assert timers.due(10**15, 10**6) == {"c3", "c50"}
