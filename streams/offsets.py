"""Where a worker starts reading a partition after a rebalance.

After a rebalance faust seeks each assigned partition to its committed offset and then resumes
the flow, which also empties the agents' input queues: events fetched before the seek are meant
to be read again from the committed offset. Two holes lose events there (seen with two workers on
new topics, about one run in three):

- A partition with no committed offset yet is not sought at all, so the consumer goes on from
  where its fetcher stood, past the events the queues dropped.
- When no table needs recovery, faust resumes the flow once before that seek and once after.
  Between the two, the fetch loop hands out events and records them as read; the second resume
  drops them from the queues, and the loop, still walking its old fetch, marks later offsets read
  after the seek, so the re-fetched events count as already seen.

``read_uncommitted_from_start`` wraps faust's seek: it stops the fetch loop's flow first (faust
resumes it after the seek), then seeks as faust does, then seeks every partition of the given
topics that has no committed offset to its first offset, which is what
``auto_offset_reset = earliest`` promises. Events read twice are harmless (every handler is
idempotent); events never read are lost data.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)


def read_uncommitted_from_start(consumer: Any, topics: Callable[[], Iterable[str]]) -> None:
    """Wrap ``consumer.perform_seek`` (faust calls it once a rebalance's recovery is done)."""
    faust_seek: Callable[[], Awaitable[None]] = consumer.perform_seek

    async def perform_seek() -> None:
        consumer.stop_flow()
        await faust_seek()
        names = set(topics())
        committed = await consumer.seek_to_committed()
        missing = [tp for tp, offset in committed.items() if tp.topic in names and not offset]
        if not missing:
            return
        earliest = await consumer.earliest_offsets(*missing)
        for tp in missing:
            await consumer.seek(tp, earliest[tp])
        log.info(
            "event=seek_uncommitted partitions=%s",
            ",".join(f"{tp.topic}/{tp.partition}@{earliest[tp]}" for tp in sorted(missing)),
        )

    consumer.perform_seek = perform_seek
