"""Writes records to Kafka and returns only once Kafka acknowledged them (acks=all).

The idempotent producer can fall into states it never leaves by itself: after a broker restart
that left a partition without a leader for longer than the request timeout, aiokafka drops the
waiting batch *after* giving it a sequence number, and the broker refuses every later batch of
that partition as out of order. The publisher notices such states and builds a new producer (a
new producer id, sequences from zero). What Kafka acknowledged is in the log already and stays
there; what it did not acknowledge was answered 503, and the client sends it again with the
same messageIds, which the warehouse and the journey engine count once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    LeaderNotAvailableError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)

from tracker.errors import UnavailableError
from tracker.kafka.client import client_options
from tracker.settings import Settings

log = logging.getLogger(__name__)

# How the collector's producer writes; ``tracker bench collector``'s bare producer uses the same.
PRODUCER_OPTIONS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    # No lingering: one request is in flight per broker, and what arrives meanwhile becomes the
    # next request's batches anyway; a linger only delays that request.
    "linger_ms": 0,
    # A browser batch of 20 events is one message of ~15 KB. The sender has one request in
    # flight per broker, holding one batch per partition: with the default 16 KB batches that is
    # one message per partition per round trip. The producer holds at most two per partition.
    "max_batch_size": 1024 * 1024,
    "max_request_size": 4 * 1024 * 1024,
}

# Errors after which this producer's sequence numbers no longer match the broker's. The two
# leader errors reach a send only when a batch expired waiting for a leader: aiokafka numbered it
# and never sent it, so the partition's next batch is out of order for certain.
FATAL_PRODUCER_ERRORS: tuple[type[BaseException], ...] = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    ProducerFenced,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    NotLeaderForPartitionError,
    LeaderNotAvailableError,
)


class Publisher:
    """One idempotent producer at a time, replaced when it can no longer deliver.

    ``ready`` says whether Kafka is acknowledging as far as the collector knows: a producer is
    running and the last send did not fail (or, after a failure, :meth:`probe` found a leader
    for every partition again, so traffic may come back and show it).
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        *,
        on_rebuild: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        self._on_rebuild = on_rebuild
        self._producer: AIOKafkaProducer | None = None
        self._rebuilding: asyncio.Task[None] | None = None
        self._discarding: asyncio.Task[None] | None = None
        self._failing_since: float | None = None
        self.rebuilds = 0

    @property
    def started(self) -> bool:
        return self._producer is not None

    @property
    def ready(self) -> bool:
        return self._producer is not None and self._failing_since is None

    @property
    def state(self) -> str:
        if self._rebuilding is not None:
            return "rebuilding_producer"
        if self._producer is None:
            return "starting"
        return "kafka_not_acknowledging" if self._failing_since is not None else "ok"

    async def start(self, *, give_up_after: float = 60.0) -> None:
        self._producer = await self._connect(give_up_after)

    async def stop(self) -> None:
        if self._rebuilding is not None:
            self._rebuilding.cancel()
            await asyncio.gather(self._rebuilding, return_exceptions=True)
            self._rebuilding = None
        if self._discarding is not None:
            await asyncio.gather(self._discarding, return_exceptions=True)
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._discard(producer)

    async def publish(self, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
        """Send and wait for every acknowledgement, or raise :class:`UnavailableError`."""
        await self._deliver(topic, [(key, value, None) for key, value in messages])

    async def publish_batches(self, topic: str, batches: Sequence[tuple[int, bytes]]) -> None:
        """Like :meth:`publish`, for messages of many customers (no key) to the partitions given
        (see :mod:`tracker.collector.linger`)."""
        await self._deliver(topic, [(None, value, partition) for partition, value in batches])

    async def partitions(self, topic: str) -> list[int]:
        """The topic's partitions, sorted; from the producer's metadata once it has them."""
        producer = self._producer
        if producer is None:
            raise UnavailableError("Kafka producer is being rebuilt", retry_after=1)
        known = producer.client.cluster.partitions_for_topic(topic)
        if not known:
            try:
                async with asyncio.timeout(self._settings.produce_timeout):
                    known = await producer.partitions_for(topic)
            except (TimeoutError, KafkaError) as exc:
                self._failed(producer, exc)
                raise UnavailableError(
                    f"no partitions known for {topic}: {exc!r}", retry_after=2
                ) from exc
        return sorted(known)

    async def _deliver(
        self, topic: str, messages: list[tuple[bytes | None, bytes, int | None]]
    ) -> None:
        if not messages:
            return
        producer = self._producer
        if producer is None:
            raise UnavailableError("Kafka producer is being rebuilt", retry_after=1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.produce_timeout
        try:
            async with asyncio.timeout_at(deadline):
                futures = [
                    await producer.send(topic, value, key=key, partition=partition)
                    for key, value, partition in messages
                ]
            delivered = asyncio.gather(*futures)
            try:
                # Shielded: a request that gives up must not cancel the batches' futures, or
                # nobody would see how they end (an expired batch is what breaks the producer).
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(delivered)
            except TimeoutError:
                delivered.add_done_callback(lambda done: self._settle(producer, done))
                raise
        except (TimeoutError, KafkaError) as exc:
            self._failed(producer, exc)
            raise UnavailableError(f"Kafka did not acknowledge: {exc!r}", retry_after=2) from exc
        self._failing_since = None

    async def probe(self) -> bool:
        """After failures: is there a leader for every partition again? Then call it ready."""
        producer = self._producer
        if producer is None:
            return False
        if self._failing_since is None:
            return True
        topic = self._settings.topic_touchpoints
        try:
            async with asyncio.timeout(2.0):
                updated = await producer.client.force_metadata_update()
        except TimeoutError:
            return False
        cluster = producer.client.cluster
        partitions = cluster.partitions_for_topic(topic)
        if updated and partitions and cluster.available_partitions_for_topic(topic) == partitions:
            self._failing_since = None
            return True
        return False

    # -- internals ---------------------------------------------------------------------------

    def _settle(self, producer: AIOKafkaProducer, delivered: asyncio.Future[Any]) -> None:
        """How a batch nobody waits for any more ended: a fatal end still needs a rebuild."""
        if not delivered.cancelled() and delivered.exception() is not None:
            self._failed(producer, delivered.exception())

    def _failed(self, producer: AIOKafkaProducer, exc: BaseException | None) -> None:
        if producer is not self._producer:
            return  # a replaced producer's news: says nothing of the current one
        if self._failing_since is None:
            self._failing_since = asyncio.get_running_loop().time()
        if isinstance(exc, FATAL_PRODUCER_ERRORS) or _sender_stopped(producer):
            reason = type(exc).__name__
            log.warning("event=producer_rebuild reason=%s", reason)
            self.rebuilds += 1
            if self._on_rebuild is not None:
                self._on_rebuild(reason)
            self._producer = None
            self._rebuilding = asyncio.create_task(self._rebuild(producer))

    async def _rebuild(self, broken: AIOKafkaProducer) -> None:
        # The old producer first: what it still delivers lands before the new one writes.
        # Shielded, so that stopping the collector meanwhile still closes it (stop() waits).
        self._discarding = asyncio.create_task(self._discard(broken))
        await asyncio.shield(self._discarding)
        self._producer = await self._connect(give_up_after=None)
        self._rebuilding = None
        log.info("event=producer_rebuilt")

    async def _connect(self, give_up_after: float | None) -> AIOKafkaProducer:
        """A started producer; retries with capped backoff, without end if no ``give_up_after``."""
        loop = asyncio.get_running_loop()
        deadline = None if give_up_after is None else loop.time() + give_up_after
        delay = 0.2
        while True:
            producer = AIOKafkaProducer(
                **client_options(self._settings, self._bootstrap), **PRODUCER_OPTIONS
            )
            try:
                await producer.start()
                return producer
            except asyncio.CancelledError:
                await producer.stop()
                raise
            except (KafkaError, OSError) as exc:
                await producer.stop()
                if deadline is not None and loop.time() + delay > deadline:
                    raise UnavailableError(f"Kafka is not reachable: {exc}", retry_after=5) from exc
                log.warning("event=kafka_connect_retry error=%r delay=%.1f", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _discard(self, producer: AIOKafkaProducer) -> None:
        """Stop a producer: it may deliver what it holds within the produce timeout, no longer.

        ``stop()`` waits for every pending batch, and an idempotent producer retries a batch for
        ever while the leader is known but unreachable. Past the grace the sender is stopped and
        what is left fails, so the requests still waiting on it are answered 503.
        """
        stopping = asyncio.ensure_future(producer.stop())
        done, _ = await asyncio.wait([stopping], timeout=self._settings.produce_timeout)
        if not done:
            log.warning("event=producer_abandoned detail=pending_batches_failed")
            stopping.cancel()
            # aiokafka has no public "close now": its sender and accumulator are reached directly.
            await producer._sender.close()
            producer._message_accumulator.fail_all(KafkaError("producer replaced"))
            await producer.client.close()
        await asyncio.gather(stopping, return_exceptions=True)


def _sender_stopped(producer: AIOKafkaProducer) -> bool:
    """The sender task ended: every later send fails with its error until the producer goes."""
    task = producer._sender.sender_task
    return task is not None and task.done()
