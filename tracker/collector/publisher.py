"""Writes records to Kafka and returns only once Kafka acknowledged them (acks=all)."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tracker.core.touchpoint import record_key
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


def encode_groups(records: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """One Kafka message per customer key, carrying that key's records as a JSON array.

    A browser batch is usually one visitor's events, so it becomes a single message: the worker's
    cost is per message, not per event.
    """
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record_key(record)].append(record)
    return [(key.encode(), orjson.dumps(group)) for key, group in groups.items()]


class Publisher:
    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self._settings = settings
        self._producer = AIOKafkaProducer(**client_options(settings, bootstrap), **PRODUCER_OPTIONS)
        self.started = False

    async def start(self, *, give_up_after: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + give_up_after
        delay = 0.2
        while True:
            try:
                await self._producer.start()
                self.started = True
                return
            except KafkaError as exc:
                if loop.time() + delay > deadline:
                    raise UnavailableError(f"Kafka is not reachable: {exc}", retry_after=5) from exc
                log.warning("event=kafka_connect_retry error=%r delay=%.1f", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def stop(self) -> None:
        if self.started:
            await self._producer.stop()
            self.started = False

    async def publish(self, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
        """Send and wait for every acknowledgement, or raise :class:`UnavailableError`."""
        if not messages:
            return
        try:
            async with asyncio.timeout(self._settings.produce_timeout):
                futures = [
                    await self._producer.send(topic, value, key=key) for key, value in messages
                ]
                await asyncio.gather(*futures)
        except (TimeoutError, KafkaError) as exc:
            raise UnavailableError(f"Kafka did not acknowledge: {exc!r}", retry_after=2) from exc
