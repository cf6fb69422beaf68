"""aiokafka's repeated errors while a broker is down come out once per interval, counted."""

from __future__ import annotations

import logging

from tracker.logs import RepeatLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(name: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_repeats_are_held_back_and_counted_on_the_next_line() -> None:
    clock = Clock()
    limiter = RepeatLimiter(("aiokafka",), 10.0, clock=clock)
    passed = []
    for i in range(100):  # 10 s of an error every 100 ms, about another node each time
        r = record("aiokafka.conn", "Unable connect to node with id %s: %s", i % 3, "refused")
        if limiter.filter(r):
            passed.append(r.getMessage())
        clock.now += 0.1
    clock.now = 10.0
    r = record("aiokafka.conn", "Unable connect to node with id %s: %s", 1, "refused")
    assert limiter.filter(r)
    passed.append(r.getMessage())
    assert passed == [
        "Unable connect to node with id 0: refused",
        "Unable connect to node with id 1: refused repeated=99 in_seconds=10",
    ]


def test_other_messages_and_other_loggers_pass() -> None:
    limiter = RepeatLimiter(("aiokafka",), 10.0, clock=Clock())
    assert limiter.filter(record("aiokafka.conn", "a %s", 1))
    assert limiter.filter(record("aiokafka.cluster", "a %s", 1))
    assert limiter.filter(record("aiokafka.conn", "b"))
    assert not limiter.filter(record("aiokafka.conn", "a %s", 2))
    for _ in range(5):
        assert limiter.filter(record("streams.journeys", "event=x"))


def test_the_kinds_tracked_are_bounded() -> None:
    limiter = RepeatLimiter(("aiokafka",), 10.0, keys=4, clock=Clock())
    for i in range(100):
        limiter.filter(record("aiokafka.conn", f"kind {i}"))
    assert len(limiter._seen) == 4
