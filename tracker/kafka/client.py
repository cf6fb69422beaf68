"""Kafka client options from settings, and idempotent topic creation."""

from __future__ import annotations

import logging
import ssl
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from tracker.errors import UnavailableError
from tracker.settings import Settings

log = logging.getLogger(__name__)


def client_options(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """Connection options shared by every aiokafka client of the product."""
    opts: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "security_protocol": settings.kafka_security_protocol,
        "request_timeout_ms": 15_000,
    }
    if "SSL" in settings.kafka_security_protocol:
        opts["ssl_context"] = ssl.create_default_context()  # aiokafka requires one for TLS
    if settings.kafka_sasl_mechanism:
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        opts["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return opts


async def ensure_topics(settings: Settings, bootstrap: str, names: list[str]) -> None:
    """Create the product's topics if absent; existing topics are left as they are."""
    admin = AIOKafkaAdminClient(**client_options(settings, bootstrap))
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()
        raise UnavailableError(
            f"Kafka at {bootstrap} is not reachable: {exc}", retry_after=5
        ) from exc
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, settings.topic_partitions, settings.topic_replication)
            for name in names
            if name not in existing
        ]
        if not missing:
            return
        try:
            await admin.create_topics(missing)
        except TopicAlreadyExistsError:
            pass  # created concurrently by another process: what we wanted
        log.info("event=topics_created topics=%s", ",".join(t.name for t in missing))
    finally:
        await admin.close()
