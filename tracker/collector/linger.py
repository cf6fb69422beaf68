"""Few, large Kafka messages: records grouped by partition, across concurrent requests.

The worker's cost is per Kafka message far more than per event, so a message carries every
record of a partition that the collector has at hand, of many customers: a JSON array of at most
:data:`MESSAGE_BYTES`, sent with no key to the partition Kafka's default partitioner gives each
record's customer key (so every record still lands where a keyed message would have). The worker
splits a message by customer key again.

:class:`Linger` waits a few milliseconds for the records of concurrent requests, sends them
together, and answers each request only once the window that holds its records was acknowledged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from tracker.core.touchpoint import record_key
from tracker.errors import UnavailableError
from tracker.kafka.partitioner import positive_hash

if TYPE_CHECKING:
    from tracker.collector.publisher import Publisher

MESSAGE_BYTES = 256 * 1024  # a record is at most max_message_bytes (32 KiB) plus its envelope
WINDOW_BYTES = 2 * 1024 * 1024  # a linger window is sent at once when it holds this much
HASH_CACHE = 200_000  # customer keys whose hash is remembered (murmur2 costs a few µs in Python)

_hashes: dict[str, int] = {}


def key_hash(key: str) -> int:
    """Kafka's default partitioner's hash of a key (``positive_hash``), remembered."""
    found = _hashes.get(key)
    if found is None:
        if len(_hashes) >= HASH_CACHE:
            _hashes.clear()
        found = _hashes[key] = positive_hash(key.encode())
    return found


def partition_of(key: str, partitions: Sequence[int]) -> int:
    """The partition a message keyed ``key`` goes to; ``partitions`` sorted, as Kafka lists them."""
    return partitions[key_hash(key) % len(partitions)]


def encode(records: Iterable[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """Each record with its customer key and its JSON, encoded once."""
    return [(record_key(record), orjson.dumps(record)) for record in records]


def group_encoded(
    items: Iterable[tuple[str, bytes]], partitions: Sequence[int], max_bytes: int
) -> list[tuple[int, bytes]]:
    """Encoded records as ``(partition, JSON array)`` messages of at most ``max_bytes`` each.

    Records keep their order within a partition, hence within a customer; a record larger than
    ``max_bytes`` on its own still makes one message.
    """
    ordered = sorted(partitions)
    open_: dict[int, tuple[list[bytes], int]] = {}
    out: list[tuple[int, bytes]] = []
    for key, data in items:
        p = partition_of(key, ordered)
        parts, size = open_.get(p, ([], 2))
        if parts and size + len(data) + 1 > max_bytes:
            out.append((p, _array(parts)))
            parts, size = [], 2
        parts.append(data)
        open_[p] = (parts, size + len(data) + 1)
    out.extend((p, _array(parts)) for p, (parts, _) in open_.items())
    return out


def partition_batches(
    records: Iterable[dict[str, Any]], partitions: Sequence[int], max_bytes: int = MESSAGE_BYTES
) -> list[tuple[int, bytes]]:
    """Records as few Kafka messages as their partitions allow: ``(partition, JSON array)``."""
    return group_encoded(encode(records), partitions, max_bytes)


def _array(parts: list[bytes]) -> bytes:
    return b"[" + b",".join(parts) + b"]"


class Linger:
    """Sends the records of the requests that arrive within ``seconds`` of each other together.

    The bytes held (waiting or being sent) are bounded: a request that would go over waits for
    room up to ``wait_seconds``, then is refused as unavailable (503 + Retry-After).
    """

    def __init__(
        self,
        publisher: Publisher,
        topic: str,
        *,
        seconds: float,
        max_pending_bytes: int,
        wait_seconds: float,
        message_bytes: int = MESSAGE_BYTES,
        window_bytes: int = WINDOW_BYTES,
    ) -> None:
        self.publisher = publisher
        self.topic = topic
        self.seconds = seconds
        self.max_pending_bytes = max_pending_bytes
        self.wait_seconds = wait_seconds
        self.message_bytes = message_bytes
        self.window_bytes = window_bytes
        self._items: list[tuple[str, bytes]] = []
        self._bytes = 0  # of the open window
        self._window: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._held = 0  # bytes of every window not acknowledged yet, the open one included
        self._room = asyncio.Condition()
        self._sending: set[asyncio.Task[None]] = set()

    async def publish(self, records: list[dict[str, Any]]) -> None:
        """Return once Kafka acknowledged ``records``, or raise :class:`UnavailableError`."""
        if not records:
            return
        items = encode(records)
        size = sum(len(data) + 1 for _, data in items)
        await self._admit(size)
        if self._window is None:
            loop = asyncio.get_running_loop()
            self._window = loop.create_future()
            self._timer = loop.call_later(self.seconds, self._seal)
        window = self._window
        self._items += items
        self._bytes += size
        if self._bytes >= self.window_bytes:
            self._seal()
        # Shielded: a request that goes away must not cancel the others' window.
        await asyncio.shield(window)

    async def _admit(self, size: int) -> None:
        def room() -> bool:
            return self._held == 0 or self._held + size <= self.max_pending_bytes

        if not room():
            try:
                async with asyncio.timeout(self.wait_seconds), self._room:
                    await self._room.wait_for(room)
            except TimeoutError:
                raise UnavailableError(
                    f"the collector holds {self._held} bytes Kafka has not acknowledged yet",
                    retry_after=1,
                ) from None
        self._held += size

    def _seal(self) -> None:
        """Close the open window and send it."""
        if self._window is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        items, size, window = self._items, self._bytes, self._window
        self._items, self._bytes, self._window, self._timer = [], 0, None, None
        task = asyncio.get_running_loop().create_task(self._send(items, size, window))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(
        self, items: list[tuple[str, bytes]], size: int, window: asyncio.Future[None]
    ) -> None:
        try:
            partitions = await self.publisher.partitions(self.topic)
            batches = group_encoded(items, partitions, self.message_bytes)
            await self.publisher.publish_batches(self.topic, batches)
        except asyncio.CancelledError:
            window.cancel()
            raise
        except Exception as exc:  # passed on to every request of the window (a 503 if unavailable)
            window.set_exception(exc)
            window.exception()  # retrieved: the requests may all have gone away
        else:
            window.set_result(None)
        finally:
            self._held -= size
            async with self._room:
                self._room.notify_all()

    async def stop(self) -> None:
        """Send what is waiting and wait for every window in flight."""
        self._seal()
        await asyncio.gather(*self._sending, return_exceptions=True)
