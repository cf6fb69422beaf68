"""Consumer lag per owned partition, for ``tracker_consumer_lag_messages``.

Lag is the partition's high watermark (the offset the next produced message gets, as the
consumer last saw it in a fetch) minus the offset this worker last committed. Only partitions the
worker owns now have a series, so the label set stays bounded by topics x partitions.
"""

from __future__ import annotations

from typing import Any

from tracker.metrics import Metrics


def lags(consumer: Any, assignment: set[Any]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> lag for the assigned partitions whose offsets are known yet."""
    out: dict[tuple[str, int], int] = {}
    for tp in assignment:
        try:
            highwater = consumer.highwater(tp)
        except AssertionError:  # aiokafka asserts the partition is still assigned
            continue
        # faust keeps the offsets it committed (the next offset to read) in this mapping.
        committed = consumer._committed_offset.get(tp)
        if highwater is None or committed is None:
            continue
        out[(tp.topic, tp.partition)] = max(highwater - committed, 0)
    return out


def publish_lags(metrics: Metrics, consumer: Any) -> None:
    """Replace the lag series with the partitions owned now."""
    current = lags(consumer, consumer.assignment())
    metrics.consumer_lag.clear()
    for (topic, partition), lag in current.items():
        metrics.consumer_lag.labels(topic, str(partition)).set(lag)
